"""Lab Streaming Layer source: a spike stream from the rig and the display's marker stream.

Stream formats (what the rig relay and the display must push). The spike stream (default name
``snslab-spikes``, irregular rate, integer channels, each sample pushed with the event's time as the LSL
timestamp, i.e. ``local_clock()`` of the rig PC) comes in one of two layouts:

- **one channel per unit** (what ``snslab virtual-rig`` publishes): every channel has a label in the
  stream's ``desc/channels/channel/label``, which is the unit's name (spaces, slashes and all: the wire
  key is ``wire.unit_key(label)``). A sample's value in a channel is that unit's number of spikes at the
  sample's timestamp; an all-zero sample is a heartbeat ("every spike up to this timestamp has been
  pushed", at least every ~50 ms). A channel labelled ``photodiode`` carries photodiode rising edges
  (value > 0 at the edge's time) on the rig clock.
- **event pairs** (no labels, 2 channels ``[channel, unit]``), one sample per event. Reserved channels:

  * ``[-1, *]`` heartbeat: "every spike up to this timestamp has been pushed". Push one at least every
    ~50 ms so silent periods still move the watermark (and counts do not wait for the next spike).
  * ``[-2, *]`` photodiode edge (rising) at this timestamp, when the rig records one.

  Spikes need ``channel >= 0`` and ``unit >= 0``; their unit key is ``"<channel>:<unit>"``.
- marker stream, default name ``snslab-markers``: irregular rate, cf_string, 1 channel, one sample
  ``"pres:<presentation_id>"`` per presentation, pushed with the flip timestamp (from ``win.callOnFlip``).

One rig clock: every timestamp is mapped to this machine's LSL clock with one offset per *source host*
(``StreamInfo.hostname()``), not per stream: the median of that host's recent ``time_correction()``
estimates, moved only when it changes by more than ``clock_step_s``, so it stays put between refreshes and
two streams of one host never disagree. The display's reports carry ``flip_time_lsl`` on the display's LSL
clock; they are mapped with the marker stream's host offset, exactly like its markers (the PsychoPy clock
is never used). Onsets: the photodiode edge when ``photodiode=True`` (matched in ``[flip - 1 frame,
flip + 3 frames]``, invalid if unmatched; spikes and edges are then on the same rig clock, so spikes
exactly on window edges count exactly), otherwise the flip time, flagged.

Data quality: the watermark is the newest spike-stream timestamp minus ``lag_s``; a sample older than the
newest one already received (the stream broke its order: a late spike), and a silence longer than
``gap_s`` between consecutive samples (heartbeats included), are faults: windows that touch them are sent
invalid with the reason.

Example::

    src = LslSource(photodiode=False)        # writes/uses a loopback LSLAPICFG when none is set
    src.connect(timeout_s=5.0)
    spikes = src.poll(timeout_s=0.05); onsets = src.poll_onsets(); wm = src.watermark()
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque

import numpy as np

from snslab_common.errors import ConfigError
from snslab_common.rejections import RejectionLog

from ..alignment import Edge, OnsetAligner
from ..base import Fault, Marker, Onset, SpikeEvent, SpikeSource
from wire.lsl_config import use_loopback_lsl

log = logging.getLogger(__name__)

SPIKE_STREAM = "snslab-spikes"
MARKER_STREAM = "snslab-markers"
HEARTBEAT_CHANNEL = -1
PHOTODIODE_CHANNEL = -2
MARKER_PREFIX = "pres:"
PHOTODIODE_LABEL = "photodiode"


def format_marker(presentation_id: str) -> str:
    """The marker string the display pushes for a presentation."""
    return f"{MARKER_PREFIX}{presentation_id}"


class _HostClock:
    """One clock offset per source host: median of recent estimates, moved only by more than ``step_s``."""

    def __init__(self, step_s: float):
        self.step_s = step_s
        self.estimates: deque[float] = deque(maxlen=9)
        self.offset: float | None = None
        self.updated_at = -math.inf

    def add(self, estimate: float, now: float) -> None:
        self.estimates.append(float(estimate))
        self.updated_at = now
        median = float(np.median(self.estimates))
        if self.offset is None or abs(median - self.offset) > self.step_s:
            self.offset = median


class LslSource(SpikeSource):
    name = "lsl"

    def __init__(
        self,
        spike_stream: str = SPIKE_STREAM,
        marker_stream: str = MARKER_STREAM,
        marker_source_id: str | None = None,
        photodiode: bool = False,
        frame_s: float = 1 / 60,
        units: list[str] | None = None,
        loopback: bool = True,
        clock_refresh_s: float = 5.0,
        clock_step_s: float = 0.0005,
        lag_s: float = 0.1,
        gap_s: float = 0.5,
        max_chunk: int = 8192,
        max_buflen: int = 3600,
    ):
        if not spike_stream or not marker_stream:
            raise ConfigError("spike_stream", "stream names must be non-empty")
        for fname, v in (("lag_s", lag_s), ("gap_s", gap_s), ("clock_step_s", clock_step_s)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(fname, f"{v!r} is not a non-negative number of seconds")
        if loopback:
            use_loopback_lsl()
        import pylsl  # after LSLAPICFG is settled: liblsl reads it on first use

        self._lsl = pylsl
        self.spike_stream, self.marker_stream = spike_stream, marker_stream
        self.marker_source_id = marker_source_id
        self.clock_refresh_s, self.max_chunk, self.max_buflen = clock_refresh_s, int(max_chunk), int(max_buflen)
        self.clock_step_s, self.lag_s, self.gap_s = float(clock_step_s), float(lag_s), float(gap_s)
        self.aligner = OnsetAligner(photodiode=photodiode, ttl=False, frame_s=frame_s, markers_on_rig_clock=True)
        self._fixed_units = None if units is None else sorted(units)
        self._seen_units: set[str] = set()
        self._inlets: dict[str, object] = {}  # "spikes" / "markers" -> StreamInlet
        self._host: dict[str, str] = {}  # role -> source host
        self._clocks: dict[str, _HostClock] = {}  # host -> its offset model
        self._labels: list[str] | None = None  # per-unit layout: channel labels
        self._newest = -math.inf  # newest corrected spike-stream timestamp
        self._faults: list[Fault] = []
        self._display_flips: list[Marker] = []  # reports on the display's LSL clock, waiting for its offset
        self._waiting_logged: set[str] = set()
        self.rejected = RejectionLog(log, "lsl", per_shape=3)

    # ---- connection --------------------------------------------------------------------------------
    def connect(self, timeout_s: float = 5.0) -> bool:
        """Resolve and open whichever streams are not open yet. True when both are."""
        deadline = time.monotonic() + timeout_s
        for role, name in (("spikes", self.spike_stream), ("markers", self.marker_stream)):
            if role in self._inlets:
                continue
            left = max(0.0, deadline - time.monotonic())
            pred = f"name='{name}'"
            if role == "markers" and self.marker_source_id:
                pred += f" and source_id='{self.marker_source_id}'"  # one display among several
            infos = self._lsl.resolve_bypred(pred, 1, left)
            if not infos:
                if role not in self._waiting_logged:
                    log.info("lsl: waiting for %s stream %r", role, name)
                    self._waiting_logged.add(role)
                continue
            info = infos[0]
            if role == "spikes" and not self._spike_layout_ok(info):
                continue
            if role == "markers" and (info.channel_count() != 1 or info.channel_format() != self._lsl.cf_string):
                self.rejected(f"marker stream {name!r} is not a 1-channel string stream", "stream")
                continue
            inlet = self._lsl.StreamInlet(info, max_buflen=self.max_buflen, recover=True)
            host = info.hostname() or "?"
            try:
                inlet.open_stream(timeout=max(0.1, deadline - time.monotonic()))
                if role == "spikes":
                    self._labels = self._read_labels(inlet.info(timeout=max(0.1, deadline - time.monotonic())))
                clock = self._clocks.setdefault(host, _HostClock(self.clock_step_s))
                if clock.offset is None:
                    clock.add(inlet.time_correction(timeout=max(0.1, deadline - time.monotonic())), time.monotonic())
            except (self._lsl.util.TimeoutError, self._lsl.util.LostError) as e:
                log.warning("lsl: %s stream %r did not open: %s", role, name, e)
                continue
            self._inlets[role] = inlet
            self._host[role] = host
            log.info("lsl: %s stream %r open from host %s (clock offset %.6f s)%s", role, name, host,
                     self._clocks[host].offset,
                     f"; units {', '.join(self._labels)}" if role == "spikes" and self._labels else "")
        return len(self._inlets) == 2

    def _spike_layout_ok(self, info) -> bool:
        ints = (self._lsl.cf_int32, self._lsl.cf_int16, self._lsl.cf_int64, self._lsl.cf_int8)
        if info.channel_format() not in ints or info.channel_count() < 1:
            self.rejected(f"spike stream {info.name()!r} has {info.channel_count()} channel(s) of format "
                          f"{info.channel_format()}; expected integer channels", "stream")
            return False
        return True

    def _read_labels(self, info) -> list[str] | None:
        labels = []
        ch = info.desc().child("channels").child("channel")
        while not ch.empty():
            labels.append(ch.child_value("label"))
            ch = ch.next_sibling()
        if len(labels) == info.channel_count() and all(labels):
            return labels
        if info.channel_count() != 2:
            self.rejected(f"spike stream {info.name()!r}: {info.channel_count()} channels without a label each; "
                          "expected labelled channels (one per unit) or 2 channels [channel, unit]", "stream")
        return None

    def _offset(self, role: str) -> float:
        """The offset of the host that ``role``'s stream comes from (refreshed every ``clock_refresh_s``)."""
        clock = self._clocks[self._host[role]]
        now = time.monotonic()
        if now - clock.updated_at >= self.clock_refresh_s:
            try:
                clock.add(self._inlets[role].time_correction(timeout=0.5), now)
            except (self._lsl.util.TimeoutError, self._lsl.util.LostError) as e:
                clock.updated_at = now
                log.warning("lsl: keeping the previous clock offset of host %s: %s", self._host[role], e)
        return clock.offset

    # ---- reading -----------------------------------------------------------------------------------
    def poll(self, timeout_s: float = 0.0) -> list[SpikeEvent]:
        if len(self._inlets) < 2:
            self.connect(timeout_s=min(timeout_s, 0.2))
        spikes: list[SpikeEvent] = []
        inlet = self._inlets.get("spikes")
        if inlet is not None:
            try:
                samples, ts = inlet.pull_chunk(
                    timeout=timeout_s, max_samples=self.max_chunk, min_samples=1, as_numpy=True
                )
            except self._lsl.util.LostError as e:
                log.warning("lsl: spike stream lost (%s); will resolve it again", e)
                del self._inlets["spikes"]
                samples, ts = np.empty((0, 2)), np.empty(0)
            if len(ts):
                samples = np.asarray(samples, dtype=np.int64).reshape(len(ts), -1)
                spikes = self._on_spike_samples(samples, np.asarray(ts, dtype=np.float64) + self._offset("spikes"))
        elif timeout_s > 0:
            time.sleep(min(timeout_s, 0.05))  # waiting for the stream: do not spin
        self._read_markers()
        return spikes

    def _check_order(self, t: np.ndarray) -> None:
        """Late samples and silences become faults; the newest timestamp moves the watermark."""
        prev = self._newest
        for ti in t:
            if ti < prev - 1e-9:
                self._faults.append(Fault(float(ti), float(ti), f"late spike: {1000 * (prev - ti):.0f} ms behind "
                                          "the stream's newest sample"))
                continue
            if math.isfinite(prev) and ti - prev > self.gap_s:
                self._faults.append(Fault(prev, float(ti), f"data gap: no rig data for {ti - prev:.2f} s"))
            prev = float(ti)
        self._newest = prev

    def _on_spike_samples(self, samples: np.ndarray, t: np.ndarray) -> list[SpikeEvent]:
        finite = np.isfinite(t)
        for i in np.flatnonzero(~finite):
            self.rejected(f"sample {samples[i].tolist()} has timestamp {t[i]!r}", "sample")
        self._check_order(t[finite])
        if self._labels is not None:
            return self._per_unit(samples[finite], t[finite])
        if samples.shape[1] != 2:
            self.rejected(f"spike samples have {samples.shape[1]} channels and the stream has no labels", "sample")
            return []
        ch, un = samples[:, 0], samples[:, 1]
        for i in np.flatnonzero(finite & (ch == PHOTODIODE_CHANNEL)):
            self.aligner.add_edge(Edge(float(t[i]), "photodiode"))
        is_spike = finite & (ch >= 0) & (un >= 0)
        bad = finite & ~is_spike & (ch != HEARTBEAT_CHANNEL) & (ch != PHOTODIODE_CHANNEL)
        for i in np.flatnonzero(bad):
            self.rejected(
                f"sample {samples[i].tolist()} at {t[i]:.6f} s: need channel >= 0 and unit >= 0 "
                f"(or channel {HEARTBEAT_CHANNEL} heartbeat, {PHOTODIODE_CHANNEL} photodiode)",
                "sample",
            )
        out = []
        for i in np.flatnonzero(is_spike):
            key = f"{ch[i]}:{un[i]}"
            self._seen_units.add(key)
            out.append(SpikeEvent(key, float(t[i])))
        return out

    def _per_unit(self, samples: np.ndarray, t: np.ndarray) -> list[SpikeEvent]:
        out = []
        for j, label in enumerate(self._labels):
            col = samples[:, j]
            if label == PHOTODIODE_LABEL:
                for i in np.flatnonzero(col > 0):
                    self.aligner.add_edge(Edge(float(t[i]), "photodiode"))
                continue
            for i in np.flatnonzero(col):
                if col[i] < 0:
                    self.rejected(f"unit {label!r}: {col[i]} spikes at {t[i]:.6f} s", "sample")
                    continue
                self._seen_units.add(label)
                out.extend([SpikeEvent(label, float(t[i]))] * int(col[i]))
        out.sort(key=lambda e: e.rig_s)
        return out

    def _read_markers(self) -> None:
        inlet = self._inlets.get("markers")
        if inlet is None:
            return
        try:
            samples, ts = inlet.pull_chunk(timeout=0.0, max_samples=1024)
        except self._lsl.util.LostError as e:
            log.warning("lsl: marker stream lost (%s); will resolve it again", e)
            del self._inlets["markers"]
            return
        corr = self._offset("markers")
        pending, self._display_flips = self._display_flips, []
        for m in pending:  # reports that waited for the display host's offset
            self.aligner.add_marker(Marker(m.presentation_id, m.flip_s + corr, m.code))
        for sample, stamp in zip(samples, ts):
            text = sample[0] if sample else ""
            if not text.startswith(MARKER_PREFIX) or len(text) == len(MARKER_PREFIX):
                self.rejected(f"marker {text[:80]!r} is not '{MARKER_PREFIX}<presentation_id>'", "marker")
                continue
            flip = stamp + corr
            if not math.isfinite(flip):
                self.rejected(f"marker {text[:80]!r} has timestamp {stamp!r}", "marker")
                continue
            self.aligner.add_marker(Marker(text[len(MARKER_PREFIX):], flip))

    def add_marker(self, marker: Marker) -> None:
        """A marker from elsewhere (e.g. the wire); ``flip_s`` must already be on this machine's LSL clock."""
        self.aligner.add_marker(marker)

    def add_display_flip(self, presentation_id: str, flip_lsl: float, code: int | None = None) -> None:
        """The display's report: ``flip_lsl`` is on the display's LSL clock (``flip_time_lsl``); it is mapped
        with the display host's offset (the marker stream's), as soon as that is known."""
        if not isinstance(flip_lsl, (int, float)) or not math.isfinite(flip_lsl):
            self.rejected(f"presentation {presentation_id}: flip_time_lsl {flip_lsl!r}", "report")
            return
        m = Marker(presentation_id, float(flip_lsl), code)
        if "markers" in self._inlets:
            self.aligner.add_marker(Marker(m.presentation_id, m.flip_s + self._offset("markers"), code))
        else:
            self._display_flips.append(m)

    def poll_onsets(self) -> list[Onset]:
        return self.aligner.ready(self.watermark())

    def poll_faults(self) -> list[Fault]:
        out, self._faults = self._faults, []
        return out

    def watermark(self) -> float:
        return self._newest - self.lag_s

    def units(self) -> list[str]:
        return list(self._fixed_units) if self._fixed_units is not None else sorted(self._seen_units)

    @property
    def clock_offsets(self) -> dict[str, float]:
        """The offset in use for each open stream ("spikes", "markers"): its source host's."""
        return {role: self._clocks[host].offset for role, host in self._host.items()
                if self._clocks.get(host) is not None and self._clocks[host].offset is not None}

    @property
    def connected(self) -> bool:
        return len(self._inlets) == 2

    def close(self) -> None:
        for inlet in self._inlets.values():
            try:
                inlet.close_stream()
            except Exception:  # closing a lost stream may fail; nothing to do about it
                pass
        self._inlets.clear()
