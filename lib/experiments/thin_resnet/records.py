"""The typed records of a thin ResNet run's results file (JSON), written by :mod:`.run` and
:mod:`.analysis`, read by the summary, figures and section. NaN is stored as ``null``."""
from __future__ import annotations

from typing import Any, Optional, TypedDict

from lib.experiments.records import RunResults, parameters_of

from .held_out import HeldOutDecreases
from .params import ThinResNetParams


class DataInfo(TypedDict):
    source: str                   # the data source (params: data_source)
    train_images: int
    test_images: int              # held-out images (0: none)
    batch_size: int               # images of the gradient batch
    image_shape: list[int]
    batch_class_counts: list[int]


class Layer(TypedDict):
    """One of the 16 binary conv weights, front to back."""

    name: str
    label: str                    # "stage.block.conv", e.g. "1.0.1"
    stage: int
    numel: int


class Cosines(TypedDict, total=False):
    """A cosine per layer and over all layers, the means over the coordinate sets, with the sets
    themselves (each ``{per_layer, all}``); keyed by ``variant`` and/or ``eps`` where it has them."""

    variant: str
    eps: float
    per_layer: list[Optional[float]]
    all: Optional[float]
    sets: list[dict[str, Any]]


class AtBatch(TypedDict):
    """CDG's noise ceiling, each variant's cross-batch cosine and own ceiling at ``batch_size`` images."""

    batch_size: int
    eps: float
    ceiling: Cosines
    cross: list[Cosines]
    ste_ceiling: list[Cosines]


class Decrease(TypedDict, total=False):
    """The in-sample single-layer decrease curve of one estimate on one layer (mean over the sets)."""

    layer: str
    estimator: str                # "cdg" or "ste"
    eps: float
    variant: str
    curve: list[Optional[float]]  # over the run's lrs
    best: Optional[float]
    best_lr: Optional[float]
    interval: Optional[list[float]]  # 95% interval of the sets' values at best_lr
    n: int
    sets: list[dict[str, Any]]


class Analysis(TypedDict, total=False):
    """One (state, precision): the model's loss and accuracies, how it was made (``state_info``:
    init: ``bn_calibration_batches``; trained: ``cache_hit``, ``steps``, ``train_s``, ``dtype``,
    ``curve``, ``final_loss``), and CDG against the STE (:func:`.analysis.analyse`)."""

    state: str                    # "init" or "trained"
    act: str                      # the activation precision
    loss: float
    batch_accuracy: float
    test_accuracy: Optional[float]
    state_info: dict[str, Any]
    timings: dict[str, Any]       # seconds: ste_s, cdg_s (per ε), by_batch_s, decrease_s, held_out_s, total_s
    cosines: list[Cosines]        # cos(CDG, STE) per variant and ε, on the gradient batch
    ceiling: list[Cosines]        # cos(CDG_a, CDG_b) on an independent batch (the main ε)
    cross_cosines: list[Cosines]  # cos(CDG_b, STE_a)
    ste_ceiling: list[Cosines]    # cos(STE_a, STE_b) on CDG's coordinates
    magnitudes: list[dict[str, Any]]  # RMS per layer: {estimator, eps | variant, per_layer[, all_coordinates]}
    sampled: list[list[int]]      # coordinates per set and layer
    by_batch: list[AtBatch]       # binary: the ceiling at larger batches
    decrease: list[Decrease]      # in-sample, for the decrease_acts
    held_out: HeldOutDecreases    # with decrease_batches


class ThinResNetResults(RunResults):
    """A thin ResNet run's results file (one ``initial_channels``; ``parameters``: ThinResNetParams)."""

    seed: int
    initial_channels: int
    eps: list[float]
    eps_main: float               # the ε of the tables and figures
    lrs: list[float]
    ste_variants: list[str]
    data: DataInfo
    layers: list[Layer]
    decrease_layers: list[str]    # the first, a middle and the last binary layer
    analyses: list[Analysis]      # one per (state, precision), in the order of the parameters


def params_of(results: ThinResNetResults) -> ThinResNetParams:
    """The run's parameters as :class:`ThinResNetParams` (:func:`lib.experiments.records.parameters_of`)."""
    return parameters_of(results, ThinResNetParams)
