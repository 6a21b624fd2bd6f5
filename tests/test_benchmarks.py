"""The speed scripts of benchmarks/ still run against today's library, at toy sizes (a smoke test:
it checks that they finish and print their tables, not how fast anything is)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RUNS = [  # (script and tiny arguments, a line its output must have)
    (["estimators.py", "--num-dim", "8", "--batches", "64", "--naive-coords", "2", "--nes-samples", "20"],
     "NES/matmul"),
    (["convergence.py", "--num-dim", "8", "--batches", "100", "--precisions", "binary", "fp"], "CDG / STE"),
    (["nes.py", "--samples", "20", "--batch", "64"], "projected NES time of the full profile:"),
    (["gpu.py", "--device", "cpu", "--samples", "20", "--num-dims", "8", "--profiles", "full"],
     "projected NES time of the full profile on cpu"),
    (["thin_resnet.py", "--channels", "4", "--batch", "8", "--coords", "2", "--naive-coords", "1"], "summary:"),
    (["thin_resnet.py", "--channels", "4", "--batch", "8", "--coords", "1", "--profile"], "where the engine's time goes"),
    (["training.py", "--num-dims", "4", "--batches", "64", "--project"], "projected full profile"),
    (["nes_fusion.py", "--skip-compile-time"], "sign pass over"),
]


@pytest.mark.parametrize("args,expected", RUNS, ids=[" ".join(r[0][:1] + r[0][-1:]) for r in RUNS])
def test_a_benchmark_runs_and_prints_its_table(args, expected):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / args[0]), *args[1:], "--threads", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert expected in out.stdout, out.stdout[-2000:]
