"""The explorer: update function, widgets, notebook under papermill."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lib.core import estimators as E
from lib.core import evaluate as V
from lib.training.gaussian import toy_problem
from lib.experiments.explorer.compute import ESTIMATORS, explore
from lib.experiments.explorer.figure import figure_png, plot_explorer
from lib.experiments.explorer.widgets import ExplorerApp, make_widgets
from lib.experiments.toy.params import ToyParams
from lib.experiments.toy.run import pretrain_student

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(num_dim=8, samples=60, batch_size=64, num_lr=7, lr_min=1e-2, lr_max=1.0)


@pytest.fixture(scope="module")
def small():
    return explore(**SMALL, seed=3, eps=0.05, sigma=0.2)


def test_explore_returns_finite_curves_of_the_grid_length(small):
    assert set(small.curves) == set(ESTIMATORS)
    np.testing.assert_allclose(small.lrs, np.geomspace(1e-2, 1.0, 7))
    for k, curve in small.curves.items():
        assert curve.shape == (7,) and np.isfinite(curve).all(), k
        best, lr = small.best[k]
        assert best == curve.max() and lr == small.lrs[curve.argmax()]
    for name, cos in small.cosines.items():
        assert -1.0 - 1e-9 <= cos["all"] <= 1.0 + 1e-9, name
    assert set(small.cosines["exact_vs_cdg"]) == {"fc3.weight", "readout.weight", "all"}
    assert small.loss_evaluations == {"cdg": 2 * (3 * 64 + 8), "nes": 120, "nes_last2": 120}
    assert small.wall_s > 0 and small.pretrain is None
    json.dumps(small.to_json())  # JSON-able


@torch.no_grad()
def _stepped_loss_drop(model, x, y, grads, lrs, layers):
    """Brute force: per lr, a copy of the model with ``layers`` stepped by lr · g_l / ‖g_l‖ (the
    others held), its loss drop on (x, y) relative to the loss there."""
    import copy

    base = float(((model(x) - y) ** 2).mean())
    out = []
    for lr in lrs:
        m = copy.deepcopy(model)
        for name, w in m.named_parameters():
            if name in layers:
                w -= lr * grads[name] / grads[name].norm()
        out.append((base - float(((m(x) - y) ** 2).mean())) / base)
    return np.array(out)


def test_curves_equal_an_independent_recomputation(small):
    """Held out (the default): the relative decrease on the evaluation set of a step on the hidden
    layers (the last one for the exact smoothed gradient); in-sample: the notes' ΔL on the batch."""
    from lib.experiments.toy.population import EVAL_BATCH

    problem = toy_problem(8, 3)
    model = problem.student
    x, y = problem.batch(64, 0)
    xe, ye = problem.batch(16384, EVAL_BATCH)
    lrs = np.geomspace(1e-2, 1.0, 7)
    hidden = ["fc1.weight", "fc2.weight", "fc3.weight"]
    cdg = E.cdg(model, x, y, eps=0.05)
    np.testing.assert_allclose(small.curves["cdg"], _stepped_loss_drop(model, xe, ye, cdg, lrs, hidden), atol=1e-5)
    exact = E.smoothed_exact(model, x, y, 0.2)
    np.testing.assert_allclose(small.curves["exact"], _stepped_loss_drop(model, xe, ye, exact, lrs, ["fc3.weight"]),
                               atol=1e-5)
    ste = E.ste(model, x, y, variant="clipped")
    np.testing.assert_allclose(small.curves["ste"], _stepped_loss_drop(model, xe, ye, ste, lrs, hidden), atol=1e-5)
    assert math.isclose(small.cosines["ste_vs_cdg"]["all"], V.cosine(ste, cdg)["all"], abs_tol=1e-9)
    again = explore(**SMALL, seed=3, eps=0.05, sigma=0.2)  # same arguments → same numbers
    for k in ESTIMATORS:
        np.testing.assert_array_equal(again.curves[k], small.curves[k])
    notes = explore(**SMALL, seed=3, eps=0.05, sigma=0.2, held_out=False)
    np.testing.assert_allclose(notes.curves["cdg"], V.loss_decrease(model, x, y, cdg, lrs), rtol=0, atol=1e-6)
    np.testing.assert_allclose(notes.curves["exact"], V.loss_decrease(model, x, y, exact, lrs), rtol=0, atol=1e-6)


def test_pretrained_uses_the_cached_pretraining(tmp_path):
    kw = dict(SMALL, pretrain_steps=20, pretrain_batch_size=64, cache_dir=tmp_path, diagnose=False)
    first = explore(**kw, pretrained=True)
    assert first.pretrain["cached"] is False and first.pretrain["steps"] == 20
    assert len(list(tmp_path.glob("*.pt"))) == 1
    second = explore(**kw, pretrained=True)
    assert second.pretrain["cached"] is True
    np.testing.assert_array_equal(first.curves["cdg"], second.curves["cdg"])
    assert "nes_last2" not in second.curves and "nes_last2_vs_exact" not in second.cosines
    # The same student, loaded independently through lib.experiments.toy.run.
    problem = toy_problem(8, 0)
    p = ToyParams(num_dim=8, pretrained=True, pretrain_steps=20, pretrain_batch_size=64, pretrain_lr=3e-3,
                  pretrain_variant="clipped", cache_dir=str(tmp_path))
    student, _, hit = pretrain_student(problem, p, progress=False)
    assert hit
    from lib.experiments.toy.population import EVAL_BATCH

    x, y = problem.batch(16384, EVAL_BATCH)  # the base loss is the population loss on the evaluation set
    with torch.no_grad():
        assert math.isclose(second.base_loss, float(((student(x) - y) ** 2).mean()), rel_tol=1e-6)
    fresh = explore(**kw, pretrained=False)
    assert fresh.base_loss != second.base_loss


@pytest.mark.parametrize("name, value", [
    ("num_dim", 0), ("num_dim", 8.0), ("eps", -0.1), ("eps", float("nan")), ("sigma", 0), ("samples", 0),
    ("lr_min", 0.0), ("num_lr", 1), ("pretrained", "yes"), ("variant", "bogus"), ("batch_size", 0),
    ("seed", -1), ("pretrain_steps", 0), ("pretrain_variant", "nope"), ("cache_dir", ""), ("diagnose", 1),
    ("threads", 0), ("held_out", "no"), ("eval_rows", 0),
])
def test_bad_argument_raises_naming_it(name, value):
    with pytest.raises(ValueError, match=f"^{name}:"):
        explore(**{**SMALL, name: value})


def test_lr_range_must_be_increasing():
    with pytest.raises(ValueError, match="^lr_max:"):
        explore(**{**SMALL, "lr_min": 0.5, "lr_max": 0.5})
    with pytest.raises(ValueError, match="^variant:"):
        make_widgets(variant="bogus")


def test_explore_takes_its_parameter_class_or_its_fields():
    """The defaults are ExplorerParams' alone; a parameters object and keyword arguments agree."""
    from lib.experiments.explorer.params import ExplorerParams

    by_object = explore(ExplorerParams(**SMALL, diagnose=False))
    by_keywords = explore(**SMALL, diagnose=False)
    assert by_object.params == by_keywords.params and by_object.best == by_keywords.best
    with pytest.raises(TypeError, match="not both"):
        explore(ExplorerParams(), num_dim=8)
    with pytest.raises(ValueError, match="^colour:"):
        explore(colour=1)


def test_slider_values_as_numpy_scalars_are_accepted():
    from lib.experiments.explorer.compute import explorer_params

    p = explorer_params(num_dim=np.int64(8), eps=np.float64(0.05), pretrained=np.bool_(True))
    assert (p.num_dim, p.eps, p.pretrained) == (8, 0.05, True) and type(p.num_dim) is int


def test_threads_are_restored():
    before = torch.get_num_threads()
    explore(**SMALL, threads=1, diagnose=False)
    assert torch.get_num_threads() == before


def test_plot_has_two_panels_with_log_lr_axis(small):
    fig = plot_explorer(small)
    ax, bx = fig.axes
    assert ax.get_xscale() == "log"
    assert len(ax.get_lines()) >= len(ESTIMATORS)
    assert len(bx.patches) == 4
    assert figure_png(fig)[:8] == b"\x89PNG\r\n\x1a\n"


def test_widget_app_updates_on_a_slider_change(tmp_path):
    app = ExplorerApp(num_dim=8, samples=100, auto_update=False, batch_size=64, num_lr=5, cache_dir=tmp_path)
    c = app.controls
    assert set(c) == {"num_dim", "eps", "sigma", "samples", "lr_range", "pretrained", "variant", "held_out"}
    for name in ("num_dim", "eps", "sigma", "samples", "lr_range"):
        assert c[name].continuous_update is False, name
    assert app.calls == 0 and app.output.outputs == ()
    assert [v for _, v in c["eps"].options][:5] == [0.001, 0.003, 0.01, 0.03, 0.1]  # the report's grid
    assert c["lr_range"].options[0] == ("1e-05", 1e-5)  # plain numbers, not log10
    c["eps"].value = 0.03
    assert app.calls == 1 and app.last_error is None
    assert math.isclose(app.last_result.params.eps, 0.03)
    assert app.status.value.startswith("computed in ")
    (out,) = app.output.outputs
    assert out["output_type"] == "display_data" and "image/png" in out["data"]
    assert app.last_figure is not None and len(app.last_figure.axes) == 2
    c["variant"].value = "swishsign"
    c["lr_range"].value = (0.01, 1.0)
    assert app.calls == 3
    assert app.last_result.params.variant == "swishsign"
    assert math.isclose(app.last_result.params.lr_min, 0.01)
    c["lr_range"].value = (0.1, 0.1)  # empty range: shown, not raised
    assert app.calls == 4 and app.last_error.startswith("SchemaError: lr_max: expected lr_max > lr_min")
    assert app.output.outputs[0]["output_type"] == "stream"


def test_notebook_runs_under_papermill(tmp_path, monkeypatch):
    import nbformat
    import papermill

    nb_path = ROOT / "notebooks" / "explorer.ipynb"
    src = nbformat.read(nb_path, as_version=4)
    assert src.nbformat == 4 and src.metadata.kernelspec.name == "python3"
    assert all(not c.get("outputs") for c in src.cells if c.cell_type == "code")
    results = tmp_path / "results.json"
    papermill.execute_notebook(
        str(nb_path), str(tmp_path / "out.ipynb"), kernel_name="python3", cwd=str(ROOT), progress_bar=False,
        parameters=dict(num_dim=8, samples=40, batch_size=32, pretrained=True, pretrain_steps=10,
                        cache_dir=str(tmp_path / "cache"), results_path=str(results)))
    data = json.loads(results.read_text())
    assert data["experiment"] == "explorer" and data["params"]["num_dim"] == 8
    assert data["pretrain"]["steps"] == 10 and set(data["best"]) == set(ESTIMATORS)
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    kinds = [set(o.get("data", {})) for c in out.cells if c.cell_type == "code" for o in c.outputs]
    assert any("image/png" in k for k in kinds)
    assert any("application/vnd.jupyter.widget-view+json" in k for k in kinds)


def test_seconds_per_update_warm(tmp_path):
    """Prints the time of one app update (explore + figure + PNG) per num_dim; no assertion on time."""
    lines = []
    for d, pretrained in ((8, False), (16, False), (32, False), (32, True)):
        # Built with one update: the warm-up (pretraining cached, first-call costs paid).
        app = ExplorerApp(num_dim=d, pretrained=pretrained, cache_dir=tmp_path, pretrain_steps=50)
        t = time.perf_counter()
        app.update()
        lines.append(f"num_dim {d:2d} pretrained={pretrained!s:5}: {time.perf_counter() - t:.2f} s per update "
                     f"(explore {app.last_result.wall_s:.2f} s, figure + PNG the rest)")
        assert app.calls == 2 and app.last_error is None and app.last_result.params.num_dim == d
    print("\n" + "\n".join(lines))


def test_a_newer_change_cancels_a_queued_recompute(tmp_path):
    """In a running event loop (a kernel), three quick changes cost one recompute, with the last values."""
    import asyncio

    from lib.experiments.explorer import widgets

    app = ExplorerApp(num_dim=8, samples=100, auto_update=False, batch_size=64, num_lr=5, cache_dir=tmp_path)

    async def three_presses():
        for eps in (0.03, 0.3, 0.01):
            app.controls["eps"].value = eps
        assert app.calls == 0  # nothing computed while the controls move
        await asyncio.sleep(widgets.DEBOUNCE_S + 0.2)

    asyncio.run(three_presses())
    assert (app.calls, app.cancelled) == (1, 2)
    assert math.isclose(app.last_result.params.eps, 0.01) and app.last_error is None


def test_labels_are_rounded():
    result = explore(**{**SMALL, "sigma": 0.1333521432, "eps": 0.0316227766})
    assert result.labels["nes"].startswith("NES σ=0.133, S=") and result.labels["cdg"] == "CDG ε=0.0316"
