"""The ``snslab`` command: in-silico probes, the demo, and each part of the closed loop on its own machine."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from server.cli_errors import fail as _fail
from snslab_common.errors import SnslabError

from recording_bridge import cli as bridge_command
from stimulus_client import cli as display_command

from .config import describe_fields
from .db_commands import app as db_app
from .session_cli import app as session_app  # snslab session ...: the HTTP client's commands

_display_app, _bridge_app = display_command.app, bridge_command.app

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="snslab: closed-loop Stretch-and-Squeeze probes of visual neurons (invariance and adversarial).",
)


_FIELDS = "\n\n".join(f"{name} = {default}: {desc}" for name, default, desc in describe_fields())

INSILICO_HELP = f"""Run a probe on a model unit (no rig needed) from a TOML config.

Writes summary.json, front.png (first fronts over generations), grid.png (final front beside the
reference), selected.png and reference.png to the config's output folder. See examples/*.toml.

Every config field (dotted names are TOML tables; generator/subject/optimizer/stage tables also take
their component's own parameters, e.g. generator.code_size):

{_FIELDS}
"""


@app.command(help=INSILICO_HELP)
def insilico(
    config: Path = typer.Argument(..., help="TOML config file"),
    output: Path | None = typer.Option(None, "--output", "-o", help="override the config's output folder"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    store: bool = typer.Option(
        True, "--store/--no-store",
        help="store every presentation in the database (DATABASE_URL, or the embedded PostgreSQL in ./.snslab), "
        "like a rig session, so the dashboard, replay and resume work on it; runs with noise.kind = 'none' "
        "have no spike counts and are never stored",
    ),
) -> None:
    from .config import load_config
    from .insilico import run_probe, write_outputs

    try:
        cfg = load_config(config)
        if output is not None:
            cfg = cfg.model_copy(update={"output": output})
        recorder = None
        if store and cfg.noise.kind == "poisson":
            from .db import connect
            from .insilico import DatabaseRecorder

            recorder = DatabaseRecorder(connect().repository())
        result = run_probe(cfg, progress=not quiet, recorder=recorder)
        if recorder is not None:
            recorder.finish()
            typer.echo("stored sessions: " + ", ".join(f"{p}={sid}" for p, sid in recorder.sessions))
    except (SnslabError, ValueError, FileNotFoundError) as err:  # config, database, storage: one clear line
        _fail(str(err))
        return
    paths = write_outputs(result)
    ev = result.evaluation
    typer.echo(f"{cfg.mode}: {ev['generations']} generations, {ev['presentations']} presentations")
    if "reference_check" in ev:
        rc = ev["reference_check"]
        typer.echo(f"reference: {rc['reference_rate_hz']:.1f} Hz re-measured ({rc['presentations']} fresh "
                   f"presentations), blank screen {rc['baseline_rate_hz']:.1f} Hz")
    if "retention" in ev:
        line = f"selected image: retention {ev['retention']:.1%}, stretch {ev['stretch']:.3f} of max pixel distance"
        if cfg.mode == "invariance":  # the affine control kept within the band: an invariance quantity only
            line += (f" (best affine control within +-{cfg.retention_tolerance:.0%}: "
                     f"{ev['best_affine_stretch_at_90']:.3f})")
        typer.echo(line)
        v = ev.get("verification")
        if v and v.get("chosen"):  # (server/engine/verify.py)
            ch = v["chosen"]
            typer.echo(f"verified on {v['presentations']} fresh presentations of {v['candidates']} candidates: the "
                       f"reported image measured {ch['rate_hz']:.1f} +- {ch['se_hz']:.1f} Hz against the reference's "
                       f"{v['reference_rate_hz']:.1f} Hz, "
                       + ("established" if ch["passed"] else "not established within the budget (the closest "
                          "to passing)"))
        if "claim" in ev:
            c = ev["controls"]
            if c.get("stretch_stage", "pixel") != "pixel":  # the claim compares the probe's own stage
                typer.echo(f"in stage '{c['stretch_stage']}': stretch {c['probe']['stretch']:.3f} of the "
                           f"reference's norm, retention {c['probe']['retention']:.1%}")
            lost = [k for k, v in ev["controls"]["beats"].items() if not v]
            typer.echo(f"claim '{ev['claim']}': {'true' if ev['claim_holds'] else 'false'}"
                       + (f" (not beaten: {', '.join(lost)})" if lost else ""))
            ratio = ev["controls"].get("contrast_to_probe_stretch_ratio")
            if cfg.mode == "adversarial" and ratio is not None:
                typer.echo(f"contrast reduction needs {ratio:.2f}x this stretch for the same change")
    else:
        typer.echo(f"most exciting image: {ev['selected_rate_hz']:.1f} Hz")
    typer.echo(f"outputs in {paths['summary.json'].parent}")


@app.command(help="Finish a stored in-silico session after a crash (even kill -9): it continues from the last "
             "committed generation with the identical optimizer state, so the result equals an uninterrupted run.")
def resume(session_id: str = typer.Argument(..., help="the stored session's id (printed by insilico --store)")) -> None:
    import uuid

    from .db import connect
    from .insilico import resume_stored

    try:
        sid = uuid.UUID(session_id)
    except ValueError:
        _fail(f"session_id: {session_id!r} is not a session id (a UUID)")
        return
    try:
        phase = resume_stored(connect().repository(), sid)
    except SnslabError as err:
        _fail(str(err))
        return
    typer.echo(f"session {sid} completed: {phase.search.generation} generations")


@app.command(help="Replay a stored session offline (live or in silico): rebuild its search from the stored "
             "config and seed, feed it the stored responses, and check that every generation's proposals come "
             "out bit for bit as stored. Prints the probe's answer as the replayed search sees it.\n\n"
             "Example:  snslab replay 3f1c...e2")
def replay(session_id: str = typer.Argument(..., help="the stored session's id"),
           quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar")) -> None:
    import uuid

    from .analysis.cli import _progress
    from .db import connect
    from .stored import replay as replay_session

    try:
        sid = uuid.UUID(session_id)
        with _progress("replaying generations", quiet) as update:
            rep = replay_session(connect().repository(), sid, progress=update)
    except SnslabError as err:
        _fail(str(err))
        return
    except ValueError as err:
        _fail(f"session_id: {err}")
        return
    if not rep.identical:
        _fail(f"replay differs from the stored session: {rep.mismatch}")
    typer.echo(f"replayed {rep.generations} generations of session {sid} bit for bit")
    if rep.generations:
        sel = rep.session.search.result()
        dist = ", ".join(f"{k} {v:.3g}" for k, v in sel.distances.items())
        typer.echo(f"selected: generation {sel.generation}, candidate {sel.index}; {dist}")


@app.command(help="Run the server: HTTP API + operator dashboard, and the ZeroMQ endpoint for the display "
             "and the bridge. The database is DATABASE_URL, or an embedded PostgreSQL in ./.snslab.")
def server(
    host: str = typer.Option("127.0.0.1", help="HTTP address (0.0.0.0 to serve the lab network)"),
    port: int = typer.Option(8000, help="HTTP port of the dashboard and API"),
    wire: str = typer.Option("tcp://127.0.0.1:5555", help="ZeroMQ bind address; tcp://*:5555 for rig PCs"),
    stall_s: float = typer.Option(8.0, "--stall-s", min=0.5, max=3600,
                                  help="show unanswered presentations again (new attempts) when nothing was answered "
                                  "for this long while a display is connected"),
    keys: Path | None = typer.Option(None, "--keys", help="key folder from `snslab keys init`: ZeroMQ CURVE, only "
                                     "the clients listed in its clients.txt, each bound to its role and client id"),
    insecure: bool = typer.Option(False, "--insecure", help="allow a non-loopback --wire without --keys (anyone on "
                                  "the network can then act as display or bridge); warned about at every start"),
) -> None:
    from .api.main import serve
    from wire.auth import KeyError_, ServerKeys, is_loopback

    options: dict = {"stall_s": stall_s}
    if keys is not None:
        try:
            options["endpoint_options"] = {"keys": ServerKeys.load(keys)}
        except KeyError_ as err:
            _fail(f"--keys: {err}")
    elif not is_loopback(wire):
        if not insecure:
            _fail(f"--wire {wire}: binding beyond loopback needs --keys DIR (make them with `snslab keys init DIR`), "
                  "or --insecure to run without authentication")
        typer.secho(f"WARNING: --insecure: the ZeroMQ endpoint {wire} accepts any client on the network, "
                    "unauthenticated and unencrypted", fg=typer.colors.YELLOW, err=True)
    try:
        serve(host, port, wire_bind=wire, service_options=options)
    except SnslabError as err:  # DatabaseUnavailable: one line, no traceback
        _fail(str(err))


@app.command(help="Run a complete closed-loop demo session on this machine: database, server, simulated "
             "neuron on the recording bridge and the PsychoPy display (on Xvfb when there is no screen). "
             "A maximize session finds the neuron's most exciting image; an invariance probe follows.")
def demo(
    generations: int = typer.Option(12, help="generations of the invariance probe"),
    maximize_generations: int = typer.Option(12, help="generations of the maximize session"),
    population: int = typer.Option(16, help="candidates per generation"),
    seed: int = typer.Option(1, help="session seed"),
    port: int = typer.Option(0, help="dashboard port (0: a free one)"),
    exit_when_done: bool = typer.Option(False, "--exit-when-done", help="stop when the probe is done"),
    rig: str = typer.Option("lsl", help="lsl (default): snslab virtual-rig publishes an LSL spike stream and the "
                            "bridge reads it, as on a lab's LSL rig; openephys: virtual Open Ephys Event "
                            "Broadcaster frames and TTL words; sim: the bridge's own simulated neuron"),
    check_repeats: int = typer.Option(20, min=0, help="after the maximize session, its best image and a blank "
                                      "screen are shown this many times each; the probe starts only if the image "
                                      "clearly drives the neuron (0: no check)"),
) -> None:
    from snslab_common.errors import SnslabError

    from .demo import RIGS, run_demo

    if rig not in RIGS:
        _fail(f"--rig: {rig!r} (allowed: {', '.join(RIGS)})")
    try:
        run_demo(max_generations=maximize_generations, generations=generations, population=population, seed=seed,
                 port=port or None, exit_when_done=exit_when_done, rig_kind=rig, out=typer.echo,
                 check_repeats=check_repeats)
    except (RuntimeError, SnslabError) as err:
        _fail(str(err))


keys_app = typer.Typer(no_args_is_help=True, help="ZeroMQ CURVE keys: who may connect as a display or a bridge.")
app.add_typer(keys_app, name="keys")


@keys_app.command("init", help="Make a key folder: the server's key pair, one pair per display and bridge, and "
                  "clients.txt listing each client's public key with its role and client id. Start the server with "
                  "--keys DIR; give each rig PC server.key and its own <client-id>.key_secret (its --keys folder).")
def keys_init(
    folder: Path = typer.Argument(..., help="new key folder"),
    display: list[str] = typer.Option(["display-1"], "--display", help="display client id (repeatable)"),
    bridge: list[str] = typer.Option(["bridge-1"], "--bridge", help="bridge client id (repeatable)"),
) -> None:
    from wire.auth import KeyError_, init_keys

    try:
        paths = init_keys(folder, displays=display, bridges=bridge)
    except KeyError_ as err:
        _fail(str(err))
    for p in paths:
        typer.echo(str(p))
    typer.echo(f"listed clients: {folder / 'clients.txt'}")


@keys_app.command("add", help="Add one client (a key pair bound to ROLE and CLIENT_ID) to a key folder; restart the "
                  "server to accept it.")
def keys_add(
    folder: Path = typer.Argument(..., help="key folder from `snslab keys init`"),
    role: str = typer.Argument(..., help="display | bridge | monitor"),
    client_id: str = typer.Argument(..., help="the client's --client-id"),
) -> None:
    from wire.auth import KeyError_, add_client

    try:
        typer.echo(str(add_client(folder, role, client_id)))
    except KeyError_ as err:
        _fail(str(err))


# the rig commands: the same typer commands as snslab-display / snslab-bridge on a display or recording PC
app.command(name="display", help=_display_app.registered_commands[0].help)(display_command.display)
app.command(name="bridge", help=_bridge_app.registered_commands[0].help,
            epilog=bridge_command.adapter_help())(bridge_command.bridge)
app.add_typer(db_app, name="db")
app.add_typer(session_app, name="session")


from .sweep.cli import register as _register_sweep  # noqa: E402  (issue 16: sweep, sweep-report)

_register_sweep(app, _fail)


from .analysis.cli import register as _register_analysis  # noqa: E402  recount, rescore, export (issue 14)

_register_analysis(app)


@app.command("virtual-rig", help="Run a virtual acquisition system (a model neuron that sees the display's screen, "
             "published as LSL and/or Open Ephys frames, on its own clock, with optional faults; writes the true "
             "counts). See `snslab virtual-rig --help`.",
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def virtual_rig(ctx: typer.Context) -> None:
    from recording_bridge.virtual_rig import main as rig_main

    raise typer.Exit(rig_main(list(ctx.args)) or 0)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
