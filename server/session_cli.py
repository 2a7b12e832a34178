"""``snslab session ...``: create, start, pause, resume, stop, list and show sessions on a running server.

Talks HTTP to ``--server`` (default $SNSLAB_SERVER, else http://127.0.0.1:8000) through server.client, with the
token from $SNSLAB_TOKEN or $SNSLAB_OPERATOR_TOKEN (the one the server printed at start).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Optional

import typer

from server.cli_errors import fail as _fail

SERVER_ENV = "SNSLAB_SERVER"
DEFAULT_SERVER = "http://127.0.0.1:8000"

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Sessions on a running server: create, start, pause, resume, stop, list, show. The server is --server "
    f"(or ${SERVER_ENV}); the operator token comes from $SNSLAB_TOKEN or $SNSLAB_OPERATOR_TOKEN.",
)

ServerOpt = typer.Option(None, "--server", envvar=SERVER_ENV, show_envvar=True,
                         help=f"the server's URL (default {DEFAULT_SERVER})")
JsonOpt = typer.Option(False, "--json", help="print the server's JSON answer instead of a summary")


def _client(server: str | None):
    """The HTTP client (imported here: `snslab display` on a display PC never loads httpx or FastAPI)."""
    import getpass

    from .client import Client, token_from_env

    try:
        who = getpass.getuser()
    except Exception:  # no login name (containers): the log says "shell"
        who = "shell"
    return Client(server, token_from_env(), operator_name=f"{who} (snslab session)")


def _sid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        _fail(f"session_id: {text!r} is not a session id (a UUID)")
        raise  # unreachable


def _summary(s) -> str:
    budget = s.generations_budget if s.generations_budget is not None else "?"
    return (f"{s.id}  {s.status:<9} {s.probe or '-':<11} {s.subject_id:<10} {s.rig:<10} "
            f"generation {s.generations_done}/{budget}  {s.presentations_answered}/{s.presentations} answered")


def _run(fn) -> Any:
    from .client import ApiError

    try:
        return fn()
    except ApiError as err:
        _fail(err.detail if err.status == 0 else f"server answered {err.status}: {err.detail}")


def _load_spec(path: Path) -> dict[str, Any]:
    if not path.is_file():
        _fail(f"FILE: {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            return tomllib.loads(text)
        return json.loads(text)
    except ValueError as err:
        _fail(f"FILE: {path} is not valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: {err}")
        raise


@app.command(help="Store a new session (paused; nothing is shown until `start`). Either FILE, a JSON or TOML file "
             "with the fields of POST /api/sessions (operator, subject_id, rig, probe, reference, units, "
             "target_units, on_ms, off_ms, response_window_ms), or the options below; options override the "
             "file's fields.")
def create(
    file: Optional[Path] = typer.Argument(None, help="JSON or TOML session file"),
    mode: Optional[str] = typer.Option(None, "--mode", help="maximize | invariance | adversarial"),
    operator: Optional[str] = typer.Option(None, "--operator", help="who runs the session"),
    subject: Optional[str] = typer.Option(None, "--subject", help="animal id"),
    rig: Optional[str] = typer.Option(None, "--rig", help="rig name"),
    units: Optional[str] = typer.Option(None, "--units", help="comma-separated rig unit keys, e.g. sim:0,sim:1"),
    generator: Optional[str] = typer.Option(None, "--generator", help="image generator name (e.g. dct)"),
    stages: Optional[str] = typer.Option(None, "--stages", help="comma-separated stages to stretch/squeeze"),
    population: Optional[int] = typer.Option(None, "--population", help="candidates per generation"),
    generations: Optional[int] = typer.Option(None, "--generations", help="budget of generations"),
    seed: Optional[int] = typer.Option(None, "--seed", help="session seed"),
    reference_session: Optional[str] = typer.Option(
        None, "--reference-session", help="reference = the best image of this finished maximize session"),
    reference_image: Optional[Path] = typer.Option(
        None, "--reference-image", help="reference = this image (uploaded to the server)"),
    start: bool = typer.Option(False, "--start", help="start it at once"),
    server: Optional[str] = ServerOpt,
    as_json: bool = JsonOpt,
) -> None:
    spec: dict[str, Any] = _load_spec(file) if file is not None else {}
    probe = dict(spec.get("probe") or {})
    for key, value in (("mode", mode), ("population", population), ("generations", generations), ("seed", seed)):
        if value is not None:
            probe[key] = value
    if generator is not None:
        probe["generator"] = dict(probe.get("generator") or {}) | {"name": generator}
    if stages is not None:
        probe["stages"] = [s.strip() for s in stages.split(",") if s.strip()]
    spec["probe"] = probe
    for key, value in (("operator", operator), ("subject_id", subject), ("rig", rig)):
        if value is not None:
            spec[key] = value
    if units is not None:
        spec["units"] = [u.strip() for u in units.split(",") if u.strip()]
    if file is None and "operator" not in spec:
        import getpass

        spec["operator"] = getpass.getuser()
    with _client(server) as c:
        if reference_session is not None:
            spec["reference"] = {"source": "maximize-session", "session_id": str(_sid(reference_session))}
        elif reference_image is not None:
            if not reference_image.is_file():
                _fail(f"--reference-image: {reference_image} does not exist")
            path = _run(lambda: c.upload_reference(reference_image.read_bytes()))
            spec["reference"] = {"source": "image", "path": path}
        s = _run(lambda: c.create(spec))
        if start:
            s = _run(lambda: c.start(s.id))
    typer.echo(s.model_dump_json(indent=2) if as_json else f"created {_summary(s)}")


def _verb(name: str, doc: str) -> None:
    def command(session_id: str = typer.Argument(..., help="the session's id"), server: Optional[str] = ServerOpt,
                as_json: bool = JsonOpt) -> None:
        sid = _sid(session_id)
        with _client(server) as c:
            s = _run(lambda: getattr(c, name)(sid))
        typer.echo(s.model_dump_json(indent=2) if as_json else _summary(s))

    command.__name__ = name
    app.command(name=name, help=doc)(command)


_verb("start", "Run a stored session on the rig (after a server restart: resume it where it stopped).")
_verb("pause", "Show no new generation; the open one is answered and kept.")
_verb("resume", "Continue a paused session.")
_verb("stop", "Stop a session for good (status aborted); what was stored stays.")


@app.command(name="list", help="Sessions on the server, newest first.")
def list_(limit: int = typer.Option(50, help="at most this many"), server: Optional[str] = ServerOpt,
          as_json: bool = JsonOpt) -> None:
    with _client(server) as c:
        sessions = _run(lambda: c.sessions(limit))
    if as_json:
        typer.echo(json.dumps([s.model_dump(mode="json") for s in sessions], indent=2))
        return
    if not sessions:
        typer.echo("no sessions")
    for s in sessions:
        typer.echo(_summary(s))


@app.command(help="One session: status, progress, the live loop, the neuron's reference response and the rig.")
def show(session_id: str = typer.Argument(..., help="the session's id"), server: Optional[str] = ServerOpt,
         as_json: bool = JsonOpt) -> None:
    sid = _sid(session_id)
    with _client(server) as c:
        s = _run(lambda: c.session(sid))
        neuron = _run(lambda: c.neuron_health(sid))
        checks = [e for e in _run(lambda: c.events(sid)) if e.kind == "reference_check"]
    if as_json:
        typer.echo(json.dumps(s.model_dump(mode="json") | {"neuron": neuron}, indent=2))
        return
    typer.echo(_summary(s))
    typer.echo(f"operator {s.operator} · seed {s.seed} · units {', '.join(u.label for u in s.units) or '-'}"
               f" · stages {', '.join(s.stages) or '-'}")
    live = s.live
    state = ("paused here" if live.paused else "running here") if live.running_here else "not running on this server"
    clients = ", ".join(f"{c.role} {c.client_id}{'' if c.alive else ' (lost)'}" for c in live.clients) or "none"
    typer.echo(f"live loop: {state}; clients: {clients}")
    for unit in neuron.get("units", []):
        est = unit.get("estimate")
        text = "no reference response yet" if est is None else (
            f"reference {est['mean']:.2f} [{est['low']:.2f}, {est['high']:.2f}] vs start {unit['initial']['mean']:.2f}"
            if unit.get("initial") else f"reference {est['mean']:.2f}")
        typer.echo(f"unit {unit['label']}: {text}")
    if neuron.get("warning"):
        typer.secho(f"WARNING: {neuron['warning']}", fg=typer.colors.RED)
    for e in checks[-1:]:  # a live maximize session's reference check (server.reference_phase)
        typer.secho(f"reference check: {e.message}", fg=typer.colors.RED if e.level == "error" else None)
