"""The recording side of one closed-loop step, in one place: rig data -> onsets + spikes -> counts.

    src = make_adapter("sim", subject=model, rng=np.random.default_rng(seed))
    pipe = CountingPipeline(src, WindowCounter(units=src.units(), session_id="s1"))
    pipe.expect(["p1", "p2"])                 # ids the server dispatched
    ...
    for pc in pipe.step(timeout_s=0.05):      # call in a loop; returns counts the rig data has passed
        send(pc)

Onsets for presentation ids the server never dispatched are rejected with a logged reason (the source
keeps running); ``check_ids=False`` turns that off (offline replay).
"""

from __future__ import annotations

import logging
from typing import Iterable

from snslab_common.rejections import RejectionLog

from .base import Marker, SpikeSource
from .windows import PresentationCounts, WindowCounter

log = logging.getLogger(__name__)


class CountingPipeline:
    def __init__(self, source: SpikeSource, counter: WindowCounter, check_ids: bool = True, capture=None):
        self.source, self.counter, self.check_ids = source, counter, check_ids
        self.capture = capture  # spikes.SpikeCapture: raw spike times around each counted onset, or None
        self._expected: set[str] = set()
        self.rejected = RejectionLog(log, f"pipeline[{source.name}]")

    def expect(self, presentation_ids: Iterable[str]) -> None:
        """Presentation ids the server has dispatched (and so may come back with an onset)."""
        self._expected.update(presentation_ids)

    def _known(self, pid: str) -> bool:
        if not self.check_ids or pid in self._expected:
            return True
        self.rejected(f"presentation id {pid!r} was never dispatched", "presentation id")
        return False

    def add_marker(self, marker: Marker) -> None:
        """Forward a display marker (from the wire) to the source, if its id is known."""
        if self._known(marker.presentation_id):
            self.source.add_marker(marker)

    def step(self, timeout_s: float = 0.05) -> list[PresentationCounts]:
        """Poll the source once; return presentations whose windows the watermark has now passed."""
        spikes = self.source.poll(timeout_s)
        self.counter.add_spikes(spikes)
        if self.capture is not None:
            self.capture.add_spikes(spikes)
        for onset in self.source.poll_onsets():
            if self._known(onset.presentation_id):
                self.counter.add_onset(onset)
        ready = self.counter.ready(self.source.watermark())
        for pc in ready:
            self._expected.discard(pc.presentation_id)
            if self.capture is not None:
                self.capture.add_onset(pc.presentation_id, pc.onset_rig_s)
        return ready

    def spike_trains(self) -> list:
        """Spike trains (window + margin) of counted presentations whose margin the rig data has passed."""
        return [] if self.capture is None else self.capture.ready(self.source.watermark())
