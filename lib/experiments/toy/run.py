"""The toy experiments of the meeting notes (docs/design.md §3): hyper-parameter search for CDG (ε)
and NES (σ, samples), with and without pretraining, plus the STE variants and the NES diagnosis.

One call of :func:`run` is one grid point (one ``num_dim``, pretrained or not). For each
initialisation × gradient batch it computes every estimate once and its lr → loss-decrease
curve ``ΔL(lr) = L(w) − L(w − lr ĝ)`` on the same batch (or a held-out one), the notes' metric,
averaged over the repetitions; and its population metrics, relative decreases on the
initialisation's evaluation set (:mod:`.population`). For the **NES diagnosis** NES also runs
restricted to the last hidden layer and the readout, where
:func:`lib.core.estimators.smoothed_exact` is its infinite-sample limit; the verdicts come from
their held-out decreases (:mod:`.nes_diagnosis`).

The results are a :class:`~lib.experiments.toy.records.ToyResults`: the notes' in-sample
``curves`` (per estimate, over ``lrs``) and ``cosines`` (STE variants, NES and the exact smoothed
gradient against CDG at ``reference_eps``, NES on the last two layers against the exact one, and
the reference's noise ceiling, :func:`noise_ceiling`), the ``population`` protocol's held-out
records (:mod:`lib.experiments.toy.population`, including the controls and the
``large_batch_sizes``) from which the findings are drawn (:mod:`lib.experiments.toy.protocol`),
the in-sample ``diagnosis``, the pretraining, timings and versions.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict
from typing import Any, Callable, Sequence

import numpy as np
import torch

from lib.common.files import canonical_json, to_jsonable
from lib.common.paths import repo_path
from lib.common.versions import machine, versions
from lib.core import estimators as E
from lib.core import evaluate as V
from lib.core.device import resolve_device
from lib.experiments.resume import Steps
from lib.experiments.stats import finite, finite_mean, interval
from lib.training.gaussian import gaussian_batch, seeded_generator, teacher_targets, toy_problem
from lib.training.train import TRAIN_DTYPE, cached_train, dtype_name, train_ste, train_wide

from . import population as P
from . import sigma_tuning as T
from .diagnosis import diagnose
from .params import EXPERIMENT, LAST_TWO, ToyParams
from .records import ToyResults


PRETRAIN_DTYPE = TRAIN_DTYPE  # machine-independent students (docs/design.md §3, "Pretraining")


def pretrain_student(problem, p: ToyParams, progress: bool = True) -> tuple[torch.nn.Module, list[float], bool]:
    """Train the student with the STE ``pretrain_variant`` and Adam on ``pretrain_steps`` fresh
    batches of ``pretrain_batch_size`` rows ``x ~ N(0, I)`` (targets from the teacher); cached in
    ``cache_dir`` (relative: from the repository root) by a hash of everything that determines the
    result.

    The training runs on float64 copies of the student and the teacher (inputs as drawn, in
    float64), and the student keeps its own dtype, the trained weights rounded to it. In float32,
    the last bits of the BLAS sums differ between CPUs (their vector instructions), and 2000 steps
    of a binary network turn those bits into a different student."""
    key = {"kind": "toy-pretrain", "num_dim": p.num_dim, "init_seed": problem.seed, "teacher_act": p.teacher_act,
           "act": p.act, "steps": p.pretrain_steps, "batch_size": p.pretrain_batch_size, "lr": p.pretrain_lr,
           "variant": p.pretrain_variant, "dtype": dtype_name(PRETRAIN_DTYPE),
           "torch": torch.__version__.split("+")[0]}
    teacher = copy.deepcopy(problem.teacher).to(PRETRAIN_DTYPE)

    def batch_fn(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = seeded_generator(7_919 * (problem.seed + 1) + 104_729 * step + 1)
        x = gaussian_batch(p.num_dim, p.pretrain_batch_size, gen, dtype=PRETRAIN_DTYPE)
        return x, teacher_targets(teacher, x)

    def train(model: torch.nn.Module) -> list[float]:
        return train_wide(model, lambda wide: train_ste(
            wide, batch_fn, p.pretrain_steps, loss="mse", variant=p.pretrain_variant, lr=p.pretrain_lr,
            progress=progress, desc=f"pretrain d={p.num_dim} init {problem.seed}"), PRETRAIN_DTYPE)

    return cached_train(repo_path(p.cache_dir), key, lambda: problem.student, train)


def estimate(estimator: str, layers: str = "all", **hyper: Any) -> dict[str, Any]:
    """The identity of an estimate in the results: ``{estimator, layers, hyper-parameters}``."""
    return {"estimator": estimator, "layers": layers, **hyper}


INDEPENDENT_BATCH = 20_000  # batch indices of the noise ceiling's second batch (held-out ones are 10_000 + b)


def noise_ceiling(eps: float) -> dict[str, Any]:
    """The estimate of the noise-ceiling cosines: CDG at ``eps`` on an independent batch of the
    same size, against the reference CDG (docs/design.md §2)."""
    return estimate("cdg", eps=eps, batch="independent")


class _Tally:
    """What the repetitions produced so far, in the order they produced it (a resumed run
    appends in the same order as an uninterrupted one, so means and spreads agree bit for bit)."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        data = data or {"curves": [], "cosines": [], "seconds": {}, "base_losses": [], "pretrain": [], "population": None,
                        "sigma_rungs": []}
        self.curves = {canonical_json(e["key"]): (e["key"], [np.asarray(c, dtype=float) for c in e["values"]])
                       for e in data["curves"]}
        self.cosines = {canonical_json(e["key"]): (e["key"], list(e["values"])) for e in data["cosines"]}
        self.seconds: dict[str, list[float]] = data["seconds"]
        self.base_losses: list[float] = data["base_losses"]
        self.pretrain: list[dict[str, Any]] = data["pretrain"]
        self.population = P.PopulationTally(data["population"])
        self.sigma_rungs: list[T.Rung] = data["sigma_rungs"]

    def curve(self, key: dict[str, Any], values: np.ndarray) -> None:
        self.curves.setdefault(canonical_json(key), (key, []))[1].append(values)

    def cosine(self, of: dict[str, Any], reference: dict[str, Any], layer: str, value: float) -> None:
        key = {"estimate": of, "reference": reference, "layer": layer}
        self.cosines.setdefault(canonical_json(key), (key, []))[1].append(value)

    def timed(self, kind: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        self.seconds.setdefault(kind, []).append(time.perf_counter() - t)
        return out

    def spread(self, kind: str, seconds: float, count: int) -> None:
        """``seconds`` of one call that computed ``count`` estimates of ``kind``, recorded per estimate."""
        self.seconds.setdefault(kind, []).extend([seconds / count] * count)

    def state(self) -> dict[str, Any]:
        return {"curves": [{"key": k, "values": v} for k, v in self.curves.values()],
                "cosines": [{"key": k, "values": v} for k, v in self.cosines.values()],
                "seconds": self.seconds, "base_losses": self.base_losses, "pretrain": self.pretrain,
                "population": self.population.state(), "sigma_rungs": self.sigma_rungs}

    def curve_records(self, lrs: Sequence[float]) -> list[dict[str, Any]]:
        """Per estimate: the mean curve and its spread, the best of the mean curve with its lr,
        each repetition's value at that lr (``at_best``) and the 95% interval of the best."""
        out = []
        for key, curves in self.curves.values():
            mean, std = V.mean_and_spread(curves)
            best, best_lr = V.best_decrease(lrs, mean)
            at_best = [float(c[int(np.nanargmax(mean))]) for c in curves] if math.isfinite(best) else []
            out.append({**key, "mean": mean, "std": std, "best": best, "best_lr": best_lr, "n": len(curves),
                        "at_best": at_best, "interval": interval(best, at_best)})
        return out

    def cosine_records(self) -> list[dict[str, Any]]:
        """Per (estimate, reference, layer): mean, spread, the repetitions' values, 95% interval."""
        out = []
        for key, values in self.cosines.values():
            vals, mean = finite(values), finite_mean(values)
            out.append({**key, "mean": mean, "std": float(np.std(vals)) if vals else float("nan"), "n": len(vals),
                        "values": values, "interval": interval(mean, values)})
        return out


class _Repetition:
    """One initialisation × gradient batch: the model, its batch, and the estimates of its steps,
    each scored on the notes' curve (:meth:`curve`) and on the population metrics (``scorer``)."""

    def __init__(self, p: ToyParams, model: torch.nn.Module, problem, init: int, b: int, device: str,
                 tally: _Tally, scorer: P.Scorer) -> None:
        self.p, self.model, self.tally, self.problem, self.b, self.device = p, model, tally, problem, b, device
        self.init, self.scorer = init, scorer
        self.x, self.y = problem.batch(p.batch_size, b, device=device)
        scorer.with_batch(self.x, self.y)
        self.xe, self.ye = problem.batch(p.batch_size, 10_000 + b, device=device) if p.held_out else (self.x, self.y)
        self.seed = p.seed * 1_000_003 + init * 1009 + b
        self.lrs = p.lrs()
        self.cdg_ref: dict[str, torch.Tensor] | None = None
        self.reference = estimate("cdg", eps=p.reference_eps)

    def curve(self, key: dict[str, Any], grads: dict[str, torch.Tensor]) -> None:
        """The notes' curve of an estimate at the notes' batch size, and its population metrics."""
        self.tally.curve(key, V.loss_decrease(self.model, self.xe, self.ye, grads, self.lrs, self.p.normalize))
        self.score(key, grads, self.p.batch_size)

    def score(self, key: dict[str, Any], grads: dict[str, torch.Tensor], batch_size: int) -> None:
        self.tally.population.score(self.scorer, key, grads, self.init, batch_size, batch_size == self.p.batch_size,
                                    max(self.p.nes_samples))

    def controls(self) -> None:
        """The random hidden-layer direction and the data-free shrink-the-readout direction."""
        self.score(estimate(P.RANDOM), P.random_direction(self.model, self.seed + 7_777), self.p.batch_size)
        self.score(estimate(P.SHRINK_READOUT), P.shrink_readout(self.model), self.p.batch_size)

    def large_batches(self) -> None:
        """CDG at every ε, the STE variants and the exact smoothed gradients on independent
        gradient batches of each of ``large_batch_sizes`` rows, scored on the population metrics."""
        p = self.p
        for k, n in enumerate(p.large_batch_sizes):
            x, y = self.problem.batch(n, P.LARGE_BATCH + 100 * k + self.b, device=self.device)
            for eps in p.eps_grid:
                self.score(estimate("cdg", eps=eps), E.cdg(self.model, x, y, eps=eps, seed=self.seed), n)
            for variant in p.ste_variants:
                self.score(estimate("ste", variant=variant), E.ste(self.model, x, y, variant=variant), n)
            for sigma in p.sigma_grid if p.diagnose else []:
                self.score(estimate("smoothed_exact", "last_two", sigma=sigma), E.smoothed_exact(self.model, x, y, sigma), n)

    def first(self) -> None:
        """The base loss, CDG at every ε and the STE variants (with their cosines with CDG)."""
        p, model, x, y = self.p, self.model, self.x, self.y
        with torch.no_grad():
            self.tally.base_losses.append(float(((model(self.xe) - self.ye) ** 2).mean()))
        for eps in p.eps_grid:
            g = self.tally.timed("cdg", E.cdg, model, x, y, eps=eps, seed=self.seed)
            self.curve(estimate("cdg", eps=eps), g)
            if math.isclose(eps, p.reference_eps):
                self.cdg_ref = g
        for variant in p.ste_variants:
            g = self.tally.timed("ste", E.ste, model, x, y, variant=variant)
            self.curve(estimate("ste", variant=variant), g)
            for name, value in V.cosine(g, self.reference_gradient()).items():
                self.tally.cosine(estimate("ste", variant=variant), self.reference, name, value)
        # The reference's noise ceiling: CDG on an independent batch of the same size against it.
        xb, yb = self.problem.batch(p.batch_size, INDEPENDENT_BATCH + self.b, device=self.device)
        other = E.cdg(model, xb, yb, eps=p.reference_eps, seed=self.seed)
        for name, value in V.cosine(other, self.reference_gradient()).items():
            self.tally.cosine(noise_ceiling(p.reference_eps), self.reference, name, value)

    def reference_gradient(self) -> dict[str, torch.Tensor]:
        """CDG at ``reference_eps`` (computed again when a resumed run needs it)."""
        if self.cdg_ref is None:
            self.cdg_ref = E.cdg(self.model, self.x, self.y, eps=self.p.reference_eps, seed=self.seed)
        return self.cdg_ref

    def nes(self, plan: dict[float, list[int]]) -> None:
        """NES at the ``plan``'s σ and sample counts (:func:`.sigma_tuning.plan`: the grid, or what
        the σ search chose), and the diagnosis on the last two layers: one
        :func:`~lib.core.estimators.nes_sigmas` call per layer set and list of sample counts,
        sharing the direction stream and the head's projection; each σ's numbers are its own
        call's, bit for bit."""
        p = self.p
        groups: dict[tuple[int, ...], list[float]] = {}
        for sigma, samples in plan.items():
            groups.setdefault(tuple(samples), []).append(sigma)
        t = time.perf_counter()
        every = {sigma: ests for samples, sigmas in groups.items() for sigma, ests in E.nes_sigmas(
            self.model, self.x, self.y, sigmas=sigmas, samples=list(samples), seed=self.seed).items()}
        seconds = time.perf_counter() - t
        self.tally.spread("nes", seconds, len(plan))
        self.tally.seconds.setdefault("nes_step", []).append(seconds)
        t = time.perf_counter()
        two = {sigma: ests for samples, sigmas in groups.items() for sigma, ests in E.nes_sigmas(
            self.model, self.x, self.y, sigmas=sigmas, samples=list(samples), layers=list(LAST_TWO),
            seed=self.seed).items()} if p.diagnose else {}
        if p.diagnose:
            self.tally.seconds.setdefault("nes_last_two_step", []).append(time.perf_counter() - t)
        for sigma in plan:
            self.sigma_records(sigma, every[sigma], two.get(sigma))
        self.curve(estimate("cdg", "last_two", eps=p.reference_eps), {n: self.reference_gradient()[n] for n in LAST_TWO})

    def sigma_records(self, sigma: float, ests: dict[int, dict[str, torch.Tensor]],
                      two: dict[int, dict[str, torch.Tensor]] | None) -> None:
        """The curves and cosines of NES at ``sigma`` (``ests`` over all layers, ``two`` on the last
        two, each per sample count), and the diagnosis's exact smoothed gradient."""
        model, x, y, ref = self.model, self.x, self.y, self.reference_gradient()
        for s, g in ests.items():
            self.curve(estimate("nes", sigma=sigma, samples=s), g)
            self.tally.cosine(estimate("nes", sigma=sigma, samples=s), self.reference, "all", V.cosine(g, ref)["all"])
        if two is not None:
            exact_key = estimate("smoothed_exact", "last_two", sigma=sigma)
            exact = E.smoothed_exact(model, x, y, sigma)
            self.curve(exact_key, exact)
            self.tally.cosine(exact_key, self.reference, "all", V.cosine(exact, ref)["all"])
            for s, g in two.items():
                nes_key = estimate("nes", "last_two", sigma=sigma, samples=s)
                self.curve(nes_key, g)
                self.tally.cosine(nes_key, exact_key, "all", V.cosine(g, exact)["all"])


def run(p: ToyParams, on_step: Callable[[int, int, str], None] | None = None,
        progress: bool = True) -> ToyResults:
    """Run one toy grid point; returns the JSON-able results (:class:`.records.ToyResults`).

    The run is a sequence of steps: with ``sigma_search: halving`` first the σ search on the
    tuning initialisations (:mod:`.sigma_tuning`, one short step per rung and tuning
    initialisation), then one step per reported initialisation × batch: its CDG and STE
    estimates, the controls, then NES at the σ the search chose for each sample count, or at every
    σ (``grid``; :meth:`_Repetition.nes`). ``on_step(done, total, what)`` is called after each step;
    with a :class:`lib.experiments.progress.Reporter` the run also saves its state after each
    step and resumes from it (:class:`lib.experiments.resume.Steps`), with the same numbers as
    an uninterrupted run."""
    from tqdm.auto import tqdm

    device = str(resolve_device(p.device))
    tuning = T.tuning_steps(p)
    # The step layout is part of the saved state's key: a state saved with another layout (one
    # step per σ, say) is ignored, not misread.
    steps = Steps({**asdict(p), "steps": "σ-search rung × tuning initialisation, then initialisation × batch"},
                  tuning + p.num_init * p.num_batch, on_step)
    tally = _Tally(steps.data)
    bar = tqdm(total=steps.total, initial=steps.finished, disable=not progress,
               desc=f"toy d={p.num_dim}{' pretrained' if p.pretrained else ''}")
    curves_of = _tuning_curves(p, device)
    for k in range(tuning):
        if not steps.done(k):
            t = time.perf_counter()
            what = T.tuning_step(p, tally.sigma_rungs, k, curves_of)
            tally.seconds.setdefault("sigma_search", []).append(time.perf_counter() - t)
            steps.step_finished(k, tally.state(), what)
            bar.update(1)
    plan = T.plan(p, tally.sigma_rungs)
    for init in range(p.num_init):
        if steps.done(tuning + (init + 1) * p.num_batch - 1):
            continue  # this initialisation was finished by an earlier attempt
        problem = toy_problem(p.num_dim, p.seed * 1000 + init, act=p.act, teacher_act=p.teacher_act)
        model = _student(p, problem, init, tally, progress).to(device)
        problem.teacher.to(device)
        scorer = _scorer(p, problem, model, device)
        tally.population.base_loss(init, scorer.base_loss)
        for b in range(p.num_batch):
            step = tuning + init * p.num_batch + b
            if steps.done(step):
                continue
            rep = _Repetition(p, model, problem, init, b, device, tally, scorer)
            rep.first()
            rep.controls()
            rep.nes(plan)
            rep.large_batches()
            steps.step_finished(step, tally.state(), f"init {init} batch {b}")
            bar.update(1)
    bar.close()
    return _results(p, tally, device, steps.timing())


def _tuning_curves(p: ToyParams, device: str) -> T.Curves:
    """For the σ search: NES at each σ on tuning initialisation ``init`` (its student, gradient
    batch 0 and evaluation set, as a reported initialisation would have them), scored as
    ``r(lr)`` on the hidden layers, held out. Each tuning initialisation's student, batch and
    scorer are built once and kept for the later rungs (``tune_inits`` of them)."""
    built: dict[int, tuple[torch.nn.Module, torch.Tensor, torch.Tensor, P.Scorer]] = {}

    def setup(init: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, P.Scorer]:
        problem = toy_problem(p.num_dim, p.seed * 1000 + init, act=p.act, teacher_act=p.teacher_act)
        model = (pretrain_student(problem, p, progress=False)[0] if p.pretrained else problem.student).to(device)
        problem.teacher.to(device)
        x, y = problem.batch(p.batch_size, 0, device=device)
        return model, x, y, _scorer(p, problem, model, device)

    def curves_of(init: int, sigmas: list[float], samples: int) -> dict[float, list[float]]:
        if init not in built:
            built[init] = setup(init)
        model, x, y, scorer = built[init]
        ests = E.nes_sigmas(model, x, y, sigmas=sigmas, samples=[samples], seed=p.seed * 1_000_003 + init * 1009)
        return {sigma: scorer.curve(ests[sigma][samples], P.HIDDEN).tolist() for sigma in sigmas}

    return curves_of


def _scorer(p: ToyParams, problem, model: torch.nn.Module, device: str) -> P.Scorer:
    """The population metrics of initialisation ``problem.seed``: its evaluation set of ``eval_rows`` rows."""
    x, y = problem.batch(p.eval_rows, P.EVAL_BATCH, device=device)
    return P.Scorer(model, x, y, p.lrs(), p.normalize)


def _student(p: ToyParams, problem, init: int, tally: _Tally, progress: bool) -> torch.nn.Module:
    """The evaluated model of initialisation ``init``: fresh, or pretrained (cached)."""
    if not p.pretrained:
        return problem.student
    student, curve, hit = pretrain_student(problem, p, progress)
    if not any(info["init"] == init for info in tally.pretrain):
        tally.pretrain.append({"init": init, "curve": curve, "cached": hit, "dtype": dtype_name(PRETRAIN_DTYPE),
                               "final_loss": finite_mean(curve[-max(1, len(curve) // 20):])})
    return student


def _results(p: ToyParams, tally: _Tally, device: str, timing: dict[str, float]) -> ToyResults:
    lrs = p.lrs()
    results = {
        "experiment": EXPERIMENT,
        "parameters": asdict(p),
        "num_dim": p.num_dim,
        "pretrained": p.pretrained,
        "lrs": lrs,
        "loss_evaluations": {"cdg": 2 * (3 * p.num_dim**2 + p.num_dim),
                             "nes": [{"samples": s, "evaluations": 2 * s} for s in p.nes_samples]},
        "base_loss": finite_mean(tally.base_losses),
        "seconds": {**{kind: finite_mean(tally.seconds.get(kind, []))
                       for kind in ("cdg", "ste", "nes", "nes_step", "nes_last_two_step")},
                    "sigma_search": float(sum(tally.seconds.get("sigma_search", []))),  # all its steps
                    "nes_samples": max(p.nes_samples)},
        "pretrain": tally.pretrain,
        "curves": tally.curve_records(lrs),
        "cosines": tally.cosine_records(),
        "population": {"eval_rows": p.eval_rows, **tally.population.state()},
        "sigma_search": T.record(p, tally.sigma_rungs),
        "versions": versions(),
        "machine": machine(),
        "device": device,
        **timing,
    }
    results = json.loads(json.dumps(to_jsonable(results)))  # exactly what the JSON file holds
    results["diagnosis"] = diagnose(results) if p.diagnose else None
    return results
