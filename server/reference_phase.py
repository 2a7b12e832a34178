"""The live reference check: is a live maximize session's best image worth probing?

Its best image was picked as the maximum of noisy measurements, so its measured rate is biased upwards
(most of all when the run never left baseline). After the session's last generation, the image and a blank
(mean-grey) screen are shown ``reference.check_repeats`` times each, interleaved, as one more batch of
normal presentations (stored like every other, one more generation of the session, under the kinds
``reference-check`` and ``blank``: no optimizer ever sees them, analyses find them by kind). Their rates
are judged by the rule the in-silico run uses (``server.engine.reference_check.judge_reference``):

- passed: the session completes; a probe that takes this session as its reference gets the image and
  starts with the re-measured rates as its reference response (``reference_rates`` in its stored config);
- failed: the session ends ``failed`` with the same one-line message as an error event, and a probe that
  names it as its reference is refused with that message.

Crash-only: the check's generation is committed before it is shown and every answer before it counts, so a
server killed during the check re-opens it with what was answered (``SessionRunner.resume``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np

from .batches import Batch, OpenGeneration, PlannedPresentation
from .engine.reference_check import ReferenceCheck, judge_reference

REFERENCE_CHECK, BLANK = "reference-check", "blank"
CHECK_KINDS = (REFERENCE_CHECK, BLANK)
EVENT_KIND = "reference_check"
SOURCE = "maximize-session"  # for ReferenceCheck.message: what to change in a live maximize session


@dataclass(frozen=True)
class CheckPlan:
    """How a live maximize session checks its best image (from the probe's ``[reference]`` settings)."""

    repeats: int
    min_ratio: float
    min_z: float

    @classmethod
    def of(cls, probe) -> "CheckPlan | None":
        r = probe.reference
        return cls(r.check_repeats, r.min_ratio, r.min_z) if probe.mode == "maximize" and r.check_repeats > 0 \
            else None

    def slots(self) -> list[str]:
        """Display order: reference, blank, reference, blank, ... (each shown ``repeats`` times)."""
        return [REFERENCE_CHECK if k % 2 == 0 else BLANK for k in range(2 * self.repeats)]


def blank_like(image: np.ndarray) -> np.ndarray:
    """The blank screen: mean grey, as in the in-silico check (server.insilico.measure_reference)."""
    return np.full_like(np.asarray(image, dtype=np.float32), 0.5)


def presentation_rates(counts: np.ndarray, window_s: float, targets) -> np.ndarray:
    """(k, U) counts of the targeted units -> per-presentation rates, mean over those units (k,)."""
    c = np.asarray(counts, dtype=np.float64)
    c = c[:, targets] if targets is not None else c
    return c.mean(axis=1) / window_s


def judge(kinds, counts: np.ndarray, window_s: float, targets, plan: CheckPlan) -> ReferenceCheck:
    """The check from the answered check presentations (``kinds`` and (k, U) ``counts`` in the same order)."""
    kinds = np.asarray(kinds, dtype=object)
    rates = presentation_rates(counts, window_s, targets)
    return judge_reference(rates[kinds == REFERENCE_CHECK], rates[kinds == BLANK], min_ratio=plan.min_ratio,
                           min_z=plan.min_z)


def best_stored_code(history) -> np.ndarray | None:
    """The code of the highest mean response among a session's scored candidates (None: none scored)."""
    ok = (history.kind == "candidate") & (history.counts.min(axis=1) >= 0) if len(history) else np.zeros(0, bool)
    if not ok.any():
        return None
    mean = np.where(ok, history.counts.mean(axis=1), -np.inf)
    return history.codes[int(np.argmax(mean))].copy()


@dataclass
class StoredCheck:
    """A stored maximize session's reference check: the image's code, its answered presentations' counts
    per unit (reference and blank), the response window and the judgement."""

    code: np.ndarray
    reference_counts: np.ndarray  # (k, U) in the session's unit order
    blank_counts: np.ndarray
    window_s: float
    result: ReferenceCheck

    def reference_rates(self, positions: list[int]) -> np.ndarray:
        """(k, len(positions)) rates of these units at each presentation of the reference."""
        return self.reference_counts[:, positions].astype(np.float64) / self.window_s


def stored_check(repository, session_id: uuid.UUID) -> StoredCheck | None:
    """The completed reference check of a stored live maximize session, or None (none was run, or it did not
    finish)."""
    cfg = repository.load_resume_point(session_id).config or {}
    if "probe" not in cfg or "session" not in cfg:
        return None
    from .config import ProbeConfig

    probe = ProbeConfig.model_validate(cfg["probe"])
    plan = CheckPlan.of(probe)
    if plan is None:
        return None
    h = repository.load_history(session_id)
    if not len(h):
        return None
    rows = np.flatnonzero(~h.superseded & np.isin(h.kind, CHECK_KINDS) & (h.counts.min(axis=1) >= 0))
    kinds = h.kind[rows]
    if len(rows) < 2 * plan.repeats or (kinds == REFERENCE_CHECK).sum() != plan.repeats:
        return None
    units = [u.label for u in h.units]
    live = cfg["session"]
    targets = [units.index(t) for t in (live.get("target_units") or units)]
    w0, w1 = live.get("response_window_ms", (50.0, 200.0))
    window_s = (w1 - w0) / 1000.0
    ref_rows = rows[kinds == REFERENCE_CHECK]
    result = judge(kinds, h.counts[rows], window_s, targets, plan)
    return StoredCheck(h.codes[ref_rows[0]].copy(), h.counts[ref_rows].astype(np.int64),
                       h.counts[rows[kinds == BLANK]].astype(np.int64), window_s, result)


class CheckSteps:
    """The reference check's steps of a ``SessionRunner`` (mixed into it): plan and commit the check's
    generation, judge it once every presentation is answered, and re-open it after a crash."""

    def _check_image(self) -> tuple[np.ndarray, np.ndarray]:
        """(code, image) of the session's best candidate: the highest measured mean response (as a probe
        that names this session as its reference takes it, server.service)."""
        if self.repo is not None:
            code = best_stored_code(self.repo.load_history(self.session_id))
        else:
            pool = self.search.pool
            rows = [float(np.mean(r)) for r in pool.responses]
            code = np.asarray(pool.codes[int(np.argmax(rows))], dtype=np.float64) if rows else None
        if code is None:
            code = np.zeros(self.search.generator.code_size)
        return code, self.search.generator.render(code[None])[0]

    def _begin_check(self):
        """Commit the check's generation (reference, blank, reference, ...) and return it to dispatch."""

        g = self.search.generation
        code, image = self._check_image()
        blank = blank_like(image)
        kinds = self.reference_check.slots()
        if self.repo is not None:
            from .db import Proposal as StoredProposal
            from .png import encode_png

            png = {REFERENCE_CHECK: encode_png(image), BLANK: encode_png(blank)}
            ids = self.repo.begin_generation(
                self.session_id, g,
                [StoredProposal(image=png[k], kind=k, order_in_batch=i, code=code if k == REFERENCE_CHECK else None)
                 for i, k in enumerate(kinds)],
                optimizer_state=self._state())
            self.repo.log_event(self.session_id, EVENT_KIND, f"reference check: showing the best image and a blank "
                                f"screen {self.reference_check.repeats} times each", {"generation": g})
        else:
            ids = list(range(self._next_local_id, self._next_local_id + len(kinds)))
            self._next_local_id += len(kinds)
        shown = [PlannedPresentation(pid, i, k, None, image if k == REFERENCE_CHECK else blank, 0, g)
                 for pid, (i, k) in zip(ids, enumerate(kinds))]
        self._checking = True
        self.open = OpenGeneration(Batch(g, shown), np.zeros((0, len(code))), np.zeros((0, *image.shape), np.float32))
        return Batch(g, list(shown))

    def _judge(self) -> None:
        """Judge the answered check and complete its generation (the optimizer state does not change)."""
        op = self.open
        ps = op.batch.presentations
        counts = np.stack([op.answered[p.presentation_id] for p in ps])
        self.check = judge([p.kind for p in ps], counts, self.window_s, self.target_positions,
                           self.reference_check)
        if self.repo is not None:
            self.repo.complete_generation(self.session_id, op.batch.generation, [], optimizer_state=self._state())
        self.open = None
        self._checking = False

    def _resume_check(self, point, propose: bool = True):
        """After a crash once the search was done: re-open the check with its committed answers, judge a
        check whose answers were all committed, or plan it when it was never begun."""

        g = self.search.generation
        data = None
        if point.in_flight is not None and point.in_flight.index == g:
            data = point.in_flight.data
        elif point.last_completed == g:
            data = self.repo.generation_data(self.session_id, g)
        if data is None:  # the crash came before the check was begun
            return self.next_batch() if propose else None
        ref = next(p for p in data.presentations if p.kind == REFERENCE_CHECK)
        image = self.search.generator.render(np.asarray(ref.code, dtype=np.float64)[None])[0]
        shown, answered = [], {}
        for p in data.presentations:
            shown.append(PlannedPresentation(p.id, p.order_in_batch, p.kind, None,
                                             image if p.kind == REFERENCE_CHECK else blank_like(image), p.attempt, g))
            if p.counts is not None:
                answered[p.id] = np.asarray(p.counts, dtype=np.float64)
        self._checking = True
        self.open = OpenGeneration(Batch(g, shown), np.zeros((0, len(ref.code))), np.zeros((0, *image.shape), np.float32),
                          answered)
        if len(answered) < len(shown):
            return self._in_flight()
        if point.last_completed == g:  # judged and committed before the crash: judge again, commit nothing
            counts = np.stack([answered[p.presentation_id] for p in shown])
            self.check = judge([p.kind for p in shown], counts, self.window_s, self.target_positions,
                               self.reference_check)
            self.open, self._checking = None, False
        else:
            self._judge()
        return None
