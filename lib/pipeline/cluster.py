"""The grid on a Dask cluster instead of the local pool: ``--cluster local:N`` (an embedded
``dask.distributed.LocalCluster`` of N single-threaded worker processes) or ``--scheduler
tcp://HOST:PORT`` (a running cluster, docs/dask.md).

Each grid point is one task, :func:`lib.pipeline.execute.execute_on_worker`: papermill runs the notebook on a worker,
its kernel's BLAS threads set to the worker's thread count, and the task returns the run's
manifest entry; the runner alone writes the manifest (:mod:`lib.pipeline.execute`). The workers
read the repository and write the report folder at the runner's paths, so they need a shared
filesystem: :func:`check_workers` asks every worker before anything runs.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence


CONNECT_TIMEOUT_S = 10


class ClusterError(RuntimeError):
    """A cluster that cannot run the grid: refused before compute, with the option that names it."""


def parse_cluster(spec: str) -> int:
    """``local:N`` → N (at least 1); :class:`ClusterError` naming ``--cluster`` otherwise."""
    match = re.fullmatch(r"local:(\d+)", spec.strip())
    if not match or int(match[1]) < 1:
        raise ClusterError(f"--cluster: expected local:N with N ≥ 1 worker processes, got {spec!r}")
    return int(match[1])


@contextmanager
def dask_client(cluster: str | None = None, scheduler: str | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` of an embedded ``LocalCluster`` (``cluster="local:N"``) or of the
    scheduler at ``scheduler``; the embedded cluster is closed on exit."""
    from distributed import Client, LocalCluster

    if cluster is not None:
        _quiet_resource_tracker()
        local = LocalCluster(n_workers=parse_cluster(cluster), threads_per_worker=1, processes=True,
                             dashboard_address=":0")  # any free port: two runners never clash
        try:
            with Client(local) as client:
                yield client
        finally:
            local.close()
        return
    try:
        client = Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(f"--scheduler: no Dask scheduler answers at {scheduler!r} "
                           f"within {CONNECT_TIMEOUT_S} s ({type(exc).__name__})") from exc
    with client:
        yield client


# Worker processes stopped by Ctrl-C leave semaphores behind, which multiprocessing's resource
# tracker then frees, with a warning at exit the user can do nothing about. The tracker is a
# process of its own, started with the first semaphore; it takes this filter from its environment.
TRACKER_FILTER = "ignore::UserWarning:multiprocessing.resource_tracker"


def _quiet_resource_tracker() -> None:
    """Add :data:`TRACKER_FILTER` to ``PYTHONWARNINGS`` for the processes started from now on."""
    current = os.environ.get("PYTHONWARNINGS", "")
    if TRACKER_FILTER not in current.split(","):
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [current, TRACKER_FILTER]))


def worker_threads(client: Any) -> int:
    """The number of task slots: the sum of the workers' threads (0 without workers)."""
    return sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())


def _unusable(paths: Sequence[str]) -> list[str]:
    """On a worker: the paths that are not a folder it can write."""
    return [p for p in paths if not (os.path.isdir(p) and os.access(p, os.W_OK))]


def check_workers(client: Any, paths: Sequence[Path], option: str) -> None:
    """Every worker must see and write ``paths`` (the repository, the report folder); otherwise
    :class:`ClusterError` naming the worker and the first path it lacks."""
    answers: Mapping[str, list[str]] = client.run(_unusable, [str(p) for p in paths])
    if not answers:
        raise ClusterError(f"{option}: the cluster has no workers")
    for worker, missing in sorted(answers.items()):
        if missing:
            raise ClusterError(f"{option}: worker {worker} cannot write {missing[0]}: the workers need the "
                               "repository and the reports folder at the same paths (a shared filesystem)")
