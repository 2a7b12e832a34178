"""What the display shows next, without any PsychoPy: batch queue, frame counts, dedupe, timing QC.

The network thread adds batches, the display thread takes them; everything is guarded by one condition
variable. Within one client process a presentation id is shown at most once: a batch the server re-sends
(after a reconnect or a restart of either side) only adds the ids this process has not seen. Example::

    import numpy as np
    from wire.messages import ImageSpec, Presentation, StimulusBatch
    from stimulus_client.schedule import Schedule

    img = np.zeros((8, 8, 3), np.uint8)
    batch = StimulusBatch(batch_id="b0", generation=0, images=[ImageSpec.of("s", img)],
                          presentations=[Presentation(presentation_id="p0", stimulus_id="s", image=0, order=0)])
    sched = Schedule()
    assert sched.add_batch(batch, [img], session="S1") == 1
    assert sched.add_batch(batch, [img], session="S1") == 0      # a re-send adds nothing
    qb = sched.next_batch(timeout_s=0)
    sched.mark_shown("p0")
    assert sched.outstanding() == [] and sched.shown_count == 1
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from wire.messages import Presentation, StimulusBatch


def frames_for(ms: float, refresh_hz: float, minimum: int = 1) -> int:
    """Duration in ms -> whole frames at ``refresh_hz`` (nearest, at least ``minimum``)."""
    if not (refresh_hz > 0 and math.isfinite(refresh_hz)):
        raise ValueError(f"refresh_hz: {refresh_hz!r} is not a positive rate")
    return max(minimum, int(math.floor(ms * refresh_hz / 1000.0 + 0.5)))


def presentation_frames(
    p: Presentation, refresh_hz: float, frames_on: int | None = None, frames_off: int | None = None
) -> tuple[int, int]:
    """(frames on, frames off) for one presentation: an operator override wins, then frames fixed by the
    server, then the ms durations at the measured refresh rate. Off is at least one frame (the offset flip)."""
    on = frames_on or p.frames_on or frames_for(p.on_ms, refresh_hz)
    off = frames_off or p.frames_off or frames_for(p.off_ms, refresh_hz)
    return int(on), max(1, int(off))


def ttl_word(n: int) -> int:
    """TTL word of the n-th presentation of this process: 1..255 cycling (0 is the idle line state)."""
    return n % 255 + 1


def timing_qc(
    *, refresh_hz: float, frames_on: int, prev_flip: float | None, onset: float, offset: float, dropped: int
) -> list[str]:
    """Flags a careful lab wants on a presentation: frames dropped while on, an onset flip that came
    more than 1.5 frames after the previous flip, an on-duration off by half a frame or more."""
    period = 1.0 / refresh_hz
    qc = []
    if dropped:
        qc.append("dropped_frames")
    if prev_flip is not None and onset - prev_flip > 1.5 * period:
        qc.append("late_onset")
    if abs((offset - onset) - frames_on * period) >= 0.5 * period:
        qc.append("on_duration")
    return qc


@dataclass
class QueuedBatch:
    """A batch as the display thread sees it: only presentations new to this process, in order."""

    session: str
    batch_id: str
    generation: int
    images: list[np.ndarray]  # (H, W, 3) uint8, indexed by Presentation.image
    presentations: list[Presentation]
    image_ids: list[str] = field(default_factory=list)
    epoch: int = 0  # a clear starts a new epoch; batches of an older one are abandoned


class Schedule:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[QueuedBatch] = deque()
        self._known: set[str] = set()  # every presentation id received by this process
        self._shown: set[str] = set()
        self._current: QueuedBatch | None = None
        self.epoch = 0
        self.paused = False
        self.stopping = False
        self.presented = 0  # presentations shown so far, drives the TTL word

    def add_batch(self, batch: StimulusBatch, images: list[np.ndarray], session: str) -> int:
        """Queue the presentations of ``batch`` not seen before; returns how many were new."""
        if len(images) != len(batch.images):
            raise ValueError(f"images: {len(images)} arrays for {len(batch.images)} image specs")
        with self._cond:
            ordered = sorted(batch.presentations, key=lambda p: p.order)
            new = [p for p in ordered if p.presentation_id not in self._known]
            if not new:
                return 0
            self._known.update(p.presentation_id for p in new)
            ids = [s.stimulus_id for s in batch.images]
            qb = QueuedBatch(session, batch.batch_id, batch.generation, list(images), new, ids, self.epoch)
            self._queue.append(qb)
            self._cond.notify_all()
            return len(new)

    def next_batch(self, timeout_s: float) -> QueuedBatch | None:
        """The next batch to show, waiting up to ``timeout_s``; None while paused, stopping or empty."""
        with self._cond:
            if not self._ready():
                self._cond.wait(timeout_s)
            if not self._ready():
                return None
            self._current = self._queue.popleft()
            return self._current

    def _ready(self) -> bool:
        return bool(self._queue) and not self.paused and not self.stopping

    def mark_shown(self, presentation_id: str) -> None:
        with self._cond:
            self._shown.add(presentation_id)
            self.presented += 1

    def control(self, action: str) -> None:
        """Apply a control message: pause, resume, stop, clear."""
        with self._cond:
            if action == "pause":
                self.paused = True
            elif action == "resume":
                self.paused = False
            elif action == "stop":
                self.stopping = True
            elif action == "clear":
                self._queue.clear()
                self._current = None
                self.epoch += 1
            else:
                raise ValueError(f"action: unknown {action!r} (allowed: clear, pause, resume, stop)")
            self._cond.notify_all()

    def still_wanted(self, qb: QueuedBatch) -> bool:
        """False once a clear arrived after ``qb`` was queued, or a stop: the display abandons it."""
        return qb.epoch == self.epoch and not self.stopping

    def outstanding(self) -> list[str]:
        """Received but not yet shown presentation ids (the batch on screen first, then the queue)."""
        with self._cond:
            batches = ([self._current] if self._current is not None else []) + list(self._queue)
            return [
                p.presentation_id for qb in batches for p in qb.presentations if p.presentation_id not in self._shown
            ]

    @property
    def shown_count(self) -> int:
        return len(self._shown)

    def wait(self, timeout_s: float) -> None:
        """Sleep until something changes (batch, control) or ``timeout_s`` passes."""
        with self._cond:
            self._cond.wait(timeout_s)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()
