"""`snslab sweep` and `snslab sweep-report` (registered on the main typer app by server/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import typer

from snslab_common.errors import SnslabError
from server.sweep.spec import __doc__ as SPEC_DOC

SWEEP_HELP = f"""Run many in-silico probes as one sweep on Ray, stored in PostgreSQL and a Parquet table.

Each probe is a Ray task (its CPU/GPU needs from [resources]; with batch_probes, a group of probes sharing
torch models) running exactly what `snslab insilico` runs;
its sessions are stored like any in-silico run (DATABASE_URL, or the embedded PostgreSQL in ./.snslab)
and grouped under the sweep. Local Ray by default (nothing to set up); `--address` joins a cluster
(then DATABASE_URL must be reachable from every node). Re-running the same file resumes the sweep: finished
probes are never redone. A failing probe is recorded with its error and the sweep goes on.
Output: OUTPUT/probes.parquet (one row per probe); `snslab sweep-report NAME` draws the figures.

The sweep file:

{{example}}
"""
_PARAGRAPHS = SPEC_DOC.split("\n", 2)[2].split("\n\n")
# "\b" keeps click from re-wrapping the example's lines
SWEEP_HELP = SWEEP_HELP.replace("{example}", "\n\n".join(
    "\b\n" + p if p.startswith("    ") else p for p in _PARAGRAPHS))


def register(app: typer.Typer, fail: Callable[[str], None]) -> None:
    @app.command("sweep", help=SWEEP_HELP)
    def sweep(
        file: Path = typer.Argument(..., help="the sweep file (TOML)"),
        address: str | None = typer.Option(None, "--address", help="a Ray cluster's address (default: a local Ray "
                                           "instance on this machine, started and stopped by the command)"),
        num_cpus: int | None = typer.Option(None, "--num-cpus", help="CPUs the local Ray instance may use "
                                            "(default: all of this machine's)"),
        num_gpus: int | None = typer.Option(None, "--num-gpus", help="GPUs the local Ray instance may use "
                                            "(default: those Ray detects)"),
        retry_failed: bool = typer.Option(False, "--retry-failed", help="run failed probes again too"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
        ray_temp_dir: str | None = typer.Option(None, "--ray-temp-dir", help="the local Ray instance's folder "
                                                "for sockets and logs (default Ray's, /tmp/ray)"),
    ) -> None:
        from server.sweep.run import run_sweep
        from server.sweep.spec import load_sweep

        try:
            spec = load_sweep(file)
            from server.db import connect

            database = connect()
        except (SnslabError, ValueError) as err:  # config, DatabaseUnavailable: one line
            fail(str(err))
            return
        try:
            out = run_sweep(spec, database, address=address, num_cpus=num_cpus, num_gpus=num_gpus,
                            retry_failed=retry_failed, progress=not quiet, ray_temp_dir=ray_temp_dir, echo=typer.echo)
        except SnslabError as err:  # e.g. a local Ray instance without the declared CPUs/GPUs
            fail(str(err))
            return
        for labels, error in out.errors[:10]:
            typer.echo(f"failed {labels}: {error}")
        c = out.counts
        typer.echo(f"sweep {out.name} ({out.sweep_id}): {out.total} probes; this run completed {out.completed}, "
                   f"failed {out.failed}; in all completed {c.get('completed', 0)}, failed {c.get('failed', 0)}")
        typer.echo(f"table: {out.parquet}")

    @app.command("sweep-report", help="Draw a sweep's figures (stretch reached per layer and probe with the "
                 "affine controls; retention distributions) as PNG files and a small HTML page.")
    def sweep_report(
        sweep: str = typer.Argument(..., help="the sweep's name, id, or its sweep file"),
        output: Path | None = typer.Option(None, "--output", "-o", help="folder (default: the sweep's output/report)"),
    ) -> None:
        from server.sweep.report import write_report

        try:
            from server.db import connect

            page = write_report(connect(), sweep, output)
        except (SnslabError, ValueError, LookupError) as err:  # config, DatabaseUnavailable: one line
            fail(str(err))
            return
        typer.echo(f"report: {page}")
