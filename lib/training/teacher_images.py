"""An unlimited, offline image source for the thin ResNet (docs/design.md §4, "Data"): seeded
images labelled by a seeded teacher thin ResNet, the toy's "two models" carried over to
convolutions. Any number of independent batches can be drawn, so the reference's noise ceiling
can be driven up with the batch size, which the 1,797 digits cannot.

* **Images.** Block ``b`` of :data:`BLOCK` images of a split is drawn from a generator seeded with
  ``SEED + 1_000_003 · split_index + b``: ``N(0, 1)`` on an 8 × 8 × 3 grid, bilinearly upsampled to
  32 × 32 (smooth, image-like) and multiplied by :data:`SCALE` (pixel deviation about 1). No
  reduction is involved, so the pixels do not depend on the thread count.
* **Teacher.** ``xnor_resnet18(TEACHER_CHANNELS, 10, act="binary", seed=SEED)`` in float64, its
  BatchNorm statistics averaged over :data:`CALIBRATION_BLOCKS` calibration blocks (a split of
  their own), in eval mode. Its label of an image is ``argmax_k (logit_k − m_k)``, ``m_k`` the mean
  logit of class ``k`` over the calibration blocks: without the centring a random network puts
  most images in a few classes. Float64 keeps the labels from depending on the last bits of the
  convolutions' sums (thread count, CPU), which a binary activation would turn into other labels.

The same arguments give the same images (float32) and labels on every call (they are generated,
not stored).
Change :data:`VERSION` (and the thin ResNet's cache version) if any of this changes.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from lib.core.resnet import XnorResNet, xnor_resnet18

from .image_files import IMAGE_SIZE, TEACHER_COUNTS

VERSION = 1
SEED = 20210517  # the date of the meeting notes
TEACHER_CHANNELS = 8
NUM_CLASSES = 10
BLOCK = 1024
CALIBRATION_BLOCKS = 2
SCALE = 1.4  # pixel deviation of the upsampled N(0, 1) grid is about 1 / 1.4
SPLITS = {"train": 0, "test": 1, "calibration": 2}


def image_block(split: str, block: int) -> torch.Tensor:
    """Block ``block`` (``BLOCK`` images, float64, 3 × 32 × 32) of ``split`` (module docstring)."""
    gen = torch.Generator().manual_seed(SEED + 1_000_003 * SPLITS[split] + int(block))
    low = torch.randn(BLOCK, 3, 8, 8, generator=gen, dtype=torch.float64)
    return SCALE * F.interpolate(low, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)


@functools.lru_cache(maxsize=1)
def teacher() -> tuple[XnorResNet, torch.Tensor]:
    """The teacher in eval mode and its class centring ``m`` (module docstring); one per process."""
    model = xnor_resnet18(TEACHER_CHANNELS, NUM_CLASSES, act="binary", seed=SEED).double()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    calibration = [image_block("calibration", b) for b in range(CALIBRATION_BLOCKS)]
    with torch.no_grad():
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # a plain average over the calibration blocks
        model.train()
        for x in calibration:
            model(x)
        model.eval()
        centre = torch.cat([model(x) for x in calibration]).mean(0)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, centre


@torch.no_grad()
def labels_of(x: torch.Tensor) -> torch.Tensor:
    """The teacher's labels ``argmax_k (logit_k − m_k)`` of images ``x`` (int64; computed in float64)."""
    model, centre = teacher()
    x = x.double()
    return torch.cat([(model(x[i:i + BLOCK]) - centre).argmax(1) for i in range(0, len(x), BLOCK)])


def teacher_images(split: str = "train", limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``: the first ``limit`` images of ``split`` (``train``: up to
    ``TEACHER_COUNTS["train"]``; ``test``: up to ``TEACHER_COUNTS["test"]``) and their teacher labels."""
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    n = TEACHER_COUNTS[split] if limit is None else min(int(limit), TEACHER_COUNTS[split])
    blocks = [image_block(split, b) for b in range(-(-n // BLOCK))]
    x = torch.cat(blocks)[:n] if blocks else torch.empty(0, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.float64)
    return x.float(), labels_of(x)
