"""The toy experiments of the meeting notes (docs/design.md §3): hyper-parameter search for CDG (ε) and
NES (σ, samples), with and without pretraining, plus the STE variants and the NES diagnosis.

One call of :func:`run_toy` is one grid point (one ``num_dim``, pretrained or not). For each
initialisation × gradient batch it computes every estimate once and its lr → loss-decrease
curve ``ΔL(lr) = L(w) − L(w − lr ĝ)`` on the same batch (or a held-out one); curves are then
averaged over the repetitions. The **NES diagnosis** restricts NES to the last hidden layer and
the readout, where :func:`lib.core.estimators.smoothed_exact` is the infinite-sample limit: low
cosine with it that rises with the sample count means *variance*; an exact smoothed gradient
that itself fails to decrease the loss means *smoothing bias* (σ too large).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from typing import Any, Callable, Sequence

import numpy as np
import torch

from lib.common.files import to_jsonable
from lib.common.paths import repo_path
from lib.common.versions import versions
from lib.core import estimators as E
from lib.core import evaluate as V
from lib.core.device import resolve_device
from lib.experiments.progress import Reporter
from lib.experiments.resume import Checkpoint
from lib.training.gaussian import gaussian_batch, seeded_generator, teacher_targets, toy_problem
from lib.training.train import cached_train, train_ste

from .diagnosis import diagnose
from .params import LAST_TWO, ToyParams


def pretrain_student(problem, p: ToyParams, progress: bool = True) -> tuple[torch.nn.Module, list[float], bool]:
    """Train the student with the STE ``pretrain_variant`` and Adam on ``pretrain_steps`` fresh
    batches of ``pretrain_batch_size`` rows ``x ~ N(0, I)`` (targets from the teacher); cached in
    ``cache_dir`` (relative: from the repository root) by a hash of everything that determines the
    result."""
    key = {"kind": "toy-pretrain", "num_dim": p.num_dim, "init_seed": problem.seed, "teacher_act": p.teacher_act,
           "steps": p.pretrain_steps, "batch_size": p.pretrain_batch_size, "lr": p.pretrain_lr,
           "variant": p.pretrain_variant, "torch": torch.__version__.split("+")[0]}
    student = problem.student

    def batch_fn(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = seeded_generator(7_919 * (problem.seed + 1) + 104_729 * step + 1)
        x = gaussian_batch(p.num_dim, p.pretrain_batch_size, gen)
        return x, teacher_targets(problem.teacher, x)

    def train(model):
        return train_ste(model, batch_fn, p.pretrain_steps, loss="mse", variant=p.pretrain_variant,
                         lr=p.pretrain_lr, progress=progress, desc=f"pretrain d={p.num_dim} init {problem.seed}")

    model, curve, hit = cached_train(repo_path(p.cache_dir), key, lambda: student, train)
    return model, curve, hit


def _curve_stats(lrs: Sequence[float], curves: list[np.ndarray]) -> dict[str, Any]:
    mean, std = V.mean_and_spread(curves)
    best, best_lr = V.best_decrease(lrs, mean)
    return {"mean": mean, "std": std, "best": best, "best_lr": best_lr}


def _mean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def run_toy(p: ToyParams, progress: bool = True,
            on_step: Callable[[int, int, str], None] | None = None,
            checkpoint: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run one toy grid point; returns the JSON-able results (see the module docstring).

    The run is a sequence of ``num_init · num_batch · len(sigma_grid)`` steps, one per σ of NES
    for each initialisation × batch; the cheap CDG and STE estimates of an initialisation ×
    batch belong to its first step. The steps take about equal time, so a linear extrapolation
    of the time left holds. ``on_step(done, total, what)`` (e.g. a :class:`lib.experiments.progress.Reporter`)
    is called after each step.

    ``checkpoint``: a file (:mod:`lib.experiments.resume`) where the state is saved after each step; a
    rerun with the same parameters skips the steps saved there and gives the same numbers as an
    uninterrupted run. By default the reporter's ``partial`` file when ``on_step`` is a
    :class:`lib.experiments.progress.Reporter`, else none."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    device = str(resolve_device(p.device))
    lrs = p.lrs()
    if checkpoint is None and isinstance(on_step, Reporter):
        checkpoint = on_step.partial
    saver = Checkpoint(checkpoint, asdict(p)) if checkpoint is not None else None
    saved = saver.load() if saver else None
    saved = saved or {"done": 0, "raw": {}, "cos": {}, "timing": {}, "base_losses": [], "pretrain": [],
                      "elapsed_s": 0.0}
    done = int(saved["done"])
    # Lists of curves in the order they were added: a resumed run appends to them in the same
    # order as an uninterrupted one, so means and spreads agree bit for bit.
    raw: dict[str, dict[str, list[np.ndarray]]] = {
        kind: {key: [np.asarray(c, dtype=float) for c in curves] for key, curves in by_key.items()}
        for kind, by_key in saved["raw"].items()}
    cos: dict[str, dict[str, list[float]]] = saved["cos"]
    timing: dict[str, list[float]] = saved["timing"]
    base_losses: list[float] = saved["base_losses"]
    pretrain_info: list[dict[str, Any]] = saved["pretrain"]

    def timed(kind: str, fn, *args, **kwargs):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        timing.setdefault(kind, []).append(time.perf_counter() - t)
        return out

    def add(kind: str, key: str, curve: np.ndarray) -> None:
        raw.setdefault(kind, {}).setdefault(key, []).append(curve)

    def add_cos(kind: str, key: str, value: float) -> None:
        cos.setdefault(kind, {}).setdefault(key, []).append(value)

    def elapsed() -> float:
        return float(saved["elapsed_s"]) + time.perf_counter() - t0

    reps = p.num_init * p.num_batch
    per_rep = len(p.sigma_grid)
    steps = reps * per_rep
    if done and isinstance(on_step, Reporter):
        on_step.resumed(done, steps)
    bar = tqdm(total=reps, initial=done // per_rep, disable=not progress,
               desc=f"toy d={p.num_dim}{' pretrained' if p.pretrained else ''}")
    for init in range(p.num_init):
        if (init + 1) * p.num_batch * per_rep <= done:
            continue  # this initialisation was finished by an earlier attempt
        problem = toy_problem(p.num_dim, p.seed * 1000 + init, teacher_act=p.teacher_act)
        if p.pretrained:
            student, curve, hit = pretrain_student(problem, p, progress)
            problem.student = student
            if not any(info["init"] == init for info in pretrain_info):
                pretrain_info.append({"init": init, "curve": curve, "cached": hit,
                                      "final_loss": _mean(curve[-max(1, len(curve) // 20):])})
        model = problem.student.to(device)
        problem.teacher.to(device)
        for b in range(p.num_batch):
            first = (init * p.num_batch + b) * per_rep  # index of this initialisation × batch's first step
            if first + per_rep <= done:
                continue
            x, y = problem.batch(p.batch_size, b, device=device)
            xe, ye = problem.batch(p.batch_size, 10_000 + b, device=device) if p.held_out else (x, y)
            seed = p.seed * 1_000_003 + init * 1009 + b

            def curve_of(grads: dict[str, torch.Tensor]) -> np.ndarray:
                return V.loss_decrease(model, xe, ye, grads, lrs, p.normalize)

            if first >= done:  # the first step: base loss, CDG and the STE variants
                with torch.no_grad():
                    base_losses.append(float(((model(xe) - ye) ** 2).mean()))
                cdg_ref = None
                for eps in p.eps_grid:
                    g = timed("cdg", E.cdg, model, x, y, eps=eps, seed=seed)
                    add("cdg", f"{eps:g}", curve_of(g))
                    if math.isclose(eps, p.reference_eps):
                        cdg_ref = g
                if cdg_ref is None:
                    cdg_ref = E.cdg(model, x, y, eps=p.reference_eps, seed=seed)
                for variant in p.ste_variants:
                    g = timed("ste", E.ste, model, x, y, variant=variant)
                    add("ste", variant, curve_of(g))
                    for name, value in V.cosine(g, cdg_ref).items():
                        add_cos(f"ste_vs_cdg:{variant}", name, value)
            else:  # resumed inside this initialisation × batch: only the reference is needed again
                cdg_ref = E.cdg(model, x, y, eps=p.reference_eps, seed=seed)
            for i, sigma in enumerate(p.sigma_grid):
                if first + i < done:
                    continue
                ests = timed("nes", E.nes_multi, model, x, y, sigma=sigma, samples=p.nes_samples, seed=seed)
                for s, g in ests.items():
                    add(f"nes:{s}", f"{sigma:g}", curve_of(g))
                    add_cos(f"nes_vs_cdg:{s}", f"{sigma:g}", V.cosine(g, cdg_ref)["all"])
                if p.diagnose:
                    exact = E.smoothed_exact(model, x, y, sigma)
                    add("exact_smoothed", f"{sigma:g}", curve_of(exact))
                    add_cos("exact_vs_cdg", f"{sigma:g}", V.cosine(exact, cdg_ref)["all"])
                    two = E.nes_multi(model, x, y, sigma=sigma, samples=p.nes_samples, layers=list(LAST_TWO), seed=seed)
                    for s, g in two.items():
                        add(f"nes_last2:{s}", f"{sigma:g}", curve_of(g))
                        add_cos(f"nes_last2_vs_exact:{s}", f"{sigma:g}", V.cosine(g, exact)["all"])
                if i == per_rep - 1:
                    cdg_last2 = {n: cdg_ref[n] for n in LAST_TWO}
                    add("cdg_last2", f"{p.reference_eps:g}", curve_of(cdg_last2))
                done = first + i + 1
                if saver:
                    saver.save({"done": done, "raw": raw, "cos": cos, "timing": timing, "base_losses": base_losses,
                                "pretrain": pretrain_info, "elapsed_s": elapsed()})
                if on_step:
                    on_step(done, steps, f"init {init} batch {b}: NES σ={sigma:g}")
            bar.update(1)
    bar.close()

    curves = {kind: {key: _curve_stats(lrs, vals) for key, vals in by_key.items()} for kind, by_key in raw.items()}
    cosines = {kind: {key: {"mean": _mean(v), "std": float(np.std(v))} for key, v in by_key.items()}
               for kind, by_key in cos.items()}
    results = {
        "experiment": "toy",
        "parameters": asdict(p),
        "num_dim": p.num_dim,
        "pretrained": p.pretrained,
        "lrs": lrs,
        "loss_evaluations": {"cdg_per_estimate": 2 * (3 * p.num_dim**2 + p.num_dim),
                             "nes_per_estimate": {str(s): 2 * s for s in p.nes_samples}},
        "base_loss": _mean(base_losses),
        "seconds_per_estimate": {"cdg": _mean(timing.get("cdg", [])), "ste": _mean(timing.get("ste", [])),
                                 f"nes_{max(p.nes_samples)}": _mean(timing.get("nes", []))},
        "pretrain": pretrain_info,
        "curves": curves,
        "cosines": cosines,
        "versions": versions(),
        "device": device,
        "wall_s": elapsed(),
    }
    results = json.loads(json.dumps(to_jsonable(results)))  # exactly what the JSON file holds
    results["diagnosis"] = diagnose(results) if p.diagnose else None
    return results
