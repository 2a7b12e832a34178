"""The recording side of one closed-loop step, in one place: rig data -> onsets + spikes -> counts.

    src = make_adapter("sim", subject=model, rng=np.random.default_rng(seed))
    pipe = CountingPipeline(src, WindowCounter(units=src.units(), session_id="s1"))
    pipe.expect(["p1", "p2"])                 # ids the server dispatched
    ...
    for pc in pipe.step(timeout_s=0.05):      # call in a loop; returns counts the rig data has passed
        send(pc)

Onsets for presentation ids the server never dispatched are rejected with a logged reason (the source
keeps running); ``check_ids=False`` turns that off (offline replay).

Nothing waits forever: a presentation the display reported (``add_marker``) whose windows the rig's data
has not passed ``deadline_s`` seconds of wall time later is sent invalid ("no rig data for the window
within N s"). This is the only wall-clock rule; valid counts are emitted on rig data alone.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable, Iterable

from snslab_common.rejections import RejectionLog

from .base import Marker, Onset, SpikeSource
from .windows import PresentationCounts, WindowCounter

log = logging.getLogger(__name__)


class CountingPipeline:
    def __init__(self, source: SpikeSource, counter: WindowCounter, check_ids: bool = True, capture=None,
                 deadline_s: float = math.inf, clock: Callable[[], float] = time.monotonic):
        self.source, self.counter, self.check_ids = source, counter, check_ids
        self.capture = capture  # spikes.SpikeCapture: raw spike times around each counted onset, or None
        self.deadline_s, self.clock = float(deadline_s), clock
        self._expected: set[str] = set()
        self._reported_at: dict[str, float] = {}  # presentation id -> wall time of the display's report
        self._early: dict[str, tuple[Onset, float]] = {}  # onsets whose batch has not arrived yet
        self.early_s = 2.0
        self.rejected = RejectionLog(log, f"pipeline[{source.name}]", per_shape=3)

    def expect(self, presentation_ids: Iterable[str]) -> None:
        """Presentation ids the server has dispatched (and so may come back with an onset)."""
        self._expected.update(presentation_ids)

    def _known(self, pid: str) -> bool:
        if not self.check_ids or pid in self._expected:
            return True
        self.rejected(f"presentation id {pid!r} was never dispatched", "presentation id")
        return False

    def accept(self, presentation_id: str) -> bool:
        """Whether a presentation may be counted (dispatched); starts its data deadline."""
        if self.counter.settled(presentation_id):
            return False  # already sent (its marker came first): nothing to do
        if self._known(presentation_id):
            self._reported_at.setdefault(presentation_id, self.clock())
            return True
        return False

    def add_marker(self, marker: Marker) -> None:
        """Forward a display marker (from the wire) to the source, if its id is known."""
        if self.counter.settled(marker.presentation_id):
            return
        if self._known(marker.presentation_id):
            self._reported_at.setdefault(marker.presentation_id, self.clock())
            self.source.add_marker(marker)

    def step(self, timeout_s: float = 0.05) -> list[PresentationCounts]:
        """Poll the source once; return presentations whose windows the watermark has now passed."""
        spikes = self.source.poll(timeout_s)
        self.counter.add_spikes(spikes)
        if self.capture is not None:
            self.capture.add_spikes(spikes)
        for fault in self.source.poll_faults():
            self.counter.add_fault(fault)
        now = self.clock()
        early, self._early = self._early, {}
        for onset, since in [*early.values(), *((o, now) for o in self.source.poll_onsets())]:
            pid = onset.presentation_id
            if self.counter.settled(pid):
                continue
            if self.check_ids and pid not in self._expected and now - since < self.early_s:
                self._early[pid] = (onset, since)  # its batch may still be on its way to us
                continue
            if self._known(pid):
                self.counter.add_onset(onset)
        self._expire()
        ready = self.counter.ready(self.source.watermark())
        for pc in ready:
            self._expected.discard(pc.presentation_id)
            self._reported_at.pop(pc.presentation_id, None)
            if self.capture is not None and pc.onset_rig_s is not None:
                self.capture.add_onset(pc.presentation_id, pc.onset_rig_s)
        return ready

    def spike_trains(self) -> list:
        """Spike trains (window + margin) of counted presentations whose margin the rig data has passed."""
        return [] if self.capture is None else self.capture.ready(self.source.watermark())

    def _expire(self) -> None:
        if not self._reported_at or not math.isfinite(self.deadline_s):
            return
        now = self.clock()
        for pid, t in list(self._reported_at.items()):
            if now - t < self.deadline_s:
                continue
            del self._reported_at[pid]
            reason = f"no rig data for the window within {self.deadline_s:g} s"
            if not self.counter.expire(pid, reason) and not self.counter.settled(pid):
                self.counter.add_onset(Onset(pid, None, "none", False, (reason,)))
