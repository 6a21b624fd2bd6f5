"""The perturbation engine: loss changes of many perturbed copies of one model, batched.

All models of the project are compositions of *units* (``model.units``, see
:mod:`lib.core.models`). The cost of CDG and NES is loss evaluations of perturbed copies of one
model (docs/design.md §7), so:

* the inputs of every unit are computed **once** (:func:`forward_cache`); a copy whose
  perturbation lives in unit ``u`` is evaluated from ``u`` on only;
* **CDG** (:func:`lib.core.coordinates.coordinate_loss_changes`): a single-weight change
  ``W_ji += δ`` of a linear unit moves pre-activation ``z_j`` by ``δ · a_i`` (``a`` = the unit's
  input). With a step activation the unit's output changes only on the samples whose
  ``q(z_j)`` changes level (the *flips*), and the per-sample loss of every other sample is
  unchanged, so ``ΔL = (1/N) Σ_{n flipped} (ℓ'_n − ℓ_n)``; each flip of unit ``j`` to a level
  leads to the same state whichever weight of row ``j`` caused it, so those loss changes are
  tabulated once per row for the samples near a threshold (:mod:`lib.core.flips`). An affine
  unit followed by affine units under MSE has a closed form. A binary conv unit's weight
  ``W[j, c, kh, kw]`` moves output channel ``j`` by ``δ`` times input channel ``c`` shifted by
  ``(kh, kw)``; any other parameter falls back to ``torch.func.vmap`` over perturbed copies.
* **NES** (:func:`lib.core.directions.direction_losses`): ``K`` jointly perturbed copies per
  chunk, both antithetic signs, one batched pass from the first perturbed unit on (whose
  projection ``U·h`` of the shared input is computed once for both signs): batched matmuls
  through a chain of linear units, else ``torch.func.functional_call`` under ``vmap``.

This module holds what both share: the units, where each parameter lives, the forward cache and
the chunk sizes. Chunks are sized to a memory budget (``budget_mb``, :func:`chunk_budget_mb`);
results do not depend on the chunks except in floating-point summation order. (NES draws its
directions in blocks sized from ``budget_mb`` itself, since torch's normal sampler gives other
numbers for other block sizes; a device's larger chunks hold several blocks.)
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

DEFAULT_BUDGET_MB = 8  # CDG chunks: small chunks stay in cache and run fastest on CPU
NES_BUDGET_MB = 32  # NES chunks: enough perturbed copies per batched matmul
DEVICE_SHARE, DEVICE_CAP_MB = 16, 4096  # on CUDA: chunks of 1/16 of the device's memory, at most 4 GiB
KEEP_FREED_MB = 1024  # host blocks up to this size come from, and go back to, malloc's heap
KEEP_FREED_MEMORY = True  # False: leave malloc's settings alone (benchmarks/nes.py measures both)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_kept = False


# ----------------------------------------------------------------------------- structure

def units_of(model: nn.Module) -> list[nn.Module]:
    """``model.units``; ``ValueError`` when the model does not follow the units protocol."""
    units = getattr(model, "units", None)
    if units is None:
        raise ValueError("model: expected a model with a `units` list (see lib.core.models)")
    return list(units)


@dataclass(frozen=True)
class ParamLocation:
    """Where parameter ``name`` of the model lives: unit index and its name inside the unit."""

    name: str
    unit: int
    local: str


def locate_parameters(model: nn.Module) -> dict[str, ParamLocation]:
    """``{model parameter name: ParamLocation}`` for every parameter of every unit."""
    owner: dict[int, tuple[int, str]] = {}
    for u, unit in enumerate(units_of(model)):
        for local, p in unit.named_parameters():
            owner.setdefault(id(p), (u, local))
    out: dict[str, ParamLocation] = {}
    for name, p in model.named_parameters():
        if id(p) not in owner:
            raise ValueError(f"model: parameter {name!r} belongs to no unit")
        u, local = owner[id(p)]
        out[name] = ParamLocation(name, u, local)
    return out


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluate with BatchNorm in eval mode (every sample independent), restoring the mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def forward_cache(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """``[x, u_0(x), u_1(u_0(x)), …]``: the input of every unit and, last, the output."""
    xs = [x]
    for unit in units_of(model):
        xs.append(unit(xs[-1]))
    return xs


def run_units(units: Sequence[nn.Module], h: torch.Tensor) -> torch.Tensor:
    """Apply ``units`` in order to ``h``."""
    for unit in units:
        h = unit(h)
    return h


def rows_per_chunk(row_numel: int, budget_mb: float, itemsize: int) -> int:
    """Rows of ``row_numel`` elements per chunk so that a chunk (and its temporaries) fits in
    ``budget_mb``."""
    return max(1, int(budget_mb * 2**20 / max(1, row_numel * itemsize * 4)))


def chunk_budget_mb(budget_mb: float, device: torch.device) -> float:
    """The memory budget of one chunk on ``device``: ``budget_mb`` on the CPU (small chunks stay in
    cache); on a CUDA device ``max(budget_mb, min(total / DEVICE_SHARE, DEVICE_CAP_MB))`` of its
    total memory, so its many cores get enough copies per batched call. From the total, not the
    free memory, so that the chunks, and the last bits of the sums, do not change from call to call."""
    if device.type != "cuda":
        return budget_mb
    _free, total = torch.cuda.mem_get_info(device)
    return max(budget_mb, min(total / DEVICE_SHARE / 2**20, DEVICE_CAP_MB))


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed host memory for the next chunk: blocks up to
    ``KEEP_FREED_MB`` come from its heap (``mallopt(M_MMAP_THRESHOLD)``) and freed ones stay there
    (``mallopt(M_TRIM_THRESHOLD)``). By default glibc maps every block of 32 MiB or more (and,
    as the heap is trimmed, many smaller ones) fresh from the kernel and returns it when freed,
    so every chunk's activations page-fault again: in a fresh process that made a toy step's NES
    at num_dim 64 take 1.8 times as long (docs/performance.md). The numbers do not change; the
    process keeps its peak memory instead of returning it. Once per process; ``False`` where
    there is no glibc (the setting is then the platform's) or :data:`KEEP_FREED_MEMORY` is off."""
    global _kept
    if _kept or not KEEP_FREED_MEMORY:
        return _kept
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    limit = KEEP_FREED_MB * 2**20
    _kept = bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * limit))
    return _kept
