"""The training experiment (beyond the notes): does a better-aligned hidden-layer gradient train the
binary toy to a lower population loss, and at what compute? docs/design.md §3.

One run is one ``num_dim``, from the initialisation or the pretrained student. For each batch size
``N`` it trains every arm (:mod:`.arms`) for ``K`` steps by the same step rule (:mod:`.trainer`):

1. **tuning**: on each tuning initialisation (``TUNING_INIT + j``, never reported), every arm at
   every lr of the grid; an arm's lr is the one with the lowest mean ``L_K / L_0`` there;
2. **report**: on each reported initialisation ``0 … num_init − 1`` (the toy's students), every
   arm at its chosen lr, with the cosine of its estimate with the reference at every evaluation.

Every arm of an initialisation sees the same batches (``TRAIN_BATCH + t``), the same held-out rows
(the toy's evaluation set) and the same reference batches: the comparisons are paired. The run
resumes after its last finished (N, initialisation, lr) unit (:class:`lib.experiments.resume.Steps`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

import numpy as np

from lib.common.files import to_jsonable
from lib.common.versions import machine, versions
from lib.core.device import resolve_device
from lib.experiments.resume import Steps
from lib.experiments.schema import build
from lib.experiments.toy.population import EVAL_BATCH
from lib.experiments.toy.run import PRETRAIN_DTYPE, pretrain_student
from lib.training.gaussian import toy_problem
from lib.training.train import dtype_name

from .arms import LARGE_BATCH, Arm, arms_for
from .params import EXPERIMENT, TrainingParams
from .records import Results, TrainingRecord, arm_of, relative_final
from .trainer import Evaluation, train

TRAIN_BATCH = 500_000   # batch index of step t's gradient batch: TRAIN_BATCH + t
REFERENCE = 700_000     # batch index of the reference's independent batch at evaluation step t


@dataclass(frozen=True)
class Unit:
    """One resume step: every arm of one (N, initialisation), at one lr (tuning) or at its chosen lr."""

    phase: str          # tune or report
    batch_size: int
    init: int
    lr: float | None    # None: each arm at its chosen lr


def units(p: TrainingParams) -> list[Unit]:
    """Per batch size, its tuning units, then its reported ones (which need the tuning's choices)."""
    out = []
    for n in p.batch_sizes:
        out += [Unit("tune", n, j, lr) for j in p.tuning_inits() for lr in p.lrs]
        out += [Unit("report", n, i, None) for i in range(p.num_init)]
    return out


def tuning_means(records: list[TrainingRecord], batch_size: int) -> dict[Arm, dict[float, float]]:
    """``{arm: {lr: mean L_K / L_0 over the tuning initialisations}}`` at ``batch_size`` (NaN when
    the loss is not finite on one of them)."""
    table: dict[Arm, dict[float, list[float]]] = {}
    for r in records:
        if r["phase"] == "tune" and r["batch_size"] == batch_size:
            table.setdefault(arm_of(r), {}).setdefault(r["lr"], []).append(relative_final(r))
    return {arm: {lr: float(np.mean(v)) for lr, v in by_lr.items()} for arm, by_lr in table.items()}


def chosen_lrs(records: list[TrainingRecord], batch_size: int) -> dict[Arm, float]:
    """Each arm's lr at ``batch_size``: the lowest mean ``L_K / L_0`` over the tuning initialisations
    (the smallest lr on a tie); an lr with a non-finite loss on any of them is never chosen."""
    out = {}
    for arm, by_lr in tuning_means(records, batch_size).items():
        finite = {lr: m for lr, m in by_lr.items() if np.isfinite(m)}
        out[arm] = min(sorted(finite), key=lambda lr: finite[lr]) if finite else min(by_lr)
    return out


def _student(p: TrainingParams, init: int, pretrain: list[dict[str, Any]], device: str):
    """The toy problem of initialisation ``init`` and its student (pretrained when asked, cached)."""
    problem = toy_problem(p.num_dim, p.seed * 1000 + init)
    student = problem.student
    if p.pretrained:
        student, curve, hit = pretrain_student(problem, p.pretraining(), progress=False)
        if not any(info["init"] == init for info in pretrain):
            pretrain.append({"init": init, "cached": hit, "dtype": dtype_name(PRETRAIN_DTYPE),
                             "final_loss": float(np.mean(curve[-max(1, len(curve) // 20):]))})
    problem.teacher.to(device)
    return problem, student.to(device)


def train_unit(p: TrainingParams, unit: Unit, lrs: Mapping[Arm, float], pretrain: list[dict[str, Any]],
               device: str) -> list[TrainingRecord]:
    """Every arm of ``unit`` trained from the same student on the same batches."""
    problem, student = _student(p, unit.init, pretrain, device)
    n = unit.batch_size
    reference = (lambda t: problem.batch(p.reference_rows, REFERENCE + t, device=device)) \
        if unit.phase == "report" and p.reference_rows else None
    evaluation = Evaluation(*problem.batch(p.eval_rows, EVAL_BATCH, device=device), reference, p.reference_eps)
    out = []
    for arm in arms_for(p, n):
        lr = unit.lr if unit.lr is not None else lrs[arm]
        _, curve = train(student, arm, lambda t: problem.batch(n, TRAIN_BATCH + t, device=device), p.steps, lr,
                         p.optimizer, evaluation, p.eval_every, seed=p.seed * 1_000_003 + unit.init * 100_019,
                         large_batch=lambda t: problem.batch(arm.rows, LARGE_BATCH + t, device=device))
        out.append(TrainingRecord(phase=unit.phase, batch_size=n, init=unit.init, arm=arm.to_json(), lr=lr,
                                  **asdict(curve)))
    return out


def run(params: TrainingParams | Mapping[str, Any], on_step: Callable[[int, int, str], None] | None = None,
        progress: bool = True) -> Results:
    """Run the experiment (module docstring); ``on_step(done, total, what)`` after each unit, and with
    a :class:`lib.experiments.progress.Reporter` the run resumes after its last finished unit, with
    the same numbers as an uninterrupted run."""
    from tqdm.auto import tqdm

    p = params if isinstance(params, TrainingParams) else build(TrainingParams, params)
    device = str(resolve_device(p.device))
    todo = units(p)
    steps = Steps(dataclasses.asdict(p), len(todo), on_step)
    state = steps.data or {"records": [], "pretrain": []}
    bar = tqdm(total=len(todo), initial=steps.finished, disable=not progress,
               desc=f"training d={p.num_dim}{' pretrained' if p.pretrained else ''}", unit="unit")
    for k, unit in enumerate(todo):
        if steps.done(k):
            continue
        lrs = chosen_lrs(state["records"], unit.batch_size) if unit.phase == "report" else {}
        state["records"] += train_unit(p, unit, lrs, state["pretrain"], device)
        state = to_jsonable(state, nonfinite_to_none=False)  # NaN stays NaN: a resumed run reads it back
        what = f"N={unit.batch_size} {unit.phase} init {unit.init}" + (f" lr {unit.lr:g}" if unit.lr else "")
        steps.step_finished(k, state, what)
        bar.update(1)
    bar.close()
    return to_jsonable(Results(experiment=EXPERIMENT, parameters=dataclasses.asdict(p), versions=versions(),
                               machine=machine(), device=device, records=state["records"],
                               pretrain=state["pretrain"], **steps.timing()))
