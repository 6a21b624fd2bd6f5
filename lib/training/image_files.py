"""The image sources of the thin ResNet as files, without reading their pixels (no torch, no
numpy): the CIFAR-10 binary layout, and how many images a source holds, from file sizes only.

The runner calls :func:`image_counts` for every grid point before compute, so a missing or
corrupt CIFAR-10 folder, or a batch larger than the data, is refused before anything runs;
:mod:`lib.training.images` reads the pixels with the same layout and checks.
"""
from __future__ import annotations

import os
from pathlib import Path

from lib.common.paths import repo_path

IMAGE_SIZE = 32  # every source gives 3 × 32 × 32 images (the digits are upsampled)
CIFAR10_RECORD = 1 + 3 * 32 * 32  # label byte + R, G, B planes of 32×32, row-major
CIFAR10_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
CIFAR10_LAYOUT = ("the CIFAR-10 binary version: a folder holding data_batch_1.bin … data_batch_5.bin and "
                  "test_batch.bin (or a folder containing cifar-10-batches-bin/ with them); each record is "
                  f"1 label byte + 3072 pixel bytes ({CIFAR10_RECORD} bytes)")
DIGITS_TRAIN = 1437  # of scikit-learn's 1797 digits; the other 360 are the test split
DIGITS_TOTAL = 1797
# The generated teacher-labelled images (lib/training/teacher_images.py): as many as asked, up to these.
TEACHER_COUNTS = {"train": 1_000_000, "test": 100_000}


GENERATED = ("digits", "teacher")  # the sources that are not folders


def source_path(source: str) -> str:
    """``"digits"``, ``"teacher"``, or the absolute path of a CIFAR-10 folder (a relative one is
    taken from the repository root): what a run reads, and what keys its trained checkpoints."""
    return source if source in GENERATED else str(repo_path(source).resolve())


def cifar_dir(root: str | os.PathLike) -> Path:
    """The folder holding the CIFAR-10 batch files: ``root`` or its ``cifar-10-batches-bin/``.
    ``FileNotFoundError`` naming ``root`` when it is not a folder."""
    path = Path(root)
    if path.exists() and not path.is_dir():
        raise FileNotFoundError(f"CIFAR-10 folder {str(path)!r} is a file; expected {CIFAR10_LAYOUT}")
    if not path.is_dir():
        raise FileNotFoundError(f"CIFAR-10 folder {str(path)!r} does not exist; expected {CIFAR10_LAYOUT}")
    nested = path / "cifar-10-batches-bin"
    return nested if nested.is_dir() else path


def cifar_records(path: Path) -> int:
    """The number of records of one CIFAR-10 batch file, from its size: ``FileNotFoundError`` when
    it is missing, ``ValueError`` naming it when its size is not a positive multiple of a record."""
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 file {str(path)!r} is missing; expected {CIFAR10_LAYOUT}")
    size = path.stat().st_size
    if size == 0 or size % CIFAR10_RECORD:
        raise ValueError(f"CIFAR-10 file {str(path)!r} is corrupt: {size} bytes is not a positive multiple "
                         f"of the {CIFAR10_RECORD}-byte record")
    return size // CIFAR10_RECORD


def image_counts(source: str | os.PathLike) -> dict[str, int]:
    """``{"train": n, "test": n}``: the images ``source`` holds (``"digits"``, or the path of a
    CIFAR-10 binary folder: every batch file must be present and of a whole number of records).
    ``FileNotFoundError`` or ``ValueError`` naming the path otherwise."""
    if isinstance(source, str) and source == "digits":
        return {"train": DIGITS_TRAIN, "test": DIGITS_TOTAL - DIGITS_TRAIN}
    if isinstance(source, str) and source == "teacher":
        return dict(TEACHER_COUNTS)
    if not Path(source).exists():
        raise FileNotFoundError(f"image source {str(source)!r}: not 'digits' or 'teacher' and no such path; expected "
                                f"'digits', 'teacher' or the path of {CIFAR10_LAYOUT}")
    folder = cifar_dir(source)
    return {split: sum(cifar_records(folder / name) for name in names) for split, names in CIFAR10_FILES.items()}
