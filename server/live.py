"""The closed loop on a rig: a SessionRunner connected to the display client and the recording bridge.

Runs entirely in the wire endpoint's loop thread (handlers), so the runner is never touched concurrently:

    runner.next_batch() --(committed)--> stimulus_batch --> display and every bridge
    display --presentation_report--> persist timing, forward to every bridge
    bridge --counts_batch--> validate ids -> runner.add_counts (persisted first) -> score, tell, persist
          -> next generation dispatched at once

Crash-only (docs/protocol.md, "Restarts"): whatever process dies, starting it again is all it takes.

- server restarted: the service re-opens the session from the database before the wire accepts anything;
  display and bridge keep what they hold, re-send what was not acknowledged, and are sent everything still
  open (same ids): the bridge counts what it saw before the restart;
- display restarted (a new instance of a display this server knew): what it had not reported is shown
  again as *new* presentations (same slot, attempt + 1, stored; ``SessionRunner.reshow``);
- bridge restarted: it is sent every presentation still waiting for counts and their reports;
- anything else that leaves a presentation unanswered (a report acknowledged by a server that died before
  forwarding it, a rig that lost data): when nothing has been answered for ``stall_s`` while a display is
  connected (and a bridge), every unanswered presentation is shown again as a new attempt.

Repeated reports and counts are recognised by presentation id and never counted twice; counts for a
presentation that was superseded by a re-show are acknowledged and not counted.
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
from wire.units import unit_key
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
        paused: bool = False,
        stall_s: float = 8.0,
    ):
        self.endpoint = endpoint
        self.runner = runner
        self.session_id = session_id
        self.wire_session = str(session_id)
        self.unit_keys = [unit_key(k) for k in unit_keys]  # session unit names, as keys on the wire
        self.unit_position = {k: i for i, k in enumerate(self.unit_keys)}
        self._unit_notes: set[str] = set()  # units already noted in the event log (once each)
        self._invalid_reasons: dict[str, int] = {}  # since the last generation summary
        self.target_positions = target_positions
        self.on_ms, self.off_ms = on_ms, off_ms
        self.repo = repository
        self.on_done = on_done
        self.ledger = PresentationLedger()
        self.stats = LiveStats()
        self.paused = paused
        self.finished = threading.Event()
        self._finishing = False
        self._batch_seq = 0
        self._dispatched: set[int] = set()
        self._reported_at: dict[str, float] = {}  # presentation id -> when its report arrived
        self._instances = {c.client_id: c.instance for c in endpoint.clients()}  # who restarted, who is new
        self.stall_s = stall_s
        self._progress = time.monotonic()  # last report or counts: the watchdog's clock
        endpoint.on("presentation_report", self._on_report)
        endpoint.on("counts_batch", self._on_counts)
        endpoint.on_hello = self._on_hello
        if stall_s > 0:
            threading.Thread(target=self._watch, name="snslab-stall-watch", daemon=True).start()
        from .spike_intake import attach  # raw spike times + recording identity (issue 14)

        attach(self)

    # -- dispatch ----------------------------------------------------------------------------------
    def start(self, batch: Batch | None = None) -> None:
        """Dispatch the open (or next) generation. Run it in the endpoint's loop, after ``set_session``.
        ``batch`` is what a resumed runner still has open: only its unanswered presentations go out."""
        if batch is not None:
            self._dispatched.update(batch.ids)
            todo = {p.presentation_id for p in self.runner.unanswered()}
            batch = Batch(batch.generation, [p for p in batch.presentations if p.presentation_id in todo])
        elif not self.runner.done and not self.paused:
            batch = self.runner.next_batch()
        if batch is not None:
            self._dispatch(batch.presentations)
        elif self.runner.done:
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
            if self._wants_batches(c):
                self.endpoint.send_to(c.client_id, "stimulus_batch", batch, blobs)
        self.stats.dispatched += len(pres)

    @staticmethod
    def _wants_batches(client) -> bool:
        """Displays show batches; every bridge counts them (ids, generation, order, attempt; the simulator
        also uses the images); a monitor that asks for images (``snslab virtual-rig``) gets them too."""
        return client.role in ("display", "bridge") or bool(client.capabilities.get("needs_images"))

    def _on_hello(self, client, new_instance: bool) -> None:
        if not new_instance:
            return
        previous = self._instances.get(client.client_id)
        self._instances[client.client_id] = client.instance
        if client.role == "display":
            if previous is not None and previous != client.instance and not self.finished.is_set():
                # this display restarted: what it had not reported may have been on screen when it died, so
                # it is shown again as new presentations (stored attempt + 1), not under the old ids
                self._reshow(set(self.ledger.outstanding()), f"display {client.client_id} restarted")
            for batch, blobs in self.ledger.outstanding_batches():
                self.endpoint.send_to(client.client_id, "stimulus_batch", batch, blobs)
        elif self._wants_batches(client):
            # a (re)started bridge (or virtual rig), or one that outlived a server restart: every presentation
            # still waiting for counts (shown or not: it may have connected after the display showed it), and
            # the reports of those
            waiting = {str(p.presentation_id) for p in self.runner.unanswered()}
            for batch, blobs in self.ledger.batches_with(waiting):
                self.endpoint.send_to(client.client_id, "stimulus_batch", batch, blobs)
            for pid, rep in self.ledger.reports.items():
                if pid in waiting:
                    self.endpoint.send_to(client.client_id, "presentation_report", rep)

    def _reshow(self, presentation_ids: set[str], why: str) -> int:
        """Show these unanswered presentations again as new attempts (new ids, stored), cancelling the old."""
        if self.runner.open is None and self.runner.ahead is None:
            return 0
        ids = [p.presentation_id for p in self.runner.unanswered() if str(p.presentation_id) in presentation_ids]
        if not ids:
            return 0
        self.ledger.cancel([str(i) for i in ids])
        fresh = self.runner.reshow(ids)
        log.warning("session %s: %s; showing %d presentations again", self.session_id, why, len(fresh))
        if self.repo is not None:
            self.repo.log_event(self.session_id, "session", f"{why}: showing {len(fresh)} presentations again")
        self._dispatch(fresh)
        self._progress = time.monotonic()
        return len(fresh)

    def _watch(self) -> None:
        """Every stall_s/4, ask the loop thread whether the session is stuck."""
        while not self.finished.wait(max(0.05, self.stall_s / 4)):
            self.endpoint.call_soon(self._check_stall)

    def _check_stall(self) -> None:
        if self.finished.is_set() or time.monotonic() - self._progress < self.stall_s:
            return
        if not self.endpoint.clients(role="display", alive_only=True) or not self.endpoint.clients(
                role="bridge", alive_only=True):
            return  # nobody to show or count anything: wait for them
        waiting = {str(p.presentation_id) for p in self.runner.unanswered()}
        if not waiting:
            return
        self._reshow(waiting, f"nothing answered for {self.stall_s:g} s")

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
            if self._of_this_session([self._pid(rep.presentation_id)]):
                self.stats.duplicates += 1  # dispatched before a server restart and answered or superseded
                return
            self.stats.rejected += 1
            raise Reject(f"presentation_id: {rep.presentation_id!r} was never dispatched in this session")
        self._progress = time.monotonic()
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
        columns, positions = self._unit_columns(batch.units)
        open_ids = self.runner.pending_ids()
        # the whole batch is checked before anything is stored or counted
        other = [self._pid(it.presentation_id) for it in batch.items
                 if self._pid(it.presentation_id) not in open_ids and self._pid(it.presentation_id) not in self._dispatched]
        if other:
            known = self._of_this_session(other)  # dispatched before a server restart
            for it in batch.items:
                if self._pid(it.presentation_id) in other and self._pid(it.presentation_id) not in known:
                    self.stats.rejected += 1
                    raise Reject(f"presentation_id: {it.presentation_id!r} is not a presentation of this session")
            self._dispatched.update(known)
        self._progress = time.monotonic()
        items, invalid = [], []
        for it in batch.items:
            pid = self._pid(it.presentation_id)
            if pid not in open_ids:
                self.stats.duplicates += 1  # an answer to an earlier generation: already counted
                continue
            counts = np.zeros(len(self.unit_keys), dtype=np.int64)
            counts[positions] = np.asarray(it.counts, dtype=np.int64)[columns]
            baseline = None
            if it.baseline_counts is not None:
                baseline = np.zeros(len(self.unit_keys), dtype=np.int64)
                baseline[positions] = np.asarray(it.baseline_counts, dtype=np.int64)[columns]
            if not it.valid:
                invalid.append(pid)
                for reason in it.qc_reasons[:1] or ["no reason given"]:
                    kind = reason.split(":")[0][:80]
                    self._invalid_reasons[kind] = self._invalid_reasons.get(kind, 0) + 1
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
            self._summarise_invalid(report.generation)
            if self.runner.done:
                self._finish()
            elif not self.paused:
                self._next(t_last)
        elif self.runner.open is None and not self.runner.done and not self.paused:
            self._next()  # proposing the next generation failed after the last one was scored: try again
        elif self.runner.done:
            self._finish()  # the reference check after the last generation was judged

    def _unit_columns(self, units: list[str]) -> tuple[list[int], list[int]]:
        """Which batch columns are session units, and their positions in the session.

        A bridge that discovers units from the data lists the units it has seen: a session unit it does not
        list had no spike it saw (stored as 0), and a unit the session does not have is ignored. Both are
        noted once in the event log. A batch with none of the session's units, or a unit twice, is refused.
        """
        if len(set(units)) != len(units):
            self.stats.rejected += 1
            raise Reject("units: a unit appears twice in the batch")
        columns = [i for i, k in enumerate(units) if k in self.unit_position]
        if not columns:
            self.stats.rejected += 1
            raise Reject(f"units: none of {', '.join(units[:5])} is a unit of this session "
                         f"(allowed: {', '.join(self.unit_keys)})")
        for k in units:
            if k not in self.unit_position:
                self._note_unit(k, f"unit {k} is not a unit of this session: its counts are ignored")
        listed = set(units)
        for k in self.unit_keys:
            if k not in listed:
                self._note_unit(k, f"unit {k} is not in the bridge's batch yet: no spike seen, stored as 0")
        return columns, [self.unit_position[units[i]] for i in columns]

    def _note_unit(self, key: str, message: str) -> None:
        if key in self._unit_notes:
            return
        self._unit_notes.add(key)
        log.info("session %s: %s", self.session_id, message)
        if self.repo is not None:
            self.repo.log_event(self.session_id, "units", message, {"unit": key})

    def _summarise_invalid(self, generation: int) -> None:
        """One event per generation with how many presentations came back invalid, by reason."""
        if not self._invalid_reasons:
            return
        reasons, self._invalid_reasons = self._invalid_reasons, {}
        text = "; ".join(f"{n} x {r}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
        log.info("session %s generation %d: invalid presentations: %s", self.session_id, generation, text)
        if self.repo is not None:
            self.repo.log_event(self.session_id, "invalid_counts", f"generation {generation}: {text}",
                                {"generation": generation, "reasons": reasons}, "warning")

    def _of_this_session(self, ids: list[int]) -> set[int]:
        """Which of these ids are presentations of this session in the database (any generation or attempt)."""
        ids = [i for i in ids if i >= 0]
        if self.repo is None or not ids:
            return set()
        import sqlalchemy as sa

        with self.repo.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id FROM presentations WHERE session_id = :s AND id = ANY(:ids)"),
                                {"s": self.session_id, "ids": ids}).scalars().all()
        return {int(r) for r in rows}

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
        """No new generation is proposed; the open one (and the lead-in sent with it) is shown and answered
        to its end, so a pause never leaves a generation half-answered (and a restart keeps the pause)."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        for c in self.endpoint.clients(role="display"):  # a display paused by an older server carries on
            self.endpoint.send_to(c.client_id, "control", {"action": "resume", "reason": "operator"})
        if self.runner.open is None and not self.runner.done:
            self._next()

    def halt(self) -> None:
        """Stop for good: the display drops what it still has queued."""
        self.paused = True
        for c in self.endpoint.clients(role="display"):
            self.endpoint.send_to(c.client_id, "control", {"action": "clear", "reason": "session stopped"})
        self.finished.set()
