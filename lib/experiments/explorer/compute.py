"""Live explorer of the toy: one small toy problem, every estimator, one lr sweep.

:func:`explore` is the pure update function behind the notebook's sliders. For one
initialisation ``seed`` of the toy (teacher and student :class:`~lib.core.models.BinaryMLP`, docs/design.md §3),
optionally pretrained (cheap, cached), and one gradient batch ``(x, y)`` of ``batch_size`` rows
``x ~ N(0, I_num_dim)`` it computes

* ``cdg``   the central CDG ``g_i = (L(w + ε e_i) − L(w − ε e_i)) / 2ε`` on every weight;
* ``nes``   antithetic NES ``g = 1/(2σS) Σ_s (L(w + σu_s) − L(w − σu_s)) u_s`` over all layers
  jointly (``2S`` loss evaluations);
* ``ste``   back-propagation with the surrogate derivative of the STE ``variant``;
* ``exact`` the exact gradient of the Gaussian-smoothed loss ``L_σ`` on the last hidden layer and
  the readout (:func:`lib.core.estimators.smoothed_exact`), the infinite-sample limit of NES there;
* ``nes_last2`` NES with the same ``σ, S`` restricted to those two layers (its cosine with
  ``exact`` measures the NES variance alone),

and for each a loss-decrease curve for ``num_lr`` learning rates log-spaced on ``[lr_min, lr_max]``,
with ``ĝ_l = g_l / ‖g_l‖`` per layer; the best decrease ``max_lr`` of it with its lr; and cosine
similarities ``a·b / (‖a‖‖b‖)`` with CDG. With ``held_out`` (the default) the curve is the report's
population metric (:mod:`lib.experiments.toy.population`): the relative decrease
``[L_E(w) − L_E(w − lr ĝ)] / L_E(w)`` on an evaluation set of ``eval_rows`` rows the gradient never
saw, of a step on the hidden layers with the readout held (on the last hidden layer for ``exact``
and ``nes_last2``); otherwise the notes' in-sample ``ΔL(lr) = L(w) − L(w − lr ĝ)`` on the
gradient's batch, every layer stepped.

:func:`lib.experiments.explorer.figure.plot_explorer` draws a result;
:class:`lib.experiments.explorer.widgets.ExplorerApp` wires ipywidgets controls to :func:`explore`
and redraws into an ``Output`` widget.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from lib.core import estimators as E
from lib.core import evaluate as V
from lib.experiments.schema import build
from lib.experiments.toy import population as P
from lib.experiments.toy.params import LAST_TWO
from lib.experiments.toy.run import pretrain_student
from lib.training.gaussian import toy_problem

from .params import ExplorerParams

NUM_DIMS = (8, 16, 32, 64)
SAMPLES = (100, 500, 2000, 5000)
ESTIMATORS = ("cdg", "nes", "ste", "exact", "nes_last2")


@dataclass
class ExplorerResult:
    """What one :func:`explore` call computed (arrays are float64; ``nan`` = undefined).

    ``curves[k][i] = ΔL(lrs[i])`` of estimator ``k`` (see the module docstring);
    ``best[k] = (max_i ΔL, lr at the max)``; ``cosines[name][param or "all"]`` with
    ``name`` in ``nes_vs_cdg``, ``ste_vs_cdg``, ``exact_vs_cdg`` (last two layers),
    ``nes_last2_vs_exact``; ``labels[k]`` the legend text; ``timings[k]`` seconds spent on
    estimator ``k`` (estimate + curve); ``wall_s`` the whole call.
    """

    params: ExplorerParams
    lrs: np.ndarray
    curves: dict[str, np.ndarray]
    best: dict[str, tuple[float, float]]
    cosines: dict[str, dict[str, float]]
    labels: dict[str, str]
    base_loss: float
    loss_evaluations: dict[str, int]
    pretrain: dict[str, Any] | None
    timings: dict[str, float] = field(default_factory=dict)
    wall_s: float = float("nan")

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (arrays as lists; pass through :func:`lib.common.files.to_jsonable` for NaN)."""
        out = asdict(self)
        out["lrs"] = self.lrs.tolist()
        out["curves"] = {k: v.tolist() for k, v in self.curves.items()}
        out["best"] = {k: {"decrease": b, "lr": lr} for k, (b, lr) in self.best.items()}
        return out


# ----------------------------------------------------------------------------- arguments

def explorer_params(**arguments: Any) -> ExplorerParams:
    """:class:`ExplorerParams` from :func:`explore`'s arguments, numpy scalars (slider values) and
    paths taken as plain values; ``ValueError`` (:class:`~lib.experiments.schema.SchemaError`)
    naming the first invalid one."""
    plain = {k: (v.item() if isinstance(v, np.generic) else os.fspath(v) if isinstance(v, os.PathLike) else v)
             for k, v in arguments.items()}
    return build(ExplorerParams, plain)


# ----------------------------------------------------------------------------- the update function

def explore_lrs(lr_min: float, lr_max: float, num_lr: int) -> np.ndarray:
    """``lr_i = lr_min · (lr_max / lr_min)^(i / (num_lr − 1))``, ``i = 0 … num_lr − 1``."""
    return np.geomspace(lr_min, lr_max, num_lr)


def explore(params: ExplorerParams | None = None, *, threads: int | None = 1, **arguments: Any) -> ExplorerResult:
    """Every estimator and its lr → loss-decrease curve on one toy problem (module docstring).

    ``params`` is an :class:`ExplorerParams`; or give its fields as keyword arguments
    (``explore(num_dim=32, eps=0.03)``), the others taking the class's defaults. The problem is
    ``lib.training.gaussian.toy_problem(num_dim, seed)``; with ``pretrained`` its student is
    first trained by :func:`lib.experiments.toy.run.pretrain_student` (STE ``pretrain_variant`` + Adam,
    ``pretrain_steps`` fresh batches of ``pretrain_batch_size`` rows, learning rate
    ``pretrain_lr``; cached in ``cache_dir``, so only the first call pays). The gradient batch is
    ``problem.batch(batch_size, 0)``; NES draws its directions from a generator seeded with
    ``seed``. Same arguments → same numbers. Invalid arguments raise ``ValueError`` naming the
    argument before any compute. ``diagnose=False`` skips ``nes_last2`` (a third of the NES cost).
    ``threads``: torch intra-op threads during the call, restored afterwards (``None``: unchanged);
    the tensors are small, and one thread is fastest on a shared machine.
    """
    if params is not None and arguments:
        raise TypeError("explore: give an ExplorerParams or its fields as keyword arguments, not both")
    p = params if params is not None else explorer_params(**arguments)
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"threads: expected None or a positive integer, got {threads!r}")
    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _explore(p)
    finally:
        torch.set_num_threads(saved)


def _curve(key: str, grads: dict[str, torch.Tensor], scorer: P.Scorer | None, model: torch.nn.Module,
           x: torch.Tensor, y: torch.Tensor, lrs: np.ndarray) -> np.ndarray:
    """The curve of estimate ``key``: held out on the hidden layers (the last one for the two-layer
    estimates) when there is a ``scorer``, else the notes' in-sample ΔL with every layer stepped."""
    if scorer is None:
        return V.loss_decrease(model, x, y, grads, lrs, "layer")
    return scorer.curve(grads, scorer.hidden[-1] if key in ("exact", "nes_last2") else P.HIDDEN)


def _explore(p: ExplorerParams) -> ExplorerResult:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    problem = toy_problem(p.num_dim, p.seed)
    pretrain = None
    if p.pretrained:
        student, curve, hit = pretrain_student(problem, p.pretraining(), progress=False)
        problem.student = student
        tail = curve[-max(1, len(curve) // 10):]
        pretrain = {"cached": bool(hit), "first_loss": float(curve[0]), "final_loss": float(np.mean(tail)),
                    "steps": len(curve)}
        timings["pretrain"] = time.perf_counter() - t0
    model = problem.student
    x, y = problem.batch(p.batch_size, 0)
    lrs = explore_lrs(p.lr_min, p.lr_max, p.num_lr)
    scorer = P.Scorer(model, *problem.batch(p.eval_rows, P.EVAL_BATCH), lrs, "layer") if p.held_out else None
    with torch.no_grad():
        base_loss = scorer.base_loss if scorer else float(((model(x) - y) ** 2).mean())

    grads: dict[str, dict[str, torch.Tensor]] = {}
    curves: dict[str, np.ndarray] = {}

    def run(key: str, fn) -> None:
        t = time.perf_counter()
        grads[key] = fn()
        curves[key] = _curve(key, grads[key], scorer, model, x, y, lrs)
        timings[key] = time.perf_counter() - t

    run("cdg", lambda: E.cdg(model, x, y, eps=p.eps))
    run("nes", lambda: E.nes(model, x, y, sigma=p.sigma, samples=p.samples, seed=p.seed))
    run("ste", lambda: E.ste(model, x, y, variant=p.variant))
    run("exact", lambda: E.smoothed_exact(model, x, y, p.sigma))
    if p.diagnose:
        run("nes_last2", lambda: E.nes(model, x, y, sigma=p.sigma, samples=p.samples, layers=list(LAST_TWO),
                                       seed=p.seed))
    cosines = {
        "nes_vs_cdg": V.cosine(grads["nes"], grads["cdg"]),
        "ste_vs_cdg": V.cosine(grads["ste"], grads["cdg"]),
        "exact_vs_cdg": V.cosine(grads["exact"], grads["cdg"]),
    }
    if p.diagnose:
        cosines["nes_last2_vs_exact"] = V.cosine(grads["nes_last2"], grads["exact"])
    n_weights = sum(w.numel() for w in model.parameters())
    labels = {
        "cdg": f"CDG ε={p.eps:.3g}",
        "nes": f"NES σ={p.sigma:.3g}, S={p.samples}",
        "ste": f"STE {p.variant}",
        "exact": f"exact smoothed σ={p.sigma:.3g} (last 2 layers{'; step on the last hidden' if p.held_out else ''})",
        "nes_last2": f"NES σ={p.sigma:.3g}, S={p.samples} (last 2 layers{'; step on the last hidden' if p.held_out else ''})",
    }
    labels = {k: v for k, v in labels.items() if k in curves}
    return ExplorerResult(
        params=p, lrs=lrs, curves=curves,
        best={k: V.best_decrease(lrs, c) for k, c in curves.items()},
        cosines=cosines, labels=labels, base_loss=base_loss,
        loss_evaluations={"cdg": 2 * n_weights, "nes": 2 * p.samples,
                          **({"nes_last2": 2 * p.samples} if p.diagnose else {})},
        pretrain=pretrain, timings=timings, wall_s=time.perf_counter() - t0)
