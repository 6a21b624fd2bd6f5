"""Grid runner: execute every run of the selected parameter files with papermill, resume, report.

Usage: the ``ste-report`` command (:mod:`lib.pipeline.cli`; ``./run_all.sh`` calls it after
bootstrapping the virtual environment), or ``python -m lib.pipeline.runner`` with the same options::

    ste-report                                             # every params/*.yaml, profile "quick"
    ste-report --profile full --jobs 2
    ste-report --only toy,convergence --params my_overrides.yaml --no-report

Every selected parameter file is validated against its experiment's schema before anything runs
(:mod:`lib.pipeline.grid`); an error is one line naming the file and the key, and the exit status
is 2. Each grid point is one papermill execution (:mod:`lib.pipeline.execute`) writing ``reports/<date>/runs/<run_id>.ipynb``; the notebook itself writes
``reports/<date>/results/<run_id>.json`` to the ``results_path`` it is given. After each run the
runner records it in ``reports/<date>/manifest.json`` (atomically, :mod:`lib.pipeline.manifest`); a rerun on the same date
skips runs recorded ``ok`` with the same parameters and notebook and an existing results file,
so an interrupted grid resumes where it stopped. A failed run is recorded with its error and
the grid goes on. Exit status: 0 all runs ok, 1 some run (or the report) failed, 2 invalid
parameters, 130 interrupted.
"""
from __future__ import annotations

import argparse
import datetime as dt
import errno
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, NoReturn, Sequence

if __name__ == "__main__":  # a stop signal while the imports below load: one line and status 130, no traceback
    from lib.pipeline.startup import catch_stop_signals

    catch_stop_signals()

from lib.common.paths import ROOT, repo_path
from lib.common.resources import folder_problem
from lib.pipeline.cluster import ClusterError, parse_cluster
from lib.pipeline.execute import DEFAULT_JOBS, run_grid, short_error
from lib.pipeline.grid import ParamsError, expand_grid, validate
from lib.pipeline.lock import folder_lock
from lib.pipeline.manifest import prune, unfinished_elsewhere


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


class _Parser(argparse.ArgumentParser):
    """argparse whose refusal is one line (``<prog>: <why>``) and status 2, without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (--help lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ste-report",
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
    parser.add_argument("--reports-dir", default="reports", help="default: reports (relative: from the repository root)")
    parser.add_argument("--params-dir", default="params", help="default: params (relative: from the repository root)")
    parser.add_argument("--no-report", action="store_true", help="skip building reports/<date>/index.html")
    parser.add_argument("--force", action="store_true", help="recompute runs even if finished")
    parser.add_argument("--prune", action="store_true",
                        help="move finished runs of the selected params files that their grid no longer has "
                             "(a grid value removed) out of the report, to reports/<date>/pruned/")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--cluster", metavar="local:N",
                       help="run the grid on an embedded Dask LocalCluster of N single-threaded worker processes "
                            "instead of the local pool")
    where.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                       help="run the grid on a running Dask cluster (dask scheduler + dask worker, or "
                            "dask-jobqueue); the workers need the repository and --reports-dir at the same paths")
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


@contextmanager
def _executor(args: argparse.Namespace, report_dir: Path) -> Iterator[Any]:
    """``None`` (the local pool), or a Dask client whose workers were checked to see the
    repository and the reports folder (:mod:`lib.pipeline.cluster`)."""
    if args.cluster is None and args.scheduler is None:
        yield None
        return
    from lib.pipeline.cluster import check_workers, dask_client

    option = "--cluster" if args.cluster is not None else "--scheduler"
    visible = next(p for p in [report_dir.resolve(), *report_dir.resolve().parents] if p.exists())
    with dask_client(args.cluster, args.scheduler) as client:
        check_workers(client, [ROOT, visible], option)
        yield client


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (0 ok, 1 failures, 2 invalid parameters,
    130 interrupted: Ctrl-C, SIGTERM or SIGHUP at any moment ends with one line)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with _stop_signals_as_interrupt():
            return _main(argv)
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        print(f"disk full{where}: finished runs stay recorded (files are replaced whole, never half-written); "
              "free some space and rerun the same command to resume", file=sys.stderr)
        return 1


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    # relative folders are from the repository root, as every relative path of the project is
    args.params_dir, args.reports_dir = str(repo_path(args.params_dir)), str(repo_path(args.reports_dir))
    names = None
    if args.only:
        names = list(dict.fromkeys(n.strip() for item in args.only for n in item.split(",") if n.strip()))

    if args.cluster is not None:
        try:
            parse_cluster(args.cluster)
        except ClusterError as exc:
            print(str(exc), file=sys.stderr)
            return 2
    try:
        files = validate(args.params_dir, names, args.profile, args.params)
        runs = [run for pf in files for run in expand_grid(pf)]
    except ParamsError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if names is None:
        left_out = sorted({p.stem for p in Path(args.params_dir).glob("*.yaml")} - {pf.name for pf in files})
        if left_out:
            print(f"note: no profile {args.profile} in {', '.join(left_out)}; running "
                  f"{', '.join(pf.name for pf in files)}", file=sys.stderr)

    report_dir = Path(args.reports_dir) / args.date
    # the folder's own subfolders too: a read-only results/ would fail only once a run has computed
    for folder, option in ((Path(args.reports_dir), "--reports-dir"), (report_dir, "--date"),
                           (report_dir / "results", "--date"), (report_dir / "runs", "--date")):
        problem = folder_problem(folder)
        if problem:
            print(f"{option}: {problem}", file=sys.stderr)
            return 2
    earlier = unfinished_elsewhere(Path(args.reports_dir), args.date, args.profile, runs)
    if earlier:
        print(f"note: {Path(args.reports_dir) / earlier} holds an unfinished grid of profile {args.profile}; "
              f"add --date {earlier} to resume it instead of starting {report_dir}", file=sys.stderr)
    if args.prune and args.params:
        print("--prune: compares the finished runs with the params files themselves; run it without --params",
              file=sys.stderr)
        return 2
    try:
        with _executor(args, report_dir) as client, folder_lock(report_dir):
            return _run_locked(args, files, runs, report_dir, client)
    except ClusterError as exc:
        print(str(exc), file=sys.stderr)
        return 2


def _run_locked(args: argparse.Namespace, files: Sequence[Any], runs: Sequence[Any], report_dir: Path,
                client: Any) -> int:
    """Prune, run the grid and build the report, holding the report folder's lock."""
    if args.prune:
        gone = prune(runs, [pf.name for pf in files], report_dir)
        print(f"pruned {len(gone)} run(s) no longer in the grid" + (f": {', '.join(gone)}" if gone else "")
              + (f" (moved to {report_dir / 'pruned'})" if gone else ""))
    try:
        outcome = run_grid(runs, report_dir, profile=args.profile, date=args.date, jobs=args.jobs,
                           force=args.force, nice=args.nice, client=client)
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
            print(f"building the report in {report_dir} failed: {short_error(exc)}", file=sys.stderr)
            report = "FAILED"
            status = 1
    print(f"{len(outcome['ok'])} ok, {len(outcome['cached'])} cached, {len(outcome['failed'])} failed; "
          f"report: {report}")
    return status


if __name__ == "__main__":
    sys.exit(main())
