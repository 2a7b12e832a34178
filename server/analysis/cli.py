"""``snslab recount | rescore | export``: offline analysis of a stored session (registered on the main app).

Each command opens the database the way every snslab command does (DATABASE_URL, or the embedded
PostgreSQL in ./.snslab), shows a progress bar on long work, and prints one-line errors naming the option.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from pathlib import Path

import typer

from server.cli_errors import fail as _fail
from snslab_common.errors import SnslabError

def _session_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        _fail(f"SESSION: {text!r} is not a session id (a UUID, as `snslab insilico` or the dashboard shows it)")


@contextmanager
def _errors():
    try:
        yield
    except typer.Exit:
        raise
    except (SnslabError, ValueError, LookupError, FileNotFoundError) as err:
        _fail(str(err).splitlines()[0] if str(err) else type(err).__name__)


@contextmanager
def _progress(description: str, quiet: bool):
    """Yields update(done, total); a rich progress bar on stderr unless quiet."""
    if quiet:
        yield lambda done, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _repo():
    from server.db import connect

    return connect().repository()


RECOUNT_HELP = """Re-count a stored session's spikes with other windows, from its stored spike times.

The counts are stored as a new analysis linked to the session (the original counts are never changed); its id is printed, for `snslab rescore --counts`. Windows are half-open [START, END) in ms after the presentation's onset on the rig clock, within the stored span (the bridge's --spike-margin, default -200:500). With the window used online, every stored count is reproduced exactly.

Example:  snslab recount 3f1c...e2 --window 60:220 --baseline=-60:0
"""


def recount(
    session: str = typer.Argument(..., help="the stored session's id"),
    window: str = typer.Option(..., "--window", help="response window START:END in ms after onset, e.g. 60:220"),
    baseline: str | None = typer.Option(None, "--baseline", help="baseline window START:END in ms, e.g. -60:0 "
                                        "(write --baseline=-60:0)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    from .recount import parse_window, recount as run

    sid = _session_id(session)
    with _errors():
        w = parse_window(window, "window")
        b = parse_window(baseline, "baseline") if baseline is not None else None
        with _progress("recounting", quiet) as update:
            res = run(_repo(), sid, w, b, progress=update)
    n = len(res.counts)
    typer.echo(f"analysis {res.analysis_id}: recounted {n} presentations of session {sid} "
               f"in [{w[0]:g}, {w[1]:g}) ms" + (f", baseline [{b[0]:g}, {b[1]:g}) ms" if b else ""))
    if res.compared:
        typer.echo(f"same window as online: {res.same_as_online} of {res.compared} presentations reproduce the "
                   "stored counts exactly")
    if res.skipped:
        typer.echo(f"{res.skipped} answered presentations have no stored spike times and were skipped")


def register(app: typer.Typer) -> None:
    app.command(help=RECOUNT_HELP)(recount)
    from .commands import register_more

    register_more(app, _session_id, _errors, _progress, _repo, _fail)
