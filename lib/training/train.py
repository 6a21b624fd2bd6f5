"""STE training (toy pretraining, docs/design.md §3, and the thin ResNet, §4) and a checkpoint cache.

Checkpoints hold tensors and strings only and are read back with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import copy
import io
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lib.common.files import atomic_write_bytes, canonical_json, content_key
from lib.core.losses import LossSpec, batch_loss, check_loss
from lib.core.quantizers import get_surrogate, use_surrogate

BatchFn = Callable[[int], tuple[torch.Tensor, torch.Tensor]]

TRAIN_DTYPE = torch.float64  # machine-independent training (docs/design.md §3 and §4)


def dtype_name(dtype: torch.dtype) -> str:
    """``"float64"`` for ``torch.float64``."""
    return str(dtype).removeprefix("torch.")


def train_wide(model: nn.Module, train: Callable[[nn.Module], list[float]],
               dtype: torch.dtype = TRAIN_DTYPE) -> list[float]:
    """Run ``train`` on a copy of ``model`` in ``dtype`` (its batches must come in ``dtype`` too);
    ``model`` keeps its own dtype and gets the trained parameters and buffers, rounded to it
    (``load_state_dict`` copies). Returns what ``train`` returns (the loss curve).

    Why: in float32 the last bits of the BLAS and convolution sums differ between CPUs (their
    vector instructions), and a few thousand steps of a binary network turn those bits into a
    different model; in float64 the differences stay below float32's rounding."""
    wide = copy.deepcopy(model).to(dtype)
    curve = train(wide)
    model.load_state_dict(wide.state_dict())
    return curve


def _model_device(model: nn.Module) -> torch.device | None:
    for p in model.parameters():
        return p.device
    return None


def train_ste(model: nn.Module, batch_fn: BatchFn, steps: int, loss: LossSpec = "mse",
              variant: str = "clipped", lr: float = 1e-3, progress: bool = True,
              desc: str = "train") -> list[float]:
    """Adam (learning rate ``lr``) on the parameters of ``model`` that require grad, for ``steps``
    steps; step ``t`` minimises ``L_t = mean_n ℓ(model(x_t)_n, y_t,n)`` with ``(x_t, y_t) =
    batch_fn(t)``, back-propagating through every quantizer with the STE ``variant``.

    The model is in train mode during the loop (BatchNorm statistics update) and in eval mode
    afterwards. Returns the per-step losses ``[L_0, …, L_{steps−1}]`` (before each update). A
    non-finite loss raises ``FloatingPointError``.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps: expected a non-negative integer, got {steps!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr: expected a positive number, got {lr!r}")
    check_loss(loss)
    get_surrogate(variant)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: no parameter requires grad")
    from tqdm.auto import tqdm

    device = _model_device(model)
    opt = torch.optim.Adam(params, lr=lr)
    curve: list[float] = []
    model.train()
    try:
        with use_surrogate(model, variant), torch.enable_grad(), \
                tqdm(total=steps, desc=desc, disable=not progress, leave=False) as bar:
            for step in range(steps):
                x, y = batch_fn(step)
                x, y = x.to(device), y.to(device)
                opt.zero_grad(set_to_none=True)
                value = batch_loss(model(x), y, loss)
                value.backward()
                opt.step()
                curve.append(float(value.detach()))
                bar.update(1)
                if progress and (step % 10 == 0 or step == steps - 1):
                    bar.set_postfix(loss=f"{curve[-1]:.4g}")
    finally:
        model.eval()
    return curve


def _read_checkpoint(path: Path, params_json: str, model: nn.Module) -> list[float] | None:
    """Load the checkpoint at ``path`` into ``model`` and return its curve; ``None`` after moving
    it aside with a warning naming both files, so that it is trained again: an unreadable one
    (empty, truncated, foreign) to ``<name>.corrupt``, a readable one written for other parameters
    (copied or renamed into the cache by hand) to ``<name>.other-parameters``."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        stored_json = ckpt.get("params_json")
        if stored_json == params_json:
            model.load_state_dict(ckpt["state_dict"])
            return [float(v) for v in ckpt["curve"].tolist()]
        why, suffix = "was written for other parameters", ".other-parameters"
    except Exception as exc:  # a truncated, empty or foreign file: torch raises many kinds
        why, suffix = f"is unreadable ({type(exc).__name__})", ".corrupt"
    aside = path.with_name(path.name + suffix)
    os.replace(path, aside)
    print(f"warning: checkpoint {path} {why}; moved to {aside.name}, training again", file=sys.stderr)
    return None


def cached_train(cache_dir: str | os.PathLike, params: dict[str, Any], build_model: Callable[[], nn.Module],
                 train: Callable[[nn.Module], list[float]]) -> tuple[nn.Module, list[float], bool]:
    """Train once per ``params``: ``(model, curve, hit)``.

    The checkpoint is ``cache_dir/<content_key(params)>.pt`` (:func:`lib.common.files.content_key`) holding
    ``{"state_dict", "curve" (float64 tensor), "params_json"}``. On a hit the model from
    ``build_model()`` gets the stored state (``torch.load(weights_only=True)``) and ``train`` is not
    called; otherwise ``train(model)`` runs and the checkpoint is written atomically (temporary
    file in the same folder, then ``os.replace``). The model is returned in eval mode.
    """
    if not isinstance(params, dict):
        raise TypeError(f"params: expected a dict, got {type(params).__name__}")
    key, text = content_key(params), canonical_json(params)
    path = Path(cache_dir) / f"{key}.pt"
    model = build_model()
    if path.is_file():
        stored = _read_checkpoint(path, text, model)
        if stored is not None:
            model.eval()
            return model, stored, True
    curve = [float(v) for v in train(model)]
    model.eval()
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"state_dict": state, "curve": torch.tensor(curve, dtype=torch.float64), "params_json": text}, buf)
    atomic_write_bytes(path, buf.getvalue())
    return model, curve, False
