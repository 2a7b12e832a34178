"""The sweep driver: expand the file, claim the unfinished probes in PostgreSQL, run each as a Ray task
(local Ray by default, a cluster with ``address``), follow them with a progress bar, write the Parquet table.

Crash-only: the database is the sweep's state. Each task records its own outcome, so killing the driver
(or the machine) loses at most the probes in flight; running the same file again claims and runs only
the probes that are not finished.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from server.sweep import store
from server.sweep.spec import SweepSpec


@dataclass
class SweepOutcome:
    name: str
    sweep_id: object
    total: int
    already: int  # finished before this run (completed, or failed and not retried)
    ran: int
    completed: int  # by this run
    failed: int  # by this run
    errors: list[tuple[dict, str]] = field(default_factory=list)
    parquet: Path | None = None
    counts: dict[str, int] = field(default_factory=dict)


def _ray_init(address: str | None, num_cpus: int | None, temp_dir: str | None, num_gpus: int | None):
    import ray

    if address:
        return ray.init(address=address, log_to_driver=False)
    kwargs = dict(include_dashboard=False, log_to_driver=False)
    if num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    if num_gpus is not None:
        kwargs["num_gpus"] = num_gpus
    if temp_dir:
        kwargs["_temp_dir"] = temp_dir
    return ray.init(**kwargs)


def run_sweep(spec: SweepSpec, database, *, address: str | None = None, num_cpus: int | None = None,
              num_gpus: int | None = None, retry_failed: bool = False, progress: bool = True,
              ray_temp_dir: str | None = None, echo: Callable[[str], None] = print) -> SweepOutcome:
    """Run (or resume) a sweep; ``database`` is an open server.db.Database."""
    from server.db.database import normalize_url

    engine = database.engine
    sweep_id, todo, before = store.open_sweep(engine, spec, retry_failed=retry_failed)
    total = len(spec.probes)
    outcome = SweepOutcome(spec.name, sweep_id, total, total - len(todo), len(todo), 0, 0)
    if todo:
        echo(f"sweep {spec.name}: {total} probes, {outcome.already} already finished, {len(todo)} to run")
        url = normalize_url(database.url).render_as_string(hide_password=False)
        _run_tasks(spec, todo, url, engine, outcome, address, num_cpus, num_gpus, ray_temp_dir, progress)
    else:
        echo(f"sweep {spec.name}: all {total} probes already finished")
    outcome.counts = store.close_sweep(engine, sweep_id)
    from server.sweep.table import write_parquet

    outcome.parquet = write_parquet(store.probe_rows(engine, sweep_id), spec.output / "probes.parquet")
    return outcome


def _run_tasks(spec, todo, url, engine, outcome, address, num_cpus, num_gpus, temp_dir, progress) -> None:
    import ray
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from server.sweep.group import group_probes, run_group_task
    from server.sweep.task import run_probe_task

    _ray_init(address, num_cpus, temp_dir, num_gpus)
    try:
        have = ray.cluster_resources()
        for res, need in (("CPU", spec.num_cpus), ("GPU", spec.num_gpus)):
            if not address and need > have.get(res, 0):  # a local instance never grows: tasks would wait forever
                from server.engine.base import ConfigError

                each = "task" if spec.batch_probes > 1 else "probe"
                raise ConfigError(f"resources.num_{res.lower()}s", f"each {each} needs {need:g} {res}s but the "
                                  f"local Ray instance has {have.get(res, 0):g}", f"at most {have.get(res, 0):g}")
        opts = dict(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, max_retries=0)
        task = ray.remote(run_probe_task).options(**opts)
        group_task = ray.remote(run_group_task).options(**opts)
        refs = {}
        for group in group_probes(todo, spec.batch_probes):
            if len(group) == 1:
                p = group[0]
                refs[task.remote(url, p.id, p.attempt, p.config)] = group
            else:
                refs[group_task.remote(url, [(p.id, p.attempt, p.config) for p in group])] = group
        bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("done {task.fields[done]}  failed {task.fields[failed]}"),
                       TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), disable=not progress)
        with bar:
            tid = bar.add_task(f"sweep {spec.name}", total=len(todo), done=0, failed=0)
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=5.0)
                for ref in ready:
                    group = refs[ref]
                    try:
                        results = ray.get(ref)
                        results = [results] if len(group) == 1 else results
                    except Exception as exc:  # the task's process died (out of memory, killed): record it
                        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                        results = [{"status": "failed", "error": error[:2000], "seconds": 0.0}] * len(group)
                    for probe, res in zip(group, results):
                        if res["status"] == "failed" and not store.finish(
                                engine, probe.id, probe.attempt, status="failed", seconds=res.get("seconds", 0.0),
                                error=res["error"]):  # recorded by the task already (before its process died)
                            res = store.outcome(engine, probe.id, probe.attempt) or res
                        if res["status"] == "completed":
                            outcome.completed += 1
                        elif res["status"] == "failed":
                            outcome.failed += 1
                            outcome.errors.append((probe.labels, res["error"]))
                    bar.update(tid, advance=len(group), done=outcome.completed, failed=outcome.failed)
    finally:
        ray.shutdown()
