"""The thin ResNet experiment (lib/experiments/thin_resnet/), its notebook under papermill, its report section."""
from __future__ import annotations

import json
import math
from pathlib import Path

import nbformat
import papermill
import pytest
import torch

from lib.experiments.records import only, select
from lib.experiments.schema import build
from lib.experiments.thin_resnet import analysis, section, states
from lib.experiments.thin_resnet.params import ThinResNetParams
from lib.experiments.thin_resnet.run import run as run_thin_resnet
from lib.core.estimators import cdg, ste
from lib.core.evaluate import cosine

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "thin_resnet.ipynb"


def tiny_params(tmp: Path, **over):
    params = dict(initial_channels=2, states=["init", "trained"], acts=["binary", "fp"],
                  ste_variants=["identity", "clipped"], eps=[0.1, 0.3], coords_per_layer=3, batch_size=8,
                  lrs=[0.1, 1.0, 10.0], decrease_acts=["binary"], train_epochs=1, train_batch_size=32,
                  train_limit=64, init_bn_batches=1, test_limit=16, seed=3, decrease_batches=3,
                  cache_dir=str(tmp / "cache"))
    params.update(over)
    return params


STEPS: list[tuple] = []  # the on_step calls of the first tiny run


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("thin")
    saved = torch.get_num_threads()  # module-scoped: set up before the autouse one-thread fixture
    torch.set_num_threads(1)
    try:
        first = run_thin_resnet(tiny_params(tmp), log=None, on_step=lambda *a: STEPS.append(a))
        second = run_thin_resnet(tiny_params(tmp), log=None)
    finally:
        torch.set_num_threads(saved)
    return first, second


# ----------------------------------------------------------------------------- parameters

@pytest.mark.parametrize("key,value,match", [
    ("colour", 1, "colour"),
    ("states", ["init", "pretrained"], "states"),
    ("acts", ["binary", "1bit"], "acts"),
    ("eps", [0.1, -0.1], "eps"),
    ("eps", [], "eps"),
    ("coords_per_layer", 0, "coords_per_layer"),
    ("decrease_acts", ["4bit"], "decrease_acts"),
    ("ste_variants", ["clipped", "clipped"], "ste_variants"),
    ("device", "tpu", "device"),
    ("train_epochs", 0, "train_epochs"),
    ("binary_weights", "yes", "binary_weights"),
])
def test_invalid_parameters_name_the_key(key, value, match):
    with pytest.raises(ValueError, match=match):
        build(ThinResNetParams, {key: value})


def test_decrease_acts_must_be_analysed_acts():
    with pytest.raises(ValueError, match="decrease_acts"):
        ThinResNetParams(acts=["binary"], decrease_acts=["ternary"])
    assert ThinResNetParams(acts=["fp"], decrease_acts=[]).decrease_acts == []


def test_notebook_kernel_and_parameters_cell():
    """(Its names and defaults are the schema's: tests/test_schema.py.)"""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert nb.metadata.kernelspec.name == "python3"
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit without outputs"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1


def test_decrease_layers_and_labels():
    names = states.build_model(ThinResNetParams(initial_channels=2), "binary").binary_conv_names()
    assert analysis.decrease_layers(names) == [
        "layer1.0.conv1.conv.weight", "layer3.0.conv1.conv.weight", "layer4.1.conv2.conv.weight"]
    assert analysis.main_eps([0.03, 0.1, 0.3]) == 0.1 and analysis.main_eps([0.3, 1.0]) == 0.3


# ----------------------------------------------------------------------------- results

def test_the_results_records_declare_every_key_a_run_writes(tiny_results):
    """The TypedDicts of lib/experiments/thin_resnet/records.py are the schema: a key a run writes
    and they do not declare (or a declared required key it does not write) fails here."""
    from lib.experiments.thin_resnet.records import Analysis, AtBatch, DataInfo, Layer, ThinResNetResults

    def keys(typed) -> set:
        return set(typed.__required_keys__) | set(typed.__optional_keys__)

    r, _ = tiny_results
    assert set(ThinResNetResults.__required_keys__) <= set(r) <= keys(ThinResNetResults)
    assert set(r["data"]) == keys(DataInfo) and all(set(layer) == keys(Layer) for layer in r["layers"])
    for e in r["analyses"]:
        assert set(e) <= keys(Analysis), set(e) - keys(Analysis)
        assert all(set(b) == keys(AtBatch) for b in e.get("by_batch", []))


def test_results_schema_and_json(tiny_results):
    r, _ = tiny_results
    json.dumps(r, allow_nan=False)
    assert r["experiment"] == "thin_resnet" and r["initial_channels"] == 2 and r["seed"] == 3
    assert {"torch", "numpy", "python"} <= set(r["versions"])
    assert r["wall_s"] > 0 and r["cpu_s"] > 0 and r["device"] == "cpu"
    labels = [layer["label"] for layer in r["layers"]]
    assert len(r["layers"]) == 16 and labels[0] == "1.0.1" and labels[-1] == "4.1.2"
    assert [layer["stage"] for layer in r["layers"]] == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    assert r["layers"][0]["name"] == "layer1.0.conv1.conv.weight" and r["layers"][0]["numel"] == 2 * 2 * 9
    assert r["eps_main"] == 0.1 and r["data"]["batch_size"] == 8 and r["data"]["train_images"] == 64
    assert [(e["state"], e["act"]) for e in r["analyses"]] == [
        ("init", "binary"), ("init", "fp"), ("trained", "binary"), ("trained", "fp")]
    for e in r["analyses"]:
        assert sorted((c["eps"], c["variant"]) for c in e["cosines"]) == [
            (0.1, "clipped"), (0.1, "identity"), (0.3, "clipped"), (0.3, "identity")]
        for c in e["cosines"]:
            assert len(c["per_layer"]) == 16
            assert all(v is None or -1 - 1e-9 <= v <= 1 + 1e-9 for v in c["per_layer"] + [c["all"]])
        assert [m["eps"] for m in select(e["magnitudes"], estimator="cdg")] == [0.1, 0.3]
        assert all(len(m["per_layer"]) == 16 for m in e["magnitudes"])
        assert e["sampled"] == [[3] * 16] * 3  # 3 coordinate sets (the default)
        assert [c["eps"] for c in e["ceiling"]] == [0.1]  # at the main ε only
        for c in e["cosines"] + e["ceiling"]:  # the record holds the mean over its sets
            assert len(c["sets"]) == 3
            assert c["all"] == pytest.approx(sum(s["all"] for s in c["sets"]) / 3)
        assert ("decrease" in e) == (e["act"] == "binary")
        assert ("held_out" in e) == (e["act"] == "binary")  # on the 16 held-out images, over 3 batches
        assert sorted(c["variant"] for c in e["cross_cosines"]) == ["clipped", "identity"]
        assert all(c["eps"] == 0.1 and len(c["sets"]) == 3 for c in e["cross_cosines"])
    info = only(r["analyses"], state="trained", act="binary")["state_info"]
    assert info["steps"] == 2 and len(info["curve"]) == 2 and info["cache_hit"] is False
    assert info["dtype"] == "float64"  # trained in float64 (the model itself stays float32)
    dec = only(r["analyses"], state="init", act="binary")["decrease"]
    assert [d["layer"] for d in dec][::4] == r["decrease_layers"]  # per layer: CDG at 2 ε, 2 STE variants
    for layer in r["decrease_layers"]:
        assert [d.get("eps") for d in select(dec, layer=layer, estimator="cdg")] == [0.1, 0.3]
        assert [d["variant"] for d in select(dec, layer=layer, estimator="ste")] == ["identity", "clipped"]
        for d in select(dec, layer=layer):
            assert len(d["curve"]) == 3 and d["best"] == max(d["curve"]) and d["n"] == 3
            at = [s["curve"][r["lrs"].index(d["best_lr"])] for s in d["sets"]]
            assert d["best"] == pytest.approx(sum(at) / 3)
            lo, hi = d["interval"]  # t_{0.975, 2} · s / √3 around the mean, by hand
            half = 4.302652729911275 * (sum((v - d["best"]) ** 2 for v in at) / 2) ** 0.5 / 3 ** 0.5
            assert (lo, hi) == pytest.approx((d["best"] - half, d["best"] + half))


def test_progress_steps_count_state_precision_pairs(tiny_results):
    assert STEPS == [(1, 4, "init/binary"), (2, 4, "init/fp"), (3, 4, "trained/binary"), (4, 4, "trained/fp")]


def _strip(r):
    """The numbers of a result, without timings and cache flags."""
    r = json.loads(json.dumps(r))
    r.pop("wall_s"), r.pop("cpu_s")
    for e in r["analyses"]:
        e.pop("timings")
        e["state_info"].pop("cache_hit", None)
        e["state_info"].pop("train_s", None)
    return r


def test_same_parameters_same_numbers_and_cache_hit(tiny_results):
    first, second = tiny_results
    assert only(second["analyses"], state="trained", act="binary")["state_info"]["cache_hit"] is True

    assert _strip(first) == _strip(second)


def test_resumes_from_its_checkpoint_with_the_same_numbers(tiny_results, tmp_path, reporters):
    """Killed after 3 of the 4 (state, precision) analyses, rerun: only the 4th is computed and
    the numbers are those of the uninterrupted run."""
    first, _ = tiny_results
    results_path = tmp_path / "run.json"
    params = tiny_params(tmp_path)
    torch.set_num_threads(1)
    with pytest.raises(reporters.Killed):
        run_thin_resnet(params, log=None, on_step=reporters.DiesAfter(results_path, 3))
    recording = reporters.Recording(results_path)
    resumed = run_thin_resnet(params, log=None, on_step=recording)
    assert recording.calls == [(3, 3, "resumed"), (4, 3, "trained/fp")]
    resumed["parameters"]["cache_dir"] = first["parameters"]["cache_dir"]  # each test has its own folder
    assert _strip(resumed) == _strip(first)


def test_full_precision_cdg_is_the_autograd_gradient(tiny_results):
    """With fp activations the loss is smooth: CDG (a plain finite difference) ≈ autograd."""
    r, _ = tiny_results
    for state in ("init", "trained"):
        cos = only(only(r["analyses"], state=state, act="fp")["cosines"], eps=0.1, variant="identity")["per_layer"]
        assert min(cos) > 0.95, (state, cos)


def test_cosines_agree_with_an_independent_computation(tmp_path):
    """Recompute one entry from the estimators directly: coordinate set k is CDG with seed
    ``seed + 7919 k``; the noise ceiling is CDG on the next ``batch_size`` images of the seeded permutation."""
    given = tiny_params(tmp_path, states=["init"], acts=["binary"], eps=[0.2], decrease_acts=[], coord_sets=2)
    r = run_thin_resnet(given, log=None)
    p = build(ThinResNetParams, given)
    data = states.load_data(p)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(3))
    assert torch.equal(data["x_ref"], states.image_data("digits", "train", 64)[0][perm[8:16]])
    model, _ = states.make_state(p, "binary", "init", data, torch.device("cpu"))
    names = model.binary_conv_names()
    s = ste(model, data["x"], data["y"], loss="cross_entropy", variant="clipped", layers=names)
    entry = only(r["analyses"], state="init", act="binary")
    rms = []
    for k, seed in enumerate((3, 3 + 7919)):
        g = cdg(model, data["x"], data["y"], loss="cross_entropy", eps=0.2, layers=names, coords_per_layer=3, seed=seed)
        g_ref = cdg(model, data["x_ref"], data["y_ref"], loss="cross_entropy", eps=0.2, layers=names,
                    coords_per_layer=3, seed=seed)
        for got, expected in ((only(entry["cosines"], eps=0.2, variant="clipped")["sets"][k], cosine(g, s)),
                              (only(entry["ceiling"], eps=0.2)["sets"][k], cosine(g, g_ref))):
            for name, value in zip(names, got["per_layer"]):
                if value is None:
                    assert math.isnan(expected[name])
                else:
                    assert value == pytest.approx(expected[name], abs=1e-6)
        mask = torch.isfinite(g[names[0]])
        rms.append(float(g[names[0]][mask].double().pow(2).mean().sqrt()))
    # magnitude on the sampled coordinates, mean over the two sets
    assert only(entry["magnitudes"], estimator="cdg", eps=0.2)["per_layer"][0] == pytest.approx(sum(rms) / 2, rel=1e-6)


# ----------------------------------------------------------------------------- report

def _pngs(cells):
    return [c for c in cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]


def test_report_cells(tiny_results):
    r, _ = tiny_results
    other = json.loads(json.dumps(r))
    other["initial_channels"] = 4
    other["analyses"] = select(other["analyses"], state="init", act="binary")  # a smaller run
    cells = section.results_cells([other, r])
    assert cells[0].cell_type == "markdown"
    assert cells[0].source == "### Thin ResNet-18 CDG gradient experiment - 1 · Thin ResNet-18 CDG grad实验 - 1"
    text = "\n".join(c.source for c in cells if c.cell_type == "markdown")
    assert "标准XNOR-ResNet-18深度，但是initial channel分别设置为8/16" in text
    assert text.index("Initial channels = 2") < text.index("Initial channels = 4")  # sorted by c
    assert "front" in text and "|" in text  # the summary paragraph and the tables
    assert "batch 32, in float64), one model per activation" in text  # how the trained state was trained
    # training curves; c = 2: cosine, magnitude, precisions, loss decrease; c = 4: no precisions
    assert len(_pngs(cells)) == 1 + 4 + 3
    for c in cells:  # valid cells for nbformat
        nbformat.validate(nbformat.v4.new_notebook(cells=[c]))


def test_report_cells_with_a_reduced_run(tmp_path):
    params = tiny_params(tmp_path, states=["init"], acts=["ternary"], eps=[0.1], decrease_acts=[],
                         ste_variants=["steep"])
    r = run_thin_resnet(params, log=None)
    cells = section.results_cells([r])
    assert len(_pngs(cells)) == 2  # cosine and magnitude only
    assert section.results_cells([])[0].source == section.HEADING


# ----------------------------------------------------------------------------- notebook

def test_notebook_runs_under_papermill(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    results_path = tmp_path / "results.json"
    params = tiny_params(tmp_path, acts=["binary", "ternary"], eps=[0.1], results_path=str(results_path))
    out = tmp_path / "executed.ipynb"
    papermill.execute_notebook(str(NOTEBOOK), str(out), parameters=params, kernel_name="python3",
                               cwd=str(ROOT), progress_bar=False)
    results = json.loads(results_path.read_text())
    assert results["initial_channels"] == 2 and [e["state"] for e in results["analyses"]][::2] == ["init", "trained"]
    nb = nbformat.read(out, as_version=4)
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # cosine, magnitude, precisions, loss decrease, training
    assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))
    assert (tmp_path / "cache").is_dir()  # the trained checkpoints went to cache_dir


def test_findings_sentence(tiny_results):
    r, _ = tiny_results
    sentence, held = section.findings([{"id": "thin_resnet", "entry": {}, "results": r}])
    assert held.startswith("**Thin ResNet, single-layer step held out**") and "n = 3 gradient batches" in held
    assert "(#thin-resnet-18-cdg-gradient-experiment-1--can-the-reference-resolve-the-ste-s-error)" in sentence
    assert "c = 2 init: ceiling " in sentence and "c = 2 trained: ceiling " in sentence and "√ceiling" in sentence
    assert "scikit-learn's digits" in sentence and "batches of 8 images" in sentence
    assert "(n = 3 coordinate sets of one model and one batch" in sentence


def _binary_init(r):
    """The run's parameters, data, binary init model and its binary conv names, rebuilt."""
    p = build(ThinResNetParams, r["parameters"])
    data = states.load_data(p)
    model, _ = states.make_state(p, "binary", "init", data, torch.device("cpu"))
    return p, data, model, model.binary_conv_names()


def test_cross_batch_cosines_by_hand(tiny_results):
    """cos(STE on the gradient batch, CDG on the independent batch) on the same coordinates, recomputed."""
    r, _ = tiny_results
    p, data, model, names = _binary_init(r)
    g = ste(model, data["x"], data["y"], loss="cross_entropy", variant="clipped", layers=names)
    k = 1
    other = cdg(model, data["x_ref"], data["y_ref"], loss="cross_entropy", eps=0.1, layers=names,
                coords_per_layer=3, seed=analysis.coord_seed(p, k), budget_mb=p.budget_mb)
    rec = only(only(r["analyses"], state="init", act="binary")["cross_cosines"], variant="clipped")
    assert rec["sets"][k]["all"] == pytest.approx(cosine(other, g)["all"], abs=1e-6)


def test_the_ste_ceiling_by_hand(tiny_results):
    """cos(STE on the gradient batch, STE on the independent batch) on a coordinate set's coordinates, recomputed."""
    r, _ = tiny_results
    p, data, model, names = _binary_init(r)
    k = 1
    coords = cdg(model, data["x"], data["y"], loss="cross_entropy", eps=0.1, layers=names,
                 coords_per_layer=3, seed=analysis.coord_seed(p, k), budget_mb=p.budget_mb)
    a = ste(model, data["x"], data["y"], loss="cross_entropy", variant="clipped", layers=names)
    b = ste(model, data["x_ref"], data["y_ref"], loss="cross_entropy", variant="clipped", layers=names)
    on = {n: torch.isfinite(coords[n]) for n in names}
    flat_a = torch.cat([a[n][on[n]] for n in names])
    flat_b = torch.cat([b[n][on[n]] for n in names])
    rec = only(only(r["analyses"], state="init", act="binary")["ste_ceiling"], variant="clipped")
    assert rec["sets"][k]["all"] == pytest.approx(float(flat_a @ flat_b / flat_a.norm() / flat_b.norm()), abs=1e-6)


def test_resolution_against_the_unbiased_score():
    """An STE with no error of its own, computed on a batch, scores √(c_STE · c_CDG) against CDG on
    another batch: at that score it is not resolved, below it it is; without c_STE nothing is."""
    from lib.experiments.thin_resnet.resolution import resolutions

    def rec(values, **key):
        return {**key, "eps": 0.1, "all": sum(values) / 3, "sets": [{"all": v, "per_layer": []} for v in values]}

    ceiling = [0.25, 0.36, 0.49]  # √: 0.5, 0.6, 0.7
    entry = {"state": "init", "act": "binary", "ceiling": [rec(ceiling)],
             "cross_cosines": [rec([0.26, 0.35, 0.50], variant="at_ceiling"),
                               rec([0.05, 0.17, 0.28], variant="below")]}
    result = {"initial_channels": 8, "eps_main": 0.1, "parameters": {"states": ["init"], "acts": ["binary"]},
              "data": {"batch_size": 32}, "analyses": [entry]}
    found = {v.variant: v for v in resolutions([result])}
    assert not found["at_ceiling"].resolved and not found["below"].resolved  # no c_STE: no verdict of "resolved"
    assert found["at_ceiling"].root.mean == pytest.approx(0.6) and found["at_ceiling"].own is None
    # the STEs as noisy as CDG: the unbiased score is the ceiling itself, which √ceiling alone would call resolved
    entry["ste_ceiling"] = [rec(ceiling, variant="at_ceiling"), rec(ceiling, variant="below")]
    found = {v.variant: v for v in resolutions([result])}
    assert not found["at_ceiling"].resolved and found["below"].resolved
    assert found["below"].unbiased.mean == pytest.approx(sum(ceiling) / 3) and found["below"].gap.n == 3
    # more batch sizes: each N is tested on its own records, in the same Holm family
    entry["by_batch"] = [{"batch_size": 512, "eps": 0.1, "ceiling": rec([0.81, 0.64, 0.49]),
                          "cross": [rec([0.9, 0.8, 0.7], variant="below")],
                          "ste_ceiling": [rec([1.0, 1.0, 1.0], variant="below")]}]
    found = {(v.variant, v.batch_size): v for v in resolutions([result])}
    assert set(found) == {("at_ceiling", 32), ("below", 32), ("below", 512)}
    assert not found["below", 512].resolved and found["below", 512].unbiased.mean == pytest.approx(0.8)


def _made_up(front_by_set, back_by_set):
    """A result whose binary cosines are ``front`` on stage 1 and ``back`` elsewhere, per coordinate set."""
    layers = [{"name": f"l{i}", "label": f"{i // 4 + 1}.x", "stage": i // 4 + 1} for i in range(16)]
    sets = [{"per_layer": [f] * 4 + [b] * 12, "all": (f + b) / 2} for f, b in zip(front_by_set, back_by_set)]
    record = {"variant": "clipped", "eps": 0.1, "sets": sets, "per_layer": sets[0]["per_layer"], "all": sets[0]["all"]}
    return {"layers": layers, "eps_main": 0.1, "ste_variants": ["clipped"], "parameters": {"states": ["init"]},
            "analyses": [{"state": "init", "act": "binary", "cosines": [record]}]}


@pytest.mark.parametrize("front,back,claim", [
    ([0.8, 0.82, 0.79], [0.2, 0.25, 0.22], "higher on the front stage"),
    ([0.2, 0.25, 0.22], [0.8, 0.82, 0.79], "higher on the back stage"),
    ([0.8, 0.2, 0.5], [0.5, 0.6, 0.3], "not distinguishable between the front and the back stage at n = 3"),
    ([0.8], [0.2], "not distinguishable between the front and the back stage at n = 1"),  # one set: no interval
])
def test_front_back_claims_only_what_the_interval_supports(front, back, claim):
    from lib.experiments.thin_resnet.summary import front_back_phrase

    phrase = front_back_phrase(_made_up(front, back), "init")
    assert phrase.startswith(claim), phrase


def test_the_ceiling_at_more_batch_sizes_by_hand(tmp_path):
    """``resolution_batch_sizes``: two more disjoint batches of N images after the gradient batches
    of the seeded permutation; the ceiling and the cross-batch cosines there, recomputed."""
    given = tiny_params(tmp_path, states=["init"], acts=["binary"], eps=[0.1], decrease_acts=[], coord_sets=2,
                        resolution_batch_sizes=[16])
    r = run_thin_resnet(given, log=None)
    (b,) = only(r["analyses"], state="init", act="binary")["by_batch"]
    assert b["batch_size"] == 16 and len(b["ceiling"]["sets"]) == 2 and len(b["cross"]) == 2
    p = build(ThinResNetParams, given)
    x, y = states.image_data("digits", "train", 64)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(3))
    a, c = perm[16:32], perm[32:48]  # after the gradient batch and the ceiling's batch of 8 each
    model, _ = states.make_state(p, "binary", "init", states.load_data(p), torch.device("cpu"))
    names = model.binary_conv_names()

    def cdg_on(idx, k):
        return cdg(model, x[idx], y[idx], loss="cross_entropy", eps=0.1, layers=names, coords_per_layer=3,
                   seed=analysis.coord_seed(p, k), budget_mb=p.budget_mb)

    assert b["ceiling"]["sets"][1]["all"] == pytest.approx(cosine(cdg_on(a, 1), cdg_on(c, 1))["all"], abs=1e-6)
    g = ste(model, x[a], y[a], loss="cross_entropy", variant="clipped", layers=names)
    cross = next(rec for rec in b["cross"] if rec["variant"] == "clipped")
    assert cross["sets"][0]["all"] == pytest.approx(cosine(cdg_on(c, 0), g)["all"], abs=1e-6)
    (problem,) = build(ThinResNetParams, dict(given, resolution_batch_sizes=[40])).machine_problems()
    assert problem[0] == "train_limit" and "96 training images needed" in problem[1]
    assert "resolution_batch_sizes [40]" in problem[1]
