"""Grid runner: execute every run of the selected parameter files with papermill, resume, report.

Usage (``./run_all.sh`` calls this after bootstrapping the virtual environment)::

    python -m lib.pipeline.runner                          # every params/*.yaml, profile "quick"
    python -m lib.pipeline.runner --profile full --jobs 2
    python -m lib.pipeline.runner --only toy,nes --params my_overrides.yaml --no-report

Every selected parameter file is validated before anything runs (:mod:`lib.pipeline.grid`); an error is
one line naming the file and the key, and the exit status is 2. Each grid point is one papermill
execution writing ``reports/<date>/runs/<run_id>.ipynb``; the notebook itself writes
``reports/<date>/results/<run_id>.json`` to the ``results_path`` it is given. After each run the
runner records it in ``reports/<date>/manifest.json`` (atomically); a rerun on the same date
skips runs recorded ``ok`` with the same parameters and notebook and an existing results file,
so an interrupted grid resumes where it stopped. A failed run is recorded with its error and
the grid goes on. Exit status: 0 all runs ok, 1 some run (or the report) failed, 2 invalid
parameters, 130 interrupted.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import itertools
import os
import platform
import signal
import subprocess
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

from lib.common.files import atomic_write_json, read_json
from lib.common.versions import versions
from lib.experiments.progress import describe, progress_path, read_progress
from lib.experiments.resume import partial_path
from lib.pipeline.grid import RESULTS_KEY, ROOT, ParamsError, Run, expand_grid, validate
from lib.pipeline.priority import NICE_ENV

KERNEL_NAME = "python3"
# Kernels inherit the runner's environment; MPLBACKEND=Agg (set by run_all.sh for the tests)
# would stop figures from being embedded in the executed notebooks, so kernels get the inline one.
KERNEL_MPLBACKEND = "module://matplotlib_inline.backend_inline"
# Quiet the kernel's own log (e.g. its warning about unencrypted TCP); errors in cells still
# reach the executed notebook and the manifest.
# Each kernel lowers its own CPU priority when the runner asks (--nice, lib/priority.py).
KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR",
               "--IPKernelApp.exec_lines=from lib.pipeline.priority import lower_priority_from_env as _lp; _lp(); del _lp"]
# Seconds between two looks at the progress files of the running notebooks (lib/progress.py).
PROGRESS_POLL_S = 5.0
# Seconds between two rewrites of the running invocation's record (wall_s, finished): a runner
# killed without warning (SIGKILL, a machine switched off) leaves its wall time up to the last one.
HEARTBEAT_S = 60.0


# ----------------------------------------------------------------------------- execution


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def git_commit(root: Path = ROOT) -> tuple[str | None, bool | None]:
    """``(HEAD commit, whether the work tree has uncommitted changes)``; ``(None, None)`` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30)
        if head.returncode != 0:
            return None, None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=30)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return head.stdout.strip() or None, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def code_sha256(root: Path = ROOT) -> str:
    """sha256 over ``lib/**/*.py`` (relative path and bytes, in path order): the library version a
    run was computed with. Not part of :func:`lib.pipeline.grid.params_hash`, so editing ``lib/`` does not
    throw away hours of finished runs; the runner names the cached runs computed with another
    version (``--force`` recomputes them)."""
    h = hashlib.sha256()
    for path in sorted((root / "lib").rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def _short_error(exc: BaseException) -> str:
    if isinstance(exc, PapermillExecutionError):
        text = f"{exc.ename}: {exc.evalue} (cell {exc.exec_count})"
    else:
        lines = [ln for ln in "".join(traceback.format_exception_only(type(exc), exc)).splitlines() if ln.strip()]
        text = " | ".join(lines[-2:])
    return " ".join(text.split())[:2000]  # one line: it goes into the summary line and the manifest


DEFAULT_JOBS = max(1, min(4, os.cpu_count() or 1))


@contextmanager
def _kernel_environment(jobs: int, nice: int = 0) -> Iterator[None]:
    """Environment the kernels inherit: thread counts split between jobs, the CPU priority they
    take (``nice``, see :mod:`lib.pipeline.priority`). ``lib`` is importable in every kernel of
    the virtual environment: it is installed there editable."""
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    changes = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
               "MPLBACKEND": KERNEL_MPLBACKEND, "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", "0"),
               NICE_ENV: str(nice)}
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
    results = report_dir / "results" / f"{run.run_id}.json"
    results.unlink(missing_ok=True)  # a stale file must not pass for this run's output
    status, error = "ok", None
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(run.notebook_path), str(executed),
            parameters={**run.parameters, RESULTS_KEY: str(results.resolve())},
            kernel_name=KERNEL_NAME, cwd=str(root), progress_bar=False, log_output=False,
            extra_arguments=KERNEL_ARGS,
        )
        if not results.is_file():
            status, error = "failed", f"the notebook finished without writing results/{results.name}"
    except Exception as exc:  # KeyboardInterrupt passes through: the run stays unrecorded
        status, error = "failed", _short_error(exc)
    progress_path(results).unlink(missing_ok=True)
    if status == "ok":  # kept after a failure or an interrupt: the rerun resumes from it
        partial_path(results).unlink(missing_ok=True)
    return {
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
        "finished": _now(),
        **(code or {}),
    }


def is_cached(run: Run, manifest: Mapping[str, Any], report_dir: Path) -> bool:
    """Finished before: recorded ok, same parameters and notebook, results file present."""
    entry = manifest.get("runs", {}).get(run.run_id)
    return (isinstance(entry, dict) and entry.get("status") == "ok"
            and entry.get("params_hash") == run.params_hash
            and (report_dir / "results" / f"{run.run_id}.json").is_file())


def load_manifest(report_dir: Path) -> dict[str, Any]:
    path = report_dir / "manifest.json"
    if path.is_file():
        try:
            manifest = read_json(path)
            if isinstance(manifest, dict) and isinstance(manifest.get("runs"), dict):
                return manifest
        except (OSError, ValueError):
            pass
        print(f"warning: {path} is unreadable; starting a new manifest", file=sys.stderr)
    return {"runs": {}}


def abandon_running_notebooks() -> None:
    """Exit with status 130 at once, leaving the running notebooks behind. They cannot be stopped
    from the main thread; each kernel notices that its parent (``JPY_PARENT_PID``) is gone and
    exits, and the rerun resumes them from their saved steps (:mod:`lib.experiments.resume`)."""
    os._exit(130)


def run_grid(runs: Sequence[Run], report_dir: str | os.PathLike, *, profile: str, date: str, jobs: int = 1,
             force: bool = False, nice: int = 0, root: Path = ROOT) -> dict[str, list[str]]:
    """Execute ``runs`` into ``report_dir`` (resuming from its manifest); return run ids by outcome.

    The result has keys ``ok``, ``cached`` and ``failed``. The manifest is rewritten atomically
    after every finished run, so killing the process loses at most the runs in progress.
    """
    report_dir = Path(report_dir)
    (report_dir / "runs").mkdir(parents=True, exist_ok=True)
    (report_dir / "results").mkdir(parents=True, exist_ok=True)
    manifest_path = report_dir / "manifest.json"
    manifest = load_manifest(report_dir)
    commit, dirty = git_commit(root)
    manifest.update({"profile": profile, "date": date, "started": _now(), "git_commit": commit,
                     "git_dirty": dirty, "versions": versions(), "platform": platform.platform()})

    outcome: dict[str, list[str]] = {"ok": [], "cached": [], "failed": []}
    todo = [run for run in runs if force or not is_cached(run, manifest, report_dir)]
    if force:  # recompute from the start, not from the steps an interrupted run saved
        for run in todo:
            partial_path(report_dir / "results" / f"{run.run_id}.json").unlink(missing_ok=True)
    todo_ids = {run.run_id for run in todo}
    outcome["cached"] = [run.run_id for run in runs if run.run_id not in todo_ids]
    # One record per invocation, rewritten with the manifest after every run and when the
    # invocation ends or is interrupted: the wall time of a grid finished over several
    # (interrupted, resumed) invocations is the sum of their wall_s.
    t0 = time.perf_counter()
    invocation = {"started": manifest["started"], "finished": None, "wall_s": 0.0, "jobs": jobs,
                  "git_commit": commit, "planned": [run.run_id for run in runs], "ran": [],
                  "cached": len(outcome["cached"]), "interrupted": False}
    manifest.setdefault("invocations", []).append(invocation)
    atomic_write_json(manifest_path, manifest)
    lock = threading.Lock()
    bar = tqdm(total=len(runs), unit="run", dynamic_ncols=True)
    bar.update(len(outcome["cached"]))
    if outcome["cached"]:
        tqdm.write(f"cached {len(outcome['cached'])} run(s) in {manifest_path}")
        current = code_sha256(root)
        other = [rid for rid in outcome["cached"] if manifest["runs"][rid].get("code_sha256") != current]
        if other:
            names = ", ".join(other[:5]) + (f" and {len(other) - 5} more" if len(other) > 5 else "")
            tqdm.write(f"note: {len(other)} cached run(s) were computed with another or an unrecorded version "
                       f"of lib/ ({names}; see git_commit in the manifest); --force recomputes them")

    def record(entry: dict[str, Any] | None = None, run_id: str | None = None) -> None:
        """Under ``lock``: store ``entry``, bring this invocation's record up to date, write."""
        if entry is not None:
            manifest["runs"][run_id] = entry
            invocation["ran"].append(run_id)
        invocation["wall_s"] = round(time.perf_counter() - t0, 3)
        invocation["finished"] = _now()
        atomic_write_json(manifest_path, manifest)

    running: dict[str, Path] = {}  # run id -> its results file, whose progress file is polled
    stop = threading.Event()

    def refresh() -> None:
        """Under ``lock``: the bar shows how many runs are in progress and each one's progress."""
        bar.set_description(f"{len(running)} running", refresh=False)
        bar.set_postfix_str("; ".join(f"{rid} {describe(read_progress(path))}" for rid, path in running.items()))

    def show_progress() -> None:
        beat = time.perf_counter()
        while not stop.wait(PROGRESS_POLL_S):
            with lock:
                if time.perf_counter() - beat >= HEARTBEAT_S:
                    beat = time.perf_counter()
                    record()
                refresh()

    def one(run: Run) -> dict[str, Any]:
        results = report_dir / "results" / f"{run.run_id}.json"
        progress_path(results).unlink(missing_ok=True)  # left by an interrupted attempt
        with lock:
            running[run.run_id] = results
            refresh()
        # The library version is read per run: a kernel imports lib/ when its run starts.
        code = dict(zip(("git_commit", "git_dirty"), git_commit(root)), code_sha256=code_sha256(root))
        entry = execute_run(run, report_dir, root, code)
        with lock:
            running.pop(run.run_id, None)
            record(entry, run.run_id)
            if entry["status"] == "ok":
                outcome["ok"].append(run.run_id)
                tqdm.write(f"ok {entry['wall_s']:.1f}s {run.run_id}")
            else:
                outcome["failed"].append(run.run_id)
                tqdm.write(f"FAILED {entry['wall_s']:.1f}s {run.run_id}: {entry['error']}")
            bar.update(1)
            refresh()
        return entry

    def interrupted() -> None:
        with lock:
            invocation["interrupted"] = True
            record()

    poller = threading.Thread(target=show_progress, name="progress", daemon=True)
    poller.start()
    # Notebooks execute in worker threads, also with one job: papermill never sees Ctrl-C, so it
    # does not shut a busy kernel down (which printed the kernel's ZMQ errors). A new run starts
    # only when one has finished, so after an interrupt nothing new starts.
    pending = iter(todo)
    active: set[Future] = set()
    try:
        with _kernel_environment(jobs, nice), ThreadPoolExecutor(max_workers=jobs) as pool:
            try:
                active.update(pool.submit(one, run) for run in itertools.islice(pending, jobs))
                while active:
                    done, active = wait(active, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()
                    active.update(pool.submit(one, run) for run in itertools.islice(pending, len(done)))
            except KeyboardInterrupt:
                interrupted()  # finished runs are already in the manifest
                n_running = sum(not future.done() for future in active)
                if n_running:
                    stop.set()
                    poller.join()
                    bar.close()
                    sys.stderr.write(f"\ninterrupted: {n_running} running notebook(s) stopped; "
                                     "rerun the same command to resume\n")
                    sys.stderr.flush()
                    abandon_running_notebooks()
                raise
    finally:
        stop.set()
        poller.join()
        bar.close()
    with lock:
        record()
    return outcome


def prune(runs: Sequence[Run], names: Sequence[str], report_dir: Path) -> list[str]:
    """Take out of ``report_dir`` the runs of the params files ``names`` that their grid, as
    expanded now (``runs``), no longer has, e.g. after a value was removed from a grid axis; the
    report shows every run in the manifest. Returns the pruned run ids.

    Nothing is deleted: a pruned run's results, executed notebook and partial state move to
    ``pruned/results/`` and ``pruned/runs/``, and its manifest entry to the manifest's ``pruned``
    list (with the time). Its id also leaves the ``planned`` lists of earlier invocations, which
    only serve the report's "not run yet" list. Runs still in the grid whose parameters changed
    are not pruned: the next run recomputes them."""
    manifest_path = report_dir / "manifest.json"
    if not manifest_path.is_file():
        return []
    manifest = load_manifest(report_dir)
    current = {run.run_id for run in runs}

    def stale(rid: str) -> bool:
        return rid not in current and any(rid == n or rid.startswith(n + "__") for n in names)

    gone = sorted(rid for rid in manifest["runs"] if stale(rid))
    for rid in gone:
        entry = manifest["runs"].pop(rid)
        for sub, path in (("results", entry.get("results")), ("runs", entry.get("executed_notebook"))):
            src = report_dir / path if path else None
            if src is not None and src.is_file():
                (report_dir / "pruned" / sub).mkdir(parents=True, exist_ok=True)
                os.replace(src, report_dir / "pruned" / sub / src.name)
        partial_path(report_dir / "results" / f"{rid}.json").unlink(missing_ok=True)
        manifest.setdefault("pruned", []).append({"run_id": rid, "pruned": _now(), "entry": entry})
    dropped = False
    for inv in manifest.get("invocations") or []:
        if isinstance(inv, dict) and isinstance(inv.get("planned"), list):
            kept = [rid for rid in inv["planned"] if not stale(rid)]
            dropped |= len(kept) != len(inv["planned"])
            inv["planned"] = kept
    if gone or dropped:
        atomic_write_json(manifest_path, manifest)
    return gone


def unfinished_elsewhere(reports_dir: Path, date: str, profile: str, runs: Sequence[Run]) -> str | None:
    """The latest date folder before ``date`` holding some, not all, of ``runs`` finished with the
    same ``profile`` and parameters: a grid started on an earlier day, which ``--date`` resumes.
    ``None`` when ``date`` already has a manifest or no such folder exists."""
    if (reports_dir / date / "manifest.json").is_file() or not reports_dir.is_dir():
        return None
    wanted = {(run.run_id, run.params_hash) for run in runs}
    earlier = sorted((d for d in reports_dir.glob("[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]")
                      if d.is_dir() and d.name < date), reverse=True)
    for folder in earlier:
        try:
            manifest = read_json(folder / "manifest.json")
        except (OSError, ValueError):
            continue
        if not isinstance(manifest, dict) or manifest.get("profile") != profile:
            continue
        done = {(rid, e.get("params_hash")) for rid, e in (manifest.get("runs") or {}).items()
                if isinstance(e, dict) and e.get("status") == "ok"} & wanted
        if done and done != wanted:
            return folder.name
    return None


# ----------------------------------------------------------------------------- CLI


def _date(text: str) -> str:
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}") from None


def _niceness(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 19:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 19, got {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lib.pipeline.runner",
        description="Validate params/*.yaml, run each notebook over its grid with papermill into "
                    "reports/<date>/, resume finished runs, build the report.")
    parser.add_argument("--profile", default="quick", help="profile in each params file: quick|full (default: quick)")
    parser.add_argument("--only", action="append", metavar="NAME[,NAME]",
                        help="params file stems to run (default: all files in --params-dir)")
    parser.add_argument("--params", metavar="FILE", help="YAML overriding profile values: {key: value} for "
                        "every selected notebook having key, or {name: {key: value}}; grid keys need lists")
    parser.add_argument("--jobs", type=_positive, default=DEFAULT_JOBS,
                        help=f"parallel notebook executions, each with cores/jobs threads (default: {DEFAULT_JOBS}, "
                             "one per core: small tensors run best single-threaded)")
    parser.add_argument("--date", type=_date, default=dt.date.today().isoformat(),
                        help="report folder date YYYY-MM-DD (default: today); resume is per date, so a grid "
                             "started on an earlier day resumes with that day's date")
    parser.add_argument("--reports-dir", default="reports", help="default: reports")
    parser.add_argument("--params-dir", default="params", help="default: params")
    parser.add_argument("--no-report", action="store_true", help="skip building reports/<date>/index.html")
    parser.add_argument("--force", action="store_true", help="recompute runs even if finished")
    parser.add_argument("--prune", action="store_true",
                        help="move finished runs of the selected params files that their grid no longer has "
                             "(a grid value removed) out of the report, to reports/<date>/pruned/")
    parser.add_argument("--nice", type=_niceness, default=0,
                        help="CPU priority of the notebook kernels, 0 (default) to 19 (lowest): run a long grid "
                             "in the background without slowing other work")
    return parser


@contextmanager
def _stop_signals_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP (``kill``, a closed terminal, a job scheduler) stop the runner as Ctrl-C
    does: finished runs stay recorded and the invocation is marked interrupted. Background jobs
    of a shell ignore SIGINT, so ``kill`` is how they are stopped."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    saved = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (0 ok, 1 failures, 2 invalid parameters)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    names = None
    if args.only:
        names = list(dict.fromkeys(n.strip() for item in args.only for n in item.split(",") if n.strip()))

    try:
        files = validate(args.params_dir, names, args.profile, args.params)
        runs = [run for pf in files for run in expand_grid(pf)]
    except ParamsError as exc:
        print(str(exc), file=sys.stderr)
        return 2

    report_dir = Path(args.reports_dir) / args.date
    earlier = unfinished_elsewhere(Path(args.reports_dir), args.date, args.profile, runs)
    if earlier:
        print(f"note: {Path(args.reports_dir) / earlier} holds an unfinished grid of profile {args.profile}; "
              f"add --date {earlier} to resume it instead of starting {report_dir}", file=sys.stderr)
    if args.prune and args.params:
        print("--prune: compares the finished runs with the params files themselves; run it without --params",
              file=sys.stderr)
        return 2
    if args.prune:
        gone = prune(runs, [pf.name for pf in files], report_dir)
        print(f"pruned {len(gone)} run(s) no longer in the grid" + (f": {', '.join(gone)}" if gone else "")
              + (f" (moved to {report_dir / 'pruned'})" if gone else ""))
    try:
        with _stop_signals_as_interrupt():
            outcome = run_grid(runs, report_dir, profile=args.profile, date=args.date, jobs=args.jobs,
                               force=args.force, nice=args.nice)
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished runs are recorded in {report_dir / 'manifest.json'}; "
              "rerun the same command to resume", file=sys.stderr)
        return 130

    status = 1 if outcome["failed"] else 0
    report = "skipped (--no-report)"
    if not args.no_report:
        try:
            from lib.report.build import build_report
            build_report(report_dir)
            report = str(report_dir / "index.html")
        except Exception as exc:
            print(f"building the report in {report_dir} failed: {_short_error(exc)}", file=sys.stderr)
            report = "FAILED"
            status = 1
    print(f"{len(outcome['ok'])} ok, {len(outcome['cached'])} cached, {len(outcome['failed'])} failed; "
          f"report: {report}")
    return status


if __name__ == "__main__":
    sys.exit(main())
