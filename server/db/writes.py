"""The generation write path: begin_generation, record_timings, record_responses, reshow_presentations and
complete_generation (the order a generation flows through them: server/db/repository.py).

Every write method commits before it returns, so whatever the caller does next (dispatch, tell) only
depends on data that survives a kill -9. A repeated write (a re-sent response or timing, a begin_generation
repeated after a crash) is recognised and changes nothing; a repeat that *differs* is logged to the event
table as an error and never overwrites what was stored.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from server.db.bulk import ResponseBatch, copy_and_merge, first_per_id
from server.db.jsonb import json_dumps
from server.db.models import ONSET_SOURCES, STIMULUS_KINDS
from server.db.records import (
    GenerationStateError,
    PresentationTiming,
    Proposal,
    ResponseRecord,
    ScoreRecord,
    SessionNotFound,
    StorageError,
    WriteResult,
)
from server.db.repo_base import FINISHED_STATUSES, G, P, S, ST
from server.db.stimuli import StimulusStore
from server.png import encode_pngs, png_size


def _code_bytes(code: np.ndarray | Sequence[float]) -> tuple[bytes, int]:
    arr = np.asarray(code, dtype=np.float64).ravel()
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError("code must be a non-empty vector of finite numbers")
    return arr.astype("<f8").tobytes(), arr.size


def _check_finite_mapping(values: Mapping[str, float], what: str) -> dict[str, float]:
    out = {}
    for k, v in values.items():
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(f"{what}[{k!r}] is {f}; distances must be finite")
        out[str(k)] = f
    return out


class WritePath(StimulusStore):
    """Every write commits before it returns; repeats are recognised, differing repeats logged and refused."""

    def begin_generation(
        self,
        session_id: uuid.UUID,
        index: int,
        proposals: Sequence[Proposal],
        optimizer_state: bytes,
        rng_state: Mapping[str, Any] | None = None,
        timings: Mapping[str, float] | None = None,
        next_lead_in: Sequence[Proposal] = (),
    ) -> list[int]:
        """Store a generation's proposals and the optimizer state they came from, in ONE committed
        transaction, and return one presentation id per proposal (same order). Dispatch only after this.

        Generation ``index`` must follow the last completed one. If it was planned (its lead-in stored
        ahead), the proposals join the lead-in. ``next_lead_in`` plans generation ``index + 1`` in the same
        transaction: presentations that need no optimizer (reference repeats), shown while this generation's
        last answers are still on their way; their ids follow the proposals' in the returned list.

        Repeating the call for a generation that is still in flight with the same proposals returns the same
        ids (a restart that re-asks an optimizer restored from ``optimizer_state`` gets the same batch);
        different proposals raise GenerationStateError.
        """
        if not proposals:
            raise ValueError("a generation needs at least one proposal")
        pngs = encode_pngs([p.image for p in [*proposals, *next_lead_in]])
        prepared = [self._prepare_proposal(p, png) for p, png in zip(proposals, pngs)]
        ahead = [self._prepare_proposal(p, png) for p, png in zip(next_lead_in, pngs[len(proposals):])]
        for batch in (prepared, ahead):
            orders = [p["order_in_batch"] for p in batch]
            if len(set(orders)) != len(orders):
                raise ValueError("order_in_batch must be unique within a generation")
        if any(p["kind"] == "candidate" for p in ahead):
            raise ValueError("next_lead_in: only presentations without a code (reference repeats) can be planned ahead")
        conflict = False
        with self.engine.begin() as conn:
            session = self._lock_session(conn, session_id)
            if session.status in FINISHED_STATUSES:
                raise GenerationStateError(f"session {session_id} is {session.status}")
            if session.n_units == 0:
                raise StorageError("add_units before the first generation")
            existing = conn.execute(
                sa.select(G.c.id, G.c.status).where(G.c.session_id == session_id, G.c.index == index)
            ).first()
            if existing is not None and existing.status != "planned":
                same_ids = self._repeated_begin(conn, index, existing, prepared)
                if same_ids is not None:
                    planned = self._planned_ids(conn, session_id, index + 1, ahead)
                    if planned is not None:
                        return same_ids + planned
                conflict = True
            else:
                self._check_next(conn, session_id, index)
                if existing is not None:
                    self._check_slots(conn, existing.id, index, prepared)
                gen_id = self._propose_generation(conn, session_id, index, existing, optimizer_state, rng_state,
                                                  timings)
                ids = self._insert_presentations(conn, session_id, gen_id, prepared)
                if ahead:
                    gen_next = conn.execute(
                        G.insert().values(session_id=session_id, index=index + 1, status="planned", timings={})
                        .returning(G.c.id)
                    ).scalar_one()
                    ids += self._insert_presentations(conn, session_id, gen_next, ahead)
                conn.execute(S.update().where(S.c.id == session_id).values(updated_at=sa.func.now()))
        if conflict:  # logged after the read-only transaction ended, then refused
            self.log_event(
                session_id,
                "generation_conflict",
                f"generation {index} was begun again with different proposals",
                {"index": index},
                "error",
            )
            raise GenerationStateError(f"generation {index} is in flight with different proposals")
        return ids

    def _check_next(self, conn: Connection, session_id: uuid.UUID, index: int) -> None:
        """Generation ``index`` may be proposed only right after the last completed one."""
        last = conn.execute(
            sa.select(G.c.index, G.c.status)
            .where(G.c.session_id == session_id, G.c.status != "planned")
            .order_by(G.c.index.desc())
            .limit(1)
        ).first()
        expected = 0 if last is None else last.index + 1
        if last is not None and last.status != "completed":
            raise GenerationStateError(f"generation {last.index} is still in flight; complete it first")
        if index != expected:
            raise GenerationStateError(f"next generation must be {expected}, got {index}")

    def _propose_generation(self, conn, session_id, index, planned, optimizer_state, rng_state, timings) -> int:
        """The generation row, new or promoted from planned, with the optimizer state it is asked from."""
        values = dict(
            status="proposed",
            optimizer_state_before=bytes(optimizer_state),
            rng_state_before=dict(rng_state) if rng_state is not None else None,
            timings=dict(timings or {}),
        )
        if planned is not None:
            conn.execute(G.update().where(G.c.id == planned.id).values(**values, proposed_at=sa.func.now()))
            return planned.id
        return conn.execute(
            G.insert().values(session_id=session_id, index=index, **values).returning(G.c.id)
        ).scalar_one()

    def _check_slots(self, conn: Connection, gen_id: int, index: int, prepared: list[dict[str, Any]]) -> None:
        """A planned generation's proposals must not take a slot of its lead-in."""
        taken = set(conn.execute(
            sa.select(P.c.order_in_batch).where(P.c.generation_id == gen_id, P.c.superseded.is_(False))
        ).scalars())
        clash = sorted(taken & {p["order_in_batch"] for p in prepared})
        if clash:
            raise GenerationStateError(f"generation {index}: proposals reuse slots {clash} of its lead-in")

    def _planned_ids(self, conn, session_id, index: int, ahead: list[dict[str, Any]]) -> list[int] | None:
        """Ids of a repeated lead-in (same presentations as stored); None if they differ."""
        row = conn.execute(
            sa.select(G.c.id, G.c.status).where(G.c.session_id == session_id, G.c.index == index)
        ).first()
        if row is None:
            return [] if not ahead else None
        stored = self._active_rows(conn, row.id)
        by_order = {r.order_in_batch: r for r in stored}
        if not all(self._same(by_order.get(p["order_in_batch"]), p) for p in ahead):
            return None
        return [by_order[p["order_in_batch"]].id for p in ahead]

    def _insert_presentations(self, conn, session_id, gen_id: int, prepared: list[dict[str, Any]]) -> list[int]:
        if not prepared:
            return []
        stimulus_ids = self._store_stimuli(conn, list({p["sha256"]: p for p in prepared}.values()))
        # one statement with array parameters (binary: codes are not text-escaped on the way)
        rows = conn.exec_driver_sql(
            "INSERT INTO presentations (session_id, generation_id, stimulus_id, kind, order_in_batch, code,"
            " code_size, code_index)"
            " SELECT %(sid)s, %(gid)s, * FROM unnest(%(stimulus)s::int8[], %(kind)s::text[], %(order)s::int4[],"
            " %(code)b::bytea[], %(code_size)s::int4[], %(code_index)s::int4[])"
            " RETURNING id, order_in_batch",
            {
                "sid": session_id,
                "gid": gen_id,
                "stimulus": [stimulus_ids[p["sha256"]] for p in prepared],
                "kind": [p["kind"] for p in prepared],
                "order": [p["order_in_batch"] for p in prepared],
                "code": [p["code"] for p in prepared],
                "code_size": [p["code_size"] for p in prepared],
                "code_index": [p["code_index"] for p in prepared],
            },
        ).all()
        id_of = {order: pid for pid, order in rows}
        return [id_of[p["order_in_batch"]] for p in prepared]

    def record_timings(self, session_id: uuid.UUID, timings: Sequence[PresentationTiming]) -> WriteResult:
        """Store when presentations were shown (batched). First write wins; repeats are compared."""
        rows = []
        for t in timings:
            if t.onset_source not in ONSET_SOURCES:
                raise ValueError(
                    f"onset_source: unknown source {t.onset_source!r} (allowed: {', '.join(ONSET_SOURCES)})"
                )
            if not t.valid and not t.qc_reasons:
                raise ValueError(f"presentation {t.presentation_id}: an invalid presentation needs a QC reason")
            if t.dropped_frames < 0:
                raise ValueError(f"presentation {t.presentation_id}: dropped_frames must be >= 0")
            rows.append(
                (
                    int(t.presentation_id),
                    t.scheduled_onset,
                    t.display_onset,
                    t.rig_onset,
                    t.onset_source,
                    int(t.dropped_frames),
                    bool(t.valid),
                    list(map(str, t.qc_reasons)),
                )
            )
        if not rows:
            return WriteResult(0)
        rows, dupes_in_batch, conflicts_in_batch = first_per_id(rows)

        def fill(cp):
            cp.set_types(["int8", "float8", "float8", "float8", "text", "int4", "bool", "text[]"])
            for r in rows:
                cp.write_row(r)

        cols = "id, scheduled_onset, display_onset, rig_onset, onset_source, dropped_frames, valid, qc_reasons"
        with self.engine.begin() as conn:
            m = copy_and_merge(
                conn.connection.driver_connection,
                staging="_incoming_timings (id int8, scheduled_onset float8, display_onset float8, rig_onset float8,"
                " onset_source text, dropped_frames int4, valid bool, qc_reasons text[])",
                copy=f"COPY _incoming_timings ({cols}) FROM STDIN (FORMAT BINARY)",
                fill=fill,
                merge="UPDATE presentations p SET scheduled_onset = t.scheduled_onset, display_onset = t.display_onset,"
                " rig_onset = t.rig_onset, onset_source = t.onset_source, dropped_frames = t.dropped_frames,"
                " valid = t.valid, qc_reasons = t.qc_reasons, shown_at = now()"
                " FROM _incoming_timings t"
                " WHERE p.id = t.id AND p.session_id = %(sid)s AND p.onset_source IS NULL RETURNING p.id",
                leftovers="SELECT t.id, p.id IS NULL,"
                " (p.scheduled_onset, p.display_onset, p.rig_onset, p.onset_source, p.dropped_frames,"
                "  p.valid, p.qc_reasons) IS NOT DISTINCT FROM (t.scheduled_onset, t.display_onset,"
                "  t.rig_onset, t.onset_source, t.dropped_frames, t.valid, t.qc_reasons)"
                " FROM _incoming_timings t LEFT JOIN presentations p ON p.id = t.id AND p.session_id = %(sid)s"
                " WHERE NOT t.id = ANY(%(written)s)",
                params={"sid": session_id},
                n_rows=len(rows),
            )
            conflicts = conflicts_in_batch + m.conflicts
            bad = [(pid, f"no presentation {pid} in this session") for pid in m.unknown]
            self._log_write_problems(conn, session_id, "timing", conflicts, m.unknown, bad)
        return WriteResult(m.written, dupes_in_batch + m.duplicates, tuple(conflicts), tuple(m.unknown))

    def record_presentation_timing(self, session_id: uuid.UUID, timing: PresentationTiming) -> WriteResult:
        """One presentation's timing (see record_timings)."""
        return self.record_timings(session_id, [timing])

    def record_responses(self, session_id: uuid.UUID, responses: Sequence[ResponseRecord]) -> WriteResult:
        """Store spike counts, batched: the rows are packed into one binary COPY (vectorised with numpy) into
        a temporary table, then one INSERT .. ON CONFLICT DO NOTHING.

        Idempotent per presentation: a repeat with the same counts is counted as a duplicate; a repeat with
        different counts is a conflict, logged as an error event, and the stored counts stay. Responses for
        presentations of other sessions, unknown ids, or with a count per unit that does not match the
        session's units are rejected and logged. Committed on return.
        """
        with self.engine.begin() as conn:
            n_units = conn.execute(sa.select(S.c.n_units).where(S.c.id == session_id)).scalar()
            if n_units is None:
                raise SessionNotFound(f"no session {session_id}")
            batch, bad = ResponseBatch.build(responses, n_units)
            duplicates, conflicts = batch.drop_repeats()
            inserted, rejected = 0, [pid for pid, _ in bad]
            if len(batch):
                m = copy_and_merge(
                    conn.connection.driver_connection,
                    staging="_incoming_responses (presentation_id int8, counts int4[], baseline_counts int4[],"
                    " window_start_ms float8, window_end_ms float8, baseline_start_ms float8, baseline_end_ms float8)",
                    copy="COPY _incoming_responses FROM STDIN (FORMAT BINARY)",
                    fill=lambda cp: cp.write(batch.copy_binary()),
                    merge="INSERT INTO responses (presentation_id, counts, baseline_counts, window_start_ms,"
                    " window_end_ms, baseline_start_ms, baseline_end_ms)"
                    " SELECT t.* FROM _incoming_responses t"
                    " JOIN presentations p ON p.id = t.presentation_id AND p.session_id = %(sid)s"
                    " JOIN sessions s ON s.id = p.session_id AND cardinality(t.counts) = s.n_units"
                    " ON CONFLICT (presentation_id) DO NOTHING RETURNING presentation_id",
                    leftovers="SELECT t.presentation_id, p.id IS NULL,"
                    " (r.counts, r.baseline_counts, r.window_start_ms, r.window_end_ms,"
                    "  r.baseline_start_ms, r.baseline_end_ms) IS NOT DISTINCT FROM"
                    " (t.counts, t.baseline_counts, t.window_start_ms, t.window_end_ms,"
                    "  t.baseline_start_ms, t.baseline_end_ms)"
                    " FROM _incoming_responses t"
                    " LEFT JOIN presentations p ON p.id = t.presentation_id AND p.session_id = %(sid)s"
                    " LEFT JOIN responses r ON r.presentation_id = t.presentation_id"
                    " WHERE NOT t.presentation_id = ANY(%(written)s)",
                    params={"sid": session_id},
                    n_rows=len(batch),
                )
                inserted, duplicates, conflicts = m.written, duplicates + m.duplicates, conflicts + m.conflicts
                rejected += m.unknown
                bad += [(pid, f"no presentation {pid} in this session") for pid in m.unknown]
            self._log_write_problems(conn, session_id, "response", conflicts, rejected, bad)
        return WriteResult(inserted, duplicates, tuple(conflicts), tuple(rejected))

    def reshow_presentations(self, session_id: uuid.UUID, presentation_ids: Sequence[int]) -> dict[int, int]:
        """Supersede unanswered presentations of the in-flight (or planned) generation with new attempts (same slot,
        stimulus and code) and return {old id: new id}. A late answer to an old id is still stored, but
        only the new attempt counts for the optimizer, so nothing is counted twice."""
        mapping: dict[int, int] = {}
        if not presentation_ids:
            return mapping
        with self.engine.begin() as conn:
            self._lock_session(conn, session_id)
            rows = conn.execute(
                sa.text(
                    "SELECT p.id, p.generation_id, p.stimulus_id, p.kind, p.order_in_batch, p.attempt, p.code,"
                    " p.code_size, p.code_index, p.superseded, g.status, r.presentation_id IS NOT NULL AS answered"
                    " FROM presentations p JOIN generations g ON g.id = p.generation_id"
                    " LEFT JOIN responses r ON r.presentation_id = p.id"
                    " WHERE p.session_id = :sid AND p.id = ANY(:ids) FOR UPDATE OF p"
                ),
                {"sid": session_id, "ids": [int(i) for i in presentation_ids]},
            ).all()
            found = {r.id: r for r in rows}
            for pid in presentation_ids:
                r = found.get(int(pid))
                if r is None:
                    raise StorageError(f"presentation {pid} is not part of session {session_id}")
                if r.superseded or r.status not in ("proposed", "planned") or r.answered:
                    why = "superseded" if r.superseded else ("answered" if r.answered else "in a completed generation")
                    raise StorageError(f"presentation {pid} cannot be re-shown: it is {why}")
            for pid in presentation_ids:
                r = found[int(pid)]
                conn.execute(P.update().where(P.c.id == r.id).values(superseded=True))
                new_id = conn.execute(
                    P.insert()
                    .values(
                        session_id=session_id,
                        generation_id=r.generation_id,
                        stimulus_id=r.stimulus_id,
                        kind=r.kind,
                        order_in_batch=r.order_in_batch,
                        attempt=r.attempt + 1,
                        code=r.code,
                        code_size=r.code_size,
                        code_index=r.code_index,
                        replaces=r.id,
                    )
                    .returning(P.c.id)
                ).scalar_one()
                mapping[r.id] = new_id
            self._log(
                conn,
                session_id,
                "reshow",
                f"re-showing {len(mapping)} presentations",
                {"replaced": {str(k): v for k, v in mapping.items()}},
                "info",
            )
        return mapping

    def complete_generation(
        self,
        session_id: uuid.UUID,
        index: int,
        scores: Sequence[ScoreRecord],
        optimizer_state: bytes,
        rng_state: Mapping[str, Any] | None = None,
        timings: Mapping[str, float] | None = None,
    ) -> None:
        """Store the scores of an in-flight generation and the optimizer state after tell(), in ONE
        committed transaction. Scores need committed responses (enforced by a foreign key). Repeating the
        call with the same optimizer state is a no-op."""
        score_rows = []
        for s in scores:
            fitness = None if s.fitness is None else float(s.fitness)
            if fitness is not None and math.isnan(fitness):
                raise ValueError(f"presentation {s.presentation_id}: fitness is NaN")
            if s.front_index is not None and s.front_index < 0:
                raise ValueError(f"presentation {s.presentation_id}: front_index must be >= 0")
            score_rows.append(
                dict(
                    presentation_id=int(s.presentation_id),
                    distances=_check_finite_mapping(s.distances, "distances"),
                    front_index=None if s.front_index is None else int(s.front_index),
                    fitness=fitness,
                    selected=bool(s.selected),
                )
            )
        with self.engine.begin() as conn:
            self._lock_session(conn, session_id)
            gen = conn.execute(
                sa.select(G.c.id, G.c.status, G.c.optimizer_state_after).where(
                    G.c.session_id == session_id, G.c.index == index
                )
            ).first()
            if gen is None:
                raise GenerationStateError(f"session {session_id} has no generation {index}")
            if gen.status == "completed":
                if bytes(gen.optimizer_state_after) == bytes(optimizer_state):
                    return
                raise GenerationStateError(f"generation {index} was already completed with another state")
            if gen.status != "proposed":
                raise GenerationStateError(f"generation {index} is {gen.status}: it has no proposals to score yet")
            if score_rows:
                ids = [r["presentation_id"] for r in score_rows]
                if len(set(ids)) != len(ids):
                    raise ValueError("one score per presentation")
                rows = conn.execute(
                    sa.text(
                        "SELECT p.id, p.superseded, r.presentation_id IS NOT NULL AS answered"
                        " FROM presentations p LEFT JOIN responses r ON r.presentation_id = p.id"
                        " WHERE p.generation_id = :g AND p.id = ANY(:ids)"
                    ),
                    {"g": gen.id, "ids": ids},
                ).all()
                found = {r.id: r for r in rows}
                for pid in ids:
                    r = found.get(pid)
                    if r is None:
                        raise StorageError(f"presentation {pid} is not part of generation {index}")
                    if r.superseded:
                        raise StorageError(f"presentation {pid} was superseded; score its re-shown attempt")
                    if not r.answered:
                        raise StorageError(f"presentation {pid} has no committed response; cannot score it")
                conn.exec_driver_sql(
                    "INSERT INTO scores (presentation_id, generation_id, distances, front_index, fitness, selected)"
                    " SELECT p, %(gid)s, d, f, s, sel FROM unnest(%(p)s::int8[], %(d)s::jsonb[], %(f)s::int4[],"
                    " %(s)s::float8[], %(sel)s::bool[]) AS u(p, d, f, s, sel)",
                    {
                        "gid": gen.id,
                        "p": [r["presentation_id"] for r in score_rows],
                        "d": [json_dumps(r["distances"]) for r in score_rows],
                        "f": [r["front_index"] for r in score_rows],
                        "s": [r["fitness"] for r in score_rows],
                        "sel": [r["selected"] for r in score_rows],
                    },
                )
            conn.execute(
                G.update()
                .where(G.c.id == gen.id)
                .values(
                    status="completed",
                    optimizer_state_after=bytes(optimizer_state),
                    rng_state_after=dict(rng_state) if rng_state is not None else None,
                    timings=G.c.timings.op("||")(sa.cast(dict(timings or {}), G.c.timings.type)),
                    completed_at=sa.func.now(),
                )
            )
            conn.execute(S.update().where(S.c.id == session_id).values(updated_at=sa.func.now()))

    def _prepare_proposal(self, p: Proposal, png: bytes) -> dict[str, Any]:
        if p.kind not in STIMULUS_KINDS:
            raise ValueError(f"kind: unknown stimulus kind {p.kind!r} (allowed: {', '.join(STIMULUS_KINDS)})")
        if p.order_in_batch < 0:
            raise ValueError("order_in_batch must be >= 0")
        height, width = png_size(png)
        code, code_size = (None, None) if p.code is None else _code_bytes(p.code)
        if p.kind == "candidate" and (code is None or p.code_index is None):
            raise ValueError("a candidate proposal needs its code and code_index")
        if p.code_index is not None and p.code_index < 0:
            raise ValueError("code_index must be >= 0")
        return dict(
            png=png,
            sha256=hashlib.sha256(png).digest(),
            height=height,
            width=width,
            kind=p.kind,
            order_in_batch=int(p.order_in_batch),
            code=code,
            code_size=code_size,
            code_index=None if p.code_index is None else int(p.code_index),
        )

    def _repeated_begin(
        self, conn: Connection, index: int, existing: Any, prepared: list[dict[str, Any]]
    ) -> list[int] | None:
        """Ids of an in-flight generation begun again with the same proposals; None if they differ. Slots
        stored but not among the proposals must be its lead-in (reference repeats planned ahead)."""
        if existing.status != "proposed":
            raise GenerationStateError(f"generation {index} is already completed")
        stored = self._active_rows(conn, existing.id)
        by_order = {r.order_in_batch: r for r in stored}
        asked = {p["order_in_batch"] for p in prepared}
        same = all(self._same(by_order.get(p["order_in_batch"]), p) for p in prepared) and all(
            r.kind == "reference" for r in stored if r.order_in_batch not in asked
        )
        if not same:
            return None
        return [by_order[p["order_in_batch"]].id for p in prepared]

    def _active_rows(self, conn: Connection, gen_id: int) -> list[Any]:
        return conn.execute(
            sa.select(P.c.id, P.c.order_in_batch, P.c.kind, P.c.code, P.c.code_index, ST.c.sha256)
            .join(ST, ST.c.id == P.c.stimulus_id)
            .where(P.c.generation_id == gen_id, P.c.superseded.is_(False))
        ).all()

    @staticmethod
    def _same(r: Any, p: dict[str, Any]) -> bool:
        return (
            r is not None
            and r.kind == p["kind"]
            and bytes(r.sha256) == p["sha256"]
            and (None if r.code is None else bytes(r.code)) == p["code"]
            and r.code_index == p["code_index"]
        )
