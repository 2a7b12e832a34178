"""``snslab display``: connect to the server, show what it sends, report every presentation.

Data flow: network thread (wire.Peer) -> Schedule (dedupe by presentation id) -> PsychoPy thread
(Display: preload textures, frame-counted on/off, marker + TTL on the onset flip) -> presentation_report
-> Peer (re-sent until acknowledged, across reconnects and server restarts).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass, field

import numpy as np

from stimulus_client.schedule import Schedule
from wire.messages import ProtocolError, blob_to_image
from wire.transport import Peer, Received, Reject, Timing

log = logging.getLogger("snslab.display")

DEFAULT_SERVER = "tcp://127.0.0.1:5555"


@dataclass
class ClientOptions:
    """What ``snslab display`` was asked for (stimulus_client/cli.py parses the command line into it)."""

    server: str = DEFAULT_SERVER
    client_id: str = field(default_factory=lambda: f"display-{socket.gethostname()}"[:64].replace(" ", "-"))
    session: str = ""
    keys: str | None = None  # CURVE key folder (server.key + <client_id>.key_secret), wire/auth.py
    fullscreen: bool = False
    screen: int = 0
    size: tuple[int, int] = (800, 600)
    refresh_hz: float | None = None
    frames_on: int | None = None
    frames_off: int | None = None
    image_size: int | None = None
    background: float = 0.0
    fixation: bool = False
    fixation_size: int = 8
    photodiode_patch: tuple[str, int] | None = None
    lsl_markers: bool = True
    lsl_scope: str = "loopback"
    ttl: str | None = None
    heartbeat: float = 1.0
    flush_s: float = 5.0
    log_level: str = "INFO"
    pace: str = "auto"  # software frame clock: auto (when there is no vsync) | on | off
    priority: str = "realtime"  # realtime: SCHED_RR when the OS allows | normal


def run(args: ClientOptions) -> int:
    """Show what the server sends until told to stop (SIGTERM, SIGINT, Escape or a stop control)."""
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.WARNING, format=fmt, stream=sys.stderr)
    logging.getLogger("snslab").setLevel(args.log_level)
    from stimulus_client.display import Display, DisplayOptions
    from stimulus_client.markers import TTL, MarkerOutlet
    from wire.lsl_config import use_loopback_lsl

    outlet = ttl = display = peer = None
    if args.priority == "realtime":
        _realtime_priority()  # before any thread starts: every thread of the display inherits it
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
            photodiode=corner, photodiode_size=patch_px, pace=args.pace,
        )  # fmt: skip
        display = Display(opts, outlet=outlet, ttl=ttl)
        schedule = Schedule()
        capabilities = dict(
            refresh_hz=round(display.refresh_hz, 3), refresh_measured=display.refresh_measured,
            paced=display.frame_clock is not None,
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
            qb = schedule.next_batch(0.1)  # idle: ten background frames a second keep the window alive
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


def _realtime_priority() -> None:
    """SCHED_RR for this thread and every thread it starts (the OS refuses without root/CAP_SYS_NICE)."""
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(10))
        log.info("the display runs at real-time priority (SCHED_RR 10)")
    except (AttributeError, PermissionError, OSError) as e:
        log.info("real-time priority not available (%s); presenting at normal priority", e)


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
