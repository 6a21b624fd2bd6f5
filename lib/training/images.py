"""Image data for the thin ResNet (docs/design.md §4); nothing is ever downloaded.

* ``source="digits"`` (default): scikit-learn's embedded ``load_digits`` (1797 grayscale 8×8
  digits, 10 classes, shipped inside the package), upsampled to 32×32, replicated to 3 channels.
* a path: a local copy of CIFAR-10, **binary version** (``data_batch_1.bin`` … ``data_batch_5.bin``,
  ``test_batch.bin``), parsed with numpy; nothing is unpickled.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .image_files import CIFAR10_FILES, CIFAR10_RECORD, DIGITS_TRAIN, cifar_dir, cifar_records, image_counts

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")


def _check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit: expected None or a positive integer, got {limit!r}")


def _read_cifar_file(path: Path, max_records: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels uint8 (n, 3, 32, 32), labels uint8 (n,))`` of one binary batch file."""
    records = cifar_records(path)
    n = records if max_records is None else min(records, max_records)
    raw = np.fromfile(path, dtype=np.uint8, count=n * CIFAR10_RECORD).reshape(n, CIFAR10_RECORD)
    labels = raw[:, 0]
    if labels.size and labels.max() > 9:
        raise ValueError(f"CIFAR-10 file {str(path)!r} is corrupt: label {int(labels.max())} > 9")
    return raw[:, 1:].reshape(n, 3, 32, 32), labels


def load_cifar10(root: str | os.PathLike, split: str = "train",
                 limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 (binary version) from ``root``: ``x`` float32 ``(N, 3, 32, 32)`` with
    ``x[n, ch] = (pixel / 255 − mean_ch) / std_ch`` (``CIFAR10_MEAN``, ``CIFAR10_STD``), ``y`` int64.

    ``limit`` keeps the first ``limit`` records (in file order). ``FileNotFoundError`` naming the
    path for a missing folder or file; ``ValueError`` naming the file when it is corrupt.
    """
    _check_split(split)
    _check_limit(limit)
    folder = cifar_dir(root)
    pixels, labels = [], []
    remaining = limit
    for name in CIFAR10_FILES[split]:
        if remaining is not None and remaining <= 0:
            break
        p, lab = _read_cifar_file(folder / name, remaining)
        pixels.append(p)
        labels.append(lab)
        if remaining is not None:
            remaining -= len(lab)
    x = torch.from_numpy(np.concatenate(pixels)).to(torch.float32) / 255.0
    mean = torch.tensor(CIFAR10_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, dtype=torch.float32).view(1, 3, 1, 1)
    x = (x - mean) / std
    y = torch.from_numpy(np.concatenate(labels).astype(np.int64))
    return x.contiguous(), y


def load_digits32(split: str = "train", limit: int | None = None,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's embedded digits as 32×32 RGB-shaped images.

    Pixels ``/16``, bilinear upsampling 8×8 → 32×32 (``align_corners=False``), then
    ``x = (x − μ) / s`` with the scalar mean ``μ`` and std ``s`` of the *training* split, and the
    grey channel replicated to 3 channels. Split: a permutation of the 1797 images from a
    generator seeded with ``seed``; the first 1437 are ``train``, the last 360 ``test``.
    ``limit`` keeps the first ``limit`` images of the split.
    """
    _check_split(split)
    _check_limit(limit)
    from sklearn.datasets import load_digits  # embedded in the package, no download

    digits = load_digits()
    images = torch.from_numpy(np.asarray(digits.images, dtype=np.float32)).unsqueeze(1) / 16.0
    labels = torch.from_numpy(np.asarray(digits.target, dtype=np.int64))
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(int(seed)))
    train_idx, test_idx = perm[:DIGITS_TRAIN], perm[DIGITS_TRAIN:]
    up = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    mu = up[train_idx].mean()
    s = up[train_idx].std()
    idx = train_idx if split == "train" else test_idx
    if limit is not None:
        idx = idx[:limit]
    x = ((up[idx] - mu) / s).expand(-1, 3, -1, -1).contiguous()
    return x, labels[idx].clone()


def image_data(source: str | os.PathLike = "digits", split: str = "train",
               limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` from ``source``: ``"digits"`` (:func:`load_digits32`), ``"teacher"``
    (:func:`lib.training.teacher_images.teacher_images`) or the path of a local CIFAR-10 binary
    copy (:func:`load_cifar10`). Anything else raises ``FileNotFoundError`` naming it."""
    if isinstance(source, str) and source == "digits":
        return load_digits32(split, limit)
    if isinstance(source, str) and source == "teacher":
        _check_split(split)
        _check_limit(limit)
        from .teacher_images import teacher_images

        return teacher_images(split, limit)
    image_counts(source)  # FileNotFoundError or ValueError naming the path when it is missing or corrupt
    return load_cifar10(source, split, limit)


def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1_000_003 * int(seed) + int(epoch))
    return torch.randperm(n, generator=gen)


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, epoch: int,
            drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of one epoch: ``x[perm[k·B:(k+1)·B]]`` with ``perm`` a permutation drawn from a
    generator seeded with ``1000003·seed + epoch`` (deterministic; a different order every epoch).
    The last, smaller batch is kept unless ``drop_last``."""
    if len(x) != len(y):
        raise ValueError(f"x and y: different lengths {len(x)} and {len(y)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    perm = _epoch_permutation(len(x), seed, epoch)
    stop = len(x) - len(x) % batch_size if drop_last else len(x)
    for start in range(0, stop, batch_size):
        idx = perm[start:start + batch_size]
        yield x[idx], y[idx]


def step_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int,
                 seed: int) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """``batch_fn(step)`` for :func:`lib.training.train.train_ste`: full batches only, epoch after epoch;
    step ``t`` is batch ``t mod K`` of epoch ``t div K`` of :func:`batches` (``K = N div B``)."""
    if not isinstance(batch_size, int) or not 1 <= batch_size <= len(x):
        raise ValueError(f"batch_size: expected an integer in [1, {len(x)}], got {batch_size!r}")
    per_epoch = len(x) // batch_size
    cache: dict[int, torch.Tensor] = {}

    def batch_fn(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, k = divmod(int(step), per_epoch)
        if epoch not in cache:
            cache.clear()
            cache[epoch] = _epoch_permutation(len(x), seed, epoch)
        idx = cache[epoch][k * batch_size:(k + 1) * batch_size]
        return x[idx], y[idx]

    return batch_fn
