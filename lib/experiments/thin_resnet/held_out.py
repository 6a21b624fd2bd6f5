"""The notes' single-layer loss decrease, scored on held-out images and replicated over gradient
batches (docs/design.md §4, "Held-out decreases over batches").

For one model (a state and a precision in ``decrease_acts``) the run draws ``decrease_batches``
gradient batches ``b`` of ``batch_size`` training images, disjoint from each other and from every
other batch of the run. On batch ``b``, on coordinate set ``b`` (seed
:func:`lib.experiments.thin_resnet.analysis.coord_seed`) of each decrease layer:

* CDG (central) at each ε on the sampled coordinates;
* each STE variant restricted to the coordinates CDG sampled (0 elsewhere);
* the control: a seeded N(0, 1) direction on the same coordinates, which uses no data.

Each estimate steps its layer only and is scored on the run's held-out images ``T`` (the
``test_limit`` test images, the same for every estimate of the model, so that comparisons are
paired) by the relative decrease over the lr grid

    ``r_b(lr) = [L_T(w) − L_T(w − lr · ĝ)] / L_T(w)``,

``ĝ`` normalised as the run's ``normalize`` says. The batches are the unit of replication: they
share one model (one initialisation), so an interval over them covers the choice of batch and
coordinates, not of the model. :mod:`.decrease_claims` cross-fits ε, the variant and the lr over the
batches and compares.
"""
from __future__ import annotations

from typing import Sequence, TypedDict

import torch

from lib.core.estimators import cdg, ste
from lib.core.evaluate import HeldOutSet
from lib.core.resnet import XnorResNet
from lib.training.gaussian import seeded_generator

from .analysis import coord_seed
from .params import LOSS, ThinResNetParams

CDG, STE, RANDOM = "cdg", "ste", "random"
RANDOM_SEED_OFFSET = 104_729  # the control's seed: the coordinate set's seed plus this


class HeldOutCurves(TypedDict):
    """The relative held-out decrease curves of one (layer, estimate), one per gradient batch."""

    layer: str
    estimator: str  # CDG, STE or RANDOM
    eps: float | None  # CDG's step
    variant: str | None  # the STE variant
    curves: list[list[float]]  # r_b(lr) per batch b, over the run's lrs


class HeldOutDecreases(TypedDict):
    """What one model's held-out decreases record."""

    base_loss: float  # L_T(w) on the held-out images
    images: int  # held-out images
    batches: int  # gradient batches (the n of the comparisons)
    coordinates: int  # sampled coordinates per layer and batch
    records: list[HeldOutCurves]


def held_out_decreases(model: XnorResNet, p: ThinResNetParams, layers: Sequence[str],
                       batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                       held_out: tuple[torch.Tensor, torch.Tensor]) -> HeldOutDecreases:
    """The curves of the module docstring for ``layers`` on each of ``batches``, scored on
    ``held_out`` (images on the model's device)."""
    device = next(model.parameters()).device
    scorer = HeldOutSet(model, *held_out, loss=LOSS)
    keys: list[tuple[str, float | None, str | None]] = \
        [(CDG, float(e), None) for e in p.eps] + [(STE, None, v) for v in p.ste_variants] + [(RANDOM, None, None)]
    curves: dict[tuple[str, str, float | None, str | None], list[list[float]]] = {}
    coordinates = 0
    for b, (x, y) in enumerate(batches):
        x, y = x.to(device), y.to(device)
        seed = coord_seed(p, b)
        estimates = {(CDG, float(e), None): cdg(model, x, y, loss=LOSS, eps=e, central=True, layers=list(layers),
                                               coords_per_layer=p.coords_per_layer, seed=seed, device=device,
                                               budget_mb=p.budget_mb) for e in p.eps}
        masks = {n: torch.isfinite(g) for n, g in next(iter(estimates.values())).items()}
        coordinates = int(masks[layers[0]].sum())
        for v in p.ste_variants:
            g = ste(model, x, y, loss=LOSS, variant=v, layers=list(layers))
            estimates[(STE, None, v)] = {n: torch.where(masks[n], g[n], torch.zeros_like(g[n])) for n in layers}
        estimates[(RANDOM, None, None)] = random_on(masks, seed + RANDOM_SEED_OFFSET)
        for layer in layers:
            for key in keys:
                r = scorer.decrease(estimates[key], p.lrs, [layer], p.normalize) / scorer.base
                curves.setdefault((layer, *key), []).append(r.tolist())
    records = [HeldOutCurves(layer=layer, estimator=est, eps=eps, variant=var, curves=c)
               for (layer, est, eps, var), c in curves.items()]
    return HeldOutDecreases(base_loss=scorer.base, images=len(held_out[1]), batches=len(batches),
                            coordinates=coordinates, records=records)


def random_on(masks: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """The control: i.i.d. N(0, 1) on the ``True`` entries of each mask, 0 elsewhere, from ``seed``."""
    gen = seeded_generator(seed)
    return {n: torch.where(m, torch.randn(m.shape, generator=gen, dtype=torch.float64).to(m.device),
                           torch.zeros((), dtype=torch.float64, device=m.device)).float()
            for n, m in masks.items()}
