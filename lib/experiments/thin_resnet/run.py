"""Thin XNOR-ResNet-18 CDG experiment (meeting notes: "Thin ResNet-18 CDG grad实验 - 1"; docs/design.md §4).

For one ``initial_channels`` c, each model *state* (``init``: fresh weights, BatchNorm statistics
estimated on training batches; ``trained``: a few epochs of STE + Adam, cached) and each
activation *precision* (``binary``, ``ternary``, ``2bit``, ``fp``), on one fixed batch of
``batch_size`` training images, with BatchNorm in eval mode and cross-entropy loss:

* **CDG** (central, step ε) on ``coords_per_layer`` seeded coordinates of each of the 16 binary
  conv weights, front to back (:func:`lib.core.estimators.cdg`);
* **STE** gradients of every variant (:func:`lib.core.estimators.ste`); with ``fp`` activations the
  surrogate is unused, so every variant is the exact autograd gradient (and CDG a plain finite
  difference of it);
* **cosine** of CDG with each STE variant per layer, on the sampled coordinates
  (:func:`lib.core.evaluate.cosine`), and over all 16 layers (``"all"``);
* **magnitude**: RMS of each estimate over the same sampled coordinates, per layer;
* **single-layer loss decrease** ``ΔL(lr) = L(w) − L(w − lr·ĝ)`` (:func:`lib.core.evaluate.loss_decrease`)
  for the first, a middle and the last binary layer, each estimate restricted to that layer's
  sampled coordinates (STE set to 0 elsewhere, so all directions live in the same subspace) and
  normalised per layer, for the precisions in ``decrease_acts``: in-sample, on the gradient batch
  (the notes' measurement), and, with ``decrease_batches``, held out over that many gradient
  batches (:mod:`.held_out`).

:func:`run` returns a :class:`.records.ThinResNetResults`. The parts: :mod:`.params` (the
defaults and their checks), :mod:`.states` (data and model states), :mod:`.analysis` (CDG vs STE
for one model), :mod:`.summary` (per-stage cosines and the written paragraph), :mod:`.figures`
and :mod:`.section` (the report section).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping

import torch

from lib.common.files import to_jsonable
from lib.common.versions import machine, versions
from lib.core.device import resolve_device
from lib.core.resnet import XnorResNet
from lib.experiments.resume import Steps
from lib.experiments.schema import build

from .analysis import analyse, decrease_layers, main_eps
from .held_out import held_out_decreases
from .params import EXPERIMENT, NUM_CLASSES, ThinResNetParams
from .records import ThinResNetResults
from .states import accuracy, load_data, make_state


def run(params: ThinResNetParams | Mapping[str, Any], on_step: Callable[[int, int, str], None] | None = None, *,
        log: Callable[[str], None] | None = print) -> ThinResNetResults:
    """Run the experiment for one ``initial_channels``; returns its JSON-able results.

    The run is ``len(states) · len(acts)`` steps, one (state, precision) analysis each;
    ``on_step(done, total, what)`` is called after each. With a
    :class:`lib.experiments.progress.Reporter` the results so far are saved after each step and a
    rerun with the same parameters resumes after the last one saved
    (:class:`lib.experiments.resume.Steps`); every draw is seeded, so the numbers are those of an
    uninterrupted run. The results: :class:`.records.ThinResNetResults`.
    """
    log = log or (lambda s: None)
    if not isinstance(params, ThinResNetParams):
        params = build(ThinResNetParams, params)
    p = params
    pairs = [(state, act) for state in p.states for act in p.acts]
    steps = Steps(dataclasses.asdict(p), len(pairs), on_step)
    device = resolve_device(p.device)
    torch.manual_seed(p.seed)
    data = load_data(p)
    (x, y), reference, test = _on_device(p, data, device)
    results: dict[str, Any] = steps.data or _header(p, data, device)
    for i, (state, act) in enumerate(pairs):
        if steps.done(i):
            continue  # analysed by an earlier attempt
        t0 = time.perf_counter()
        model, info = make_state(p, act, state, data, device)
        results.setdefault("layers", _layers(model))
        results.setdefault("decrease_layers", decrease_layers(model.binary_conv_names()))
        entry = {"state": state, "act": act, **_evaluate(model, x, y, data, device), "state_info": info}
        if state == "trained":
            how = "cached" if info["cache_hit"] else f"{info['train_s']:.1f}s"
            log(f"c={p.initial_channels} {state}/{act}: trained {info['steps']} steps ({how}), "
                f"test accuracy {entry['test_accuracy']}")
        entry.update(analyse(model, p, act, x, y, device, log, reference, data["resolution"]))
        if act in p.decrease_acts and p.decrease_batches:
            t1 = time.perf_counter()
            entry["held_out"] = held_out_decreases(model, p, results["decrease_layers"], data["decrease_batches"], test)
            entry["timings"]["held_out_s"] = time.perf_counter() - t1
        entry["timings"]["total_s"] = time.perf_counter() - t0
        log(f"c={p.initial_channels} {state}/{act}: loss {entry['loss']:.3f}, {entry['timings']['total_s']:.1f}s")
        results["analyses"].append(entry)
        results = to_jsonable(results)
        steps.step_finished(i, results, f"{state}/{act}")
    results.update(steps.timing())
    return to_jsonable(results)


def _on_device(p: ThinResNetParams, data: dict[str, Any], device: torch.device) -> tuple:
    """The gradient batch, the noise ceiling's batch (or None) and the held-out test images (or
    None), on ``device``."""
    reference = (data["x_ref"].to(device), data["y_ref"].to(device)) if p.noise_ceiling else None
    test = (data["x_test"].to(device), data["y_test"].to(device)) if "x_test" in data else None
    return (data["x"].to(device), data["y"].to(device)), reference, test


def _header(p: ThinResNetParams, data: dict[str, torch.Tensor], device: torch.device) -> dict[str, Any]:
    """What the results record before the first analysis."""
    return {"experiment": EXPERIMENT, "parameters": dataclasses.asdict(p), "seed": p.seed, "versions": versions(),
            "machine": machine(), "device": str(device), "initial_channels": p.initial_channels,
            "eps": p.eps, "eps_main": main_eps(p.eps), "lrs": p.lrs, "ste_variants": p.ste_variants,
            "data": {"source": p.data_source, "train_images": len(data["x_train"]),
                     "test_images": len(data.get("x_test", [])), "batch_size": p.batch_size,
                     "image_shape": list(data["x"].shape[1:]),
                     "batch_class_counts": torch.bincount(data["y"], minlength=NUM_CLASSES).tolist()},
            "analyses": []}


def _layers(model: XnorResNet) -> list[dict[str, Any]]:
    params_by_name = dict(model.named_parameters())
    return [{"name": c["name"], "label": f"{c['stage']}.{c['block']}.{c['conv']}", "stage": c["stage"],
             "numel": params_by_name[c["name"]].numel()} for c in model.binary_convs()]


@torch.no_grad()
def _evaluate(model: XnorResNet, x: torch.Tensor, y: torch.Tensor, data: dict[str, torch.Tensor],
              device: torch.device) -> dict[str, Any]:
    """Loss and accuracy on the gradient batch, accuracy on the held-out images (or None)."""
    logits = model(x)
    return {"loss": float(torch.nn.functional.cross_entropy(logits, y)),
            "batch_accuracy": float((logits.argmax(1) == y).double().mean()),
            "test_accuracy": accuracy(model, data["x_test"], data["y_test"], device) if "x_test" in data else None}
