"""Putting each presentation's onset on the rig clock, the way a careful lab does it.

1. Identity: the display's marker (presentation id, flip time, TTL code); on rigs with TTL inputs the
   display also writes the code as a TTL word from ``win.callOnFlip``, which timestamps the flip on the
   rig clock.
2. Onset: the first photodiode edge in ``[flip - 1 frame, flip + 3 frames]``; unmatched or shared edges
   make the presentation invalid, with a reason. Without a photodiode the TTL time is the onset; without
   either, the display's flip time is used and flagged.
3. Clock: a rolling linear fit (offset + drift) of rig time against display time from TTL/marker pairs,
   so markers whose TTL word went missing can still be placed: invalid ("missing TTL word"), because the
   rig did not see that flip, unless a photodiode edge on the rig clock times it.

Example::

    fit = ClockFit()
    for k in range(10):
        fit.add(display_s=100.0 + k, rig_s=5.0 + (100.0 + k) * (1 + 2e-5))
    assert abs(fit.to_rig(200.0) - (5.0 + 200.0 * (1 + 2e-5))) < 1e-9

    m = match_photodiode([("p1", 10.0), ("p2", 10.5)], edges=[10.012, 10.9], frame_s=1 / 60)
    assert m[0].edge_s == 10.012 and m[1].edge_s is None    # p2: no edge within 3 frames
"""

from __future__ import annotations

import bisect
import logging
import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from snslab_common.errors import ConfigError
from snslab_common.rejections import RejectionLog

from .base import Marker, Onset

log = logging.getLogger(__name__)

FLIP_ONLY_REASON = "onset is the display flip time: the rig gives no photodiode or TTL"
FLIP_FIT_REASON = "onset is the display flip time mapped to the rig clock by the clock fit"


def ttl_code(index: int, n_bits: int = 8) -> int:
    """TTL word for the ``index``-th presentation of a session: cycles through 1 .. 2**n_bits - 1
    (0 is reserved for "no word", the resting state of the lines)."""
    return index % ((1 << n_bits) - 1) + 1


@dataclass(frozen=True)
class Edge:
    """A rig event that marks a flip: a photodiode edge, or a TTL word (with its code)."""

    rig_s: float
    kind: str  # "photodiode" | "ttl"
    code: int | None = None


@dataclass(frozen=True)
class PhotodiodeMatch:
    presentation_id: str
    edge_s: float | None
    reason: str | None  # None when matched cleanly


def match_photodiode(
    flips: Sequence[tuple[str, float]],
    edges: Sequence[float],
    frame_s: float = 1 / 60,
    before_frames: float = 1.0,
    after_frames: float = 3.0,
) -> list[PhotodiodeMatch]:
    """Match each (presentation id, flip on the rig clock) to the first photodiode edge in
    ``[flip - before_frames * frame_s, flip + after_frames * frame_s]`` (closed).

    Unmatched flips, flips whose edge is also the first edge of another flip, and repeated presentation
    ids all come back with ``reason`` set (invalid); ``edge_s`` is still reported where one was found.
    """
    e = np.sort(np.asarray(edges, dtype=np.float64))
    first: list[float | None] = []
    for _, flip in flips:
        lo, hi = flip - before_frames * frame_s, flip + after_frames * frame_s
        i = int(np.searchsorted(e, lo, side="left"))
        first.append(float(e[i]) if i < len(e) and e[i] <= hi else None)
    ids = Counter(pid for pid, _ in flips)
    users: dict[float, list[str]] = {}
    for (pid, _), edge in zip(flips, first):
        if edge is not None:
            users.setdefault(edge, []).append(pid)
    out, seen = [], set()
    for (pid, flip), edge in zip(flips, first):
        if pid in seen and ids[pid] > 1:
            reason = f"duplicate marker for presentation {pid}"
        elif edge is None:
            lo, hi = flip - before_frames * frame_s, flip + after_frames * frame_s
            reason = (
                f"no photodiode edge in [flip - {before_frames:g} frame, flip + {after_frames:g} frames]"
                f" = [{lo:.4f}, {hi:.4f}] s"
            )
        elif len(users[edge]) > 1:
            others = ", ".join(p for p in users[edge] if p != pid)
            reason = f"photodiode edge at {edge:.4f} s is also the first edge for presentation(s) {others}"
        else:
            reason = None
        seen.add(pid)
        out.append(PhotodiodeMatch(pid, edge, reason))
    return out


class ClockFit:
    """Rolling least-squares line ``rig = intercept + slope * display`` over the last ``window`` pairs.

    With one pair the slope is 1 (offset only). ``drift`` is ``slope - 1`` (s per s).
    """

    def __init__(self, window: int = 64):
        if window < 2:
            raise ConfigError("clock_window", f"{window!r} pairs is too few for a line", ">= 2")
        self.pairs: deque[tuple[float, float]] = deque(maxlen=int(window))
        self._xm = self._ym = 0.0
        self.slope = 1.0

    def add(self, display_s: float, rig_s: float) -> None:
        if not (math.isfinite(display_s) and math.isfinite(rig_s)):
            raise ValueError(f"clock pair ({display_s!r}, {rig_s!r}) is not finite")
        self.pairs.append((float(display_s), float(rig_s)))
        x = np.array([p[0] for p in self.pairs])
        y = np.array([p[1] for p in self.pairs])
        self._xm, self._ym = float(x.mean()), float(y.mean())
        dx = x - self._xm
        sxx = float(dx @ dx)
        self.slope = float(dx @ (y - self._ym)) / sxx if len(x) > 1 and sxx > 0 else 1.0

    @property
    def n(self) -> int:
        return len(self.pairs)

    @property
    def drift(self) -> float:
        return self.slope - 1.0

    @property
    def intercept(self) -> float:
        """Rig time at display time 0 (the offset of the line)."""
        return self._ym - self.slope * self._xm

    def to_rig(self, display_s: float) -> float:
        if not self.pairs:
            raise ValueError("clock fit has no pairs yet")
        return self._ym + self.slope * (display_s - self._xm)

    @property
    def residual_sd(self) -> float:
        if len(self.pairs) < 3:
            return 0.0
        r = [y - self.to_rig(x) for x, y in self.pairs]
        return float(np.std(r, ddof=2))


@dataclass
class _Pending:
    marker: Marker
    ttl_s: float | None = None
    reasons: list[str] = field(default_factory=list)


class OnsetAligner:
    """Turns display markers plus rig edges into onsets on the rig clock, as the watermark allows.

    ``markers_on_rig_clock``: the markers' ``flip_s`` is already on the rig clock (LSL after
    ``time_correction``; the simulator). Otherwise ``ttl`` must be on: TTL words time the flips on the rig
    and feed the ``ClockFit`` that places markers whose word went missing.

    A marker is decided once the watermark has passed what could still change its answer: its flip plus
    3 frames with a photodiode; its predicted flip plus ``ttl_tolerance_s`` while its TTL word is missing.
    """

    def __init__(
        self,
        photodiode: bool = False,
        ttl: bool = False,
        frame_s: float = 1 / 60,
        markers_on_rig_clock: bool = False,
        ttl_tolerance_s: float = 0.1,
        edge_retain_s: float = 5.0,
        max_unplaced: int = 64,
        clock: ClockFit | None = None,
    ):
        if not ttl and not markers_on_rig_clock:
            raise ConfigError("ttl", "markers on the display clock need TTL words to reach the rig clock", "true")
        if not (math.isfinite(frame_s) and frame_s > 0):
            raise ConfigError("frame_s", f"{frame_s!r} is not a positive frame duration in seconds")
        self.photodiode, self.ttl, self.frame_s = bool(photodiode), bool(ttl), float(frame_s)
        self.markers_on_rig_clock = bool(markers_on_rig_clock)
        self.ttl_tolerance_s, self.edge_retain_s, self.max_unplaced = ttl_tolerance_s, edge_retain_s, max_unplaced
        self.clock = clock if clock is not None else ClockFit()
        self._pending: dict[str, _Pending] = {}
        self._seen: dict[str, float] = {}  # presentation id -> its flip time
        self._ttl: list[Edge] = []  # unclaimed TTL words, in time order
        self._pd: list[float] = []  # photodiode edges, sorted
        self._claimed: dict[float, str] = {}  # photodiode edge -> presentation that took it
        self.rejected = RejectionLog(log, "onset aligner", per_shape=3)

    def add_marker(self, marker: Marker) -> bool:
        pid = marker.presentation_id
        if not isinstance(pid, str) or not pid:
            self.rejected(f"marker with presentation id {pid!r}", "marker")
            return False
        if not isinstance(marker.flip_s, (int, float)) or not math.isfinite(marker.flip_s):
            self.rejected(f"presentation {pid}: flip time {marker.flip_s!r} is not finite", "marker")
            return False
        if pid in self._seen:
            known = self._pending.get(pid)
            if abs(self._seen[pid] - marker.flip_s) > 1e-6:  # the same flip twice (marker + report) is fine
                self.rejected(f"duplicate marker for presentation {pid} ignored", "marker")
            elif known is None:
                pass
            elif known.marker.code is None and marker.code is not None:  # the same flip, now with its word
                known.marker = marker
                known.reasons = [r for r in known.reasons if r != "marker carries no TTL code"]
            return False
        self._seen[pid] = float(marker.flip_s)
        self._pending[pid] = _Pending(marker)
        if self.ttl and marker.code is None:
            self._pending[pid].reasons.append("marker carries no TTL code")
        return True

    def add_edge(self, edge: Edge) -> bool:
        if not math.isfinite(edge.rig_s):
            self.rejected(f"{edge.kind} edge time {edge.rig_s!r} is not finite", "edge")
            return False
        if edge.kind == "photodiode":
            bisect.insort(self._pd, float(edge.rig_s))
        elif edge.kind == "ttl":
            if edge.code is None or edge.code <= 0:
                self.rejected(f"TTL word at {edge.rig_s:.4f} s has no code", "edge")
                return False
            bisect.insort(self._ttl, edge, key=lambda e: e.rig_s)
        else:
            self.rejected(f"unknown edge kind {edge.kind!r}", "edge")
            return False
        return True

    # ---- deciding ----------------------------------------------------------------------------------
    def _flip_rig(self, p: _Pending) -> float | None:
        if p.ttl_s is not None:
            return p.ttl_s
        if self.markers_on_rig_clock:
            return p.marker.flip_s
        return self.clock.to_rig(p.marker.flip_s) if self.clock.n else None

    def _match_ttl(self, p: _Pending) -> None:
        code = p.marker.code
        if code is None:
            return
        guess = self.clock.to_rig(p.marker.flip_s) if self.clock.n else None
        for i, e in enumerate(self._ttl):
            if e.code != code:
                continue
            if guess is not None and abs(e.rig_s - guess) > self.ttl_tolerance_s:
                continue
            del self._ttl[i]
            p.ttl_s = e.rig_s
            self.clock.add(p.marker.flip_s, e.rig_s)
            return

    def ready(self, watermark: float) -> list[Onset]:
        """Onsets that can be decided with rig data up to ``watermark`` (each presentation once)."""
        order = sorted(self._pending.values(), key=lambda p: p.marker.flip_s)
        if self.ttl:
            for p in order:
                if p.ttl_s is None:
                    self._match_ttl(p)
        decided: list[tuple[_Pending, float]] = []
        out: list[Onset] = []
        for p in order:
            flip = self._flip_rig(p)
            if flip is None:
                continue
            need = flip + (3 * self.frame_s if self.photodiode else 0.0)
            if self.ttl and p.ttl_s is None:
                need = max(need, flip + self.ttl_tolerance_s)
            if watermark >= need:
                decided.append((p, flip))
        matches = (
            match_photodiode([(p.marker.presentation_id, f) for p, f in decided], self._pd, self.frame_s)
            if self.photodiode
            else [None] * len(decided)
        )
        for (p, flip), m in zip(decided, matches):
            pid = p.marker.presentation_id
            del self._pending[pid]
            reasons = list(p.reasons)
            if self.ttl and p.ttl_s is None:
                reasons.append(
                    f"missing TTL word: no word {p.marker.code} within {self.ttl_tolerance_s * 1000:.0f} ms of the fitted flip time"
                )
            base_source = "ttl" if p.ttl_s is not None else "flip"
            if base_source == "flip" and (m is None or m.reason is not None):
                if self.ttl:
                    reasons.append(FLIP_FIT_REASON)
                else:
                    reasons.append("onset is the display flip time" if self.photodiode else FLIP_ONLY_REASON)
            ttl_missing = self.ttl and p.ttl_s is None  # the rig never saw this flip: not a window we can trust
            if m is None:
                out.append(Onset(pid, flip, base_source, not ttl_missing, tuple(reasons)))
                continue
            reason = m.reason
            if reason is None and m.edge_s in self._claimed:
                other = self._claimed[m.edge_s]
                reason = f"photodiode edge at {m.edge_s:.4f} s was already matched to presentation {other}"
            if reason is None:
                self._claimed[m.edge_s] = pid
                out.append(Onset(pid, m.edge_s, "photodiode", True, tuple(r for r in reasons if "TTL" not in r)))
            else:
                out.append(Onset(pid, flip, base_source, False, tuple(reasons + [reason])))
        excess = len(self._pending) - self.max_unplaced
        if self.ttl and self.clock.n == 0 and excess > 0:
            why = "no TTL word matched any marker yet: cannot place the flip on the rig clock"
            for p in sorted(self._pending.values(), key=lambda p: p.marker.flip_s)[:excess]:
                del self._pending[p.marker.presentation_id]
                out.append(Onset(p.marker.presentation_id, None, "none", False, (*p.reasons, why)))
        self._prune(watermark)
        return out

    def _prune(self, watermark: float) -> None:
        horizon = watermark - self.edge_retain_s
        while self._ttl and self._ttl[0].rig_s < horizon:
            e = self._ttl.pop(0)
            self.rejected(f"TTL word {e.code} at {e.rig_s:.4f} s matched no display marker", "TTL word")
        i = bisect.bisect_left(self._pd, horizon)
        if i:
            for t in self._pd[:i]:
                self._claimed.pop(t, None)
            del self._pd[:i]

    @property
    def pending_ids(self) -> list[str]:
        return sorted(self._pending)
