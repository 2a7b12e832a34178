"""The closed loop on a rig: a SessionRunner connected to the display client and the recording bridge.

Runs entirely in the wire endpoint's loop thread (handlers), so the runner is never touched concurrently:

    runner.next_batch() --(committed)--> stimulus_batch --> display (and the sim bridge, which needs images)
    display --presentation_report--> persist timing, forward to bridges
    bridge --counts_batch--> validate ids -> runner.add_counts (persisted first) -> score, tell, persist
          -> next generation dispatched at once

A restarted display gets every outstanding presentation again (``wire.ledger``); repeated reports and
counts are recognised by presentation id and never counted twice.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from wire import CountsBatch, PresentationLedger, PresentationReport, Reject, ServerEndpoint, StimulusBatch
from wire.messages import ImageSpec, Presentation, image_to_blob

from .session_runner import Batch, Counts, SessionRunner

log = logging.getLogger("snslab.live")


@dataclass
class LiveStats:
    dispatched: int = 0
    reports: int = 0
    counts: int = 0
    duplicates: int = 0
    rejected: int = 0
    last_error: str | None = None
    overhead_s: list[float] = field(default_factory=list)  # last counts of g -> batch g+1 handed to the wire
    # for the dashboard's rig status: the display's refresh rate, when the last report and counts arrived
    # (monotonic seconds) and the bridge's latency (a presentation's report -> its counts), the last 200
    refresh_hz: float | None = None
    last_report_at: float | None = None
    last_counts_at: float | None = None
    bridge_latency_s: deque = field(default_factory=lambda: deque(maxlen=200))


class LiveLoop:
    """Connects one session's runner to the rig's clients over a ServerEndpoint."""

    def __init__(
        self,
        endpoint: ServerEndpoint,
        runner: SessionRunner,
        *,
        session_id: uuid.UUID,
        unit_keys: list[str],
        target_positions: list[int] | None = None,
        on_ms: float = 100.0,
        off_ms: float = 100.0,
        repository=None,
        on_done: Callable[["LiveLoop"], None] | None = None,
    ):
        self.endpoint = endpoint
        self.runner = runner
        self.session_id = session_id
        self.wire_session = str(session_id)
        self.unit_keys = list(unit_keys)
        self.unit_position = {k: i for i, k in enumerate(self.unit_keys)}
        self.target_positions = target_positions
        self.on_ms, self.off_ms = on_ms, off_ms
        self.repo = repository
        self.on_done = on_done
        self.ledger = PresentationLedger()
        self.stats = LiveStats()
        self.paused = False
        self.finished = threading.Event()
        self._finishing = False
        self._batch_seq = 0
        self._dispatched: set[int] = set()
        self._reported_at: dict[str, float] = {}  # presentation id -> when its report arrived
        endpoint.on("presentation_report", self._on_report)
        endpoint.on("counts_batch", self._on_counts)
        endpoint.on_hello = self._on_hello
        from .spike_intake import attach  # raw spike times + recording identity (issue 14)

        attach(self)

    # -- dispatch ----------------------------------------------------------------------------------
    def start(self, batch: Batch | None = None) -> None:
        """Dispatch the open (or next) generation. Run it in the endpoint's loop, after ``set_session``."""
        batch = batch or (None if self.runner.done else self.runner.next_batch())
        if batch is not None:
            self._dispatch(batch.presentations)
        else:
            self._finish()

    def _stimulus_id(self, image: np.ndarray) -> tuple[str, bytes]:
        blob = image_to_blob(image)
        return hashlib.sha256(blob).hexdigest()[:32], blob

    def _dispatch(self, presentations) -> None:
        """One stimulus_batch per generation, in display order (a generation's lead-in travels with the
        generation before it)."""
        groups: dict[int, list] = {}
        for p in presentations:
            groups.setdefault(p.generation, []).append(p)
        for generation, group in groups.items():
            self._send_batch(group, generation)

    def _send_batch(self, presentations, generation: int) -> None:
        images: list[ImageSpec] = []
        blobs: list[bytes] = []
        index: dict[str, int] = {}
        pres = []
        for p in presentations:
            sid, blob = self._stimulus_id(p.image)
            if sid not in index:
                index[sid] = len(images)
                images.append(ImageSpec.of(sid, p.image))
                blobs.append(blob)
            pres.append(Presentation(presentation_id=str(p.presentation_id), stimulus_id=sid, image=index[sid],
                                     order=p.order, on_ms=self.on_ms, off_ms=self.off_ms, attempt=p.attempt))
        self._batch_seq += 1
        batch = StimulusBatch(batch_id=f"g{generation}.{self._batch_seq}", generation=generation,
                              images=images, presentations=pres)
        self.ledger.add_batch(batch, blobs)
        self._dispatched.update(int(p.presentation_id) for p in pres)
        for c in self.endpoint.clients(alive_only=False):
            if c.role == "display" or (c.role == "bridge" and c.capabilities.get("needs_images")):
                self.endpoint.send_to(c.client_id, "stimulus_batch", batch, blobs)
        self.stats.dispatched += len(pres)

    def _on_hello(self, client, new_instance: bool) -> None:
        if not new_instance:
            return
        if client.role == "display":
            for batch, blobs in self.ledger.outstanding_batches():
                self.endpoint.send_to(client.client_id, "stimulus_batch", batch, blobs)
        elif client.role == "bridge" and client.capabilities.get("needs_images"):
            # a (re)started simulated rig needs the images of everything not yet answered
            for batch, blobs in self.ledger.outstanding_batches():
                self.endpoint.send_to(client.client_id, "stimulus_batch", batch, blobs)
            for rep in self.ledger.reports.values():
                self.endpoint.send_to(client.client_id, "presentation_report", rep)

    # -- reports and counts --------------------------------------------------------------------------
    def _check_session(self, msg) -> None:
        if msg.envelope.session != self.wire_session:
            self.stats.rejected += 1
            raise Reject(f"session: {msg.envelope.session!r} is not the running session {self.wire_session!r}")

    def _check_sender(self, msg, role: str) -> None:
        """Reports come from displays and counts from bridges: another client's would be stored as theirs."""
        info = next((c for c in self.endpoint.clients() if c.client_id == msg.peer), None)
        if info is None or info.role != role:
            self.stats.rejected += 1
            raise Reject(f"sender: {msg.peer!r} is a {info.role if info else 'unknown'} client; "
                         f"{msg.type} is accepted from a {role} only")

    def _on_report(self, msg) -> None:
        self._check_session(msg)
        self._check_sender(msg, "display")
        rep: PresentationReport = msg.payload
        status = self.ledger.record(rep)
        if status == "unknown":
            self.stats.rejected += 1
            raise Reject(f"presentation_id: {rep.presentation_id!r} was never dispatched in this session")
        if status == "duplicate":
            self.stats.duplicates += 1
            return
        self.stats.reports += 1
        self.stats.refresh_hz, self.stats.last_report_at = rep.refresh_hz, time.monotonic()
        self._reported_at[rep.presentation_id] = self.stats.last_report_at
        for c in self.endpoint.clients(role="bridge"):
            self.endpoint.send_to(c.client_id, "presentation_report", rep)

    def _on_counts(self, msg) -> None:
        self._check_session(msg)
        self._check_sender(msg, "bridge")
        batch: CountsBatch = msg.payload
        positions = []
        for key in batch.units:
            if key not in self.unit_position:
                self.stats.rejected += 1
                raise Reject(f"units: {key!r} is not a unit of this session (allowed: {', '.join(self.unit_keys)})")
            positions.append(self.unit_position[key])
        if sorted(positions) != list(range(len(self.unit_keys))):
            self.stats.rejected += 1
            raise Reject(f"units: the batch must carry every unit of the session ({len(self.unit_keys)})")
        open_ids = self.runner.pending_ids()
        for it in batch.items:  # the whole batch is checked before anything is stored or counted
            pid = self._pid(it.presentation_id)
            if pid not in open_ids and pid not in self._dispatched:
                self.stats.rejected += 1
                raise Reject(f"presentation_id: {it.presentation_id!r} is not a presentation of this session")
        items, invalid = [], []
        for it in batch.items:
            pid = self._pid(it.presentation_id)
            if pid not in open_ids:
                self.stats.duplicates += 1  # an answer to an earlier generation: already counted
                continue
            counts = np.zeros(len(self.unit_keys), dtype=np.int64)
            counts[positions] = it.counts
            baseline = None
            if it.baseline_counts is not None:
                baseline = np.zeros(len(self.unit_keys), dtype=np.int64)
                baseline[positions] = it.baseline_counts
            if not it.valid:
                invalid.append(pid)
            items.append(Counts(pid, counts, baseline, it.valid, tuple(it.qc_reasons), tuple(it.window_ms),
                                tuple(it.baseline_window_ms or (-50.0, 0.0))))
        self.stats.counts += len(items)
        now = self.stats.last_counts_at = time.monotonic()
        for it in batch.items:
            shown = self._reported_at.pop(it.presentation_id, None)
            if shown is not None:
                self.stats.bridge_latency_s.append(now - shown)
        self._record_timings(batch.items)
        t_last = time.perf_counter()
        report = self.runner.add_counts(items)
        if invalid:  # of the open generation, or of the lead-in ahead (which outlives a completed generation)
            self._dispatch(self.runner.reshow([pid for pid in invalid if pid in self.runner.pending_ids()]))
        if report is not None:
            log.info("session %s generation %d scored", self.session_id, report.generation)
            if self.runner.done:
                self._finish()
            elif not self.paused:
                self._next(t_last)
        elif self.runner.open is None and not self.runner.done and not self.paused:
            self._next()  # proposing the next generation failed after the last one was scored: try again

    @staticmethod
    def _pid(text: str) -> int:
        """The database id a wire id names; -1 unless it is the id exactly as dispatched ("012" is not 12)."""
        return int(text) if text.isascii() and text.isdigit() and str(int(text)) == text else -1

    def _record_timings(self, items) -> None:
        """Each presentation's onset, stored with its counts: the display's flip time, the rig's onset and
        where that came from (photodiode, TTL, or the flip time as a flagged fallback)."""
        if self.repo is None:
            return
        from .db import PresentationTiming

        rows = []
        for it in items:
            rep = self.ledger.reports.get(it.presentation_id)
            reasons = list(it.qc_reasons)
            if rep is not None and rep.dropped_frames:
                reasons.append(f"{rep.dropped_frames} dropped frames")
            source = it.onset_source if it.onset_source != "none" else "flip"
            if source == "flip" and "onset is the display flip time" not in " ".join(reasons):
                reasons.append("onset is the display flip time (no photodiode or TTL)")
            if not it.valid and not reasons:  # the database needs a reason for every invalid presentation
                reasons.append("marked invalid by the bridge (no reason given)")
            rows.append(PresentationTiming(
                presentation_id=int(it.presentation_id), onset_source=source,
                display_onset=None if rep is None else rep.flip_time, rig_onset=it.onset_rig_s,
                dropped_frames=0 if rep is None else rep.dropped_frames,
                valid=bool(it.valid) and (rep is None or rep.dropped_frames == 0), qc_reasons=tuple(reasons)[:20],
            ))
        self.repo.record_timings(self.runner.session_id, rows)

    def _next(self, t_last: float | None = None) -> None:
        batch = self.runner.next_batch()
        self._dispatch(batch.presentations)
        if t_last is not None:
            self.stats.overhead_s.append(time.perf_counter() - t_last)

    def _finish(self) -> None:
        """Record the end (on_done stores the status) before ``finished`` wakes whoever waits for it."""
        if self.finished.is_set() or self._finishing:
            return
        self._finishing = True
        try:
            if self.on_done is not None:
                self.on_done(self)
        finally:
            self.finished.set()

    # -- operator ------------------------------------------------------------------------------------
    def pause(self) -> None:
        self.paused = True
        for c in self.endpoint.clients(role="display"):
            self.endpoint.send_to(c.client_id, "control", {"action": "pause", "reason": "operator"})

    def resume(self) -> None:
        self.paused = False
        for c in self.endpoint.clients(role="display"):
            self.endpoint.send_to(c.client_id, "control", {"action": "resume", "reason": "operator"})
        if self.runner.open is None and not self.runner.done:
            self._next()
