"""The model states of the thin ResNet experiment: data, the freshly initialised model with
calibrated BatchNorm, the trained model (STE + Adam, cached), accuracy."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from lib.common.paths import repo_path
from lib.core.resnet import XnorResNet, xnor_resnet18
from lib.training.image_files import source_path
from lib.training.images import image_data, step_batches
from lib.training.train import TRAIN_DTYPE, cached_train, dtype_name, train_ste, train_wide

from .params import CACHE_VERSION, EXPERIMENT, IN_CHANNELS, LOSS, NUM_CLASSES, ThinResNetParams


def load_data(p: ThinResNetParams) -> dict[str, Any]:
    """Training images (``train_limit``, 0 = all), the gradient batch ``x, y`` (``batch_size``
    training images drawn with ``seed``), with ``noise_ceiling`` a second, disjoint batch
    ``x_ref, y_ref`` of the same size, ``resolution``: ``[(n, (x_a, y_a), (x_b, y_b))]`` two more
    disjoint batches of each of ``resolution_batch_sizes``, ``decrease_batches``: ``[(x_b, y_b)]``
    :meth:`ThinResNetParams.held_out_batches` more of ``batch_size``, all from one seeded permutation, and held-out images
    (``test_limit``) from ``data_source``."""
    x_train, y_train = image_data(source_path(p.data_source), "train", p.train_limit or None)
    needed = p.images_needed()
    if needed > len(x_train):
        raise ValueError(f"batch_size: {needed} images needed ({'two batches' if p.noise_ceiling else 'one batch'}"
                         f" of {p.batch_size}{p.batches_text()}), there are {len(x_train)} training images")
    gen = torch.Generator().manual_seed(int(p.seed))
    perm = torch.randperm(len(x_train), generator=gen)
    idx, ref = perm[:p.batch_size], perm[p.batch_size:2 * p.batch_size]
    data = {"x_train": x_train, "y_train": y_train, "x": x_train[idx], "y": y_train[idx]}
    if p.noise_ceiling:
        data["x_ref"], data["y_ref"] = x_train[ref], y_train[ref]
    start = p.batch_size * (2 if p.noise_ceiling else 1)
    data["resolution"] = []
    for n in p.resolution_batch_sizes:  # two disjoint batches of n images each, after the others
        a, b = perm[start:start + n], perm[start + n:start + 2 * n]
        data["resolution"].append((n, (x_train[a], y_train[a]), (x_train[b], y_train[b])))
        start += 2 * n
    data["decrease_batches"] = []
    for _ in range(p.held_out_batches()):
        b = perm[start:start + p.batch_size]
        data["decrease_batches"].append((x_train[b], y_train[b]))
        start += p.batch_size
    if p.test_limit:
        data["x_test"], data["y_test"] = image_data(source_path(p.data_source), "test", p.test_limit)
    return data


def build_model(p: ThinResNetParams, act: str) -> XnorResNet:
    """The freshly initialised model (weights from ``seed``) with activation precision ``act``."""
    return xnor_resnet18(p.initial_channels, NUM_CLASSES, act=act, surrogate=p.train_variant,
                         binary_weights=p.binary_weights, in_channels=IN_CHANNELS, seed=p.seed)


@torch.no_grad()
def calibrate_batchnorm(model: torch.nn.Module, x: torch.Tensor, batch_size: int, batches: int,
                        seed: int) -> None:
    """Running statistics of every BatchNorm = the plain average of the batch statistics over
    ``batches`` training batches (``momentum=None``), weights untouched; ends in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    dev = next(model.parameters()).device
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        gen = torch.Generator().manual_seed(int(seed) + 7919)
        perm = torch.randperm(len(x), generator=gen)
        for b in range(batches):
            idx = perm[b * batch_size:(b + 1) * batch_size]
            if len(idx) == 0:
                break
            model(x[idx].to(dev))
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.eval()


def train_params(p: ThinResNetParams, act: str) -> dict[str, Any]:
    """What determines the trained weights: the key of the checkpoint cache."""
    source = source_path(p.data_source)
    return {"experiment": EXPERIMENT, "cache_version": CACHE_VERSION, "model": "xnor_resnet18",
            "initial_channels": p.initial_channels, "act": act, "binary_weights": p.binary_weights,
            "num_classes": NUM_CLASSES, "in_channels": IN_CHANNELS, "data_source": source,
            "train_limit": p.train_limit, "epochs": p.train_epochs, "batch_size": p.train_batch_size,
            "lr": p.train_lr, "variant": p.train_variant, "seed": p.seed, "loss": LOSS,
            "dtype": dtype_name(TRAIN_DTYPE)}


def make_state(p: ThinResNetParams, act: str, state: str, data: dict[str, torch.Tensor],
               device: torch.device) -> tuple[XnorResNet, dict[str, Any]]:
    """The model in ``state`` (on ``device``, eval mode, float32) and what to record about it.

    ``trained``: :func:`lib.training.train.train_ste` on a float64 copy (``TRAIN_DTYPE``, batches
    converted), the weights rounded back to float32 (:func:`lib.training.train.train_wide`), so
    that the trained model does not depend on the CPU's vector instructions (docs/design.md §8)."""
    x_train, y_train = data["x_train"], data["y_train"]
    info: dict[str, Any] = {}
    if state == "init":
        model = build_model(p, act).to(device)
        calibrate_batchnorm(model, x_train, p.train_batch_size, p.init_bn_batches, p.seed)
        info["bn_calibration_batches"] = p.init_bn_batches
    elif state == "trained":
        bs = min(p.train_batch_size, len(x_train))
        steps = p.train_epochs * (len(x_train) // bs)
        images = step_batches(x_train, y_train, bs, p.seed)

        def batch_fn(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            x, y = images(step)
            return x.to(TRAIN_DTYPE), y

        def train(model: XnorResNet) -> list[float]:
            return train_wide(model, lambda wide: train_ste(
                wide, batch_fn, steps, loss=LOSS, variant=p.train_variant, lr=p.train_lr,
                progress=False, desc=f"train {act}"), TRAIN_DTYPE)

        t0 = time.perf_counter()
        model, curve, hit = cached_train(repo_path(p.cache_dir), train_params(p, act),
                                         lambda: build_model(p, act).to(device), train)
        info.update({"cache_hit": hit, "steps": steps, "train_s": time.perf_counter() - t0,
                     "dtype": dtype_name(TRAIN_DTYPE),
                     "curve": curve, "final_loss": float(np.mean(curve[-max(1, len(curve) // 10):]))})
    else:  # pragma: no cover - validated before
        raise ValueError(f"states: unknown state {state!r}")
    model.eval()
    return model, info


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
             chunk: int = 256) -> float:
    correct = 0
    for s in range(0, len(x), chunk):
        correct += int((model(x[s:s + chunk].to(device)).argmax(1).cpu() == y[s:s + chunk]).sum())
    return correct / max(1, len(x))
