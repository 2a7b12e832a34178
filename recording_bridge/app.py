"""``snslab bridge``: the rig side of the closed loop, on the recording PC.

    rig (sim | lsl | openephys | nwb) -> onsets + spikes -> WindowCounter -> counts_batch -> server
                                         and spikes + counted onsets -> SpikeCapture -> spikes_batch

The server sends the bridge what it dispatched (stimulus batches: presentation ids, and the images, which
only the simulated rig needs) and the display's presentation reports (flip times, TTL words). Counts go
out as reliable ``counts_batch`` messages with increasing sequence numbers; the wire layer keeps each one
until the server acknowledges it and re-sends it across reconnects.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from wire.messages import CountsBatch, CountsItem, SpikesBatch, SpikeTrains, blob_to_image
from wire.transport import Peer

from snslab_common.seeds import SeedStreams, as_displayed

from .adapters import make_adapter
from .base import Marker
from .pipeline import CountingPipeline
from .provenance import clock_model, recording_identity
from .spikes import DEFAULT_MARGIN, SpikeCapture
from .windows import WindowCounter

log = logging.getLogger("snslab.bridge")

DEFAULT_SERVER = "tcp://127.0.0.1:5555"
ONSET_SOURCE_ON_WIRE = {"photodiode": "photodiode", "ttl": "ttl", "flip": "flip", "none": "none"}


@dataclass
class BridgeOptions:
    """What ``snslab bridge`` was asked for (recording_bridge/cli.py parses the command line into it)."""

    server: str = DEFAULT_SERVER
    client_id: str = field(default_factory=lambda: f"bridge-{socket.gethostname()}"[:64])
    adapter: str = "sim"
    params: dict[str, Any] = field(default_factory=dict)
    response_window: tuple[float, float] = (0.05, 0.2)  # seconds after onset
    baseline_window: tuple[float, float] = (-0.05, 0.0)
    subject: str = "complex-cell"
    subject_params: dict[str, Any] = field(default_factory=dict)
    session_seed: int | None = None
    mode: str = "invariance"
    spike_margin: tuple[float, float] | None = DEFAULT_MARGIN  # seconds around onset; None: no spike times
    recording: dict[str, Any] = field(default_factory=dict)  # the acquisition system's recording identity


class Bridge:
    """One rig source connected to the server. ``step()`` is the whole loop body."""

    def __init__(self, peer: Peer, source, counter: WindowCounter, *, simulated: bool,
                 capture: SpikeCapture | None = None):
        self.peer, self.source, self.counter = peer, source, counter
        self.pipe = CountingPipeline(source, counter, capture=capture)
        self.spike_seq = 0
        self.spikes_sent = 0
        self.simulated = simulated
        self.seq = 0
        self.sent = 0
        self._keys: dict[str, tuple[int, int, int]] = {}
        self._display_to_sim: float | None = None
        self._last_onset: float | None = None
        self._lock = threading.Lock()  # handlers run in the wire thread, step() in the main loop
        self._in_flight: dict[str, CountsBatch] = {}
        peer.on_give_up = self._gave_up
        peer.on("stimulus_batch", self._on_batch)
        peer.on("presentation_report", self._on_report)

    def _on_batch(self, msg) -> None:
        with self._lock:
            self._take_batch(msg)

    def _take_batch(self, msg) -> None:
        batch = msg.payload
        ids = [p.presentation_id for p in batch.presentations]
        self.pipe.expect(ids)
        if not self.simulated and hasattr(self.source, "set_key"):  # a replay matches recorded slots by key
            for p in batch.presentations:
                self.source.set_key(p.presentation_id, (batch.generation, p.order, p.attempt))
        if self.simulated:
            images = [blob_to_image(b, spec) for b, spec in zip(msg.blobs, batch.images)]
            for p in batch.presentations:
                if p.presentation_id not in self._keys:
                    self._keys[p.presentation_id] = (batch.generation, p.order, p.attempt)
                    img = as_displayed(images[p.image])
                    self.source.set_image(p.presentation_id, img, key=(batch.generation, p.order, p.attempt))

    def _on_report(self, msg) -> None:
        with self._lock:
            self._take_report(msg.payload)

    def _take_report(self, rep) -> None:
        if self.simulated:
            # The simulated rig has its own clock: map the display clock onto it with a fixed offset (the
            # first report's delay), so onsets keep the display's real spacing and never overlap.
            # A report that arrives late (a loaded machine) is moved to the earliest onset the simulation
            # can still honour, and never closer than one response period to the previous onset, so every
            # presentation keeps its own keyed counts.
            if self._display_to_sim is None:
                self._display_to_sim = self.source.clock() - rep.offset_time
            src = self.source
            flip_s = rep.flip_time + self._display_to_sim
            flip_s = max(flip_s, src.watermark() - src.latency_s + 0.005)
            if self._last_onset is not None:
                flip_s = max(flip_s, self._last_onset + src.latency_s + src.response_s)
            self._last_onset = flip_s
        else:
            flip_s = rep.flip_time
        self.pipe.add_marker(Marker(rep.presentation_id, flip_s, rep.ttl_word))

    def step(self, timeout_s: float = 0.02) -> int:
        with self._lock:
            ready = self.pipe.step(0.0)
            trains = self.pipe.spike_trains()
        if trains:
            self._send_spikes(trains)
        if not ready:
            time.sleep(timeout_s)
        if not ready:
            return 0
        units = self.source.units()
        items = []
        for pc in ready:
            items.append(CountsItem(
                presentation_id=pc.presentation_id,
                counts=[pc.counts.get(u, 0) for u in units],
                baseline_counts=[pc.baseline_counts.get(u, 0) for u in units] if pc.baseline_counts else None,
                window_ms=pc.window, baseline_window_ms=pc.baseline_window,
                onset_rig_s=pc.onset_rig_s, onset_source=ONSET_SOURCE_ON_WIRE.get(pc.onset_source, "none"),
                valid=pc.valid and bool(pc.counts), qc_reasons=list(pc.qc_reasons)[:20],
            ))
        self.seq += 1
        self._send(CountsBatch(seq=self.seq, units=units, items=items))
        self.sent += len(items)
        return len(items)

    def _send_spikes(self, trains) -> None:
        units = self.source.units()
        items, blobs = [], []
        for tr in trains:
            n, dtype, blob = tr.encode(units)
            items.append(SpikeTrains(presentation_id=tr.presentation_id, onset_rig_s=tr.onset_rig_s,
                                     window_ms=tr.window_ms, n=n, blob=len(blobs), dtype=dtype))
            blobs.append(blob)
        self.spike_seq += 1
        clock = clock_model(self.source, self)
        self._send(SpikesBatch(seq=self.spike_seq, units=units, clock=clock, items=items), blobs, "spikes_batch")
        self.spikes_sent += len(items)

    def _send(self, batch, blobs=None, type: str = "counts_batch") -> None:
        mid = self.peer.send(type, batch, blobs) if blobs is not None else self.peer.send(type, batch)
        self._in_flight[mid] = (type, batch, blobs)
        while len(self._in_flight) > 10_000:  # acknowledged long ago: forget the oldest
            self._in_flight.pop(next(iter(self._in_flight)))

    def _gave_up(self, mid: str, type: str) -> None:
        """Counts and spike times are never dropped: a batch the server did not acknowledge in time is sent again."""
        entry = self._in_flight.pop(mid, None)
        if entry is not None:
            type, batch, blobs = entry
            log.error("%s %d was not acknowledged; sending it again", type, batch.seq)
            self._send(batch, blobs, type)


def make_bridge(args: BridgeOptions, peer_timing=None) -> Bridge:
    params = dict(args.params)
    simulated = args.adapter == "sim"
    if simulated:
        import numpy as np

        count_seed = None
        if args.session_seed is not None:
            count_seed = SeedStreams(args.session_seed).noise_seed(args.mode)
        params.setdefault("subject", args.subject)
        params.setdefault("subject_params", dict(args.subject_params))
        params.setdefault("rng", np.random.default_rng(args.session_seed or 0))
        params.setdefault("count_seed", count_seed)
        params.setdefault("data_lag_s", 0.25)  # reports arrive after the offset flip
        params.setdefault("latency_s", args.response_window[0])
        params.setdefault("response_s", args.response_window[1] - args.response_window[0])
    source = make_adapter(args.adapter, **params)
    if hasattr(source, "connect"):
        source.connect(10.0)
    counter = WindowCounter(response=args.response_window, baseline=args.baseline_window, units=source.units())
    margin = args.spike_margin
    capture = None
    if margin is not None:
        need = max(margin[1], args.response_window[1], args.baseline_window[1]) - min(margin[0], 0.0) + 1.0
        capture = SpikeCapture(units=source.units() or None, margin=margin, retain_s=max(2.0, need))
    kwargs = {"timing": peer_timing} if peer_timing is not None else {}
    caps = {"needs_images": simulated or hasattr(source, "set_key"), "adapter": args.adapter}
    identity = recording_identity(source, dict(args.recording))
    caps.update({f"recording.{k}"[:128]: v for k, v in list(identity.items())[:48]})
    peer = Peer(args.server, client_id=args.client_id, role="bridge", capabilities=caps, **kwargs)
    return Bridge(peer, source, counter, simulated=simulated, capture=capture)


def run(args: BridgeOptions, log_level: str = "INFO") -> int:
    """Run the bridge until SIGTERM/SIGINT; a bad configuration is one line and exit status 2."""
    logging.basicConfig(level=log_level, format="%(asctime)s bridge %(levelname)s %(message)s")
    try:
        bridge = make_bridge(args)
    except ValueError as err:  # ConfigError and friends: one line
        print(f"error: {err}")
        return 2
    stop = False

    def _stop(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    bridge.peer.start()
    log.info("bridge %s (%s) -> %s", args.client_id, args.adapter, args.server)
    while not stop:
        bridge.step(0.01)
        time.sleep(0.002)
    bridge.peer.close(flush_s=2.0)
    bridge.source.close()
    return 0
