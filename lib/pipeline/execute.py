"""Executing runs: one papermill execution per grid point, in a pool of worker threads, each
recorded in the manifest when it ends; the progress bar shows every running notebook's steps.

:func:`run_grid` is the runner's engine (:mod:`lib.pipeline.runner` is its command line). A run's
kernel gets ``cores / jobs`` threads and the CPU priority ``--nice`` asks for
(:mod:`lib.pipeline.priority`); ``lib`` is importable in every kernel of the virtual environment
because it is installed there editable.
"""
from __future__ import annotations

import itertools
import json
import os
import platform
import sys
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import papermill
from papermill.exceptions import PapermillExecutionError
from tqdm import tqdm

from lib.common.files import atomic_write_json, sha256_file
from lib.common.paths import ROOT, ROOT_ENV
from lib.common.versions import versions
from lib.experiments.progress import describe, progress_path, read_progress
from lib.experiments.resume import partial_path
from lib.pipeline.grid import RESULTS_KEY, Run
from lib.pipeline.manifest import (adopt_finished, adopt_verified_results, code_sha256, git_commit, is_cached,
                                   load_manifest, mark_started, now, started_path, take_current_key)
from lib.pipeline.priority import NICE_ENV

KERNEL_NAME = "python3"
# Kernels inherit the runner's environment; MPLBACKEND=Agg (set by run_all.sh for the tests)
# would stop figures from being embedded in the executed notebooks, so kernels get the inline one.
KERNEL_MPLBACKEND = "module://matplotlib_inline.backend_inline"
# Quiet the kernel's own log (its warning about unencrypted TCP, and the "KeyboardInterrupt caught
# in kernel" ERROR line jupyter_client's interrupt at shutdown prints after a successful run); errors
# in cells still reach the executed notebook, the manifest and the console's FAILED line.
# Each kernel lowers its own CPU priority when the runner asks (--nice, lib/pipeline/priority.py).
KERNEL_ARGS = ["--IPKernelApp.log_level=CRITICAL",
               "--IPKernelApp.exec_lines=from lib.pipeline.priority import lower_priority_from_env as _lp; _lp(); del _lp"]
# Seconds between two looks at the progress files of the running notebooks (lib/experiments/progress.py).
PROGRESS_POLL_S = 5.0
# Seconds between two rewrites of the running invocation's record (wall_s, finished): a runner
# killed without warning (SIGKILL, a machine switched off) leaves its wall time up to the last one.
HEARTBEAT_S = 60.0


def short_error(exc: BaseException) -> str:
    if isinstance(exc, PapermillExecutionError):
        text = f"{exc.ename}: {exc.evalue} (cell {exc.exec_count})"
    else:
        lines = [ln for ln in "".join(traceback.format_exception_only(type(exc), exc)).splitlines() if ln.strip()]
        text = " | ".join(lines[-2:])
    return " ".join(text.split())[:2000]  # one line: it goes into the summary line and the manifest


DEFAULT_JOBS = max(1, min(4, os.cpu_count() or 1))


def threads_per_job(jobs: int) -> int:
    """The cores split between ``jobs`` parallel runs (at least one thread each)."""
    return max(1, (os.cpu_count() or 1) // jobs)


@contextmanager
def kernel_environment(threads: int, nice: int = 0) -> Iterator[None]:
    """Environment the kernels inherit: ``threads`` BLAS / OpenMP threads, the CPU priority they
    take (``nice``, see :mod:`lib.pipeline.priority`), the repository root (``STE_REPORT_ROOT``,
    :mod:`lib.common.paths`). ``lib`` is importable in every kernel of the virtual environment."""
    changes = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "MPLBACKEND": KERNEL_MPLBACKEND, "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", "0"),
               NICE_ENV: str(nice), ROOT_ENV: str(ROOT)}
    saved = {key: os.environ.get(key) for key in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def execute_run(run: Run, report_dir: Path, root: Path = ROOT,
                code: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Execute one run with papermill; return its manifest entry (never raises for notebook errors).

    ``code`` (``git_commit``, ``git_dirty``, ``code_sha256``) is copied into the entry: a grid
    resumed over several days can mix library versions, and the entry says which one made it."""
    executed = report_dir / "runs" / f"{run.run_id}.ipynb"
    writing = executed.with_name(f"{run.run_id}.partial.ipynb")  # papermill writes as it goes; renamed when it ends
    results = report_dir / "results" / f"{run.run_id}.json"
    supersede(report_dir, [results, executed])  # a stale file must not pass for this run's output
    mark_started(results, run, code or {})  # a results file this attempt finishes can be adopted
    status, error = "ok", None
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(run.notebook_path), str(writing),
            parameters={**run.parameters, RESULTS_KEY: str(results.resolve())},
            kernel_name=KERNEL_NAME, cwd=str(root), progress_bar=False, log_output=False,
            extra_arguments=KERNEL_ARGS,
        )
        if not results.is_file():
            status, error = "failed", f"the notebook finished without writing results/{results.name}"
        complete = True
    except PapermillExecutionError as exc:  # a cell failed; papermill wrote the whole notebook, error included
        status, error, complete = "failed", short_error(exc), True
    except Exception as exc:  # KeyboardInterrupt passes through: the run stays unrecorded
        status, error, complete = "failed", short_error(exc), False
    if writing.is_file() and complete:  # a notebook cut short (a full disk) keeps its .partial name
        os.replace(writing, executed)
    progress_path(results).unlink(missing_ok=True)
    return {
        "warnings": notebook_warnings(executed if complete else writing),
        "name": run.name,
        "experiment": run.experiment,
        "notebook": run.notebook,
        "profile": run.profile,
        "parameters": run.parameters,
        "params_hash": run.params_hash,
        "status": status,
        "wall_s": round(time.perf_counter() - start, 3),
        "error": error,
        "executed_notebook": f"runs/{executed.name}",
        "results": f"results/{results.name}",
        "results_sha256": sha256_file(results) if status == "ok" else None,  # a cached run is checked against it
        "finished": now(),
        **(code or {}),
    }


def execute_on_worker(run: Run, report_dir: Path, root: Path, code: Mapping[str, Any], nice: int) -> dict[str, Any]:
    """The Dask task of one grid point (:mod:`lib.pipeline.cluster`): :func:`execute_run` with the
    kernel's threads set to this worker's."""
    from distributed import get_worker

    with kernel_environment(max(1, int(get_worker().state.nthreads)), nice):
        return execute_run(run, report_dir, root, code)


def notebook_warnings(path: Path) -> list[str]:
    """The lines a notebook's cells wrote to stderr that start with ``warning:`` (a checkpoint
    moved aside, for example), so that the console shows them too; none for a notebook that is
    missing or does not parse."""
    try:
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [line.strip() for cell in cells if isinstance(cell, dict) for out in cell.get("outputs", [])
            if isinstance(out, dict) and out.get("name") == "stderr"
            for line in "".join(out.get("text", "")).splitlines() if line.strip().startswith("warning:")]


def _listing(run_ids: Sequence[str], most: int = 5) -> str:
    """The first ``most`` run ids and how many more."""
    return ", ".join(run_ids[:most]) + (f" and {len(run_ids) - most} more" if len(run_ids) > most else "")


def settle(results: Path, ok: bool) -> None:
    """After a run's entry is in the manifest: its start marker goes, and on success its saved
    steps (kept after a failure or an interrupt: the rerun resumes from them)."""
    started_path(results).unlink(missing_ok=True)
    if ok:
        partial_path(results).unlink(missing_ok=True)


SUPERSEDED = "superseded"


def supersede(report_dir: Path, paths: Sequence[Path]) -> None:
    """Move the earlier results and executed notebook of a run about to be computed again (new
    parameters, ``--force``) to ``superseded/<folder>/<name>.<time of the file><suffix>``, out of
    the report's way but kept: an attempt that is then interrupted or fails loses nothing."""
    for path in paths:
        if path.is_file():
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(path.stat().st_mtime))
            target = report_dir / SUPERSEDED / path.parent.name / f"{path.stem}.{stamp}{path.suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)


def remove_temporaries(report_dir: Path) -> None:
    """The temporary files of writes an interrupt cut short (``.<name>.*.tmp``,
    :func:`lib.common.files.atomic_write_bytes`): called holding the folder's lock, so no write is
    in progress."""
    for folder in (report_dir, report_dir / "results", report_dir / "runs"):
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def abandon_running_notebooks() -> None:
    """Exit with status 130 at once, leaving the running notebooks behind. They cannot be stopped
    from the main thread; each kernel notices that its parent (``JPY_PARENT_PID``) is gone and
    exits, and the rerun resumes them from their saved steps (:mod:`lib.experiments.resume`)."""
    os._exit(130)


class _GridRun:
    """One invocation's execution of a grid into a report folder: the manifest, this invocation's
    record in it, the progress bar, the outcome. Methods marked *under the lock* are called with
    ``self.lock`` held (worker threads and the progress poller share the state)."""

    def __init__(self, runs: Sequence[Run], report_dir: Path, profile: str, date: str, jobs: int,
                 force: bool, root: Path, client: Any = None) -> None:
        self.report_dir, self.root, self.jobs, self.client = report_dir, root, jobs, client
        self.remote: dict[str, Any] = {}  # run id -> its Dask future, with a client
        self.nice = 0  # the kernels' CPU priority, set by execute()
        (report_dir / "runs").mkdir(parents=True, exist_ok=True)
        (report_dir / "results").mkdir(parents=True, exist_ok=True)
        self.manifest_path = report_dir / "manifest.json"
        self.manifest = load_manifest(report_dir)
        commit, dirty = git_commit(root)
        self.manifest.update({"profile": profile, "date": date, "started": now(), "git_commit": commit,
                              "git_dirty": dirty, "versions": versions(), "platform": platform.platform()})
        remove_temporaries(report_dir)
        adopted = adopt_verified_results(runs, self.manifest, report_dir)
        if "rebuilt_from" in self.manifest:
            tqdm.write(f"manifest rebuilt: {len(adopted)} finished run(s) recovered from their results files")
        finished = adopt_finished(runs, self.manifest, report_dir)
        if finished:
            tqdm.write(f"recorded {len(finished)} run(s) that finished before the runner could record them: "
                       + ", ".join(finished))
        self.todo = [run for run in runs if force or not is_cached(run, self.manifest, report_dir, tqdm.write)]
        if force:  # recompute from the start, not from the steps an interrupted run saved
            for run in self.todo:
                partial_path(self.results_file(run)).unlink(missing_ok=True)
        todo_ids = {run.run_id for run in self.todo}
        cached = [run for run in runs if run.run_id not in todo_ids]
        for run in cached:
            take_current_key(run, self.manifest)
            settle(self.results_file(run), ok=True)  # what a stop right after its record left
        self.outcome: dict[str, list[str]] = {"ok": [], "cached": [run.run_id for run in cached], "failed": []}
        # One record per invocation, rewritten with the manifest after every run and when the
        # invocation ends or is interrupted: the wall time of a grid finished over several
        # (interrupted, resumed) invocations is the sum of their wall_s.
        self.t0 = time.perf_counter()
        self.invocation = {"started": self.manifest["started"], "finished": None, "wall_s": 0.0, "jobs": jobs,
                           "git_commit": commit, "planned": [run.run_id for run in runs], "ran": [],
                           "cached": len(self.outcome["cached"]), "interrupted": False, "completed": False}
        for earlier in self.manifest.setdefault("invocations", []):
            # this runner holds the folder's lock: one that never completed was stopped (SIGKILL, power)
            if earlier.get("completed") is False and not earlier.get("interrupted"):
                earlier["interrupted"] = True
        self.manifest["invocations"].append(self.invocation)
        atomic_write_json(self.manifest_path, self.manifest)
        self.lock = threading.Lock()
        self.running: dict[str, Path] = {}  # run id -> its results file, whose progress file is polled
        self.stop = threading.Event()
        self.bar = tqdm(total=len(runs), unit="run", dynamic_ncols=True)
        self.bar.update(len(self.outcome["cached"]))
        self._note_cached()

    def results_file(self, run: Run) -> Path:
        return self.report_dir / "results" / f"{run.run_id}.json"

    def _note_cached(self) -> None:
        cached = self.outcome["cached"]
        if not cached:
            return
        tqdm.write(f"cached {len(cached)} run(s) in {self.manifest_path}: {_listing(cached)}")
        current = code_sha256(self.root)
        other = [rid for rid in cached if self.manifest["runs"][rid].get("code_sha256") != current
                 and not self.manifest["runs"][rid].get("rebuilt")]  # a rebuilt entry's version is unknown
        if other:
            tqdm.write(f"note: {len(other)} cached run(s) were computed with another or an unrecorded version "
                       f"of lib/ ({_listing(other)}; see git_commit in the manifest); --force recomputes them")

    def record(self, entry: dict[str, Any] | None = None, run_id: str | None = None) -> None:
        """Under the lock: store ``entry``, bring this invocation's record up to date, write."""
        if entry is not None:
            self.manifest["runs"][run_id] = entry
            self.invocation["ran"].append(run_id)
        self.invocation["wall_s"] = round(time.perf_counter() - self.t0, 3)
        self.invocation["finished"] = now()
        atomic_write_json(self.manifest_path, self.manifest)

    def refresh(self) -> None:
        """Under the lock: the bar shows how many runs are in progress and each one's progress."""
        self.bar.set_description(f"{len(self.running)} running", refresh=False)
        self.bar.set_postfix_str("; ".join(f"{rid} {describe(read_progress(path))}"
                                           for rid, path in self.running.items()))

    def poll_progress(self) -> None:
        """The poller thread: refresh the bar, and rewrite this invocation's record every minute."""
        beat = time.perf_counter()
        while not self.stop.wait(PROGRESS_POLL_S):
            with self.lock:
                if time.perf_counter() - beat >= HEARTBEAT_S:
                    beat = time.perf_counter()
                    self.record()
                self.refresh()

    def one(self, run: Run) -> dict[str, Any]:
        """A worker thread: execute ``run``, record it."""
        results = self.results_file(run)
        progress_path(results).unlink(missing_ok=True)  # left by an interrupted attempt
        with self.lock:
            self.running[run.run_id] = results
            self.refresh()
        # The library version is read per run: a kernel imports lib/ when its run starts.
        code = dict(zip(("git_commit", "git_dirty"), git_commit(self.root)), code_sha256=code_sha256(self.root))
        if self.client is None:
            entry = execute_run(run, self.report_dir, self.root, code)
        else:  # one Dask task per grid point; this thread waits for it
            future = self.client.submit(execute_on_worker, run, self.report_dir, self.root, code, self.nice,
                                        pure=False, key=f"run-{run.run_id}-{time.time_ns()}")
            self.remote[run.run_id] = future
            entry = future.result()
        with self.lock:
            self.running.pop(run.run_id, None)
            self.record(entry, run.run_id)
            ok = entry["status"] == "ok"
            settle(results, ok)
            self.outcome["ok" if ok else "failed"].append(run.run_id)
            tqdm.write(f"ok {entry['wall_s']:.1f}s {run.run_id}" if ok else
                       f"FAILED {entry['wall_s']:.1f}s {run.run_id}: {entry['error']}")
            for line in entry.get("warnings", []):
                tqdm.write(f"  {run.run_id}: {line}")
            self.bar.update(1)
            self.refresh()
        return entry

    def execute(self, nice: int) -> None:
        """Run ``self.todo`` on ``jobs`` worker threads, also with one job: papermill never sees
        Ctrl-C, so it does not shut a busy kernel down (which printed the kernel's ZMQ errors). A
        new run starts only when one has finished, so after an interrupt nothing new starts."""
        self.nice = nice
        poller = threading.Thread(target=self.poll_progress, name="progress", daemon=True)
        poller.start()
        pending = iter(self.todo)
        active: set[Future] = set()
        try:
            with kernel_environment(threads_per_job(self.jobs), nice), ThreadPoolExecutor(max_workers=self.jobs) as pool:
                try:
                    active.update(pool.submit(self.one, run) for run in itertools.islice(pending, self.jobs))
                    while active:
                        done, active = wait(active, return_when=FIRST_COMPLETED)
                        for future in done:
                            future.result()
                        active.update(pool.submit(self.one, run) for run in itertools.islice(pending, len(done)))
                except KeyboardInterrupt:
                    self.interrupted(sum(not future.done() for future in active), poller)
                    raise
        finally:
            self.stop.set()
            poller.join()
            self.bar.close()
        with self.lock:
            self.invocation["completed"] = True
            self.record()

    def interrupted(self, n_running: int, poller: threading.Thread) -> None:
        """Record the interrupt (finished runs are already in the manifest); with notebooks still
        running, leave them behind at once (:func:`abandon_running_notebooks`)."""
        with self.lock:
            self.invocation["interrupted"] = True
            self.record()
        if n_running:
            self.stop.set()
            poller.join()
            self.bar.close()
            if self.client is not None:  # queued tasks never start; running ones finish on their workers
                self.client.cancel(list(self.remote.values()))
            sys.stderr.write(f"\ninterrupted: {n_running} running notebook(s) stopped; "
                             "rerun the same command to resume\n")
            sys.stderr.flush()
            abandon_running_notebooks()


def run_grid(runs: Sequence[Run], report_dir: str | os.PathLike, *, profile: str, date: str, jobs: int = 1,
             force: bool = False, nice: int = 0, root: Path = ROOT, client: Any = None) -> dict[str, list[str]]:
    """Execute ``runs`` into ``report_dir`` (resuming from its manifest); return run ids by outcome.

    The result has keys ``ok``, ``cached`` and ``failed``. The manifest is rewritten atomically
    after every finished run, so killing the process loses at most the runs in progress. With a
    Dask ``client`` (:mod:`lib.pipeline.cluster`) each run is a task on its workers, as many at
    once as they have threads, instead of ``jobs`` local kernels.
    """
    if client is not None:
        from lib.pipeline.cluster import worker_threads

        jobs = max(1, worker_threads(client))
        report_dir = Path(report_dir).resolve()  # the workers' working folders may differ
    grid = _GridRun(runs, Path(report_dir), profile, date, jobs, force, root, client)
    grid.execute(nice)
    return grid.outcome
