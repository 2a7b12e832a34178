"""Spike counts per presentation in half-open windows, emitted only once the rig's data has passed them.

This is the pure counting core shared by every source: no I/O, no clock of its own. Example::

    from recording_bridge.base import Onset, SpikeEvent
    from recording_bridge.windows import WindowCounter

    wc = WindowCounter(response=(0.050, 0.200), baseline=(-0.050, 0.0), units=["1:1"], session_id="s1")
    wc.add_onset(Onset("p1", rig_s=10.0, source="photodiode"))
    wc.add_spikes([SpikeEvent("1:1", 10.05), SpikeEvent("1:1", 10.2), SpikeEvent("1:1", 9.97)])
    assert wc.ready(watermark=10.1) == []            # rig data has not passed the window end yet
    (pc,) = wc.ready(watermark=10.2)
    assert pc.counts == {"1:1": 1} and pc.baseline_counts == {"1:1": 1}   # 10.05 in, 10.2 out

Windows are half-open ``[onset + a, onset + b)``: a spike at the start is counted, one at the end is not.
Edges are computed in float64 and shifted down by ``edge_tol_s`` (1 ns, far below any sampling period) so
that a spike whose time is an edge up to rounding (``(s0 + 1500) / 30000`` vs ``s0 / 30000 + 0.05``) is
treated as on the edge.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from snslab_common.errors import ConfigError
from snslab_common.rejections import RejectionLog

from .base import ONSET_SOURCES, Fault, Onset, SpikeEvent

log = logging.getLogger(__name__)


def _ms(window: tuple[float, float]) -> tuple[float, float]:
    return (round(window[0] * 1000.0, 6), round(window[1] * 1000.0, 6))


def _check_counts(name: str, counts: object) -> dict[str, int]:
    if not isinstance(counts, dict):
        raise ValueError(f"{name}: expected a mapping unit -> count, got {type(counts).__name__}")
    out = {}
    for unit, c in counts.items():
        if not isinstance(unit, str) or not unit:
            raise ValueError(f"{name}: unit key {unit!r} is not a non-empty string")
        if isinstance(c, (bool, np.bool_)):
            raise ValueError(f"{name}[{unit}]: count {c!r} is a boolean, not an integer")
        if isinstance(c, (float, np.floating)):
            if not math.isfinite(c):
                raise ValueError(f"{name}[{unit}]: count {c!r} is not finite")
            if c != int(c):
                raise ValueError(f"{name}[{unit}]: count {c!r} is not a whole number")
        elif not isinstance(c, (int, np.integer)):
            raise ValueError(f"{name}[{unit}]: count {c!r} is not an integer")
        if c < 0:
            raise ValueError(f"{name}[{unit}]: count {c!r} is negative")
        out[unit] = int(c)
    return out


@dataclass(frozen=True)
class PresentationCounts:
    """Spike counts of every unit for one presentation, with how its onset was found.

    ``window`` and ``baseline_window`` are half-open, in ms after onset. ``counts`` is empty when no onset
    could be determined (``valid`` is then False and ``qc_reasons`` says why). Construction validates:
    NaN, negative or fractional counts raise ValueError with a one-line reason.
    """

    presentation_id: str
    session_id: str
    onset_rig_s: float | None
    onset_source: str
    valid: bool
    qc_reasons: tuple[str, ...]
    counts: dict[str, int]
    baseline_counts: dict[str, int]
    window: tuple[float, float] = (50.0, 200.0)
    baseline_window: tuple[float, float] = (-50.0, 0.0)

    def __post_init__(self):
        pid = self.presentation_id
        if not isinstance(pid, str) or not pid:
            raise ValueError(f"presentation_id {pid!r} is not a non-empty string")
        if self.onset_source not in ONSET_SOURCES:
            raise ValueError(f"presentation {pid}: onset_source {self.onset_source!r} not one of {ONSET_SOURCES}")
        if self.onset_rig_s is not None and not math.isfinite(self.onset_rig_s):
            raise ValueError(f"presentation {pid}: onset_rig_s {self.onset_rig_s!r} is not finite")
        if self.valid and self.onset_rig_s is None:
            raise ValueError(f"presentation {pid}: valid counts need an onset time")
        object.__setattr__(self, "counts", _check_counts(f"presentation {pid} counts", self.counts))
        object.__setattr__(
            self, "baseline_counts", _check_counts(f"presentation {pid} baseline_counts", self.baseline_counts)
        )
        if set(self.baseline_counts) != set(self.counts):
            raise ValueError(f"presentation {pid}: counts and baseline_counts name different units")
        for name in ("window", "baseline_window"):
            w = tuple(float(x) for x in getattr(self, name))
            if len(w) != 2 or not all(math.isfinite(x) for x in w) or not w[0] < w[1]:
                raise ValueError(f"presentation {pid}: {name} {w!r} is not (start_ms, end_ms) with start < end")
            object.__setattr__(self, name, w)
        object.__setattr__(self, "qc_reasons", tuple(str(r) for r in self.qc_reasons))

    @property
    def flagged(self) -> bool:
        """True when something about this presentation deserves a look (fallback onset, QC failure)."""
        return bool(self.qc_reasons) or not self.valid

    def to_dict(self) -> dict:
        """JSON-ready form for the wire (lists for tuples, None for a missing onset)."""
        return {
            "presentation_id": self.presentation_id,
            "session_id": self.session_id,
            "onset_rig_s": self.onset_rig_s,
            "onset_source": self.onset_source,
            "valid": self.valid,
            "qc_reasons": list(self.qc_reasons),
            "counts": dict(self.counts),
            "baseline_counts": dict(self.baseline_counts),
            "window": list(self.window),
            "baseline_window": list(self.baseline_window),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "PresentationCounts":
        """Inverse of ``to_dict``; raises ValueError with a one-line reason on bad input."""
        if not isinstance(d, dict):
            raise ValueError(f"presentation counts: expected an object, got {type(d).__name__}")
        missing = [k for k in ("presentation_id", "onset_source", "valid", "counts", "baseline_counts") if k not in d]
        if missing:
            raise ValueError(f"presentation counts: missing field(s) {', '.join(missing)}")
        return cls(
            presentation_id=d["presentation_id"],
            session_id=d.get("session_id", ""),
            onset_rig_s=None if d.get("onset_rig_s") is None else float(d["onset_rig_s"]),
            onset_source=d["onset_source"],
            valid=bool(d["valid"]),
            qc_reasons=tuple(d.get("qc_reasons", ())),
            counts=d["counts"],
            baseline_counts=d["baseline_counts"],
            window=tuple(d.get("window", (50.0, 200.0))),
            baseline_window=tuple(d.get("baseline_window", (-50.0, 0.0))),
        )


@dataclass
class _UnitSpikes:
    times: np.ndarray = field(default_factory=lambda: np.empty(0))  # sorted
    new: list[float] = field(default_factory=list)

    def merged(self) -> np.ndarray:
        if self.new:
            self.times = np.sort(np.concatenate([self.times, np.asarray(self.new, dtype=np.float64)]))
            self.new = []
        return self.times


class WindowCounter:
    """Counts spikes per unit in each presentation's response and baseline windows.

    Presentations are emitted by ``ready(watermark)`` once ``watermark >= onset + max(response end,
    baseline end)``, in onset order. Spikes are kept only while a pending window or the ``retain_s``
    slack behind the watermark (for onsets that arrive late) can still need them; an onset whose window
    reaches before what was already discarded is rejected with a logged reason.

    ``units``: fixed unit keys (spikes of other units are ignored, logged once per unit); None counts every
    unit seen so far: a unit seen for the first time is added (and logged), and had no spike in any earlier
    window, so its count there is 0.

    Data quality decides validity: a presentation whose windows touch a ``Fault`` (``add_fault``: a gap,
    dropped messages) or a spike that arrived after the watermark had passed it is emitted ``valid=False``
    with the reason; ``expire`` emits a presentation the rig's data never reached (a deadline) the same way.
    """

    def __init__(
        self,
        response: tuple[float, float] = (0.050, 0.200),
        baseline: tuple[float, float] = (-0.050, 0.0),
        units: Iterable[str] | None = None,
        session_id: str = "",
        retain_s: float = 2.0,
        edge_tol_s: float = 1e-9,
    ):
        for name, w in (("response", response), ("baseline", baseline)):
            if len(w) != 2 or not all(math.isfinite(x) for x in w) or not w[0] < w[1]:
                raise ConfigError(name, f"window {tuple(w)!r} is not (start_s, end_s) with start < end", "seconds")
        if not (math.isfinite(retain_s) and retain_s >= 0):
            raise ConfigError("retain_s", f"{retain_s!r} is not a non-negative number of seconds")
        self.response = (float(response[0]), float(response[1]))
        self.baseline = (float(baseline[0]), float(baseline[1]))
        self.session_id = session_id
        self.retain_s = float(retain_s)
        self.edge_tol_s = float(edge_tol_s)
        self.fixed_units = None if units is None else sorted(set(units))
        self.start = min(self.response[0], self.baseline[0])
        self.end = max(self.response[1], self.baseline[1])
        self._spikes: dict[str, _UnitSpikes] = {u: _UnitSpikes() for u in (self.fixed_units or [])}
        self._pending: dict[str, Onset] = {}
        self._expired_onsets: dict[str, float | None] = {}
        self._done: set[str] = set()
        self.discarded_before = -math.inf  # spikes earlier than this were dropped
        self.last_watermark = -math.inf
        self.late_spikes = 0
        self.faults: list[Fault] = []  # kept while a pending window may still touch them
        self.fault_counts: dict[str, int] = {}  # presentations made invalid, per fault kind
        self.faults_after_emit = 0  # faults that touched windows already sent (logged)
        self._emitted_until = -math.inf  # latest window end already emitted
        self.rejected = RejectionLog(log, "window counter", per_shape=3)

    # ---- input -------------------------------------------------------------------------------------
    def add_onset(self, onset: Onset) -> bool:
        """Queue a presentation for counting; returns False (and logs why) when it cannot be counted."""
        pid = onset.presentation_id
        if pid in self._pending or pid in self._done:
            self.rejected(f"presentation {pid}: duplicate onset ignored", "onset")
            return False
        if onset.rig_s is not None:
            if not math.isfinite(onset.rig_s):
                self.rejected(f"presentation {pid}: onset time {onset.rig_s!r} is not finite", "onset")
                return False
            if onset.rig_s + self.start - self.edge_tol_s < self.discarded_before:
                self.rejected(
                    f"presentation {pid}: onset {onset.rig_s:.4f} s arrived after spikes before "
                    f"{self.discarded_before:.4f} s were discarded (retain_s={self.retain_s})",
                    "onset",
                )
                return False
        self._pending[pid] = onset
        return True

    def add_spikes(self, events: Iterable[SpikeEvent]) -> int:
        """Buffer spikes (any order). Returns how many were kept."""
        kept = 0
        for ev in events:
            t = ev.rig_s
            if not isinstance(t, (float, int)) or not math.isfinite(t):
                self.rejected(f"unit {ev.unit}: spike time {t!r} is not finite", "spike")
                continue
            slot = self._spikes.get(ev.unit)
            if slot is None:
                if self.fixed_units is not None:
                    self.rejected(f"spike of unit {ev.unit!r}, which is not in the configured units", f"unit {ev.unit}")
                    continue
                slot = self._spikes[ev.unit] = _UnitSpikes()
                log.info("window counter: new unit %r (first spike at %.6f s); %d units now", ev.unit, t,
                         len(self._spikes))
            if t < self.last_watermark:
                self.late_spikes += 1
                if self.late_spikes <= 5 or self.late_spikes % 1000 == 0:
                    log.warning(
                        "window counter: spike of %s at %.6f s arrived after the watermark %.6f s (%d late so far)",
                        ev.unit, t, self.last_watermark, self.late_spikes,
                    )
                self.add_fault(Fault(t, t, f"late spike: arrived after the rig data had passed {t:.6f} s"))
                if t < self.discarded_before:
                    continue
            slot.new.append(float(t))
            kept += 1
        return kept

    def add_fault(self, fault: Fault) -> None:
        """Mark rig time ``[start_s, end_s]`` unreliable: windows that touch it are emitted invalid."""
        self.faults.append(fault)
        if fault.start_s < self._emitted_until - self.edge_tol_s:
            self.faults_after_emit += 1
            if self.faults_after_emit <= 5 or self.faults_after_emit % 1000 == 0:
                log.warning("window counter: %s touches windows already sent (%d such faults)", fault.reason,
                            self.faults_after_emit)

    def expire(self, presentation_id: str, reason: str) -> bool:
        """Give up on a pending presentation: emitted invalid with ``reason`` at the next ``ready``."""
        o = self._pending.get(presentation_id)
        if o is None:
            return False
        self._pending[presentation_id] = Onset(o.presentation_id, None, "none", False, (*o.qc_reasons, reason))
        self._expired_onsets[presentation_id] = o.rig_s
        return True

    def _fault_reasons(self, onset: float) -> tuple[str, ...]:
        lo, hi = onset + self.start - self.edge_tol_s, onset + self.end - self.edge_tol_s
        return tuple(dict.fromkeys(f.reason for f in self.faults if f.start_s < hi and f.end_s >= lo))

    # ---- output ------------------------------------------------------------------------------------
    def ready(self, watermark: float) -> list[PresentationCounts]:
        """Presentations whose windows the rig data has passed, in onset order; each is emitted once."""
        if watermark < self.last_watermark:
            watermark = self.last_watermark  # the watermark never goes back
        self.last_watermark = watermark
        tol = self.edge_tol_s
        units = self.fixed_units if self.fixed_units is not None else sorted(self._spikes)
        arrays = {u: self._spikes[u].merged() for u in units}
        out: list[PresentationCounts] = []
        due = [o for o in self._pending.values() if o.rig_s is None or watermark >= o.rig_s + self.end - tol]
        due.sort(key=lambda o: (o.rig_s is not None, o.rig_s or 0.0))
        for o in due:
            del self._pending[o.presentation_id]
            self._done.add(o.presentation_id)
            valid, reasons, onset_s = o.valid, o.qc_reasons, o.rig_s
            if o.rig_s is None:
                counts, base = {}, {}
                onset_s = self._expired_onsets.pop(o.presentation_id, None)
            else:
                counts = self._count(arrays, o.rig_s, self.response)
                base = self._count(arrays, o.rig_s, self.baseline)
                self._emitted_until = max(self._emitted_until, o.rig_s + self.end)
                bad = self._fault_reasons(o.rig_s)
                if bad:
                    valid, reasons = False, (*reasons, *bad)
            if not valid:
                for r in reasons[-1:]:
                    kind = r.split(":")[0]
                    self.fault_counts[kind] = self.fault_counts.get(kind, 0) + 1
            out.append(
                PresentationCounts(
                    presentation_id=o.presentation_id,
                    session_id=self.session_id,
                    onset_rig_s=onset_s if not valid else o.rig_s,
                    onset_source=o.source,
                    valid=valid,
                    qc_reasons=reasons,
                    counts=counts,
                    baseline_counts=base,
                    window=_ms(self.response),
                    baseline_window=_ms(self.baseline),
                )
            )
        self._prune(watermark)
        return out

    def _count(self, arrays: dict[str, np.ndarray], onset: float, w: tuple[float, float]) -> dict[str, int]:
        lo, hi = onset + w[0] - self.edge_tol_s, onset + w[1] - self.edge_tol_s
        return {
            u: int(np.searchsorted(t, hi, side="left") - np.searchsorted(t, lo, side="left")) for u, t in arrays.items()
        }

    def _prune(self, watermark: float) -> None:
        horizon = watermark - self.retain_s
        for o in self._pending.values():
            if o.rig_s is not None:
                horizon = min(horizon, o.rig_s + self.start - self.edge_tol_s)
        if horizon <= self.discarded_before:
            return
        self.discarded_before = horizon
        self.faults = [f for f in self.faults if f.end_s >= horizon]
        for slot in self._spikes.values():
            t = slot.merged()
            slot.times = t[np.searchsorted(t, horizon, side="left"):]

    # ---- inspection --------------------------------------------------------------------------------
    @property
    def pending_ids(self) -> list[str]:
        return sorted(self._pending)

    def settled(self, presentation_id: str) -> bool:
        """True once the presentation's counts were emitted (valid or not)."""
        return presentation_id in self._done

    @property
    def n_buffered_spikes(self) -> int:
        return sum(len(s.times) + len(s.new) for s in self._spikes.values())

    def units(self) -> list[str]:
        return self.fixed_units if self.fixed_units is not None else sorted(self._spikes)
