"""``snslab bridge`` (also ``snslab-bridge`` and ``python -m recording_bridge``): the typer command line of
the recording bridge. Needs only the bridge's own packages (wire, snslab_common), never the server."""

from __future__ import annotations

import inspect
import socket
import sys
from pathlib import Path

import typer

from snslab_common.cli import config_option, parse_params
from snslab_common.registry import accepted_params

from .adapters import ADAPTERS
from .app import DEFAULT_SERVER, BridgeOptions, run

# set by the bridge itself (from other options) or objects that no command line can give
NOT_PARAMS = {"sim": {"subject", "subject_params", "rng", "count_seed", "clock", "start_s"}, "openephys": {"context"},
              "nwb": {"clock"}}


def adapter_help() -> str:
    """Each recording source's parameters with their defaults, for ``--help`` (from the constructors)."""
    lines = ["Adapter parameters (--param NAME=VALUE, repeatable; VALUE as JSON for numbers and [lists]):"]
    for name, cls in sorted(ADAPTERS.items()):
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().split("\n")[0]
        lines.append(f"\n\b\n{name}: {doc}")  # \b: click keeps the lines as they are
        for p in accepted_params(cls).values():
            if p.name not in NOT_PARAMS.get(name, ()):
                default = "required" if p.default is inspect.Parameter.empty else f"default {p.default!r}"
                lines.append(f"  {p.name} ({default})")
    return "\n".join(lines)


def _window(text: str, option: str) -> tuple[float, float]:
    try:
        a, b = (float(v) / 1000.0 for v in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"window {text!r}: use START,END in ms, e.g. 50,200", param_hint=option) from None
    if not a < b:
        raise typer.BadParameter(f"window {text!r}: START must be before END", param_hint=option)
    return a, b


app = typer.Typer(add_completion=False, rich_markup_mode=None)


@app.command(
    help="Recording bridge: counts each presentation's spikes per unit in half-open response and baseline "
    "windows (emitted only once the rig's data has passed the window end) and streams them to the snslab "
    "server, followed by each presentation's raw spike times (window + margin).\n\n"
    "Example: snslab bridge --server tcp://SERVER:5555 --adapter lsl --recording dir=D:/OE/2026-12-04_m1\n\n"
    "Replay a stored session: snslab bridge --adapter nwb --param path=session.nwb --param speed=4",
    epilog=adapter_help(),
    context_settings={"max_content_width": 110},
)
def bridge(
    server: str = typer.Option(DEFAULT_SERVER, help="server ZeroMQ endpoint"),
    client_id: str = typer.Option(f"bridge-{socket.gethostname()}"[:64], help="name towards the server"),
    adapter: str = typer.Option("sim", help=f"recording source: {' | '.join(sorted(ADAPTERS))}"),
    param: list[str] = typer.Option([], metavar="NAME=VALUE",
                                    help="adapter parameter (repeatable), e.g. endpoint=tcp://127.0.0.1:5557"),
    unit: list[str] = typer.Option([], metavar="NAME", help="a unit to count, e.g. 'Electrode 1:1' (repeatable); "
                                   "default: every unit seen in the data (a new one is added and reported)"),
    units_file: Path | None = typer.Option(None, help="file with one unit name per line (# starts a comment)"),
    data_deadline: float = typer.Option(5.0, metavar="S", help="a reported presentation whose windows the rig's "
                                        "data has not passed S seconds later is sent invalid"),
    response_window: str = typer.Option("50,200", metavar="START,END", help="response window, ms after onset"),
    baseline_window: str = typer.Option("-50,0", metavar="START,END", help="baseline window, ms after onset"),
    spike_margin: str = typer.Option("-200,500", metavar="START,END|off",
                                     help="also send each presentation's spike times in this span, ms after onset, "
                                     "for offline re-counting ('off': none); they follow its counts once the rig "
                                     "data has passed the span, so the loop never waits for them"),
    recording: list[str] = typer.Option([], metavar="KEY=VALUE",
                                        help="the acquisition system's own recording identity (repeatable), stored "
                                        "with the session, e.g. --recording dir=D:/OE/2026-12-04_m1 --recording "
                                        "experiment=1"),
    subject: str = typer.Option("complex-cell", help="sim: model neuron of the simulated rig; 'python': your own, "
                                "with --subject-param factory=package.module:callable (README)"),
    subject_param: list[str] = typer.Option([], metavar="NAME=VALUE",
                                            help="sim: model neuron parameter (repeatable), e.g. image_size=32"),
    session_seed: int | None = typer.Option(None, help="sim: draw the counts an in-silico run with this session "
                                            "seed gets (with --mode)"),
    mode: str = typer.Option("invariance", help="sim: probe mode of that session (for --session-seed)"),
    keys: str | None = typer.Option(None, metavar="DIR", help="CURVE keys (from `snslab keys init`): DIR holds "
                                    "server.key and <client-id>.key_secret"),
    log_level: str = typer.Option("INFO", help="DEBUG | INFO | WARNING | ERROR"),
    config: Path | None = config_option("bridge"),
) -> None:
    if adapter not in ADAPTERS:
        raise typer.BadParameter(f"unknown recording source {adapter!r} (allowed: {', '.join(sorted(ADAPTERS))})",
                                 param_hint="--adapter")
    opts = BridgeOptions(
        server=server, client_id=client_id, adapter=adapter, params=parse_params(param, "--param"),
        response_window=_window(response_window, "--response-window"),
        baseline_window=_window(baseline_window, "--baseline-window"), subject=subject,
        subject_params=parse_params(subject_param, "--subject-param"), session_seed=session_seed, mode=mode,
        keys=keys,
        spike_margin=None if spike_margin.strip().lower() == "off" else _window(spike_margin, "--spike-margin"),
        recording=parse_params(recording, "--recording"),
        units=list(unit), units_file=units_file, data_deadline=data_deadline,
    )
    raise typer.Exit(run(opts, log_level.upper()))


def main() -> None:  # the snslab-bridge script
    app()
