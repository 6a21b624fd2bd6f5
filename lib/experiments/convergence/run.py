"""The reference-convergence experiment (docs/design.md §2 noise ceiling, §3).

CDG on a finite batch sums the loss changes of the few samples whose activation flips, so on a
small batch it is itself a noisy estimate of the population gradient, and a low STE–CDG cosine
may measure the reference rather than the STE. For each student precision and initialisation of
the toy (teacher and student :class:`~lib.core.models.BinaryMLP`, ``x ~ N(0, I)``), each batch
size ``N`` and each ε, on two independent batches A and B of ``N`` rows:

* the **noise ceiling** ``cos(CDG_A, CDG_B)``: how well the reference agrees with itself;
* for every STE variant ``cos(STE_A, CDG_A)`` (``reference_batch: same``, the lab's measure: both
  on one batch, so they share its sampling noise), ``cos(STE_A, CDG_B)`` (``independent``: no
  shared noise) and the STE's own ceiling ``cos(STE_A, STE_B)`` (:func:`ste_ceiling`), which
  together with CDG's gives the score of an STE with no error of its own (:mod:`.section`);

per layer, over all weights (``all``: dominated by the layer with the largest gradient, the
readout) and as the mean of the per-layer cosines (``mean_over_layers``, the lab's summary), on the
coordinates CDG computed (all, or ``coords_per_layer`` seeded ones per layer, the same on both
batches).

The results are a :class:`~lib.experiments.convergence.records.ConvergenceResults`: one
cosine record per (precision, ε, N, layer, estimate) over the initialisations.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping

import torch

from lib.common.files import to_jsonable
from lib.common.versions import machine, versions
from lib.core.device import resolve_device
from lib.core.estimators import cdg, ste
from lib.core.evaluate import cosine, restrict
from lib.experiments.resume import Steps
from lib.experiments.schema import build
from lib.experiments.stats import finite, finite_mean, interval
from lib.training.gaussian import toy_problem

from .params import EXPERIMENT, ConvergenceParams
from .records import ConvergenceResults, CosineRecord

CEILING = {"estimator": "cdg", "batch": "independent"}  # the estimate of a noise-ceiling record
LAYER_MEAN = "mean_over_layers"  # the mean of the per-layer cosines (the lab's summary), beside "all"


def ste_estimate(variant: str, reference_batch: str) -> dict[str, str]:
    """The estimate of an STE record: the variant, and whether CDG was on the STE's own batch."""
    return {"estimator": "ste", "variant": variant, "reference_batch": reference_batch}


def ste_ceiling(variant: str) -> dict[str, str]:
    """The estimate of the STE's own noise ceiling: ``cos(STE_A, STE_B)`` on CDG's coordinates."""
    return {"estimator": "ste", "variant": variant, "batch": "independent"}


def noise_ceiling(model: torch.nn.Module, a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor],
                  eps: float, coords_per_layer: int | None, seed: int) -> tuple[dict, dict, dict[str, float]]:
    """CDG on batch ``a`` and on batch ``b`` (the same sampled coordinates: the same ``seed``), and
    their cosine per layer and over all: ``(cdg_a, cdg_b, cosines)``."""
    ga = cdg(model, *a, eps=eps, coords_per_layer=coords_per_layer, seed=seed)
    gb = cdg(model, *b, eps=eps, coords_per_layer=coords_per_layer, seed=seed)
    return ga, gb, cosine(ga, gb)


def analyse(p: ConvergenceParams, precision: str, init: int, device: str) -> list[dict[str, Any]]:
    """One (precision, initialisation): ``[{batch_size, eps, layer, estimate, value}]``."""
    problem = toy_problem(p.num_dim, p.seed * 1000 + init, act=precision, teacher_act=p.teacher_of(precision))
    model = problem.student.to(device)
    problem.teacher.to(device)
    coords = p.coords_per_layer or None
    out = []
    for n in p.batch_sizes:
        (xa, ya), (xb, yb) = problem.batch(n, 0, device=device), problem.batch(n, 1, device=device)
        stes = {v: ste(model, xa, ya, variant=v) for v in p.ste_variants}
        stes_b = {v: ste(model, xb, yb, variant=v) for v in p.ste_variants}
        for eps in p.eps:
            ga, gb, ceiling = noise_ceiling(model, (xa, ya), (xb, yb), eps, coords, seed=p.seed * 1009 + init)
            pairs = [(CEILING, ceiling)]
            for v, g in stes.items():
                pairs += [(ste_estimate(v, "same"), cosine(g, ga)), (ste_estimate(v, "independent"), cosine(g, gb)),
                          (ste_ceiling(v), cosine(restrict(g, ga), restrict(stes_b[v], ga)))]
            for estimate, by_layer in pairs:
                by_layer[LAYER_MEAN] = finite_mean(v for k, v in by_layer.items() if k != "all")
                out += [{"batch_size": n, "eps": eps, "layer": layer, "estimate": estimate, "value": value}
                        for layer, value in by_layer.items()]
    return out


def run(params: ConvergenceParams | Mapping[str, Any], on_step: Callable[[int, int, str], None] | None = None,
        progress: bool = True) -> ConvergenceResults:
    """Run the experiment; one step per (precision, initialisation). The steps differ in cost (2-bit
    costs most, full precision least: docs/performance.md), so the runner's time left is a rough guide. ``on_step(done, total, what)``
    is called after each; with a :class:`lib.experiments.progress.Reporter` the run resumes after
    its last finished step (:class:`lib.experiments.resume.Steps`). Returns the JSON-able results
    (see the module docstring)."""
    from tqdm.auto import tqdm

    if not isinstance(params, ConvergenceParams):
        params = build(ConvergenceParams, params)
    p = params
    device = str(resolve_device(p.device))
    pairs = [(precision, init) for precision in p.precisions for init in range(p.num_init)]
    steps = Steps(dataclasses.asdict(p), len(pairs), on_step)
    raw: list[dict[str, Any]] = steps.data or []
    bar = tqdm(total=len(pairs), initial=steps.finished, disable=not progress, desc="convergence")
    for i, (precision, init) in enumerate(pairs):
        if steps.done(i):
            continue
        t0 = time.perf_counter()
        raw += [{"precision": precision, "init": init, **r} for r in analyse(p, precision, init, device)]
        raw = to_jsonable(raw)
        steps.step_finished(i, raw, f"{precision} init {init}: {time.perf_counter() - t0:.0f} s")
        bar.update(1)
    bar.close()
    layers = list(dict.fromkeys(r["layer"] for r in raw if r["layer"] not in ("all", LAYER_MEAN)))
    return to_jsonable({"experiment": EXPERIMENT, "parameters": dataclasses.asdict(p), "versions": versions(),
                        "machine": machine(), "device": device, "layers": layers, "cosines": _aggregate(raw),
                        **steps.timing()})


def _aggregate(raw: list[dict[str, Any]]) -> list[CosineRecord]:
    """Mean and 95% interval over the initialisations of each (precision, eps, N, layer, estimate)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in raw:
        key = (r["precision"], r["eps"], r["batch_size"], r["layer"], tuple(sorted(r["estimate"].items())))
        groups.setdefault(key, []).append(r)
    out = []
    for (precision, eps, n, layer, _), rs in groups.items():
        values = [r["value"] for r in rs]
        mean = finite_mean(values)
        out.append({"precision": precision, "eps": eps, "batch_size": n, "layer": layer, "estimate": rs[0]["estimate"],
                    "values": values, "mean": mean, "interval": interval(mean, values), "n": len(finite(values))})
    return out
