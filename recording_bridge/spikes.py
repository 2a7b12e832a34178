"""Raw spike times around each presentation, kept so counts can be recomputed offline.

The window counter reports counts as soon as the rig data has passed the response window; this capture
runs beside it on the same spikes and the same onsets, and hands out each presentation's spike times in
``[onset + margin[0], onset + margin[1])`` (default [-200, 500) ms) once the watermark has passed that
wider span, so the closed loop never waits for the margin. Example::

    from recording_bridge.base import SpikeEvent
    cap = SpikeCapture(units=["u1"], margin=(-0.2, 0.5))
    cap.add_spikes([SpikeEvent("u1", 9.9), SpikeEvent("u1", 10.1), SpikeEvent("u1", 10.6)])
    cap.add_onset("p1", 10.0)
    assert cap.ready(10.4) == []
    (tr,) = cap.ready(10.5)
    assert tr.times_ns["u1"].tolist() == [-100_000_000, 100_000_000]

Times are whole microseconds after the onset, ``floor((t - onset) * 1e6 + 1e-3)``: the 1 ns nudge is the
counter's own edge tolerance (its window edges sit 1 ns early, see windows.py), so a spike is in a window
of whole microseconds exactly when the counter counted it, and re-counting reproduces the online counts.
A microsecond is finer than any rig's sample period (33 us at 30 kHz), so no two samples share a tick.
``times_ns`` holds them in ns (multiples of 1000); on the wire and in the database they travel as 16-bit
steps (snslab_common.spike_codec, ~2 bytes a spike instead of 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from snslab_common import spike_codec
from snslab_common.errors import ConfigError

from .base import SpikeEvent

DEFAULT_MARGIN = (-0.200, 0.500)
INT32_SPAN_NS = 2**31 - 1
EDGE_TOL_US = 1e-3  # the window counter's edge_tol_s (1 ns), in microseconds


@dataclass(frozen=True)
class SpikeTrain:
    """One presentation's spike times (ns after onset, ascending) per unit, within ``window_ms``."""

    presentation_id: str
    onset_rig_s: float
    window_ms: tuple[float, float]
    times_ns: dict[str, np.ndarray]

    def encode(self, units: list[str]) -> tuple[list[int], str, bytes]:
        """(spikes per unit, dtype, blob) in ``units`` order: the wire and storage form. Times on whole
        microseconds (as captured) go as ``dus16`` steps, others as int32/int64 ns: never rounded."""
        arrays = [np.asarray(self.times_ns.get(u, np.empty(0, np.int64)), dtype=np.int64) for u in units]
        us = [a // 1000 for a in arrays]
        if all(np.array_equal(a, b * 1000) for a, b in zip(arrays, us)) and spike_codec.fits(us):
            return [len(a) for a in arrays], spike_codec.CODEC, spike_codec.encode_us(
                us, spike_codec.base_us(self.window_ms[0]))
        lo, hi = (abs(x) * 1e6 for x in self.window_ms)
        dtype = "<i4" if max(lo, hi) < INT32_SPAN_NS else "<i8"
        blob = np.concatenate(arrays).astype(dtype).tobytes() if arrays else b""
        return [len(a) for a in arrays], dtype, blob


def decode_times(n: Iterable[int], dtype: str, blob: bytes, start_ms: float = 0.0) -> list[np.ndarray]:
    """Inverse of ``SpikeTrain.encode`` (``start_ms``: the window start, for ``dus16``): int64 ns per unit."""
    n = list(n)
    if dtype == spike_codec.CODEC:
        return [a * 1000 for a in spike_codec.decode_us(n, blob, spike_codec.base_us(start_ms))]
    flat = np.frombuffer(blob, dtype=dtype).astype(np.int64)
    edges = np.cumsum([0, *n])
    if edges[-1] != len(flat):
        raise ValueError(f"spike times: {len(flat)} values but the per-unit numbers add up to {edges[-1]}")
    return [flat[a:b] for a, b in zip(edges[:-1], edges[1:])]


class SpikeCapture:
    """Buffers spikes and hands out each onset's spike train once the watermark has passed its margin.

    Spikes are kept for ``retain_s`` behind the watermark and as long as a pending onset needs them; the
    onsets come from the counter's output (after the response window), so ``retain_s`` must cover the time
    from the margin's start to the response window's end (2 s covers the defaults with room to spare).
    """

    def __init__(self, units: Iterable[str] | None = None, margin: tuple[float, float] = DEFAULT_MARGIN,
                 retain_s: float = 2.0):
        if len(margin) != 2 or not all(math.isfinite(x) for x in margin) or not margin[0] < margin[1]:
            raise ConfigError("spike_margin", f"{tuple(margin)!r} is not (start_s, end_s) with start < end", "seconds")
        self.margin = (float(margin[0]), float(margin[1]))
        self.retain_s = float(retain_s)
        self.fixed_units = None if units is None else sorted(set(units))
        self._times: dict[str, np.ndarray] = {u: np.empty(0) for u in (self.fixed_units or [])}
        self._new: dict[str, list[float]] = {}
        self._pending: dict[str, float] = {}
        self._done: set[str] = set()
        self.last_watermark = -math.inf

    @property
    def window_ms(self) -> tuple[float, float]:
        return (round(self.margin[0] * 1000.0, 6), round(self.margin[1] * 1000.0, 6))

    def add_spikes(self, events: Iterable[SpikeEvent]) -> None:
        for ev in events:
            if self.fixed_units is not None and ev.unit not in self._times:
                continue
            t = ev.rig_s
            if isinstance(t, (float, int)) and math.isfinite(t):
                self._new.setdefault(ev.unit, []).append(float(t))

    def add_onset(self, presentation_id: str, onset_rig_s: float | None) -> None:
        """A counted presentation's onset (invalid ones without an onset have no spike train)."""
        if onset_rig_s is None or not math.isfinite(onset_rig_s) or presentation_id in self._done:
            return
        self._pending.setdefault(presentation_id, float(onset_rig_s))

    def _merged(self) -> dict[str, np.ndarray]:
        for u, new in self._new.items():
            if new:
                old = self._times.get(u, np.empty(0))
                self._times[u] = np.sort(np.concatenate([old, np.asarray(new, dtype=np.float64)]))
        self._new = {}
        return self._times

    def ready(self, watermark: float) -> list[SpikeTrain]:
        """Spike trains of onsets whose margin the rig data has passed, in onset order."""
        watermark = max(watermark, self.last_watermark)
        self.last_watermark = watermark
        arrays = self._merged()
        units = self.fixed_units if self.fixed_units is not None else sorted(arrays)
        a, b = self.margin
        due = sorted((o, pid) for pid, o in self._pending.items() if watermark >= o + b)
        out = []
        for onset, pid in due:
            del self._pending[pid]
            self._done.add(pid)
            trains = {}
            for u in units:
                t = arrays.get(u, np.empty(0))
                sel = t[np.searchsorted(t, onset + a - 2e-9, "left"):np.searchsorted(t, onset + b, "left")]
                us = np.floor((sel - onset) * 1e6 + EDGE_TOL_US).astype(np.int64)
                trains[u] = 1000 * us[(us >= round(a * 1e6)) & (us < round(b * 1e6))]
            out.append(SpikeTrain(pid, onset, self.window_ms, trains))
        horizon = watermark - self.retain_s
        for o in self._pending.values():
            horizon = min(horizon, o + a - 1e-6)
        for u, t in arrays.items():
            arrays[u] = t[np.searchsorted(t, horizon, "left"):]
        return out
