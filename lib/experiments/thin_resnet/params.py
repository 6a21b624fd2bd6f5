"""Parameters of the thin ResNet experiment (docs/design.md §4): the single declaration of their
names, types, defaults and ranges (:mod:`lib.experiments.schema`) and the cross-field rules."""
from __future__ import annotations

from dataclasses import dataclass

from lib.common.paths import repo_path
from lib.common.resources import folder_problem, memory_problem
from lib.core.names import STE_VARIANTS
from lib.experiments.schema import (DEVICE, NON_EMPTY, NON_NEGATIVE_INT, NORMALIZATION, POSITIVE, POSITIVE_INT,
                                    PRECISION, STE_VARIANT, one_of, param, validate)
from lib.training.image_files import IMAGE_SIZE, image_counts, source_path

EXPERIMENT = "thin_resnet"
STATES = ("init", "trained")
NUM_CLASSES = 10
IN_CHANNELS = 3
LOSS = "cross_entropy"
CACHE_VERSION = 1  # bump when the training procedure changes: old checkpoints stop matching


@dataclass
class ThinResNetParams:
    """Parameters of one thin ResNet run (the notebook's ``parameters`` cell, minus ``results_path``)."""

    initial_channels: int = param(8, POSITIVE_INT)       # c: stage widths c, 2c, 4c, 8c
    states: list[str] = param(["init", "trained"], one_of(*STATES))
    acts: list[str] = param(["binary", "fp"], PRECISION)  # the profiles compare all four
    ste_variants: list[str] = param(list(STE_VARIANTS), STE_VARIANT)
    eps: list[float] = param([0.1], POSITIVE)            # CDG steps, central differences
    coords_per_layer: int = param(8, POSITIVE_INT)       # sampled coordinates of each binary conv weight
    coord_sets: int = param(3, POSITIVE_INT)             # independent seeded sets of them: the n of the intervals
    noise_ceiling: bool = param(True)                    # CDG on a second batch too: the reference's own noise
    batch_size: int = param(32, POSITIVE_INT)            # images in the gradient batch
    resolution_batch_sizes: list[int] = param([], POSITIVE_INT, may_be_empty=True)  # binary: ceiling at more N
    lrs: list[float] = param([0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0], POSITIVE)
    normalize: str = param("layer", NORMALIZATION)
    decrease_acts: list[str] = param(["binary"], PRECISION, may_be_empty=True)
    decrease_batches: int = param(0, NON_NEGATIVE_INT)  # held-out decreases over this many gradient batches
    equivalence_margin: float = param(0.002, POSITIVE)  # "A matches B": |paired difference| of relative decreases
    binary_weights: bool = param(False)
    train_epochs: int = param(1, NON_NEGATIVE_INT)
    train_batch_size: int = param(64, POSITIVE_INT)
    train_lr: float = param(0.001, POSITIVE)
    train_variant: str = param("clipped", STE_VARIANT)
    train_limit: int = param(0, NON_NEGATIVE_INT)        # training images; 0 means all
    init_bn_batches: int = param(8, NON_NEGATIVE_INT)
    test_limit: int = param(512, NON_NEGATIVE_INT)       # held-out images for the accuracy; 0 means none
    seed: int = param(0, NON_NEGATIVE_INT)
    device: str = param("cpu", DEVICE)
    data_source: str = param("digits", NON_EMPTY)        # digits, teacher, or a CIFAR-10 binary-version folder
    cache_dir: str = param("cache/thin_resnet", NON_EMPTY)
    budget_mb: float = param(8.0, POSITIVE)              # memory budget of one CDG chunk (CPU; CUDA: more)

    def __post_init__(self) -> None:
        validate(self)

    def problems(self) -> list[tuple[str, str]]:
        """Inconsistent values, as ``(key, message)``."""
        out = []
        missing = [a for a in self.decrease_acts if a not in self.acts]
        if missing:
            out.append(("decrease_acts", f"{missing} not in acts {self.acts}"))
        if "trained" in self.states and self.train_epochs < 1:
            out.append(("train_epochs", "the trained state needs at least one epoch"))
        if self.decrease_batches == 1:
            out.append(("decrease_batches", "a paired interval over batches needs at least 2 (0: none)"))
        if self.decrease_batches and self.decrease_acts and not self.test_limit:
            out.append(("test_limit", "the held-out decreases over batches are scored on the test images: "
                                      "set test_limit (e.g. 512)"))
        if self.data_source == "teacher" and not self.train_limit:
            out.append(("train_limit", "the teacher source generates as many training images as asked: "
                                       "set train_limit (e.g. 4096)"))
        return out

    def images_needed(self) -> int:
        """Training images the analyses draw: the gradient batch, the noise ceiling's batch, two
        disjoint batches of each of ``resolution_batch_sizes`` and the ``decrease_batches``."""
        return (self.batch_size * ((2 if self.noise_ceiling else 1) + self.held_out_batches())
                + 2 * sum(self.resolution_batch_sizes))

    def held_out_batches(self) -> int:
        """The gradient batches of the held-out decreases: ``decrease_batches`` when some precision
        has the decrease analysis, else none."""
        return self.decrease_batches if self.decrease_acts else 0

    def batches_text(self) -> str:
        """The batches beyond the gradient batch and the ceiling's, in words (for error messages)."""
        return ((" and two of each of resolution_batch_sizes " + str(self.resolution_batch_sizes)
                 if self.resolution_batch_sizes else "")
                + (f" and {self.held_out_batches()} decrease batches of {self.batch_size}"
                   if self.held_out_batches() else ""))

    def machine_problems(self) -> list[tuple[str, str]]:
        """What this machine cannot give the run, as ``(key, message)``, found without reading
        pixels: the data source (``digits``, ``teacher`` or a CIFAR-10 folder whose files have whole records),
        enough training images for the batch (two with the noise ceiling), a writable cache folder
        for trained models, and memory for the largest tensor (the float32 training images, or a
        first-stage feature map ``B × c × 32 × 32`` of the larger batch ``B``)."""
        try:
            counts = image_counts(source_path(self.data_source))
        except (OSError, ValueError) as exc:
            return [("data_source", str(exc))]
        images = min(self.train_limit, counts["train"]) if self.train_limit else counts["train"]
        needed = self.images_needed()
        if needed > images:
            capped = images < counts["train"]
            held = f"train_limit keeps {images} of {self.data_source}'s {counts['train']}" if capped \
                else f"{self.data_source} has {images}"
            return [("train_limit" if capped else "batch_size",
                     f"{needed} training images needed ({'two batches' if self.noise_ceiling else 'one batch'} "
                     f"of {self.batch_size}{self.batches_text()}); {held}")]
        if "trained" in self.states:
            problem = folder_problem(repo_path(self.cache_dir))
            if problem:
                return [("cache_dir", problem)]
        pixels = IMAGE_SIZE * IMAGE_SIZE
        batch_key = "batch_size" if self.batch_size >= self.train_batch_size else "train_batch_size"
        batch = getattr(self, batch_key)
        largest = max(("train_limit", 4 * images * IN_CHANNELS * pixels, f"{images} training images (float32)"),
                      (batch_key, 4 * batch * self.initial_channels * pixels,
                       f"a feature map of {batch} images × {self.initial_channels} channels × {IMAGE_SIZE}² (float32)"),
                      key=lambda t: t[1])
        problem = memory_problem(largest[1], largest[2])
        return [(largest[0], problem)] if problem else []
