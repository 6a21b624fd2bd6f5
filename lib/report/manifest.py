"""The run manifest section of the static report: parameters, seeds, versions, git commit, wall
time per run and per runner invocation, failures, runs not yet run."""
from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from lib.experiments.cells import heading, md, table


def not_run_yet(manifest: dict[str, Any]) -> list[str]:
    """Run ids some invocation of the runner planned but the manifest has no entry for: a grid
    interrupted (or still running) before those runs finished."""
    planned = {rid for inv in manifest.get("invocations") or [] if isinstance(inv, dict)
               for rid in inv.get("planned") or []}
    return sorted(planned - set(manifest.get("runs") or {}))


def _seed_of(entry: dict[str, Any], results: dict[str, Any] | None) -> Any:
    """The run's seed: given in its parameters, else the one its results record (the notebook's
    default), else empty."""
    given = (entry.get("parameters") or {}).get("seed")
    if given is not None or not results:
        return "" if given is None else given
    recorded = results.get("seed", (results.get("parameters") or {}).get("seed"))
    return "" if recorded is None else recorded


def _seconds(value: Any) -> str:
    return f"{value:.1f} s" if isinstance(value, (int, float)) else "–"


def _compute_s(run: dict[str, Any], key: str = "wall_s") -> float | None:
    """The run's compute time summed over its attempts, as its results file records it (a run
    resumed after an interrupt finishes with a shorter last attempt); ``key="cpu_s"``: its CPU
    time (results written before it was recorded have none); None without results."""
    value = (run["results"] or {}).get(key)
    return value if isinstance(value, (int, float)) else None


def invocation_summary(manifest: dict[str, Any]) -> str:
    """One sentence on the runner invocations that had runs to compute (a rerun that found every
    run finished is left out): how many, how many were interrupted, how many ended without a
    final record (killed without warning, or still running), and their wall time summed. Each
    invocation's ``wall_s`` is rewritten every minute while it runs, so a killed one counts up
    to its last minute."""
    worked = [i for i in manifest.get("invocations") or []
              if isinstance(i, dict) and len(i.get("planned") or []) > (i.get("cached") or 0)]
    if not worked:
        return ""
    interrupted = sum(1 for i in worked if i.get("interrupted"))
    unrecorded = sum(1 for i in worked if not i.get("interrupted")
                     and len(i.get("ran") or []) + (i.get("cached") or 0) < len(i.get("planned") or []))
    elapsed = sum(i.get("wall_s") or 0 for i in worked)
    return (f"Computed by {len(worked)} invocation(s) of the runner ({interrupted} interrupted, {unrecorded} "
            f"ended without a final record: killed without warning, or still running), {elapsed:.0f} s of "
            "wall time in all (report build excluded).")


def _machines_sentence(runs: Sequence[dict[str, Any]]) -> str:
    """`` CPUs: <model> (<vector instructions>): n runs; …`` from the results, or ``""``."""
    counts = Counter(f"{m.get('cpu')} ({m.get('cpu_capability')})" for r in runs
                     if isinstance(m := (r["results"] or {}).get("machine"), dict))
    if not counts:
        return ""
    listed = "; ".join(f"{cpu}: {n} run{'s' * (n != 1)}" for cpu, n in counts.most_common())
    return f" CPUs: {listed}." + (" Float32 sums may differ in their last digits between them." if len(counts) > 1 else "")


def manifest_section(manifest: dict[str, Any], runs: Sequence[dict[str, Any]]) -> list:
    cells = [md(heading(2, "Run manifest"))]
    commit = manifest.get("git_commit") or "unknown"
    dirty = " (with uncommitted changes)" if manifest.get("git_dirty") else ""
    versions = ", ".join(f"{k} {v}" for k, v in sorted((manifest.get("versions") or {}).items()) if v)
    cells.append(md(f"Profile `{manifest.get('profile')}`, date {manifest.get('date')}, started "
                    f"{manifest.get('started')}; git commit `{commit}`{dirty}; {manifest.get('platform', '')}.\n\n"
                    f"Versions: {versions}." + _machines_sentence(runs)))
    rows = []
    cpu = [_compute_s(r, "cpu_s") for r in runs]
    for r, run_cpu in zip(runs, cpu):
        e = r["entry"]
        wall, compute = e.get("wall_s"), _compute_s(r)
        seed = _seed_of(e, r["results"])
        run_commit = (e.get("git_commit") or "")[:9] + ("+" if e.get("git_dirty") else "")
        rows.append([r["id"], e.get("status", "?"), _seconds(wall), _seconds(compute), _seconds(run_cpu),
                     seed, run_commit or "–", (e.get("params_hash") or "")[:12], e.get("error") or ""])
    n_failed = sum(1 for r in runs if r["entry"].get("status") != "ok")
    total = sum(_compute_s(r) or r["entry"].get("wall_s") or 0 for r in runs)
    recorded = [c for c in cpu if c is not None]
    cpu_note = ""
    if recorded:
        which = "" if len(recorded) == len(runs) else f" in the {len(recorded)} runs that record it"
        cpu_note = f" (CPU time {sum(recorded):.0f} s{which})"
    summary = (f"{len(runs)} runs, {n_failed} failed; total compute time {total:.0f} s{cpu_note}. "
               + invocation_summary(manifest))
    cells.append(md(summary))
    cells.append(table(["run", "status", "wall time, last attempt", "compute, all attempts", "CPU, all attempts",
                        "seed", "commit", "params hash", "error"], rows))
    missing = not_run_yet(manifest)
    if missing:
        cells.append(md(f"**Not run yet** ({len(missing)}; rerun the same command to resume): "
                        + ", ".join(f"`{rid}`" for rid in missing) + "."))
    params_rows = []
    for r in runs:
        for k, v in sorted((r["entry"].get("parameters") or {}).items()):
            params_rows.append([r["id"], k, v])
    cells.append(md("<details><summary>All parameters of every run</summary>\n\n" +
                    table(["run", "parameter", "value"], params_rows).source + "\n\n</details>"))
    return cells
