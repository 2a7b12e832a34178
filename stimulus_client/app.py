"""``snslab display``: connect to the server, show what it sends, report every presentation.

Data flow: network thread (wire.Peer) -> Schedule (dedupe by presentation id) -> PsychoPy thread
(Display: preload textures, frame-counted on/off, marker + TTL on the onset flip) -> presentation_report
-> Peer (re-sent until acknowledged, across reconnects and server restarts).
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys

import numpy as np

from stimulus_client.schedule import Schedule
from wire.messages import ProtocolError, blob_to_image
from wire.transport import Peer, Received, Reject, Timing

log = logging.getLogger("snslab.display")

DEFAULT_SERVER = "tcp://127.0.0.1:5555"


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: use WIDTHxHEIGHT, e.g. 1024x768") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"size {text!r}: at least 16x16")
    return w, h


def _patch(text: str) -> tuple[str, int]:
    from stimulus_client.display import CORNERS

    corner, _, size = text.partition(":")
    if corner not in CORNERS:
        raise argparse.ArgumentTypeError(f"photodiode patch corner {corner!r} (allowed: {', '.join(CORNERS)})")
    try:
        px = int(size or 40)
    except ValueError:
        raise argparse.ArgumentTypeError(f"photodiode patch size {size!r}: pixels, e.g. bottom-right:40") from None
    return corner, px


def _ttl(text: str) -> str:
    kind = text.partition(":")[0]
    if kind not in ("serial", "parallel") or ":" not in text:
        raise argparse.ArgumentTypeError(f"ttl {text!r}: use serial:/dev/ttyUSB0[@BAUD] or parallel:0x378")
    return text


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be >= 1")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="snslab display",
        description="PsychoPy display client: receives stimulus batches from the snslab server, shows each "
        "image for a frame-counted duration, sends a flip-locked LSL marker (and optional TTL word) and "
        "reports every presentation. Reconnects and carries on after a server restart.",
    )
    p.add_argument("--server", default=DEFAULT_SERVER, help=f"server ZeroMQ endpoint (default {DEFAULT_SERVER})")
    p.add_argument(
        "--client-id", default=f"display-{socket.gethostname()}"[:64].replace(" ", "-"),
        help="name of this display towards the server; keep it the same across restarts so outstanding "
        "presentations come back to it (default display-<hostname>)",
    )  # fmt: skip
    p.add_argument("--session", default="", help="only serve this session id (default: adopt the server's)")
    p.add_argument("--keys", default=None, metavar="DIR",
                   help="CURVE keys (from `snslab keys init`): DIR holds server.key and <client-id>.key_secret")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--fullscreen", dest="fullscreen", action="store_true", help="full screen (the rig)")
    mode.add_argument("--windowed", dest="fullscreen", action="store_false", help="a window (development; default)")
    p.set_defaults(fullscreen=False)
    p.add_argument("--screen", type=int, default=0, help="screen index for the window (default 0)")
    p.add_argument("--size", type=_size, default=(800, 600), help="window size WxH when windowed (default 800x600)")
    p.add_argument(
        "--refresh-hz", type=float, default=None,
        help="refresh rate to convert durations to frames; default: measured at start (60 Hz if unstable)",
    )  # fmt: skip
    p.add_argument(
        "--frames-on", type=_positive_int, default=None,
        help="show every image this many frames, overriding the server's durations (default: on_ms, 100 ms)",
    )  # fmt: skip
    p.add_argument(
        "--frames-off", type=_positive_int, default=None,
        help="blank frames after every image, overriding the server's durations (default: off_ms, 100 ms)",
    )  # fmt: skip
    p.add_argument("--image-size", type=_positive_int, default=None, help="image width in pixels (default: native)")
    p.add_argument("--background", type=float, default=0.0, help="grey level, -1 black .. 1 white (default 0)")
    p.add_argument("--fixation", action="store_true", help="draw a fixation point at the centre")
    p.add_argument("--fixation-size", type=_positive_int, default=8, help="fixation point diameter in px (default 8)")
    p.add_argument(
        "--photodiode-patch", type=_patch, default=None, metavar="CORNER[:PX]",
        help="square patch in a corner (top-left, top-right, bottom-left, bottom-right), white while an image "
        "is on, black otherwise, for a photodiode on the rig's analog input; e.g. bottom-right:40",
    )  # fmt: skip
    p.add_argument(
        "--lsl-markers", dest="lsl_markers", action="store_true",
        help="push 'pres:<presentation_id>' on the LSL stream 'snslab-markers' at each onset flip (default)",
    )  # fmt: skip
    p.add_argument("--no-lsl-markers", dest="lsl_markers", action="store_false", help="no LSL marker stream")
    p.set_defaults(lsl_markers=True)
    p.add_argument(
        "--lsl-scope", choices=("loopback", "network"), default="loopback",
        help="loopback: LSL stays on 127.0.0.1 (default; an LSLAPICFG you set wins); network: liblsl defaults, "
        "for a recorder on another machine",
    )  # fmt: skip
    p.add_argument(
        "--ttl", type=_ttl, default=None, metavar="serial:DEV[@BAUD]|parallel:ADDR",
        help="also send a TTL word (1..255, cycling; reported per presentation) at each onset and 0 at offset",
    )  # fmt: skip
    p.add_argument("--heartbeat", type=float, default=1.0, help="heartbeat interval in s (default 1.0)")
    p.add_argument("--flush-s", type=float, default=5.0, help="on exit, wait this long for reports to be acknowledged")
    p.add_argument(
        "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="how much the client logs (default INFO: connections, batches, rejections)",
    )  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.WARNING, format=fmt, stream=sys.stderr)
    logging.getLogger("snslab").setLevel(args.log_level)
    from stimulus_client.display import Display, DisplayOptions
    from stimulus_client.markers import TTL, MarkerOutlet
    from wire.lsl_config import use_loopback_lsl

    outlet = ttl = display = peer = None
    try:
        if args.lsl_markers:
            if args.lsl_scope == "loopback":
                use_loopback_lsl()
            outlet = MarkerOutlet(args.client_id)
        if args.ttl:
            ttl = TTL(args.ttl)
        corner, patch_px = args.photodiode_patch or (None, 40)
        opts = DisplayOptions(
            fullscreen=args.fullscreen, screen=args.screen, size=args.size, background=args.background,
            refresh_hz=args.refresh_hz, frames_on=args.frames_on, frames_off=args.frames_off,
            image_size=args.image_size, fixation=args.fixation, fixation_size=args.fixation_size,
            photodiode=corner, photodiode_size=patch_px,
        )  # fmt: skip
        display = Display(opts, outlet=outlet, ttl=ttl)
        schedule = Schedule()
        capabilities = dict(
            refresh_hz=round(display.refresh_hz, 3), refresh_measured=display.refresh_measured,
            width=int(display.win.size[0]), height=int(display.win.size[1]), fullscreen=args.fullscreen,
            lsl_markers=outlet is not None, ttl=args.ttl, photodiode=corner, frames_on=args.frames_on,
            frames_off=args.frames_off,
        )  # fmt: skip
        peer = Peer(
            args.server, client_id=args.client_id, role="display", capabilities=capabilities,
            session=args.session, timing=Timing(heartbeat_s=args.heartbeat), keys=_keys(args),
        )  # fmt: skip
        peer.on("stimulus_batch", lambda msg: _on_batch(msg, schedule))
        peer.on("control", lambda msg: _on_control(msg, schedule))
        peer.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: schedule.control("stop"))
        log.info("display %s: refresh %.2f Hz, server %s", args.client_id, display.refresh_hz, args.server)

        def report(qb, fields: dict) -> None:
            try:
                peer.send(
                    "presentation_report",
                    {**fields, "batch_id": qb.batch_id, "generation": qb.generation},
                    session=qb.session,
                )
            except ProtocolError as e:  # a bug on our side; say so and keep presenting
                log.error("could not report presentation %s: %s", fields.get("presentation_id"), e)

        while not schedule.stopping:
            qb = schedule.next_batch(0.05)
            if qb is None:
                display.idle()
                if display.escape_pressed():
                    schedule.control("stop")
                continue
            dropped = display.win.nDroppedFrames
            n = display.run_batch(qb, schedule, report)
            log.info(
                "batch %s (generation %d): %d presentations shown, %d dropped frames",
                qb.batch_id, qb.generation, n, display.win.nDroppedFrames - dropped,
            )  # fmt: skip
        log.info("stopping; %d presentations not shown stay outstanding on the server", len(schedule.outstanding()))
        return 0
    finally:
        if peer is not None:
            if not peer.flush(args.flush_s):
                log.warning("%d messages not acknowledged at exit", peer.pending_count())
            peer.close()
        if display is not None:
            display.close()
        if ttl is not None:
            ttl.close()
        if outlet is not None:
            outlet.close()


def _keys(args):
    """The client's CURVE keys, or None; a bad key folder ends the program with one line."""
    if not args.keys:
        return None
    from wire.auth import ClientKeys, KeyError_

    try:
        return ClientKeys.load(args.keys, args.client_id)
    except KeyError_ as err:
        raise SystemExit(f"error: --keys: {err}") from None


def _on_batch(msg: Received, schedule: Schedule) -> None:
    """Network thread: copy the images out of the ZeroMQ frames and queue what is new."""
    batch = msg.payload
    if schedule.stopping:
        raise Reject("display is stopping")
    images = [np.array(blob_to_image(b, spec)) for b, spec in zip(msg.blobs, batch.images)]
    n = schedule.add_batch(batch, images, session=msg.env.session)
    log.info(
        "batch %s (generation %d, attempt %d): %d new presentations, %d already held",
        batch.batch_id, batch.generation, max(p.attempt for p in batch.presentations), n, len(batch.presentations) - n,
    )  # fmt: skip


def _on_control(msg: Received, schedule: Schedule) -> None:
    log.info("control %s %s", msg.payload.action, msg.payload.reason)
    schedule.control(msg.payload.action)
