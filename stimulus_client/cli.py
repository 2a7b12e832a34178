"""``snslab display`` (also ``snslab-display`` and ``python -m stimulus_client``): the typer command line of
the PsychoPy display client. Needs only the display's own packages (wire, snslab_common), never the server;
PsychoPy is imported when the window opens, not for ``--help``."""

from __future__ import annotations

import socket
from enum import Enum
from pathlib import Path

import typer

from snslab_common.cli import config_option

from .app import DEFAULT_SERVER, ClientOptions, run

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")  # as stimulus_client.display.CORNERS


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"size {text!r}: use WIDTHxHEIGHT, e.g. 1024x768", param_hint="--size") from None
    if w < 16 or h < 16:
        raise typer.BadParameter(f"size {text!r}: at least 16x16", param_hint="--size")
    return w, h


def _patch(text: str | None) -> tuple[str, int] | None:
    if text is None:
        return None
    corner, _, size = text.partition(":")
    if corner not in CORNERS:
        raise typer.BadParameter(f"photodiode patch corner {corner!r} (allowed: {', '.join(CORNERS)})",
                                 param_hint="--photodiode-patch")
    try:
        px = int(size or 40)
    except ValueError:
        raise typer.BadParameter(f"photodiode patch size {size!r}: pixels, e.g. bottom-right:40",
                                 param_hint="--photodiode-patch") from None
    return corner, px


def _ttl(text: str | None) -> str | None:
    if text is not None and (text.partition(":")[0] not in ("serial", "parallel") or ":" not in text):
        raise typer.BadParameter(f"ttl {text!r}: use serial:/dev/ttyUSB0[@BAUD] or parallel:0x378", param_hint="--ttl")
    return text


PACES, PRIORITIES = ("auto", "on", "off"), ("realtime", "normal")


def _choice(text: str, option: str, allowed: tuple[str, ...]) -> str:
    if text not in allowed:
        raise typer.BadParameter(f"{text!r} (allowed: {', '.join(allowed)})", param_hint=option)
    return text


class LslScope(str, Enum):
    loopback = "loopback"
    network = "network"


class LogLevel(str, Enum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


app = typer.Typer(add_completion=False, rich_markup_mode=None)


@app.command(
    help="PsychoPy display client: receives stimulus batches from the snslab server, shows each image for a "
    "frame-counted duration, sends a flip-locked LSL marker (and optional TTL word) and reports every "
    "presentation. Reconnects and carries on after a server restart.",
)
def display(
    server: str = typer.Option(DEFAULT_SERVER, help="server ZeroMQ endpoint"),
    client_id: str = typer.Option(
        f"display-{socket.gethostname()}"[:64].replace(" ", "-"),
        help="name of this display towards the server; keep it the same across restarts so outstanding "
        "presentations come back to it"),
    session: str = typer.Option("", help="only serve this session id (default: adopt the server's)"),
    keys: str | None = typer.Option(None, metavar="DIR", help="CURVE keys (from `snslab keys init`): DIR holds "
                                    "server.key and <client-id>.key_secret"),
    fullscreen: bool = typer.Option(False, "--fullscreen/--windowed",
                                    help="full screen (the rig) or a window (development)"),
    screen: int = typer.Option(0, min=0, help="screen index for the window"),
    size: str = typer.Option("800x600", metavar="WxH", help="window size when windowed"),
    refresh_hz: float | None = typer.Option(
        None, min=1.0, help="refresh rate to convert durations to frames; default: measured at start (60 Hz if "
        "unstable)"),
    pace: str = typer.Option("auto", metavar="auto|on|off", help="auto: measure the refresh rate and, when it is "
                             "implausible (no vsync: Xvfb, a VM), say so and pace flips on a software frame clock "
                             "at --refresh-hz (60 if not given); on: always; off: never"),
    priority: str = typer.Option("realtime", metavar="realtime|normal", help="realtime: the display's threads run "
                                 "SCHED_RR when the OS allows (root or CAP_SYS_NICE), like PsychoPy's core.rush, so "
                                 "a busy machine does not delay flips; normal: leave the scheduler alone"),
    frames_on: int | None = typer.Option(
        None, min=1, help="show every image this many frames, overriding the server's durations (default: on_ms)"),
    frames_off: int | None = typer.Option(
        None, min=1, help="blank frames after every image, overriding the server's durations (default: off_ms)"),
    image_size: int | None = typer.Option(None, min=1, help="image width in pixels (default: native)"),
    background: float = typer.Option(0.0, min=-1.0, max=1.0, help="grey level, -1 black .. 1 white"),
    fixation: bool = typer.Option(False, "--fixation", help="draw a fixation point at the centre"),
    fixation_size: int = typer.Option(8, min=1, help="fixation point diameter in px"),
    photodiode_patch: str | None = typer.Option(
        None, metavar="CORNER[:PX]",
        help="square patch in a corner (top-left, top-right, bottom-left, bottom-right), white while an image is "
        "on, black otherwise, for a photodiode on the rig's analog input; e.g. bottom-right:40"),
    lsl_markers: bool = typer.Option(
        True, "--lsl-markers/--no-lsl-markers",
        help="push 'pres:<presentation_id>' on the LSL stream 'snslab-markers' at each onset flip"),
    lsl_scope: LslScope = typer.Option(
        LslScope.loopback,
        help="loopback: LSL stays on 127.0.0.1 (an LSLAPICFG you set wins); network: liblsl defaults, for a "
        "recorder on another machine"),
    ttl: str | None = typer.Option(
        None, metavar="serial:DEV[@BAUD]|parallel:ADDR",
        help="also send a TTL word (1..255, cycling; reported per presentation) at each onset and 0 at offset"),
    heartbeat: float = typer.Option(1.0, min=0.01, help="heartbeat interval in s"),
    flush_s: float = typer.Option(5.0, min=0.0, help="on exit, wait this long for reports to be acknowledged"),
    log_level: LogLevel = typer.Option(
        LogLevel.INFO,
        help="how much the client logs (INFO: connections, batches, rejections)"),
    config: Path | None = config_option("display"),
) -> None:
    opts = ClientOptions(
        server=server, client_id=client_id, session=session, fullscreen=fullscreen, screen=screen, size=_size(size),
        refresh_hz=refresh_hz, frames_on=frames_on, frames_off=frames_off, image_size=image_size,
        background=background, fixation=fixation, fixation_size=fixation_size,
        photodiode_patch=_patch(photodiode_patch), lsl_markers=lsl_markers, lsl_scope=lsl_scope.value, ttl=_ttl(ttl),
        heartbeat=heartbeat, flush_s=flush_s, log_level=log_level.value, pace=_choice(pace, "--pace", PACES),
        priority=_choice(priority, "--priority", PRIORITIES), keys=keys,
    )
    raise typer.Exit(run(opts))


def main() -> None:  # the snslab-display script
    app()
