"""Thin XNOR-ResNet-18 CDG experiment (meeting notes: "Thin ResNet-18 CDG grad实验 - 1"; docs/design.md §4).

For one ``initial_channels`` c, each model *state* (``init``: fresh weights, BatchNorm statistics
estimated on training batches; ``trained``: a few epochs of STE + Adam, cached) and each
activation *precision* (``binary``, ``ternary``, ``2bit``, ``fp``), on one fixed batch of
``batch_size`` training images, with BatchNorm in eval mode and cross-entropy loss:

* **CDG** (central, step ε) on ``coords_per_layer`` seeded coordinates of each of the 16 binary
  conv weights, front to back (:func:`lib.estimators.cdg`);
* **STE** gradients of every variant (:func:`lib.estimators.ste`); with ``fp`` activations the
  surrogate is unused, so every variant is the exact autograd gradient (and CDG a plain finite
  difference of it);
* **cosine** of CDG with each STE variant per layer, on the sampled coordinates
  (:func:`lib.evaluate.cosine`), and over all 16 layers (``"all"``);
* **magnitude**: RMS of each estimate over the same sampled coordinates, per layer;
* **single-layer loss decrease** ``ΔL(lr) = L(w) − L(w − lr·ĝ)`` (:func:`lib.evaluate.loss_decrease`)
  for the first, a middle and the last binary layer, each estimate restricted to that layer's
  sampled coordinates (STE set to 0 elsewhere, so all directions live in the same subspace) and
  normalised per layer, for the precisions in ``decrease_acts``.

:func:`run` returns a JSON-able results dict (see :func:`run`); ``plot_*`` draw it; and
:func:`report_cells` builds the report section from the results dicts of several runs.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from lib.common.files import to_jsonable
from lib.common.paths import repo_path
from lib.common.versions import versions
from lib.core.device import resolve_device
from lib.core.estimators import cdg, ste
from lib.core.evaluate import best_decrease, cosine, loss_decrease
from lib.core.quantizers import PRECISIONS, STE_VARIANTS
from lib.core.resnet import XnorResNet, xnor_resnet18
from lib.experiments.progress import Reporter
from lib.experiments.resume import Checkpoint
from lib.training.images import image_data, step_batches
from lib.training.train import cached_train, train_ste

EXPERIMENT = "thin_resnet"
# The notes' heading beside its English, one level under "BinaryDuo设置实验后续" as in the notes.
HEADING = "### Thin ResNet-18 CDG gradient experiment - 1 · Thin ResNet-18 CDG grad实验 - 1"
SETTING_NOTE = ("Standard XNOR-ResNet-18 depth, initial channels 8 / 16 "
                "(标准XNOR-ResNet-18深度，但是initial channel分别设置为8/16)")
STATES = ("init", "trained")
NUM_CLASSES = 10
IN_CHANNELS = 3
LOSS = "cross_entropy"
CACHE_VERSION = 1  # bump when the training procedure changes: old checkpoints stop matching

DEFAULTS: dict[str, Any] = {
    "initial_channels": 8,
    "states": ["init", "trained"],
    "acts": ["binary", "ternary", "2bit", "fp"],
    "ste_variants": list(STE_VARIANTS),
    "eps": [0.1],
    "coords_per_layer": 16,
    "batch_size": 64,
    "lrs": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0],
    "normalize": "layer",
    "decrease_acts": ["binary"],
    "binary_weights": False,
    "train_epochs": 2,
    "train_batch_size": 64,
    "train_lr": 0.001,
    "train_variant": "clipped",
    "train_limit": 0,
    "init_bn_batches": 8,
    "test_limit": 512,
    "seed": 0,
    "device": "cpu",
    "data_source": "digits",
    "cache_dir": "cache/thin_resnet",
    "budget_mb": 8.0,
}
PARAM_NAMES = tuple(DEFAULTS)


# ----------------------------------------------------------------------------- parameters

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_pos_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _list_of(name: str, value: Any, allowed: Sequence[str] | None = None,
             check: Callable[[Any], bool] | None = None, what: str = "") -> list:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{name}: expected a non-empty list, got {value!r}")
    value = list(value)
    if len(set(map(repr, value))) != len(value):
        raise ValueError(f"{name}: repeated values in {value!r}")
    for v in value:
        if allowed is not None and v not in allowed:
            raise ValueError(f"{name}: unknown value {v!r}; expected values from {list(allowed)}")
        if check is not None and not check(v):
            raise ValueError(f"{name}: expected {what}, got {v!r} in {value!r}")
    return value


def validate_params(params: dict[str, Any]) -> dict[str, Any]:
    """The defaults updated with ``params``, checked before any compute: an unknown key, a wrong
    type or an out-of-range value raises one ``ValueError`` naming the key."""
    unknown = [k for k in params if k not in DEFAULTS and k != "results_path"]
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown parameter; expected one of {list(PARAM_NAMES)}")
    p = {**DEFAULTS, **{k: v for k, v in params.items() if k != "results_path"}}
    for key in ("initial_channels", "coords_per_layer", "batch_size", "train_batch_size"):
        if not _is_int(p[key]) or p[key] < 1:
            raise ValueError(f"{key}: expected a positive integer, got {p[key]!r}")
    for key in ("train_epochs", "train_limit", "init_bn_batches", "test_limit", "seed"):
        if not _is_int(p[key]) or p[key] < 0:
            raise ValueError(f"{key}: expected a non-negative integer, got {p[key]!r}")
    for key in ("train_lr", "budget_mb"):
        if not _is_pos_number(p[key]):
            raise ValueError(f"{key}: expected a positive number, got {p[key]!r}")
    p["states"] = _list_of("states", p["states"], STATES)
    p["acts"] = _list_of("acts", p["acts"], PRECISIONS)
    p["ste_variants"] = _list_of("ste_variants", p["ste_variants"], STE_VARIANTS)
    p["eps"] = [float(e) for e in _list_of("eps", p["eps"], check=_is_pos_number, what="positive numbers")]
    p["lrs"] = [float(v) for v in _list_of("lrs", p["lrs"], check=_is_pos_number, what="positive numbers")]
    if not isinstance(p["decrease_acts"], (list, tuple)):
        raise ValueError(f"decrease_acts: expected a list (may be empty), got {p['decrease_acts']!r}")
    p["decrease_acts"] = _list_of("decrease_acts", p["decrease_acts"], PRECISIONS) if p["decrease_acts"] else []
    missing = [a for a in p["decrease_acts"] if a not in p["acts"]]
    if missing:
        raise ValueError(f"decrease_acts: {missing} not in acts {p['acts']}")
    if p["normalize"] not in ("layer", "global", "none"):
        raise ValueError(f"normalize: expected layer, global or none, got {p['normalize']!r}")
    if p["train_variant"] not in STE_VARIANTS:
        raise ValueError(f"train_variant: unknown STE variant {p['train_variant']!r}; expected one of {STE_VARIANTS}")
    if not isinstance(p["binary_weights"], bool):
        raise ValueError(f"binary_weights: expected true or false, got {p['binary_weights']!r}")
    for key in ("device", "data_source", "cache_dir"):
        if not isinstance(p[key], str) or not p[key]:
            raise ValueError(f"{key}: expected a non-empty string, got {p[key]!r}")
    resolve_device(p["device"])
    if "trained" in p["states"] and p["train_epochs"] < 1:
        raise ValueError("train_epochs: the trained state needs at least one epoch")
    return p




# ----------------------------------------------------------------------------- data and states

def data_path(p: dict[str, Any]) -> str:
    """``data_source``: ``"digits"``, or a CIFAR-10 folder (relative: from the repository root)."""
    source = p["data_source"]
    return source if source == "digits" else str(repo_path(source).resolve())


def load_data(p: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Training images (``train_limit``, 0 = all), the gradient batch (``batch_size`` training images
    drawn with ``seed``) and held-out images (``test_limit``) from ``data_source``."""
    x_train, y_train = image_data(data_path(p), "train", p["train_limit"] or None)
    if p["batch_size"] > len(x_train):
        raise ValueError(f"batch_size: {p['batch_size']} > the {len(x_train)} training images")
    gen = torch.Generator().manual_seed(int(p["seed"]))
    idx = torch.randperm(len(x_train), generator=gen)[:p["batch_size"]]
    data = {"x_train": x_train, "y_train": y_train, "x": x_train[idx], "y": y_train[idx]}
    if p["test_limit"]:
        data["x_test"], data["y_test"] = image_data(data_path(p), "test", p["test_limit"])
    return data


def build_model(p: dict[str, Any], act: str) -> XnorResNet:
    """The freshly initialised model (weights from ``seed``) with activation precision ``act``."""
    return xnor_resnet18(p["initial_channels"], NUM_CLASSES, act=act, surrogate=p["train_variant"],
                         binary_weights=p["binary_weights"], in_channels=IN_CHANNELS, seed=p["seed"])


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


def train_params(p: dict[str, Any], act: str) -> dict[str, Any]:
    """What determines the trained weights: the key of the checkpoint cache."""
    source = data_path(p)
    return {"experiment": EXPERIMENT, "cache_version": CACHE_VERSION, "model": "xnor_resnet18",
            "initial_channels": p["initial_channels"], "act": act, "binary_weights": p["binary_weights"],
            "num_classes": NUM_CLASSES, "in_channels": IN_CHANNELS, "data_source": source,
            "train_limit": p["train_limit"], "epochs": p["train_epochs"], "batch_size": p["train_batch_size"],
            "lr": p["train_lr"], "variant": p["train_variant"], "seed": p["seed"], "loss": LOSS}


def make_state(p: dict[str, Any], act: str, state: str, data: dict[str, torch.Tensor],
               device: torch.device) -> tuple[XnorResNet, dict[str, Any]]:
    """The model in ``state`` (on ``device``, eval mode) and what to record about it."""
    x_train, y_train = data["x_train"], data["y_train"]
    info: dict[str, Any] = {}
    if state == "init":
        model = build_model(p, act).to(device)
        calibrate_batchnorm(model, x_train, p["train_batch_size"], p["init_bn_batches"], p["seed"])
        info["bn_calibration_batches"] = p["init_bn_batches"]
    elif state == "trained":
        bs = min(p["train_batch_size"], len(x_train))
        steps = p["train_epochs"] * (len(x_train) // bs)
        batch_fn = step_batches(x_train, y_train, bs, p["seed"])
        t0 = time.perf_counter()
        model, curve, hit = cached_train(
            repo_path(p["cache_dir"]), train_params(p, act), lambda: build_model(p, act).to(device),
            lambda m: train_ste(m, batch_fn, steps, loss=LOSS, variant=p["train_variant"],
                                lr=p["train_lr"], progress=False, desc=f"train {act}"))
        info.update({"cache_hit": hit, "steps": steps, "train_s": time.perf_counter() - t0,
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


# ----------------------------------------------------------------------------- analyses

def eps_key(eps: float) -> str:
    """JSON key of an ε value (``0.1`` → ``"0.1"``)."""
    return f"{eps:g}"


def main_eps(eps: Sequence[float]) -> float:
    """The ε shown in the per-layer figures: 0.1 (the notes' default) when swept, else the first."""
    return 0.1 if any(abs(e - 0.1) < 1e-12 for e in eps) else float(eps[0])


def decrease_layers(names: Sequence[str]) -> list[str]:
    """First, middle and last of the binary conv weights."""
    return [names[0], names[len(names) // 2], names[-1]]


def _rms(g: torch.Tensor, mask: torch.Tensor) -> float:
    v = g.flatten()[mask.flatten()].double()
    return float(v.pow(2).mean().sqrt()) if v.numel() else float("nan")


def analyse(model: XnorResNet, p: dict[str, Any], act: str, x: torch.Tensor, y: torch.Tensor,
            device: torch.device, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """CDG vs STE for one model: cosine and magnitude per layer, loss decrease (see the module doc)."""
    names = model.binary_conv_names()
    variants = p["ste_variants"]
    out: dict[str, Any] = {"cosine": {}, "cosine_all": {}, "magnitude": {"cdg": {}, "ste": {}},
                           "timings": {}}
    t0 = time.perf_counter()
    ste_grads: dict[str, dict[str, torch.Tensor]] = {}
    for v in variants:
        if act == "fp" and ste_grads:  # the surrogate is unused: every variant is autograd
            ste_grads[v] = next(iter(ste_grads.values()))
        else:
            ste_grads[v] = ste(model, x, y, loss=LOSS, variant=v, layers=names)
    out["timings"]["ste_s"] = time.perf_counter() - t0

    cdg_grads: dict[str, dict[str, torch.Tensor]] = {}
    for eps in p["eps"]:
        t0 = time.perf_counter()
        g = cdg(model, x, y, loss=LOSS, eps=eps, central=True, layers=names,
                coords_per_layer=p["coords_per_layer"], seed=p["seed"], device=device, budget_mb=p["budget_mb"])
        out["timings"][f"cdg_s_eps_{eps_key(eps)}"] = time.perf_counter() - t0
        log(f"  cdg ε={eps:g}: {time.perf_counter() - t0:.1f}s")
        cdg_grads[eps_key(eps)] = g
        cos_by_variant, all_by_variant = {}, {}
        for v in variants:
            c = cosine(g, ste_grads[v])
            cos_by_variant[v] = [c[n] for n in names]
            all_by_variant[v] = c["all"]
        out["cosine"][eps_key(eps)] = cos_by_variant
        out["cosine_all"][eps_key(eps)] = all_by_variant
        masks = {n: torch.isfinite(g[n]) for n in names}
        out["magnitude"]["cdg"][eps_key(eps)] = [_rms(g[n], masks[n]) for n in names]
        out["sampled"] = [int(masks[n].sum()) for n in names]
    masks = {n: torch.isfinite(next(iter(cdg_grads.values()))[n]) for n in names}
    out["magnitude"]["ste"] = {v: [_rms(ste_grads[v][n], masks[n]) for n in names] for v in variants}
    out["magnitude"]["ste_all_coords"] = {
        v: [float(ste_grads[v][n].double().pow(2).mean().sqrt()) for n in names] for v in variants}

    if act in p["decrease_acts"]:
        t0 = time.perf_counter()
        out["decrease"] = {}
        for layer in decrease_layers(names):
            mask = masks[layer]
            curves: dict[str, Any] = {"cdg": {}, "ste": {}, "best": {}}
            for ek, g in cdg_grads.items():
                c = loss_decrease(model, x, y, {layer: g[layer]}, p["lrs"], p["normalize"], LOSS)
                curves["cdg"][ek] = c.tolist()
                curves["best"][f"cdg_eps_{ek}"] = best_decrease(p["lrs"], c)
            for v in variants:
                d = torch.where(mask, ste_grads[v][layer], torch.zeros_like(ste_grads[v][layer]))
                c = loss_decrease(model, x, y, {layer: d}, p["lrs"], p["normalize"], LOSS)
                curves["ste"][v] = c.tolist()
                curves["best"][v] = best_decrease(p["lrs"], c)
            out["decrease"][layer] = curves
        out["timings"]["decrease_s"] = time.perf_counter() - t0
    return out


def run(params: dict[str, Any], log: Callable[[str], None] | None = print,
        on_step: Callable[[int, int, str], None] | None = None,
        checkpoint: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run the experiment for one ``initial_channels``; returns the results dict (JSON-able).
    ``on_step(done, total, what)`` (e.g. a :class:`lib.progress.Reporter`) is called after each
    of the ``len(states) · len(acts)`` (state, precision) analyses.

    ``checkpoint``: a file (:mod:`lib.checkpoint`) where the results so far are saved after each
    analysis; a rerun with the same parameters skips the analyses saved there (every draw is
    seeded, so the numbers are those of an uninterrupted run). By default the reporter's
    ``partial`` file when ``on_step`` is a :class:`lib.progress.Reporter`, else none. The results:

    ``experiment``, ``params`` (validated, all keys), ``seed``, ``versions``, ``device``,
    ``wall_s``, ``initial_channels``, ``layers`` (the 16 binary conv weight names, front to back),
    ``layer_labels`` (``"1.0.1"`` = stage.block.conv), ``layer_numel``, ``layer_stage``,
    ``decrease_layers``, ``eps``, ``eps_main``, ``lrs``, ``ste_variants``, ``data``
    (source, image counts, batch size, batch class counts) and ``states``:
    ``{state: {act: entry}}`` with ``entry`` =

    * ``loss``, ``batch_accuracy``, ``test_accuracy`` of the model on the gradient batch / held out;
    * ``state_info``: init: ``bn_calibration_batches``; trained: ``cache_hit``, ``steps``,
      ``train_s``, ``curve`` (per-step training loss), ``final_loss``;
    * ``cosine[eps][variant]``: 16 cosines, front to back; ``cosine_all[eps][variant]``: over all
      16 layers;
    * ``magnitude``: ``cdg[eps]`` and ``ste[variant]``: 16 RMS values on the sampled coordinates;
      ``ste_all_coords[variant]``: RMS over all coordinates;
    * ``sampled``: sampled coordinates per layer;
    * ``decrease`` (acts in ``decrease_acts``): ``{layer: {"cdg": {eps: curve}, "ste": {variant:
      curve}, "best": {"cdg_eps_<eps>" or variant: [best ΔL, its lr]}}}``, curves over ``lrs``;
    * ``timings``: seconds for STE, CDG per ε, the loss decrease.

    NaN (e.g. a cosine with an all-zero estimate) is stored as ``null``.
    """
    log = log or (lambda s: None)
    start = time.perf_counter()
    p = validate_params(params)
    device = resolve_device(p["device"])
    torch.manual_seed(p["seed"])
    data = load_data(p)
    x, y = data["x"].to(device), data["y"].to(device)
    if checkpoint is None and isinstance(on_step, Reporter):
        checkpoint = on_step.partial
    saver = Checkpoint(checkpoint, to_jsonable(dict(p))) if checkpoint is not None else None
    saved = saver.load() if saver else None
    elapsed_before = float(saved["elapsed_s"]) if saved else 0.0
    total = len(p["states"]) * len(p["acts"])

    def done_count() -> int:
        return sum(len(v) for v in results["states"].values())

    results: dict[str, Any] = saved["results"] if saved else {
        "experiment": EXPERIMENT, "params": dict(p), "seed": p["seed"], "versions": versions(),
        "device": str(device), "initial_channels": p["initial_channels"],
        "eps": p["eps"], "eps_main": main_eps(p["eps"]), "lrs": p["lrs"], "ste_variants": p["ste_variants"],
        "data": {"source": p["data_source"], "train_images": len(data["x_train"]),
                 "test_images": len(data.get("x_test", [])), "batch_size": p["batch_size"],
                 "image_shape": list(data["x"].shape[1:]),
                 "batch_class_counts": torch.bincount(data["y"], minlength=NUM_CLASSES).tolist()},
        "states": {},
    }
    if saved and isinstance(on_step, Reporter):
        on_step.resumed(done_count(), total)
    for state in p["states"]:
        results["states"].setdefault(state, {})
        for act in p["acts"]:
            if act in results["states"][state]:
                continue  # analysed by an earlier attempt
            t0 = time.perf_counter()
            model, info = make_state(p, act, state, data, device)
            if "layers" not in results:
                names = model.binary_conv_names()
                params_by_name = dict(model.named_parameters())
                results["layers"] = names
                results["layer_labels"] = [n.replace("layer", "").replace(".conv.weight", "").replace("conv", "")
                                           for n in names]
                results["layer_numel"] = [params_by_name[n].numel() for n in names]
                results["layer_stage"] = [int(n[5]) for n in names]
                results["decrease_layers"] = decrease_layers(names)
            with torch.no_grad():
                logits = model(x)
                base = float(torch.nn.functional.cross_entropy(logits, y))
                batch_acc = float((logits.argmax(1) == y).double().mean())
            test_acc = accuracy(model, data["x_test"], data["y_test"], device) if "x_test" in data else None
            if state == "trained":
                how = "cached" if info["cache_hit"] else f"{info['train_s']:.1f}s"
                log(f"c={p['initial_channels']} {state}/{act}: trained {info['steps']} steps ({how}), "
                    f"test accuracy {test_acc}")
            entry = {"loss": base, "batch_accuracy": batch_acc, "test_accuracy": test_acc, "state_info": info}
            entry.update(analyse(model, p, act, x, y, device, log))
            entry["timings"]["total_s"] = time.perf_counter() - t0
            log(f"c={p['initial_channels']} {state}/{act}: loss {base:.3f}, "
                f"{entry['timings']['total_s']:.1f}s")
            results["states"][state][act] = entry
            if saver:
                saver.save({"results": to_jsonable(results),
                            "elapsed_s": elapsed_before + time.perf_counter() - start})
            if on_step:
                on_step(done_count(), total, f"{state}/{act}")
    results["wall_s"] = elapsed_before + time.perf_counter() - start
    return to_jsonable(results)


# ----------------------------------------------------------------------------- summaries

def _states(result: dict[str, Any]) -> list[str]:
    """States of a result in the order of its parameters (a JSON round trip may sort the keys)."""
    return [s for s in result["params"]["states"] if s in result["states"]]


def _acts(result: dict[str, Any], state: str) -> list[str]:
    return [a for a in result["params"]["acts"] if a in result["states"][state]]


def _eps_keys(result: dict[str, Any]) -> list[str]:
    return [eps_key(e) for e in result["eps"]]


def _nanmean(values: Sequence[Any]) -> float:
    arr = np.array([np.nan if v is None else v for v in values], dtype=float)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")


def stage_mean(result: dict[str, Any], values: Sequence[Any], stage: int, skip_last: bool = False) -> float:
    """Mean of per-layer ``values`` over the layers of ``stage`` (1 = front, 4 = back), optionally
    without the last binary conv."""
    n = len(values)
    return _nanmean([v for i, (v, s) in enumerate(zip(values, result["layer_stage"]))
                     if s == stage and not (skip_last and i == n - 1)])


def front_back(result: dict[str, Any], state: str, act: str, variant: str,
               eps: float | None = None) -> dict[str, float]:
    """Cosine summary of one (state, precision, STE variant): ``front`` = mean over stage 1,
    ``back`` = mean over stage 4 without the last binary conv, ``last`` = the last binary conv
    (no quantizer after it, so its STE gradient is exact up to the ε-smoothing of CDG),
    ``all`` = the cosine over all 16 layers at once."""
    ek = eps_key(result["eps_main"] if eps is None else eps)
    entry = result["states"][state][act]
    cos = entry["cosine"][ek][variant]
    allc = entry["cosine_all"][ek][variant]
    return {"front": stage_mean(result, cos, 1), "back": stage_mean(result, cos, 4, skip_last=True),
            "last": float("nan") if cos[-1] is None else float(cos[-1]),
            "all": float("nan") if allc is None else float(allc)}


def mean_cosine(result: dict[str, Any], state: str, act: str, eps: float | None = None) -> list[float]:
    """Per-layer cosine averaged over the STE variants."""
    ek = eps_key(result["eps_main"] if eps is None else eps)
    curves = result["states"][state][act]["cosine"][ek]
    return [_nanmean([curves[v][i] for v in result["ste_variants"]]) for i in range(len(result["layers"]))]


def _compare(a: float, b: float, rel: float = 1e-3) -> str:
    if abs(a - b) <= rel * max(abs(a), abs(b)):
        return "equal to"
    return "above" if a > b else "below"


def summary_text(results: Sequence[dict[str, Any]]) -> str:
    """An automatically written paragraph per (c, state): front vs back layers for binary
    activations, the precisions ordered by their agreement, and the single-layer loss decrease."""
    parts: list[str] = []
    for r in sorted(results, key=lambda r: r["initial_channels"]):
        c = r["initial_channels"]
        ek = eps_key(r["eps_main"])
        for state in _states(r):
            by_act = r["states"][state]
            sentences = []
            if "binary" in by_act:
                rows = {v: front_back(r, state, "binary", v) for v in r["ste_variants"]}
                finite = {v: fb for v, fb in rows.items() 
                          if math.isfinite(fb["front"]) and math.isfinite(fb["back"])}
                if finite:
                    n_front = sum(fb["front"] > fb["back"] for fb in finite.values())
                    half = len(finite) / 2
                    trend = ("higher on the front stage (stage 1) than on the back stage (stage 4 without the "
                             "last conv)" if n_front > half else
                             "higher on the back stage (stage 4 without the last conv) than on the front stage "
                             "(stage 1)" if n_front < half else "no clearer on the front than on the back stage")
                    front = _nanmean([fb["front"] for fb in finite.values()])
                    back = _nanmean([fb["back"] for fb in finite.values()])
                    best_v = max(finite, key=lambda v: finite[v]["all"] if math.isfinite(finite[v]["all"]) else -2)
                    last = _nanmean([fb["last"] for fb in finite.values()])
                    sentences.append(
                        f"with binary activations the cosine of CDG (ε = {r['eps_main']:g}) with the STE is "
                        f"{trend} for {max(n_front, len(finite) - n_front)} of {len(finite)} variants (mean over "
                        f"variants {front:.2f} in front, {back:.2f} at the back); at the last binary conv, "
                        f"which no quantizer follows, it is {last:.2f}; the variant closest to CDG over all "
                        f"layers is {best_v} (cosine {finite[best_v]['all']:.2f})")
            prec = [(a, _nanmean(mean_cosine(r, state, a))) for a in _acts(r, state)]
            if len(prec) > 1:
                order = sorted(prec, key=lambda t: -t[1] if math.isfinite(t[1]) else 2)
                listing = " > ".join(f"{ACT_TITLES.get(a, a)} ({v:.2f})" for a, v in order)
                sentences.append(f"the mean cosine over the 16 layers and the STE variants orders the "
                                 f"activations {listing}")
            for act in _acts(r, state):
                entry = by_act[act]
                if "decrease" not in entry:
                    continue
                notes = []
                for layer in r["decrease_layers"]:
                    best = entry["decrease"][layer]["best"]
                    cd = best.get(f"cdg_eps_{ek}", [None])[0]
                    ste_best = [(best[v][0], v) for v in r["ste_variants"] if best[v][0] is not None]
                    if cd is None or not ste_best:
                        continue
                    top, top_v = max(ste_best)
                    notes.append(f"layer {_layer_label(r, layer)}: CDG {cd:.3g}, {_compare(cd, top)} the best "
                                 f"STE ({top_v}, {top:.3g})")
                if notes:
                    sentences.append(f"best single-layer loss decrease with {ACT_TITLES.get(act, act)} "
                                     "activations: " + "; ".join(notes))
            if sentences:
                text = "; ".join(sentences)
                parts.append(f"**c = {c}, {state}**: {text[0].upper()}{text[1:]}.")
    return "\n\n".join(parts) if parts else "No results."


def _layer_label(result: dict[str, Any], name: str) -> str:
    return result["layer_labels"][result["layers"].index(name)]


# ----------------------------------------------------------------------------- plots

ACT_TITLES = {"binary": "binary", "ternary": "ternary", "2bit": "2-bit", "fp": "full precision"}


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _layer_axis(ax, result: dict[str, Any]) -> None:
    n = len(result["layers"])
    ax.set_xticks(range(1, n + 1))
    ax.set_xticklabels(result["layer_labels"], rotation=90, fontsize=7)
    for i in range(1, n):
        if result["layer_stage"][i] != result["layer_stage"][i - 1]:
            ax.axvline(i + 0.5, color="0.85", lw=0.8, zorder=0)
    ax.set_xlabel("binary conv layer (stage.block.conv), front → back")


def _grid(rows: int, cols: int, width: float = 3.6, height: float = 2.9, sharey: bool = True):
    plt = _plt()
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols + 1.0, height * rows + 0.6), layout="constrained",
                             squeeze=False, sharey=sharey)
    return fig, axes


def plot_cosine(result: dict[str, Any], eps: float | None = None):
    """Cosine of CDG with each STE variant per layer, front to back: rows = states, columns = precisions."""
    ek = eps_key(result["eps_main"] if eps is None else eps)
    states = _states(result)
    acts = _acts(result, states[0])
    fig, axes = _grid(len(states), len(acts))
    xs = np.arange(1, len(result["layers"]) + 1)
    for i, state in enumerate(states):
        for j, act in enumerate(acts):
            ax = axes[i][j]
            curves = result["states"][state][act]["cosine"][ek]
            for v in result["ste_variants"]:
                ax.plot(xs, [np.nan if c is None else c for c in curves[v]], marker="o", ms=3, label=v)
            ax.axhline(0, color="0.5", lw=0.6)
            ax.set_ylim(-1.05, 1.05)
            ax.set_title(f"{state}, {ACT_TITLES.get(act, act)}", fontsize=10)
            _layer_axis(ax, result)
            if j == 0:
                ax.set_ylabel("cos(CDG, STE)")
    axes[0][-1].legend(fontsize=7, title="STE variant", title_fontsize=7, loc="lower left")
    fig.suptitle(f"c = {result['initial_channels']}: cosine of CDG (ε = {float(ek):g}, "
                 f"{_sampled_text(result)}) with each STE variant, per layer")
    return fig


def _sampled_text(result: dict[str, Any]) -> str:
    k = result["params"]["coords_per_layer"]
    return f"{k} sampled coordinates per layer"


def plot_magnitude(result: dict[str, Any]):
    """RMS of CDG (each ε) and of each STE variant per layer, log scale; rows = states, columns = precisions."""
    plt = _plt()
    states = _states(result)
    acts = _acts(result, states[0])
    fig, axes = _grid(len(states), len(acts))
    xs = np.arange(1, len(result["layers"]) + 1)
    greys = plt.cm.Greys(np.linspace(0.95, 0.5, max(1, len(result["eps"]))))
    for i, state in enumerate(states):
        for j, act in enumerate(acts):
            ax = axes[i][j]
            mag = result["states"][state][act]["magnitude"]
            for ek, col in zip(_eps_keys(result), greys):
                ax.plot(xs, _pos(mag["cdg"][ek]), color=col, lw=2.2, label=f"CDG ε={ek}")
            for v in result["ste_variants"]:
                ax.plot(xs, _pos(mag["ste"][v]), lw=1, marker=".", ms=3, label=f"STE {v}")
            ax.set_yscale("log")
            ax.set_title(f"{state}, {ACT_TITLES.get(act, act)}", fontsize=10)
            _layer_axis(ax, result)
            if j == 0:
                ax.set_ylabel("RMS gradient (sampled coords)")
    axes[0][-1].legend(fontsize=6, loc="best")
    fig.suptitle(f"c = {result['initial_channels']}: gradient magnitude per layer, CDG vs STE")
    return fig


def _pos(values: Sequence[Any]) -> list[float]:
    return [v if v is not None and v > 0 else np.nan for v in values]


def plot_precisions(result: dict[str, Any]):
    """Per-layer cosine averaged over the STE variants, one line per precision; one panel per state."""
    states = _states(result)
    fig, axes = _grid(1, len(states), width=4.6, height=3.2)
    xs = np.arange(1, len(result["layers"]) + 1)
    for j, state in enumerate(states):
        ax = axes[0][j]
        for act in _acts(result, state):
            ax.plot(xs, mean_cosine(result, state, act), marker="o", ms=3, label=ACT_TITLES.get(act, act))
        ax.axhline(0, color="0.5", lw=0.6)
        ax.set_ylim(-1.05, 1.05)
        ax.set_title(state, fontsize=10)
        _layer_axis(ax, result)
        if j == 0:
            ax.set_ylabel("cos(CDG, STE), mean over variants")
    axes[0][-1].legend(fontsize=8, title="activation", title_fontsize=8)
    fig.suptitle(f"c = {result['initial_channels']}: binary vs ternary vs 2-bit vs full precision "
                 f"(ε = {result['eps_main']:g})")
    return fig


def plot_decrease(result: dict[str, Any]):
    """Single-layer lr → loss decrease, CDG (each ε) vs the STE variants; rows = (state, precision),
    columns = first, middle, last binary layer. ``None`` when no precision had the analysis."""
    plt = _plt()
    rows = [(s, a) for s in _states(result) for a in _acts(result, s) if "decrease" in result["states"][s][a]]
    if not rows:
        return None
    layers = result["decrease_layers"]
    fig, axes = _grid(len(rows), len(layers), sharey=False)
    lrs = result["lrs"]
    greys = plt.cm.Greys(np.linspace(0.95, 0.5, max(1, len(result["eps"]))))
    for i, (state, act) in enumerate(rows):
        dec = result["states"][state][act]["decrease"]
        for j, layer in enumerate(layers):
            ax = axes[i][j]
            for ek, col in zip(_eps_keys(result), greys):
                ax.plot(lrs, _nan(dec[layer]["cdg"][ek]), color=col, lw=2.2, marker="o", ms=3, label=f"CDG ε={ek}")
            for v in result["ste_variants"]:
                ax.plot(lrs, _nan(dec[layer]["ste"][v]), lw=1, marker=".", label=f"STE {v}")
            ax.axhline(0, color="0.5", lw=0.6)
            ax.set_xscale("log")
            ax.set_title(f"{state}, {ACT_TITLES.get(act, act)}: layer {_layer_label(result, layer)}", fontsize=9)
            ax.set_xlabel("lr (step on the layer-normalised gradient)")
            if j == 0:
                ax.set_ylabel("loss decrease L(w) − L(w − lr ĝ)")
    axes[0][-1].legend(fontsize=6, loc="best")
    fig.suptitle(f"c = {result['initial_channels']}: single-layer loss decrease on "
                 f"{result['params']['coords_per_layer']} sampled coordinates of the layer")
    return fig


def _nan(values: Sequence[Any]) -> list[float]:
    return [np.nan if v is None else v for v in values]


def plot_training(results: Sequence[dict[str, Any]] | dict[str, Any]):
    """Training loss curves of the trained states (one line per c and precision); ``None`` if none."""
    plt = _plt()
    results = [results] if isinstance(results, dict) else list(results)
    lines = [(r["initial_channels"], act, r["states"]["trained"][act]["state_info"]["curve"])
             for r in results if "trained" in r["states"] for act in _acts(r, "trained")
             if r["states"]["trained"][act].get("state_info", {}).get("curve")]
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.4), layout="constrained")
    for c, act, curve in lines:
        ax.plot(np.arange(1, len(curve) + 1), curve, lw=1, label=f"c={c}, {ACT_TITLES.get(act, act)}")
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy (train batch)")
    ax.set_title("STE + Adam training of the 'trained' states")
    ax.legend(fontsize=7)
    return fig


# ----------------------------------------------------------------------------- report section

def _fmt(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.2f}"


def setting_markdown(results: Sequence[dict[str, Any]]) -> str:
    r0 = results[0]
    p = r0["params"]
    cs = sorted({r["initial_channels"] for r in results})
    source = ("scikit-learn's embedded digits (8×8 greyscale, upsampled to 32×32, 3 channels; "
              "no download)" if p["data_source"] == "digits" else f"CIFAR-10 from `{p['data_source']}`")
    lines = [
        "#### Setting · 实验设置",
        "",
        f"* {SETTING_NOTE}.",
        f"* Runs here: initial channels {', '.join(map(str, cs))}; activations "
        f"{', '.join(ACT_TITLES.get(a, a) for a in p['acts'])}; "
        f"{'XNOR binary' if p['binary_weights'] else 'full-precision'} weights.",
        f"* Data: {source}; gradients on one batch of {p['batch_size']} training images, cross-entropy, "
        "BatchNorm in eval mode (every image independent).",
        "* States: " + "; ".join(
            {"init": f"`init` = fresh weights (seed {p['seed']}), BatchNorm statistics averaged over "
                     f"{p['init_bn_batches']} training batches",
             "trained": f"`trained` = {p['train_epochs']} epoch(s) of STE ({p['train_variant']}) + Adam "
                        f"(lr {p['train_lr']:g}, batch {p['train_batch_size']}), one model per activation"}[s]
            for s in p["states"]) + ".",
        f"* CDG: central, ε ∈ {{{', '.join(f'{e:g}' for e in p['eps'])}}}, on {p['coords_per_layer']} "
        "seeded coordinates of each of the 16 binary conv weights; the STE variants "
        f"({', '.join(p['ste_variants'])}) are compared on the same coordinates.",
        "* Single-layer loss decrease: first, middle and last binary layer, each estimate restricted to "
        f"that layer's sampled coordinates and normalised ({p['normalize']}), lr ∈ "
        f"{{{', '.join(f'{v:g}' for v in p['lrs'])}}}, on the gradient batch.",
    ]
    return "\n".join(lines)


def report_cells(results: list[dict[str, Any]]) -> list:
    """The thin ResNet section of the static report (figures re-plotted from the results dicts)."""
    from lib.experiments import cells as nbcells

    results = sorted(results, key=lambda r: (r["initial_channels"], r.get("seed", 0)))
    cells = [nbcells.md(HEADING)]
    if not results:
        cells.append(nbcells.md("No successful run of the thin ResNet experiment."))
        return cells
    cells.append(nbcells.md(setting_markdown(results)))
    fig = plot_training(results)
    if fig is not None:
        cells.append(nbcells.figure(fig, "training loss of the trained states"))
    for r in results:
        c = r["initial_channels"]
        cells.append(nbcells.md(f"#### Initial channels = {c}"))
        cells.append(nbcells.figure(plot_cosine(r), f"c={c}: cosine of CDG with STE per layer"))
        cells.append(nbcells.figure(plot_magnitude(r), f"c={c}: gradient magnitude per layer"))
        if len(_acts(r, _states(r)[0])) > 1:
            cells.append(nbcells.figure(plot_precisions(r), f"c={c}: cosine per precision"))
        fig = plot_decrease(r)
        if fig is not None:
            cells.append(nbcells.figure(fig, f"c={c}: single-layer loss decrease"))
    cells.append(nbcells.md("#### Summary\n\n" + summary_text(results)))
    cells.append(nbcells.md(f"Cosine of CDG (ε = {results[0]['eps_main']:g}) with each STE variant: mean over "
                            "the front stage (stage 1) / mean over the back stage (stage 4 without the last "
                            "conv) / the last binary conv / all 16 layers at once."))
    header = ["c", "state", "activation", *results[0]["ste_variants"]]
    rows = []
    for r in results:
        for state in _states(r):
            for act in _acts(r, state):
                row: list[Any] = [r["initial_channels"], state, ACT_TITLES.get(act, act)]
                for v in results[0]["ste_variants"]:
                    if v in r["ste_variants"]:
                        fb = front_back(r, state, act, v)
                        row.append(" / ".join(_fmt(fb[k]) for k in ("front", "back", "last", "all")))
                    else:
                        row.append("–")
                rows.append(row)
    cells.append(nbcells.table(header, rows))
    dec_rows = []
    for r in results:
        for state in _states(r):
            for act in _acts(r, state):
                entry = r["states"][state][act]
                for layer in (r["decrease_layers"] if "decrease" in entry else []):
                    curves = entry["decrease"][layer]
                    best = curves["best"]
                    cdg_best = max(((k, v) for k, v in best.items() if k.startswith("cdg_eps_")),
                                   key=lambda kv: kv[1][0] if kv[1][0] is not None else -math.inf)
                    row = [r["initial_channels"], state, ACT_TITLES.get(act, act), _layer_label(r, layer),
                           f"{_fmt3(cdg_best[1][0])} (ε={cdg_best[0][8:]}, lr={_lr(r, cdg_best[1][1])})"]
                    for v in results[0]["ste_variants"]:
                        row.append(f"{_fmt3(best[v][0])} (lr={_lr(r, best[v][1])})" if v in best else "–")
                    dec_rows.append(row)
    if dec_rows:
        cells.append(nbcells.md("Best single-layer loss decrease over the lr grid (and its lr; † = at the edge "
                                "of the grid, so the best may lie outside it):"))
        cells.append(nbcells.table(["c", "state", "activation", "layer", "CDG (best ε)",
                                    *results[0]["ste_variants"]], dec_rows))
    walls = ", ".join(f"c={r['initial_channels']}: {r['wall_s']:.0f} s" for r in results)
    cells.append(nbcells.md(f"Wall time per run: {walls}."))
    return cells


def _lr(result: dict[str, Any], lr: Any) -> str:
    """An lr of the grid, marked † at the grid's edge."""
    if lr is None:
        return "–"
    edge = lr in (min(result["lrs"]), max(result["lrs"]))
    return f"{lr:.3g}{'†' if edge else ''}"


def _fmt3(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3g}"
