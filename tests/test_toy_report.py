"""The toy notebook under papermill, the runner on the real params file, and the static report
(headings of the meeting notes, inline figures, manifest, a failed run shown without breaking
the others). Tiny parameters: the point is the plumbing, the numbers are tested elsewhere."""
from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from lib.experiments.toy import tables
from lib.report import manifest as report
from lib.pipeline import execute, runner
from lib.common.files import read_json
from lib.report.build import build_report
from lib.experiments.records import distinct, select
from lib.experiments.stats import finite
from lib.experiments.toy.diagnosis import diagnose

ROOT = Path(__file__).resolve().parents[1]
DATE = "2025-01-01"
TINY = {
    "num_dim": [4], "pretrained": [False, True], "eps_grid": [0.1, 0.3], "sigma_grid": [0.1, 0.5],
    "nes_samples": [20, 100], "ste_variants": ["clipped", "identity"], "num_lr": 4, "num_lr_refine": 2,
    "batch_size": 32, "num_init": 2, "num_batch": 1, "pretrain_steps": 5, "pretrain_batch_size": 64,
    "eval_rows": 4096, "large_batch_sizes": [128], "sigma_search": "grid",  # the notes' plots need every σ
}


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    """A real grid (2 ok runs), then a second invocation whose run fails (its pretraining diverges)."""
    tmp = tmp_path_factory.mktemp("toy")
    (tmp / "params").mkdir()
    shutil.copy(ROOT / "params" / "toy.yaml", tmp / "params" / "toy.yaml")
    tiny = dict(TINY, cache_dir=str(tmp / "cache"))
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    common = ["--params-dir", str(tmp / "params"), "--reports-dir", str(tmp / "reports"), "--date", DATE,
              "--only", "toy", "--jobs", "1"]
    assert runner.main(common + ["--params", str(tmp / "tiny.yaml")]) == 0
    # a run that fails at run time: pretraining diverges (validation cannot know), the loss is inf
    broken = dict(tiny, num_dim=[6], pretrained=[True], pretrain_lr=1e300)  # float64: inf only past 1e308
    (tmp / "broken.yaml").write_text(yaml.safe_dump(broken))
    assert runner.main(common + ["--params", str(tmp / "broken.yaml")]) == 1
    return tmp / "reports" / DATE


def test_toy_runs_write_complete_results(report_dir):
    for pre in ("false", "true"):
        r = read_json(report_dir / "results" / f"toy__pretrained-{pre}__num_dim-4.json")
        assert r["num_dim"] == 4 and r["pretrained"] == (pre == "true")
        assert distinct(r["curves"], "eps", estimator="cdg", layers="all") == [0.1, 0.3]
        assert distinct(r["curves"], "samples", estimator="nes", layers="all") == [20, 100]
        assert distinct(r["curves"], "sigma", estimator="nes", layers="all") == [0.1, 0.5]
        assert distinct(r["curves"], "variant", estimator="ste") == ["clipped", "identity"]
        assert len(select(r["curves"], estimator="nes", layers="last_two")) == 4  # the diagnosis
        for stats in select(r["curves"], estimator="cdg", layers="all"):
            assert len(stats["mean"]) == len(r["lrs"]) and all(math.isfinite(v) for v in stats["mean"])
            assert stats["best"] == max(stats["mean"]) and stats["n"] == 2  # 2 initialisations × 1 batch
            # the interval of the best: t_{0.975, 1} · s / √2 around it, from the two values there
            lo, hi = stats["interval"]
            a, b = stats["at_best"]
            assert (a + b) / 2 == pytest.approx(stats["best"])
            assert hi - stats["best"] == pytest.approx(12.7062047 * abs(a - b) / math.sqrt(2) / math.sqrt(2), rel=1e-6)
        for c in r["cosines"]:
            # n counts the finite values (a cosine with an all-zero estimate is NaN, stored as null)
            assert c["n"] == len(finite(c["values"])) and (c["interval"] is None) == (c["n"] < 2)
        assert r["parameters"]["seed"] == 0 and r["versions"]["torch"] and r["wall_s"] > 0
        assert r["machine"]["cpu"] and r["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        assert len(r["pretrain"]) == (2 if pre == "true" else 0)  # one per initialisation
        assert all(info["dtype"] == "float64" for info in r["pretrain"])  # docs/design.md §3
        assert [e["sigma"] for e in r["diagnosis"]["per_sigma"]] == [0.1, 0.5]
    executed = (report_dir / "runs" / "toy__pretrained-false__num_dim-4.ipynb").read_text()
    assert "image/png" in executed  # the notebook shows its figures


def test_report_has_the_notes_headings_figures_and_manifest(report_dir):
    html = (build_report(report_dir)).read_text(encoding="utf-8")
    headings = [re.sub(r"<[^>]+>|&para;", "", h) for h in re.findall(r"<h[1-6][^>]*>(.*?)</h[1-6]>", html, re.S)]
    text = "\n".join(h.replace("&amp;", "&") for h in headings)
    for expected in ["搜索超参(epsilon for CDG & sigma for NES) - 1", "搜索超参(epsilon for CDG & sigma for NES) - 2",
                     "Hyper-parameter search (epsilon for CDG & sigma for NES) - 1", "BinaryDuo设置实验后续",
                     "实验设置", "困难", "问题", "CDG lr-loss decrease plot", "NES lr-loss decrease plot",
                     "best loss decrease - num_dim plot", "Run manifest",
                     "Cosine with CDG (beyond the notes)"]:
        assert expected in text, expected
    assert "NES grad似乎不能指向loss下降的方向" in html
    assert "num_dim) ~ N(0, 1), in float64." in html  # the pretraining's precision, from the results
    assert "Dim = 4" in html and "Sample = 20" in html and "Sample = 100" in html  # the notes' sub-items, as panel labels
    # per toy section one figure each: held out → num_dim, CDG, NES, best → num_dim, STE; the
    # pretrained one adds the diagnosis and the pretraining curves
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', html)) == 12
    assert text.count("Held-out loss decrease on the hidden layers (beyond the notes)") == 2
    assert text.count("Finding σ at a fraction of the cost (beyond the notes)") == 2  # the σ search, both sections
    assert not re.search(r'(src|href)="https?://', html)
    # unique heading ids, every in-page link resolves, the contents before the first section
    ids = re.findall(r'\sid="([^"]*)"', html)
    assert len(ids) == len(set(ids))
    assert all(link in set(ids) for link in re.findall(r'href="#([^"]*)"', html))
    assert html.index('<nav class="toc">') < html.index('<h2 id="follow-up-of-the-binaryduo-setting-experiments"')
    # it opens with its findings, each linking to its evidence in the report
    findings = html[html.index('<h2 id="findings"'):html.index('<nav class="toc">')]
    for claim in ("Difficulty", "STE against CDG", "Question", "NES against CDG", "σ search"):
        assert f"<strong>{claim}</strong>" in findings, claim
    held_out = "held-out-loss-decrease-on-the-hidden-layers-beyond-the-notes"
    assert f'href="#hyper-parameter-search-epsilon-for-cdg-sigma-for-nes-1--{held_out}"' in findings
    assert f'href="#hyper-parameter-search-epsilon-for-cdg-sigma-for-nes-2--{held_out}"' in findings
    assert 'href="#hyper-parameter-search-epsilon-for-cdg-sigma-for-nes-2--question"' in findings
    assert "n = 2 initialisations" in findings and "Holm over" in findings
    assert "toy__pretrained-true__num_dim-6" in html and "failed" in html
    assert re.search(r"toy__pretrained-true__num_dim-6.{0,400}FloatingPointError: loss is not finite", html, re.S)
    # two invocations computed something: the grid, then the failing run
    # the seed column shows the notebook's default seed, which the results record
    # (after the wall time of the last attempt, the compute time and the CPU time of all attempts)
    assert re.search(r"toy__pretrained-true__num_dim-4</td>\s*<td[^>]*>ok</td>\s*<td[^>]*>[\d.]+ s</td>"
                     r"\s*<td[^>]*>[\d.]+ s</td>\s*<td[^>]*>[\d.]+ s</td>\s*<td[^>]*>0</td>", html)
    assert re.search(r"total compute time \d+ s \(CPU time \d+ s in the 2 runs that record it\)", html)
    machine = read_json(report_dir / "results" / "toy__pretrained-true__num_dim-4.json")["machine"]
    assert f"CPUs: {machine['cpu']} ({machine['cpu_capability']}): 2 runs." in html  # the failed one wrote none
    assert "3 runs, 1 failed" in html and "Computed by 2 invocation(s) of the runner (0 interrupted, 0 ended" in html


def test_the_manifest_names_each_cpu_and_warns_when_runs_mix_them():
    from lib.report.manifest import _machines_sentence

    xeon, epyc = {"cpu": "Xeon", "cpu_capability": "AVX512"}, {"cpu": "EPYC", "cpu_capability": "AVX2"}
    runs = [{"results": {"machine": m}} for m in (xeon, epyc, xeon)] + [{"results": None}, {"results": {}}]
    assert _machines_sentence(runs) == (" CPUs: Xeon (AVX512): 2 runs; EPYC (AVX2): 1 run. Float32 sums may "
                                        "differ in their last digits between them.")
    assert _machines_sentence(runs[:1]) == " CPUs: Xeon (AVX512): 1 run."
    assert _machines_sentence(runs[3:]) == ""


def test_invocation_summary_counts_the_invocations_that_had_work():
    """Killed without warning (heartbeat wall time, no final record), interrupted, finished, and a
    rerun that found everything finished (left out)."""
    inv = [
        {"planned": ["a", "b"], "cached": 0, "ran": ["a", "b"], "interrupted": False, "wall_s": 100.0},
        {"planned": ["a", "b", "c"], "cached": 2, "ran": [], "interrupted": False, "wall_s": 60.0},
        {"planned": ["a", "b", "c", "d"], "cached": 2, "ran": ["c"], "interrupted": True, "wall_s": 30.0},
        {"planned": ["a", "b", "c", "d"], "cached": 4, "ran": [], "interrupted": False, "wall_s": 2.0},
    ]
    text = report.invocation_summary({"invocations": inv})
    assert text.startswith("Computed by 3 invocation(s) of the runner (1 interrupted, 1 ended without a final record")
    assert "190 s of wall time" in text  # 100 + 60 + 30, the all-cached rerun left out
    assert report.invocation_summary({"invocations": inv[3:]}) == ""


def test_failed_run_is_recorded_and_others_kept(report_dir):
    manifest = read_json(report_dir / "manifest.json")
    runs = manifest["runs"]
    assert runs["toy__pretrained-true__num_dim-6"]["status"] == "failed"
    assert runs["toy__pretrained-true__num_dim-6"]["error"]
    assert runs["toy__pretrained-true__num_dim-4"]["status"] == "ok"


def test_real_params_file_rejects_bad_keys_before_compute(tmp_path, capsys):
    (tmp_path / "params").mkdir()
    text = (ROOT / "params" / "toy.yaml").read_text()
    (tmp_path / "params" / "toy.yaml").write_text(text.replace("    batch_size: 64", "    batch_sise: 64", 1))
    code = runner.main(["--params-dir", str(tmp_path / "params"), "--reports-dir", str(tmp_path / "r"), "--only", "toy"])
    err = capsys.readouterr().err
    assert code == 2 and "toy.yaml" in err and "batch_sise" in err
    assert not (tmp_path / "r").exists()
    (tmp_path / "params" / "toy.yaml").write_text(text.replace("sigma_grid: [0.03, 0.1, 0.3]", "sigma_grid: [0.03, -0.1]", 1))
    code = runner.main(["--params-dir", str(tmp_path / "params"), "--reports-dir", str(tmp_path / "r"), "--only", "toy"])
    err = capsys.readouterr().err
    assert code == 2 and "sigma_grid" in err
    # values that are each fine but inconsistent together: refused naming the file that set them
    (tmp_path / "params" / "toy.yaml").write_text(text)
    (tmp_path / "over.yaml").write_text("lr_min: 100\n")
    code = runner.main(["--params-dir", str(tmp_path / "params"), "--reports-dir", str(tmp_path / "r"), "--only", "toy",
                        "--params", str(tmp_path / "over.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "over.yaml: lr_min: expected lr_min < lr_max, got 100 and 10 (grid point pretrained=false, num_dim=8)" in err
    assert not (tmp_path / "r").exists()


def _synthetic(exact, cos_lo, cos_hi, cdg2=(1.0, None), n=9):
    """A results dict with hand-made numbers for one σ: ``exact`` and ``cdg2`` are (best loss
    decrease, 95% interval) on the last two layers, ``cos_lo`` / ``cos_hi`` (cosine, interval) of
    NES with 500 / 50000 samples against the exact smoothed gradient."""
    exact_key = {"estimator": "smoothed_exact", "layers": "last_two", "sigma": 0.3}

    def nes(layers, samples):
        return {"estimator": "nes", "layers": layers, "sigma": 0.3, "samples": samples}

    def cos(samples, value):
        return {"estimate": nes("last_two", samples), "reference": exact_key, "layer": "all",
                "mean": value[0], "interval": value[1]}

    return {"num_dim": 16, "pretrained": True,
            "curves": [{"estimator": "cdg", "layers": "last_two", "eps": 0.1, "best": cdg2[0], "interval": cdg2[1],
                        "n": n},
                       {"estimator": "cdg", "layers": "all", "eps": 0.1, "best": 2.0},
                       {**exact_key, "best": exact[0], "interval": exact[1]},
                       {**nes("all", 500), "best": 0.1}, {**nes("all", 50000), "best": 0.2},
                       {**nes("last_two", 500), "best": 0.05}, {**nes("last_two", 50000), "best": 0.15}],
            "cosines": [cos(500, cos_lo), cos(50000, cos_hi),
                        {"estimate": exact_key, "reference": {"estimator": "cdg", "layers": "all", "eps": 0.1},
                         "layer": "all", "mean": 0.4}]}


def test_in_sample_diagnosis_numbers_for_the_figure():
    """The figure's numbers are read from the run's records as they are; no verdict is drawn."""
    r = _synthetic((0.3, [0.2, 0.4]), (0.3, [0.2, 0.4]), (0.95, [0.9, 1.0]), (1.0, [0.9, 1.1]))
    d = diagnose(r)
    (per,) = d["per_sigma"]
    assert per["exact_best"] == 0.3 and per["exact_interval"] == [0.2, 0.4] and per["cos_exact_cdg"] == 0.4
    assert [(b["samples"], b["cos_nes_exact"], b["nes_last2_best"]) for b in per["by_samples"]] == [
        (500, 0.3, 0.05), (50000, 0.95, 0.15)]
    assert d["cdg_last2"] == {"best": 1.0, "interval": [0.9, 1.1]} and d["n"] == 9 and d["cdg_best"] == 2.0
    assert d["best_sigma"] == [{"samples": 500, "sigma": 0.3}, {"samples": 50000, "sigma": 0.3}]
    assert "cause" not in per and "rules" not in d


def test_summary_notebook_reads_results_files(report_dir, tmp_path):
    import papermill

    out = tmp_path / "summary.json"
    with execute.kernel_environment(execute.threads_per_job(1)):  # the kernel environment the runner gives its runs
        papermill.execute_notebook(str(ROOT / "notebooks" / "summary.ipynb"), str(tmp_path / "summary.ipynb"),
                                   parameters={"results_dir": str(report_dir / "results"), "results_path": str(out)},
                                   kernel_name="python3", cwd=str(ROOT), progress_bar=False)
    summary = read_json(out)
    ok = read_json(report_dir / "results" / "toy__pretrained-false__num_dim-4.json")
    best_cdg = max(v["best"] for v in select(ok["curves"], estimator="cdg", layers="all"))
    assert summary["best"]["no pretraining"]["CDG"]["4"]["best"] == pytest.approx(best_cdg)
    assert set(summary["best"]) == {"no pretraining", "pretrained"}
    assert "image/png" in (tmp_path / "summary.ipynb").read_text()


def test_summary_notebook_from_notebooks_folder_finds_the_newest_report(report_dir, tmp_path):
    """Opened where JupyterLab opens it (cwd notebooks/), with no folder given: the newest dated
    folder under the repository's reports/."""
    import papermill

    newest = ROOT / "reports" / "9999-12-31"  # newer than any real report folder; removed below
    out = tmp_path / "summary.json"
    try:
        shutil.copytree(report_dir / "results", newest / "results")
        with execute.kernel_environment(execute.threads_per_job(1)):
            papermill.execute_notebook(str(ROOT / "notebooks" / "summary.ipynb"), str(tmp_path / "summary.ipynb"),
                                       parameters={"results_path": str(out)}, kernel_name="python3",
                                       cwd=str(ROOT / "notebooks"), progress_bar=False)
        assert read_json(out)["results_dir"] == str(newest / "results")
    finally:
        shutil.rmtree(newest, ignore_errors=True)


def test_newest_results_is_a_report_or_a_hand_run_whichever_is_newer(tmp_path):
    import os

    from lib.report.build import newest_results

    reports = tmp_path / "reports"
    assert newest_results(reports, "toy") is None
    older, newer = reports / "2026-01-01" / "results", reports / "2026-02-01" / "results"
    for folder in (older, newer):
        folder.mkdir(parents=True)
        (folder / "toy__a.json").write_text('{"experiment": "toy"}')
    (newer / "thin.json").write_text('{"experiment": "thin_resnet"}')
    assert newest_results(reports, "toy") == newer and newest_results(reports, "convergence") is None
    hand = reports / "notebooks"
    hand.mkdir()
    (hand / "toy.json").write_text('{"experiment": "toy"}')
    (hand / "broken.json").write_text("{")  # a hand run cut short: skipped
    os.utime(newer / "toy__a.json", (1, 1))  # the hand run is newer than the report
    assert newest_results(reports, "toy") == hand
    os.utime(hand / "toy.json", (0, 0))
    assert newest_results(reports, "toy") == newer


def test_summary_notebook_without_any_results_says_what_to_run(tmp_path):
    import papermill

    out = tmp_path / "summary.ipynb"
    with execute.kernel_environment(execute.threads_per_job(1)):
        papermill.execute_notebook(str(ROOT / "notebooks" / "summary.ipynb"), str(out),
                                   parameters={"reports": str(tmp_path / "empty"),
                                               "results_path": str(tmp_path / "summary.json")},
                                   kernel_name="python3", cwd=str(ROOT / "notebooks"), progress_bar=False)
    text = out.read_text()
    assert "No toy results yet: run ./run_all.sh" in text and "Traceback" not in text
    assert read_json(tmp_path / "summary.json")["best"] == {}


def test_best_by_dim_marks_grid_edges():
    """Hand-made curves: † for a best ε/σ at the edge of its grid, ‡ for a best lr at the top."""
    def curve(best, best_lr, estimator, **hyper):
        return {"estimator": estimator, "layers": "all", **hyper, "best": best, "best_lr": best_lr}

    run = {"num_dim": 8, "lrs": [0.1, 1.0, 10.0],
           "curves": [curve(0.5, 1.0, "cdg", eps=0.1), curve(0.7, 10.0, "cdg", eps=0.3),
                      curve(0.1, 1.0, "nes", sigma=0.03, samples=100), curve(0.2, 1.0, "nes", sigma=0.1, samples=100),
                      curve(0.15, 10.0, "nes", sigma=0.3, samples=100),
                      curve(0.3, 10.0, "ste", variant="identity"), curve(0.4, 0.1, "ste", variant="clipped")]}
    best = tables.best_by_dim([run])
    assert best["CDG"][8][:2] == (0.7, "ε=0.3 † ‡")
    assert best["NES 100"][8][:2] == (0.2, "σ=0.1")
    assert best["STE identity"][8][:2] == (0.3, "lr=10 ‡") and best["STE clipped"][8][:2] == (0.4, "lr=0.1")
    from lib.experiments.toy.section import best_table_cells

    table_md = best_table_cells([run])[1].source  # the highest of the column, and only it, in bold
    assert "**0.7** (ε=0.3 † ‡)" in table_md and table_md.count("**") == 2


def test_cosine_with_cdg_table():
    """Hand-made cosines: STE cells list all weights then layers front to back; NES its best σ."""
    reference = {"estimator": "cdg", "layers": "all", "eps": 0.1}

    def cos(variant, all_, fc1, fc2, readout):
        of = {"estimator": "ste", "layers": "all", "variant": variant}
        return [{"estimate": of, "reference": reference, "layer": layer, "mean": value}
                for layer, value in (("all", all_), ("readout.weight", readout), ("fc2.weight", fc2),
                                     ("fc1.weight", fc1))]

    def nes(sigma, best, cosine):
        key = {"estimator": "nes", "layers": "all", "sigma": sigma, "samples": 100}
        return {**key, "best": best}, {"estimate": key, "reference": reference, "layer": "all", "mean": cosine}

    (n1, c1), (n3, c3) = nes(0.1, 0.2, 0.9), nes(0.3, 0.5, 0.4)
    run = {"num_dim": 4, "parameters": {"reference_eps": 0.1},
           "curves": [{"estimator": "ste", "layers": "all", "variant": "clipped"},
                      {"estimator": "ste", "layers": "all", "variant": "identity"}, n1, n3],
           "cosines": cos("clipped", 0.5, 0.25, 0.125, 1.0) + cos("identity", 0.3, None, -0.5, 0.99) + [c1, c3]}
    assert tables.ste_cosine_layers(run) == ["fc1.weight", "fc2.weight", "readout.weight"]
    table = tables.cosine_with_cdg([run])
    assert {k: {d: c.text for d, c in by.items()} for k, by in table.items()} == {
        "STE clipped": {4: "0.5 (0.25 / 0.125 / 1)"}, "STE identity": {4: "0.3 (– / -0.5 / 0.99)"},
        "NES 100": {4: "0.4 (σ=0.3)"}}
    assert table["STE clipped"][4].mean == 0.5 and table["NES 100"][4].mean == 0.4


def test_runs_go_to_their_section_and_one_precision_pair_per_section():
    from lib.experiments.toy.findings import is_pretrained, one_setting, setting_differences

    # a params file may leave pretrained out (the schema's default, false); results decide when present
    assert is_pretrained({"results": None, "entry": {"parameters": {"num_dim": 8}}}) is False
    assert is_pretrained({"results": None, "entry": {"parameters": {"pretrained": True}}}) is True
    assert is_pretrained({"results": {"pretrained": True}, "entry": {"parameters": {}}}) is True

    def run(d, act, teacher="binary"):
        return {"num_dim": d, "parameters": {"act": act, "teacher_act": teacher}}

    runs = [run(8, "binary"), run(8, "ternary"), run(16, "binary"), run(16, "ternary")]
    assert one_setting(runs) == [runs[0], runs[2]]  # the notes' binary / binary pair
    assert one_setting(runs[1::2]) == runs[1::2]
    assert one_setting([run(8, "fp"), run(8, "2bit")]) == [run(8, "2bit")]  # else the first pair, sorted
    # any other parameter splits the runs too (runs with other NES sample counts cannot share a table)
    many = [{"num_dim": d, "parameters": {"act": "binary", "teacher_act": "binary", "nes_samples": s, "device": dev}}
            for d, s, dev in ((4, [20], "cpu"), (6, [20], "cuda"), (8, [20000], "cpu"))]
    assert one_setting(many) == many[:2]  # the largest group; where a run ran is no difference
    assert setting_differences(many[0], many[2:]) == ["nes_samples"]


def test_noise_ceiling_beside_the_ste_cosines(report_dir):
    """The toy records CDG's noise ceiling at its own batch size: CDG on an independent batch
    against the reference CDG, recomputed here for the first initialisation × batch."""
    import torch

    from lib.core.estimators import cdg
    from lib.core.evaluate import cosine
    from lib.experiments.records import only
    from lib.experiments.toy.run import INDEPENDENT_BATCH, noise_ceiling
    from lib.training.gaussian import toy_problem

    r = read_json(report_dir / "results" / "toy__pretrained-false__num_dim-4.json")
    rec = only(r["cosines"], estimate=noise_ceiling(0.1), layer="all")
    assert rec["n"] == 2 and rec["reference"] == {"estimator": "cdg", "layers": "all", "eps": 0.1}
    problem = toy_problem(4, 0)
    torch.set_num_threads(1)
    x, y = problem.batch(32, 0)
    xb, yb = problem.batch(32, INDEPENDENT_BATCH)
    expected = cosine(cdg(problem.student, xb, yb, eps=0.1), cdg(problem.student, x, y, eps=0.1))["all"]
    assert rec["values"][0] == pytest.approx(expected, abs=1e-6)
    html = (report_dir / "index.html").read_text(encoding="utf-8") if (report_dir / "index.html").exists() else \
        build_report(report_dir).read_text(encoding="utf-8")
    assert "CDG noise ceiling" in html


_COUNT_IMAGES = ('<script>window.addEventListener("load", () => {const imgs = [...document.images]; '
                 'const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length; '
                 'document.title = `images ${imgs.length} broken ${bad}`;});</script>')


def _images_in_browser(browser: str, html: str, tmp_path: Path) -> tuple[int, int]:
    """(images, broken images) of a page rendered headless: a copy with a counting script."""
    page = tmp_path / "page.html"
    page.write_text(html.replace("</body>", _COUNT_IMAGES + "</body>"), encoding="utf-8")
    out = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          "--virtual-time-budget=5000", page.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r"<title>images (\d+) broken (\d+)</title>", out.stdout)
    assert found, out.stderr[-2000:]
    return int(found[1]), int(found[2])


def test_report_images_load_in_a_headless_browser(report_dir, tmp_path):
    """Every figure of the report decodes in a browser (skipped without Chromium; CI has none)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium on this machine")
    html = build_report(report_dir).read_text(encoding="utf-8")
    images, broken = _images_in_browser(browser, html, tmp_path)
    assert images == 12 and broken == 0
    # the check itself can fail: a page with an undecodable image
    bad = html.replace("</body>", '<img src="data:image/png;base64,AAAA"></body>')
    assert _images_in_browser(browser, bad, tmp_path) == (13, 1)
