"""The toy's population protocol (docs/design.md §3, "Population protocol"): every loss decrease a
finding uses is scored on rows the gradient never saw, on the layers where the estimators differ,
beside two controls that use no gradient information.

Per initialisation ``i`` a fresh **evaluation set** ``E_i`` of ``eval_rows`` rows (batch index
:data:`EVAL_BATCH` of the initialisation's stream), the same for every estimate of ``i``, so that
comparisons are paired. For an estimate ``g`` and a **metric** (a set of stepped layers, every other
parameter held) the record is the *relative* loss-decrease curve over the lr grid

    ``r(lr) = [L_E(w) − L_E(w − lr · ĝ)] / L_E(w)``,

``ĝ`` being ``g`` restricted to the stepped layers and normalised per layer. The metrics:

* ``hidden``: the hidden layers jointly, readout held. Every estimator is exact on the linear
  readout, so this is where they differ; the findings use it;
* each hidden layer alone (``fc1.weight`` …, the parameter's name);
* ``all``: every layer, readout included (the notes' step, scored on new rows);
* ``hidden_in_sample``: as ``hidden``, but on the gradient's own batch. In-sample: shown beside the
  held-out numbers, labelled, never used in a claim.

Controls: ``random`` (a seeded Gaussian direction on the hidden layers: scored on the hidden
metrics, it should decrease nothing) and ``shrink_readout`` (``g = v`` on the readout, zero
elsewhere: a direction that uses no data; scored on ``all``, it shows how much of that metric the
readout alone decides).
"""
from __future__ import annotations

from typing import Any, Sequence, TypedDict

import numpy as np
import torch

from lib.common.files import canonical_json
from lib.core.evaluate import HeldOutSet
from lib.training.gaussian import seeded_generator

EVAL_BATCH = 30_000  # batch index of an initialisation's evaluation set
LARGE_BATCH = 40_000  # gradient batches of the large batch sizes: 40_000 + 100·k + b
HIDDEN = "hidden"
ALL = "all"
IN_SAMPLE = "hidden_in_sample"
RANDOM = "random"
SHRINK_READOUT = "shrink_readout"
READOUT = "readout.weight"


class PopulationCurves(TypedDict):
    """The curves of one (estimate, metric, gradient batch size), one per repetition."""

    estimate: dict[str, Any]  # {estimator, layers, hyper-parameters}, as the run's curve records
    metric: str
    batch_size: int
    inits: list[int]  # the initialisation of each repetition
    curves: list[list[float]]  # r(lr) per repetition, over the run's lrs


def hidden_layers(model: torch.nn.Module) -> list[str]:
    """The parameters of the hidden layers, front to back (everything but the readout)."""
    return [n for n, _ in model.named_parameters() if not n.startswith("readout.")]


def metrics_for(estimate: dict[str, Any], hidden: Sequence[str], main_batch: bool, most_samples: int) -> list[str]:
    """The metrics an estimate is scored on (module docstring): the controls on theirs; an
    estimate on the last two layers (NES or the exact smoothed gradient of the diagnosis) on the
    last hidden layer; NES with fewer than ``most_samples`` directions on ``hidden`` and in-sample;
    every other estimate on the hidden metrics, and at the notes' batch size also on ``all`` and
    in-sample."""
    per_layer = list(hidden)
    if estimate["estimator"] == SHRINK_READOUT:
        return [ALL]
    if estimate["estimator"] == RANDOM:
        return [HIDDEN] + per_layer
    if estimate["layers"] == "last_two":
        return [hidden[-1]]
    if estimate["estimator"] == "nes" and estimate["samples"] < most_samples:
        return [HIDDEN, IN_SAMPLE]
    return [HIDDEN] + per_layer + ([ALL, IN_SAMPLE] if main_batch else [])


def random_direction(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The random control: i.i.d. N(0, 1) entries on each hidden layer, from ``seed``."""
    gen = seeded_generator(seed)
    params = dict(model.named_parameters())
    return {n: torch.randn(params[n].shape, generator=gen, dtype=torch.float64).to(params[n])
            for n in hidden_layers(model)}


def shrink_readout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The data-free control ``g = v`` on the readout (a step shrinks the readout towards 0)."""
    return {READOUT: dict(model.named_parameters())[READOUT].detach().clone()}


class Scorer:
    """The population metrics of one initialisation's model: its evaluation set (and, per
    repetition, the gradient batch for the in-sample metric)."""

    def __init__(self, model: torch.nn.Module, x_eval: torch.Tensor, y_eval: torch.Tensor,
                 lrs: Sequence[float], normalize: str) -> None:
        self.model, self.lrs, self.normalize = model, list(lrs), normalize
        self.held_out = HeldOutSet(model, x_eval, y_eval)
        self.hidden = hidden_layers(model)
        self.in_sample: HeldOutSet | None = None

    @property
    def base_loss(self) -> float:
        """``L_E(w)``: the population loss at the evaluated weights."""
        return self.held_out.base

    def with_batch(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The gradient batch of the current repetition, for the in-sample metric."""
        self.in_sample = HeldOutSet(self.model, x, y)

    def layers_of(self, metric: str) -> list[str]:
        return {HIDDEN: self.hidden, IN_SAMPLE: self.hidden, ALL: self.hidden + [READOUT]}.get(metric, [metric])

    def curve(self, grads: dict[str, torch.Tensor], metric: str) -> np.ndarray:
        """``r(lr)`` of ``grads`` on ``metric``; layers the estimate lacks count as 0 (not stepped)."""
        target = self.in_sample if metric == IN_SAMPLE else self.held_out
        if target is None:
            raise RuntimeError("Scorer: the in-sample metric needs with_batch() first")
        layers = [n for n in self.layers_of(metric) if n in grads]
        if not layers:
            raise ValueError(f"Scorer: the estimate has none of the layers of metric {metric!r}")
        return target.decrease(grads, self.lrs, layers, self.normalize) / target.base


class PopulationTally:
    """The population curves of a run so far, in the order they were produced (resumable)."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        data = data or {"records": [], "base_losses": []}
        self.records: dict[str, PopulationCurves] = {
            canonical_json([r["estimate"], r["metric"], r["batch_size"]]): r for r in data["records"]}
        self.base_losses: list[dict[str, float]] = data["base_losses"]

    def base_loss(self, init: int, loss: float) -> None:
        if not any(b["init"] == init for b in self.base_losses):
            self.base_losses.append({"init": init, "loss": loss})

    def score(self, scorer: Scorer, estimate: dict[str, Any], grads: dict[str, torch.Tensor], init: int,
              batch_size: int, main_batch: bool, most_samples: int) -> None:
        """Score ``grads`` on every metric of :func:`metrics_for` and append the curves."""
        for metric in metrics_for(estimate, scorer.hidden, main_batch, most_samples):
            key = canonical_json([estimate, metric, batch_size])
            rec = self.records.setdefault(key, PopulationCurves(estimate=estimate, metric=metric,
                                                                batch_size=batch_size, inits=[], curves=[]))
            rec["inits"].append(init)
            rec["curves"].append([float(v) for v in scorer.curve(grads, metric)])

    def state(self) -> dict[str, Any]:
        return {"records": list(self.records.values()), "base_losses": self.base_losses}
