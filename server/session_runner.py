"""One session's generations, in the order that loses nothing:

    ask -> render -> plan the batch -> persist -> (caller dispatches) -> present -> count
        -> persist responses -> score -> tell -> persist the state after tell -> next generation

A generation opens with ``lead_in`` of its reference repeats (slots 0..lead_in-1; the other repeats are
shuffled among the candidates). They need no optimizer, so they are planned, committed and dispatched
together with the previous generation: the display shows them while that generation's last answers are
still on their way and the server scores it and proposes the next, and never waits for the server.

The runner owns the search and the write order; the caller moves data between it and a rig (an in-silico
subject, or the display client and recording bridge over ZeroMQ). Without a repository it runs the same
steps in memory (quick in-silico runs and tests). With one, a run killed at any moment resumes from its
last completed generation with the identical optimizer state (see ``SessionRunner.resume``).
"""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

from .engine.search import GenerationReport, Proposal, SnSSearch
from .batches import Batch, Counts, OpenGeneration, PlannedPresentation
from .reference_phase import CheckSteps

log = logging.getLogger("snslab.runner")


@lru_cache(maxsize=1)
def _writer() -> ThreadPoolExecutor:
    """One thread for database writes that overlap the loop's own work (see ``SessionRunner._score``)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="snslab-db")


@dataclass
class _Prepared:
    """The next generation asked for right after tell, its PNGs encoding while the scores are written."""

    state_before: bytes
    proposal: Proposal
    pngs: list | None  # futures of PNG bytes per code row (with a repository)
    ask_s: float


@dataclass
class _Ahead:
    """The next generation's lead-in: committed and dispatched before that generation is asked for."""

    generation: int
    presentations: list[PlannedPresentation]
    answered: dict[int, np.ndarray] = field(default_factory=dict)


class SessionRunner(CheckSteps):
    """Drives one search through its generations, persisting each step before the next depends on it."""

    def __init__(
        self,
        search: SnSSearch,
        *,
        seed: int,
        reference_image: np.ndarray | None,
        reference_repeats: int = 4,
        lead_in: int = 0,
        window_s: float = 0.15,
        repository=None,
        session_id: uuid.UUID | None = None,
        target_positions: list[int] | None = None,
        reference_check=None,
        prior_reference: np.ndarray | None = None,
    ):
        """``reference_check``: a ``server.reference_phase.CheckPlan``: after the search's last generation,
        its best image and a blank are shown as one more generation and judged (``self.check``).
        ``prior_reference``: (k, U) rates of the reference measured before this session (a maximize
        session's check), told with the first generation's reference repeats."""
        self.search = search
        self.seed = seed
        self.reference_image = None if reference_image is None else np.asarray(reference_image, np.float32)
        self.reference_repeats = reference_repeats if reference_image is not None else 0
        self.lead_in = min(lead_in, self.reference_repeats)
        self._reference_png: bytes | None = None
        self.window_s = window_s
        self.repo = repository
        self.session_id = session_id
        self.target_positions = target_positions  # units the probe targets (all stored, these scored)
        self.open: OpenGeneration | None = None
        self.ahead: _Ahead | None = None
        self._prepared: _Prepared | None = None
        self.reports: list[GenerationReport] = []
        self._next_local_id = 1
        self.on_generation = None  # optional callback(report, batch, counts matrix) for progress and plots
        self.reference_check = reference_check
        self.prior_reference = None if prior_reference is None else np.asarray(prior_reference, np.float64)
        self.check = None  # the ReferenceCheck once judged
        self._checking = False  # the open generation is the reference check

    @property
    def done(self) -> bool:
        return self.search.done and (self.reference_check is None or self.check is not None)

    # -- propose -----------------------------------------------------------------------------------
    def _plan(self, generation: int, n_candidates: int) -> list[tuple[str, int | None]]:
        """Slot order of a generation: its lead-in references first, then the candidates and the other
        reference repeats shuffled by a generator derived from (seed, generation)."""
        slots = [("candidate", i) for i in range(n_candidates)] + [("reference", None)] * (
            self.reference_repeats - self.lead_in)
        order = np.random.default_rng([self.seed, 0x5EED, generation]).permutation(len(slots))
        return [("reference", None)] * self.lead_in + [slots[i] for i in order]

    def _plans_ahead(self, generation: int) -> bool:
        """Whether generation+1 gets its lead-in now: only if the search can still reach it (an early stop
        after this generation leaves it planned but never proposed)."""
        limit = self.search.max_generations
        return self.lead_in > 0 and (limit is None or generation + 1 < limit)

    def _reference_png_bytes(self) -> bytes:
        """The reference's PNG is encoded once per session, not at every repeat of every generation."""
        if self._reference_png is None:
            from .png import encode_png

            self._reference_png = encode_png(self.reference_image)
        return self._reference_png

    def _prepare(self, state_before: bytes) -> _Prepared:
        """Ask for the next generation; with a repository, start encoding its PNGs on worker threads."""
        t0 = time.perf_counter()
        proposal = self.search.ask()
        pngs = None
        if self.repo is not None:
            from .png import encode_png, png_pool

            pngs = [png_pool().submit(encode_png, im) for im in proposal.images]
        return _Prepared(state_before, proposal, pngs, time.perf_counter() - t0)

    def next_batch(self) -> Batch:
        """Ask for the next generation and commit it (and the lead-in of the one after) before anyone shows
        it. Idempotent while open."""
        if self.open is not None:
            return self._in_flight()
        if self.done:
            raise RuntimeError("the search is done; no more generations")
        if self.search.done:
            return self._begin_check()
        t0 = time.perf_counter()
        prepared = self._prepared or self._prepare(self._state() if self.repo is not None else b"")
        self._prepared = prepared  # kept (and the lead-in below) until the proposals are committed
        proposal, state_before = prepared.proposal, prepared.state_before
        g = proposal.generation
        plan = list(enumerate(self._plan(g, len(proposal.codes))))
        lead = self.ahead.presentations if self.ahead is not None and self.ahead.generation == g else []
        answered = dict(self.ahead.answered) if lead else {}
        body = plan[len(lead):]
        ahead_plan = [(k, ("reference", None)) for k in range(self.lead_in)] if self._plans_ahead(g) else []
        image = lambda kind, i: proposal.images[i] if kind == "candidate" else self.reference_image  # noqa: E731
        if self.repo is not None:
            ids = self.repo.begin_generation(
                self.session_id, g, self._stored_proposals(body, proposal, prepared.pngs),
                optimizer_state=state_before, timings={"ask_s": prepared.ask_s},
                next_lead_in=self._stored_proposals(ahead_plan, proposal, None),
            )
        else:
            ids = list(range(self._next_local_id, self._next_local_id + len(body) + len(ahead_plan)))
            self._next_local_id += len(ids)
        mine = [PlannedPresentation(pid, k, kind, i, image(kind, i), 0, g) for pid, (k, (kind, i)) in zip(ids, body)]
        nxt = [PlannedPresentation(pid, k, kind, None, self.reference_image, 0, g + 1)
               for pid, (k, (kind, _)) in zip(ids[len(body):], ahead_plan)]
        self._prepared = None
        self.ahead = _Ahead(g + 1, nxt) if nxt else None
        self.open = OpenGeneration(Batch(g, lead + mine), proposal.codes, proposal.images, answered, t_proposed=t0)
        return Batch(g, mine + nxt)

    def _in_flight(self) -> Batch:
        """Everything the open generation and the lead-in ahead still show (current attempts)."""
        ahead = self.ahead.presentations if self.ahead is not None else []
        return Batch(self.open.batch.generation, list(self.open.batch.presentations) + list(ahead))

    def _stored_proposals(self, slots, proposal: Proposal, pngs) -> list:
        """What the repository stores per slot: PNG bytes (encoded ahead), the code of a candidate."""
        from .db import Proposal as StoredProposal

        return [StoredProposal(image=pngs[i].result() if kind == "candidate" else self._reference_png_bytes(),
                               kind=kind, order_in_batch=k, code=proposal.codes[i] if kind == "candidate" else None,
                               code_index=i)
                for k, (kind, i) in slots]

    # -- collect -----------------------------------------------------------------------------------
    def pending_ids(self) -> set[int]:
        """Presentations whose counts are still wanted: the open generation's and the lead-in ahead."""
        out = set(self.open.batch.ids) if self.open is not None else set()
        if self.ahead is not None:
            out.update(p.presentation_id for p in self.ahead.presentations)
        return out

    def add_counts(self, items: list[Counts]) -> GenerationReport | None:
        """Take counts for the open generation or the lead-in ahead (repeats are ignored, never counted
        twice); once every presentation of the open generation is answered, score and tell. Returns the
        generation's report when it completed."""
        if self.open is None and self.ahead is None:
            raise RuntimeError("no generation is open")
        open_ids = set(self.open.batch.ids) if self.open is not None else set()
        ahead_ids = {p.presentation_id for p in self.ahead.presentations} if self.ahead is not None else set()
        fresh = []
        for c in items:
            counts = np.asarray(c.counts)
            if c.presentation_id not in open_ids and c.presentation_id not in ahead_ids:
                raise ValueError(f"presentation_id: {c.presentation_id} is not in the open generation")
            if counts.ndim != 1 or not np.all(np.isfinite(counts)) or (counts < 0).any():
                raise ValueError(f"counts: presentation {c.presentation_id} has {counts!r} (allowed: finite, >= 0)")
            book = self.open.answered if c.presentation_id in open_ids else self.ahead.answered
            if c.presentation_id in book or not c.valid:
                continue
            fresh.append(c)
        if self.repo is not None and fresh:
            from .db import ResponseRecord

            result = self.repo.record_responses(
                self.session_id,
                [ResponseRecord(c.presentation_id, np.asarray(c.counts, dtype=np.int64), *c.window_ms,
                                None if c.baseline is None else np.asarray(c.baseline, dtype=np.int64),
                                *(c.baseline_window_ms if c.baseline is not None else (None, None)))
                 for c in fresh],
            )
            if result.rejected or result.conflicts:
                raise ValueError(f"counts: the database refused presentations {list(result.rejected)} "
                                 f"and found conflicting repeats for {list(result.conflicts)}")
        for c in fresh:
            book = self.open.answered if c.presentation_id in open_ids else self.ahead.answered
            book[c.presentation_id] = np.asarray(c.counts, dtype=np.float64)
        if self.open is None or len(self.open.answered) < len(open_ids):
            return None
        if self._checking:
            self._judge()
            return None
        return self._score()

    def unanswered(self) -> list[PlannedPresentation]:
        """Presentations still waiting for counts, in display order (the lead-in ahead last)."""
        out = []
        if self.open is not None:
            out += [p for p in self.open.batch.presentations if p.presentation_id not in self.open.answered]
        if self.ahead is not None:
            out += [p for p in self.ahead.presentations if p.presentation_id not in self.ahead.answered]
        return out

    def _score(self) -> GenerationReport:
        """Tell the search once, then commit the scores and the state after tell. If the commit fails, the
        generation stays open and told: the next call commits again without telling twice."""
        op = self.open
        cands = sorted((p for p in op.batch.presentations if p.kind == "candidate"), key=lambda p: p.code_index)
        if op.told is None:
            refs = [p for p in op.batch.presentations if p.kind == "reference"]
            t = self.target_positions if self.target_positions is not None else slice(None)
            rates = np.stack([op.answered[p.presentation_id][t] for p in cands]) / self.window_s
            ref_rates = np.stack([op.answered[p.presentation_id][t] for p in refs]) / self.window_s if refs else None
            if self.prior_reference is not None and self.search.generation == 0:
                prior = self.prior_reference.reshape(-1, rates.shape[1])
                ref_rates = prior if ref_rates is None else np.concatenate([prior, ref_rates])
            t0 = time.perf_counter()
            report = self.search.tell(rates, ref_rates, images=op.images)
            t_tell = time.perf_counter() - t0
            op.told = (report, self._state() if self.repo is not None else b"",
                       self._score_records(report, cands) if self.repo is not None else [],
                       {"tell_s": t_tell, "generation_s": time.perf_counter() - op.t_proposed})
        report, state, records, timings = op.told
        if self.repo is not None:
            # The scores and the state after tell are committed on a worker thread while this thread asks
            # for the next generation (the state before that ask is this state) and its PNGs encode: the
            # three overlap instead of adding up at every generation boundary. Joined before returning,
            # so the generation is complete in the database before anything of the next one is stored.
            committed = _writer().submit(self.repo.complete_generation, self.session_id, op.batch.generation,
                                         records, optimizer_state=state, timings=timings)
            try:
                if not self.search.done and self._prepared is None:
                    self._prepared = self._prepare(state)
            except Exception:  # noqa: BLE001 - asked again (idempotently) by next_batch, which then reports it
                log.warning("asking for generation %d ahead failed; asking again when it is due",
                            op.batch.generation + 1, exc_info=True)
                self._prepared = None
            finally:
                committed.result()
        self.reports.append(report)
        self.open = None
        if self.on_generation is not None:
            self.on_generation(report)
        return report

    def _score_records(self, report: GenerationReport, cands: list[PlannedPresentation]) -> list:
        from .db import ScoreRecord

        if self.search.probe.mode == "maximize":  # the generation's best is what the pool keeps
            sel = np.arange(len(report.fitness)) == int(np.argmax(report.fitness))
        else:
            sel = report.fronts == 0
        return [
            ScoreRecord(
                p.presentation_id,
                {k: float(v[p.code_index]) for k, v in report.distances.items() if np.isfinite(v[p.code_index])},
                int(report.fronts[p.code_index]),
                float(report.fitness[p.code_index]),
                bool(sel[p.code_index]),
            )
            for p in cands
            if p.code_index < len(report.fitness)  # re-tests of earlier candidates carry no new score
        ]

    def reshow(self, presentation_ids: list[int]) -> list[PlannedPresentation]:
        """Replace unanswered (or invalid) presentations by new attempts of the same slot, to be shown again."""
        books = [(b.presentations, ans) for b, ans in (
            (self.open.batch if self.open else None, self.open.answered if self.open else None),
            (self.ahead, self.ahead.answered if self.ahead else None)) if b is not None]
        if not books:
            raise RuntimeError("no generation is open")
        pending = {p.presentation_id for plist, ans in books for p in plist if p.presentation_id not in ans}
        ids = [i for i in presentation_ids if i in pending]
        if self.repo is not None:
            mapping = self.repo.reshow_presentations(self.session_id, ids)
        else:
            mapping = {i: self._next_local_id + k for k, i in enumerate(ids)}
            self._next_local_id += len(ids)
        out = []
        for plist, _ in books:
            for k, p in enumerate(plist):
                if p.presentation_id in mapping:
                    p = replace(p, presentation_id=mapping[p.presentation_id], attempt=p.attempt + 1)
                    plist[k] = p
                    out.append(p)
        return out

    def _state(self) -> bytes:
        # Stored sessions keep their pool in the scores table; the state blob stays small at n = 4096.
        return self.search.state(include_pool=self.repo is None)

    def _rebuild_pool(self, last_completed: int) -> None:
        """The selection pool from stored scores: each completed generation's first-front candidates."""
        h = self.repo.load_history(self.session_id)
        where = {(int(g), int(i)): k for k, (g, i, kind, sup) in
                 enumerate(zip(h.generation, h.code_index, h.kind, h.superseded)) if kind == "candidate" and not sup}
        self.search.restore_confirmation_codes(lambda g, i: h.codes[where[(g, i)]].copy())
        probe = self.search.probe
        t = self.target_positions if self.target_positions is not None else slice(None)
        self.search.pool = type(self.search.pool)()
        rows = [i for i in range(len(h)) if h.kind[i] == "candidate" and not h.superseded[i]
                and h.generation[i] <= last_completed and h.front_index[i] >= 0]
        rows.sort(key=lambda i: (int(h.generation[i]), int(h.code_index[i])))
        for i in rows:
            dist = dict(h.distances[i] or {})
            if probe.mode == "maximize":
                objectives = np.zeros(0)
            else:
                objectives = probe.objectives({k: np.array([v]) for k, v in dist.items()},
                                              self.search.reference_norms)[0]
            if self.search.pooled(int(h.generation[i]), objectives, int(h.front_index[i])) and (
                probe.mode != "maximize" or h.selected[i]
            ):
                self.search.add_to_pool(int(h.generation[i]), int(h.code_index[i]), h.codes[i],
                                        h.counts[i][t] / self.window_s, dist, float(h.fitness[i]))

    # -- resume ------------------------------------------------------------------------------------
    def resume(self, propose: bool = True) -> Batch | None:
        """After a crash: restore the state saved after the last completed generation, re-open the
        in-flight generation (and the lead-in planned ahead) with the answers already committed, and
        return what must be dispatched again (the display skips what it already showed). ``propose=False``
        (a paused session) does not ask for a new generation when none was in flight."""
        point = self.repo.load_resume_point(self.session_id)
        self._prepared = None
        if point.last_completed is not None:
            self.search.load_state(point.optimizer_state)
            if not self.search.pool.codes:
                self._rebuild_pool(point.last_completed)
        self.ahead = None
        if point.planned is not None:
            presentations, answered = self._stored(point.planned, None)
            self.ahead = _Ahead(point.planned.index, presentations, answered)
        if self.reference_check is not None and self.search.done:
            return self._resume_check(point, propose)
        if point.in_flight is not None:
            flight = point.in_flight
            proposal = self.search.ask()
            stored = flight.data.candidate_codes()
            if not np.array_equal(stored, proposal.codes):
                raise RuntimeError(f"generation {flight.index}: the restored optimizer proposes different codes")
            presentations, answered = self._stored(flight.data, proposal.images)
            self.open = OpenGeneration(Batch(flight.index, presentations), proposal.codes, proposal.images, answered,
                              time.perf_counter())
            if self.ahead is not None and self.ahead.generation != flight.index + 1:
                self.ahead = None  # a lead-in not following the open generation cannot be shown in order
            if len(answered) < len(presentations):
                return self._in_flight()
            self._score()  # every answer was committed, the crash came before the generation was completed
        if self.done:
            return None
        waiting = [p for p in (self.ahead.presentations if self.ahead else []) if p.presentation_id not in
                   self.ahead.answered]
        if not propose:
            return Batch(self.ahead.generation, waiting) if waiting else None
        batch = self.next_batch()
        return Batch(batch.generation, waiting + batch.presentations)

    def _stored(self, data, images) -> tuple[list[PlannedPresentation], dict[int, np.ndarray]]:
        presentations, answered = [], {}
        for p in data.presentations:
            img = images[p.code_index] if p.kind == "candidate" else self.reference_image
            presentations.append(PlannedPresentation(p.id, p.order_in_batch, p.kind, p.code_index, img, p.attempt,
                                                     data.index))
            if p.counts is not None:
                answered[p.id] = np.asarray(p.counts, dtype=np.float64)
        return presentations, answered
