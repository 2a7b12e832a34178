"""``snslab bridge``: the rig side of the closed loop, on the recording PC.

    rig (sim | lsl | openephys) -> onsets + spikes -> WindowCounter -> counts_batch -> server

The server sends every bridge what it dispatched (stimulus batches: presentation ids, generation, order,
attempt, and the images, which only the simulated rig uses) and the display's presentation reports (flip
times on the display's LSL clock, TTL words). Counts go out as reliable ``counts_batch`` messages with
increasing sequence numbers; the wire layer keeps each one until the server acknowledges it and re-sends
it across reconnects.

Units: ``--unit NAME`` (repeatable) or ``--units-file FILE`` (one name per line) fix the list; without
either, units are discovered from the data (a unit seen for the first time is added, logged, and listed
in every later batch). Names go on the wire as ``wire.unit_key(name)`` (percent-encoding).

Wire handlers run in the network thread; they only queue what arrived, and the main loop (the only
thread that touches the source and the counter) takes it in at each step.
"""

from __future__ import annotations

import logging
import math
import queue
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wire.messages import CountsBatch, CountsItem, SpikesBatch, SpikeTrains, blob_to_image
from wire.transport import Peer
from wire.units import unit_key

from snslab_common.cli import stop_requested
from snslab_common.seeds import SeedStreams, as_displayed

from .adapters import make_adapter
from .base import Marker
from .pipeline import CountingPipeline
from .provenance import clock_model, model_neuron_identity, recording_identity
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
    keys: str | None = None  # CURVE key folder (server.key + <client_id>.key_secret), wire/auth.py
    spike_margin: tuple[float, float] | None = DEFAULT_MARGIN  # seconds around onset; None: no spike times
    recording: dict[str, Any] = field(default_factory=dict)  # the acquisition system's recording identity
    units: list[str] = field(default_factory=list)  # unit names to count; empty: discover them from the data
    units_file: Path | None = None  # one unit name per line
    data_deadline: float = 5.0  # s after a report: windows the rig's data never passed are sent invalid


class Bridge:
    """One rig source connected to the server. ``step()`` is the whole loop body."""

    def __init__(self, peer: Peer, source, counter: WindowCounter, *, simulated: bool,
                 capture: SpikeCapture | None = None, deadline_s: float = math.inf):
        self.peer, self.source, self.counter = peer, source, counter
        self.pipe = CountingPipeline(source, counter, capture=capture, deadline_s=deadline_s)
        self.spike_seq = 0
        self.spikes_sent = 0
        self.simulated = simulated
        self.seq = 0
        self.sent = 0
        self._keys: dict[str, tuple[int, int, int]] = {}
        self._display_to_sim: float | None = None
        self._last_onset: float | None = None
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()  # (kind, msg) from the wire thread
        self._in_flight: dict[str, tuple] = {}
        self._units_sent: list[str] = []
        self._held: list = []  # counts ready before any unit was seen
        self._warned_no_units = False
        peer.on_give_up = self._gave_up
        peer.on("stimulus_batch", lambda msg: self._inbox.put(("batch", msg)))
        peer.on("presentation_report", lambda msg: self._inbox.put(("report", msg.payload)))

    def _drain(self) -> None:
        while True:
            try:
                kind, item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "batch":
                self._take_batch(item)
            else:
                self._take_report(item)

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
            self.pipe.add_marker(Marker(rep.presentation_id, flip_s, rep.ttl_word))
        elif hasattr(self.source, "add_display_flip"):
            # LSL: the flip on the display's LSL clock (never PsychoPy's), mapped by the source with the
            # display host's clock offset, exactly like the marker it duplicates
            if self.pipe.accept(rep.presentation_id):
                if rep.flip_time_lsl is not None:
                    self.source.add_display_flip(rep.presentation_id, rep.flip_time_lsl, rep.ttl_word)
        else:
            # TTL rigs: the display clock is mapped to the rig clock by the fit over TTL words
            self.pipe.add_marker(Marker(rep.presentation_id, rep.flip_time, rep.ttl_word))

    def step(self, timeout_s: float = 0.02) -> int:
        """Take in what the server sent, read the rig (waiting at most ``timeout_s``), send what is ready."""
        self._drain()
        ready = self._held + self.pipe.step(timeout_s)
        self._held = []
        trains = self.pipe.spike_trains()
        if trains:
            self._send_spikes(trains)
        if not ready:
            return 0
        units = self.counter.units()
        if not units:  # a batch names at least one unit: wait for the first spike
            if not self._warned_no_units:
                log.warning("no unit has spiked yet; counts wait for the first one")
                self._warned_no_units = True
            self._held = ready
            return 0
        if units != self._units_sent:
            new = sorted(set(units) - set(self._units_sent))
            log.info("units now %d; new: %s", len(units), ", ".join(new[:20]))
            self._units_sent = list(units)
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
        self._send(CountsBatch(seq=self.seq, units=[unit_key(u) for u in units], items=items))
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
        self._send(SpikesBatch(seq=self.spike_seq, units=[unit_key(u) for u in units], clock=clock, items=items),
                   blobs, "spikes_batch")
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
    units = configured_units(args)
    if units is not None and not simulated:
        params.setdefault("units", units)
    source = make_adapter(args.adapter, **params)
    if hasattr(source, "connect"):
        source.connect(10.0)
    if simulated:
        units = source.units()  # the model neuron's units are known up front
    counter = WindowCounter(response=args.response_window, baseline=args.baseline_window, units=units)
    margin = args.spike_margin
    capture = None
    if margin is not None:
        need = max(margin[1], args.response_window[1], args.baseline_window[1]) - min(margin[0], 0.0) + 1.0
        capture = SpikeCapture(units=source.units() or None, margin=margin, retain_s=max(2.0, need))
    kwargs = {"timing": peer_timing} if peer_timing is not None else {}
    if getattr(args, "keys", None):
        from wire.auth import ClientKeys

        kwargs["keys"] = ClientKeys.load(args.keys, args.client_id)  # KeyError_ is a ValueError: one line
    caps = {"needs_images": simulated or hasattr(source, "set_key"), "adapter": args.adapter}
    identity = recording_identity(source, dict(args.recording))
    if simulated and isinstance(params.get("subject"), str):  # the model neuron as named, never the object
        identity.update(model_neuron_identity(params["subject"], params.get("subject_params")))
    caps.update({f"recording.{k}"[:128]: v for k, v in list(identity.items())[:48]})
    peer = Peer(args.server, client_id=args.client_id, role="bridge", capabilities=caps, **kwargs)
    return Bridge(peer, source, counter, simulated=simulated, capture=capture, deadline_s=args.data_deadline)


def configured_units(args) -> list[str] | None:
    """Units from ``--unit`` / ``--units-file``; None: discover them from the data."""
    units = list(args.units or [])
    if args.units_file is not None:
        try:
            lines = args.units_file.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ValueError(f"--units-file: {e}") from None
        units += [ln.split("#", 1)[0].strip() for ln in lines]
    units = [u for u in units if u]
    if not units:
        return None
    if len(set(units)) != len(units):
        raise ValueError(f"units: {sorted(u for u in set(units) if units.count(u) > 1)} given twice")
    return units


def run(args: BridgeOptions, log_level: str = "INFO") -> int:
    """Run the bridge until SIGTERM/SIGINT; a bad configuration is one line and exit status 2."""
    logging.basicConfig(level=log_level, format="%(asctime)s bridge %(levelname)s %(message)s")
    try:
        bridge = make_bridge(args)
    except ValueError as err:  # ConfigError and friends: one line
        print(f"error: {err}")
        return 2
    stop = stop_requested()
    bridge.peer.start()
    log.info("bridge %s (%s) -> %s", args.client_id, args.adapter, args.server)
    while not stop.is_set():
        bridge.step(0.02)  # blocks in the source for up to 20 ms: an idle bridge sleeps
    bridge.peer.close(flush_s=2.0)
    bridge.source.close()
    return 0
