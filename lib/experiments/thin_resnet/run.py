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
  normalised per layer, for the precisions in ``decrease_acts``.

:func:`run` returns a JSON-able results dict (see :func:`run`). The parts: :mod:`.params` (the
defaults and their checks), :mod:`.states` (data and model states), :mod:`.analysis` (CDG vs STE
for one model), :mod:`.summary` (per-stage cosines and the written paragraph), :mod:`.figures`
and :mod:`.section` (the report section).
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Mapping

import torch

from lib.common.files import to_jsonable
from lib.common.versions import versions
from lib.core.device import resolve_device
from lib.experiments.progress import Reporter
from lib.experiments.resume import Checkpoint

from .analysis import analyse, decrease_layers, main_eps
from lib.experiments.schema import build

from .params import EXPERIMENT, NUM_CLASSES, ThinResNetParams
from .states import accuracy, load_data, make_state


def run(params: ThinResNetParams | Mapping[str, Any], log: Callable[[str], None] | None = print,
        on_step: Callable[[int, int, str], None] | None = None,
        checkpoint: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run the experiment for one ``initial_channels``; returns the results dict (JSON-able).
    ``on_step(done, total, what)`` (e.g. a :class:`lib.experiments.progress.Reporter`) is called after each
    of the ``len(states) · len(acts)`` (state, precision) analyses.

    ``checkpoint``: a file (:mod:`lib.experiments.resume`) where the results so far are saved after each
    analysis; a rerun with the same parameters skips the analyses saved there (every draw is
    seeded, so the numbers are those of an uninterrupted run). By default the reporter's
    ``partial`` file when ``on_step`` is a :class:`lib.experiments.progress.Reporter`, else none. The results:

    ``experiment``, ``parameters`` (all of them, validated), ``seed``, ``versions``, ``device``,
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
    if not isinstance(params, ThinResNetParams):
        params = build(ThinResNetParams, params)
    p = dataclasses.asdict(params)
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
        "experiment": EXPERIMENT, "parameters": dict(p), "seed": p["seed"], "versions": versions(),
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
