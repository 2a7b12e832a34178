"""Lab Streaming Layer source: a spike-event stream from the rig and the display's marker stream.

Stream formats (what the rig relay and the display must push):

- spike stream, default name ``snslab-spikes``: irregular rate, ``channel_format`` int32 (int16/int64 also
  accepted), 2 channels ``[channel, unit]``, one sample per event, pushed with the event's time as the LSL
  timestamp (``local_clock()`` of the rig PC). Reserved channels:

  * ``[-1, *]`` heartbeat: "every spike up to this timestamp has been pushed". Push one at least every
    ~50 ms so silent periods still move the watermark (and counts do not wait for the next spike).
  * ``[-2, *]`` photodiode edge (rising) at this timestamp, when the rig records one.

  Spikes need ``channel >= 0`` and ``unit >= 0``; their unit key is ``"<channel>:<unit>"``.
- marker stream, default name ``snslab-markers``: irregular rate, cf_string, 1 channel, one sample
  ``"pres:<presentation_id>"`` per presentation, pushed with the flip timestamp (from ``win.callOnFlip``).

Both streams' timestamps are mapped to this machine's clock with ``inlet.time_correction()`` (refreshed
every ``clock_refresh_s``), so the rig clock here *is* the bridge's LSL clock. The watermark is the latest
corrected timestamp on the spike stream. Onsets: the photodiode edge when ``photodiode=True`` (matched in
``[flip - 1 frame, flip + 3 frames]``, invalid if unmatched), otherwise the flip time, flagged.

Example::

    src = LslSource(photodiode=False)        # writes/uses a loopback LSLAPICFG when none is set
    src.connect(timeout_s=5.0)
    spikes = src.poll(timeout_s=0.05); onsets = src.poll_onsets(); wm = src.watermark()
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from snslab_common.errors import ConfigError
from snslab_common.rejections import RejectionLog

from ..alignment import Edge, OnsetAligner
from ..base import Marker, Onset, SpikeEvent, SpikeSource
from wire.lsl_config import use_loopback_lsl

log = logging.getLogger(__name__)

SPIKE_STREAM = "snslab-spikes"
MARKER_STREAM = "snslab-markers"
HEARTBEAT_CHANNEL = -1
PHOTODIODE_CHANNEL = -2
MARKER_PREFIX = "pres:"


def format_marker(presentation_id: str) -> str:
    """The marker string the display pushes for a presentation."""
    return f"{MARKER_PREFIX}{presentation_id}"


class LslSource(SpikeSource):
    name = "lsl"

    def __init__(
        self,
        spike_stream: str = SPIKE_STREAM,
        marker_stream: str = MARKER_STREAM,
        photodiode: bool = False,
        frame_s: float = 1 / 60,
        units: list[str] | None = None,
        loopback: bool = True,
        clock_refresh_s: float = 5.0,
        max_chunk: int = 8192,
        max_buflen: int = 3600,
    ):
        if not spike_stream or not marker_stream:
            raise ConfigError("spike_stream", "stream names must be non-empty")
        if loopback:
            use_loopback_lsl()
        import pylsl  # after LSLAPICFG is settled: liblsl reads it on first use

        self._lsl = pylsl
        self.spike_stream, self.marker_stream = spike_stream, marker_stream
        self.clock_refresh_s, self.max_chunk, self.max_buflen = clock_refresh_s, int(max_chunk), int(max_buflen)
        self.aligner = OnsetAligner(photodiode=photodiode, ttl=False, frame_s=frame_s, markers_on_rig_clock=True)
        self._fixed_units = None if units is None else sorted(units)
        self._seen_units: set[str] = set()
        self._inlets: dict[str, object] = {}  # "spikes" / "markers" -> StreamInlet
        self._corr: dict[str, float] = {}
        self._corr_at: dict[str, float] = {}
        self._wm = -math.inf
        self._waiting_logged: set[str] = set()
        self.rejected = RejectionLog(log, "lsl")

    # ---- connection --------------------------------------------------------------------------------
    def connect(self, timeout_s: float = 5.0) -> bool:
        """Resolve and open whichever streams are not open yet. True when both are."""
        deadline = time.monotonic() + timeout_s
        for role, name in (("spikes", self.spike_stream), ("markers", self.marker_stream)):
            if role in self._inlets:
                continue
            left = max(0.0, deadline - time.monotonic())
            infos = self._lsl.resolve_byprop("name", name, minimum=1, timeout=left)
            if not infos:
                if role not in self._waiting_logged:
                    log.info("lsl: waiting for %s stream %r", role, name)
                    self._waiting_logged.add(role)
                continue
            info = infos[0]
            if role == "spikes" and (
                info.channel_count() != 2
                or info.channel_format() not in (self._lsl.cf_int32, self._lsl.cf_int16, self._lsl.cf_int64)
            ):
                self.rejected(
                    f"spike stream {name!r} has {info.channel_count()} channel(s) of format "
                    f"{info.channel_format()}; expected 2 integer channels [channel, unit]",
                    "stream",
                )
                continue
            if role == "markers" and (info.channel_count() != 1 or info.channel_format() != self._lsl.cf_string):
                self.rejected(f"marker stream {name!r} is not a 1-channel string stream", "stream")
                continue
            inlet = self._lsl.StreamInlet(info, max_buflen=self.max_buflen, recover=True)
            try:
                inlet.open_stream(timeout=max(0.1, deadline - time.monotonic()))
                self._corr[role] = inlet.time_correction(timeout=max(0.1, deadline - time.monotonic()))
            except (self._lsl.util.TimeoutError, self._lsl.util.LostError) as e:
                log.warning("lsl: %s stream %r did not open: %s", role, name, e)
                continue
            self._corr_at[role] = time.monotonic()
            self._inlets[role] = inlet
            log.info("lsl: %s stream %r open (clock correction %.6f s)", role, name, self._corr[role])
        return len(self._inlets) == 2

    def _correction(self, role: str) -> float:
        if time.monotonic() - self._corr_at.get(role, -math.inf) >= self.clock_refresh_s:
            try:
                self._corr[role] = self._inlets[role].time_correction(timeout=0.5)
                self._corr_at[role] = time.monotonic()
            except (self._lsl.util.TimeoutError, self._lsl.util.LostError) as e:
                log.warning("lsl: keeping the previous %s clock correction: %s", role, e)
        return self._corr[role]

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
                spikes = self._on_spike_samples(np.asarray(samples, dtype=np.int64), ts + self._correction("spikes"))
        self._read_markers()
        return spikes

    def _on_spike_samples(self, samples: np.ndarray, t: np.ndarray) -> list[SpikeEvent]:
        finite = np.isfinite(t)
        for i in np.flatnonzero(~finite):
            self.rejected(f"sample {samples[i].tolist()} has timestamp {t[i]!r}", "sample")
        if finite.any():
            self._wm = max(self._wm, float(t[finite].max()))
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
        if not ts:
            return
        corr = self._correction("markers")
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

    def poll_onsets(self) -> list[Onset]:
        return self.aligner.ready(self._wm)

    def watermark(self) -> float:
        return self._wm

    def units(self) -> list[str]:
        return list(self._fixed_units) if self._fixed_units is not None else sorted(self._seen_units)

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
