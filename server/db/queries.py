"""The read side: sessions, their resume point, dashboard statistics, fronts and whole histories."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from server.db.records import (
    FrontMember,
    GenerationData,
    GenerationStateError,
    GenerationStats,
    InFlightGeneration,
    PresentationState,
    ResumePoint,
    SessionHistory,
    SessionNotFound,
    SessionSummary,
    UnitSpec,
)
from server.db.repo_base import E, G, S, U, _code_array, _hex
from server.db.stimuli import StimulusStore


class Queries(StimulusStore):
    """Reads only committed data; every method opens its own connection."""

    def units(self, session_id: uuid.UUID) -> list[tuple[int, UnitSpec]]:
        """(unit id, spec) in position order."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(U.c.id, U.c.channel, U.c.unit, U.c.label)
                .where(U.c.session_id == session_id)
                .order_by(U.c.position)
            ).all()
        return [(r.id, UnitSpec(r.channel, r.unit, r.label)) for r in rows]

    def generation_data(self, session_id: uuid.UUID, index: int) -> GenerationData:
        """The generation's active presentations with their committed responses, in batch order."""
        with self.engine.connect() as conn:
            status = conn.execute(
                sa.select(G.c.status).where(G.c.session_id == session_id, G.c.index == index)
            ).scalar()
            if status is None:
                raise GenerationStateError(f"session {session_id} has no generation {index}")
            return GenerationData(session_id, index, status, self._presentations(conn, session_id, index))

    def load_resume_point(self, session_id: uuid.UUID) -> ResumePoint:
        """Where to continue after a crash: the newest completed generation's optimizer/RNG state and the
        in-flight generation (its proposals, which of them are answered and which still wait)."""
        with self.engine.connect() as conn:
            s = conn.execute(sa.select(S.c.seed, S.c.config, S.c.status).where(S.c.id == session_id)).first()
            if s is None:
                raise SessionNotFound(f"no session {session_id}")
            done = conn.execute(
                sa.select(G.c.index, G.c.optimizer_state_after, G.c.rng_state_after)
                .where(G.c.session_id == session_id, G.c.status == "completed")
                .order_by(G.c.index.desc())
                .limit(1)
            ).first()
            flight = conn.execute(
                sa.select(G.c.index, G.c.optimizer_state_before, G.c.rng_state_before).where(
                    G.c.session_id == session_id, G.c.status == "proposed"
                )
            ).first()
            planned_index = conn.execute(
                sa.select(G.c.index).where(G.c.session_id == session_id, G.c.status == "planned")
            ).scalar()
            planned = None
            if planned_index is not None:
                planned = GenerationData(
                    session_id, planned_index, "planned", self._presentations(conn, session_id, planned_index)
                )
            in_flight = None
            if flight is not None:
                data = GenerationData(
                    session_id, flight.index, "proposed", self._presentations(conn, session_id, flight.index)
                )
                in_flight = InFlightGeneration(
                    flight.index, bytes(flight.optimizer_state_before), flight.rng_state_before, data
                )
        return ResumePoint(
            session_id=session_id,
            seed=s.seed,
            config=s.config,
            status=s.status,
            last_completed=None if done is None else done.index,
            optimizer_state=None if done is None else bytes(done.optimizer_state_after),
            rng_state=None if done is None else done.rng_state_after,
            in_flight=in_flight,
            planned=planned,
        )

    def events(
        self, session_id: uuid.UUID | None, *, after_id: int = 0, kind: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Events of a session (None: events without a session), oldest first, for polling via after_id."""
        q = sa.select(E).where(E.c.id > after_id).order_by(E.c.id).limit(limit)
        q = q.where(E.c.session_id.is_(None) if session_id is None else E.c.session_id == session_id)
        if kind is not None:
            q = q.where(E.c.kind == kind)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def list_sessions(self, limit: int = 100) -> list[SessionSummary]:
        with self.engine.connect() as conn:
            ids = conn.execute(sa.select(S.c.id).order_by(S.c.created_at.desc()).limit(limit)).scalars().all()
            return [self._summary(conn, sid) for sid in ids]

    def session_summary(self, session_id: uuid.UUID) -> SessionSummary:
        with self.engine.connect() as conn:
            return self._summary(conn, session_id)

    def generation_stats(self, session_id: uuid.UUID, unit_position: int = 0) -> list[GenerationStats]:
        """Per generation: counts of presentations, mean/max response of one unit to valid candidates,
        mean response to references, front size, best fitness, timings."""
        sql = sa.text(
            """
            SELECT g.index, g.status, g.timings, g.proposed_at, g.completed_at,
                   count(p.id) AS n_presentations,
                   count(r.presentation_id) AS n_answered,
                   count(p.id) FILTER (WHERE p.valid = false) AS n_invalid,
                   count(p.id) FILTER (WHERE p.kind = 'candidate') AS n_candidates,
                   avg(r.counts[:pos]) FILTER (WHERE p.kind = 'candidate' AND p.valid IS NOT FALSE) AS mean_response,
                   max(r.counts[:pos]) FILTER (WHERE p.kind = 'candidate' AND p.valid IS NOT FALSE) AS max_response,
                   avg(r.counts[:pos]) FILTER (WHERE p.kind = 'reference' AND p.valid IS NOT FALSE) AS mean_ref,
                   count(sc.presentation_id) FILTER (WHERE sc.front_index = 0) AS front_size,
                   max(sc.fitness) AS best_fitness
            FROM generations g
            LEFT JOIN presentations p ON p.generation_id = g.id AND NOT p.superseded
            LEFT JOIN responses r ON r.presentation_id = p.id
            LEFT JOIN scores sc ON sc.presentation_id = p.id
            WHERE g.session_id = :sid
            GROUP BY g.id ORDER BY g.index
            """
        )
        with self.engine.connect() as conn:
            rows = conn.execute(sql, {"sid": session_id, "pos": unit_position + 1}).all()
        return [
            GenerationStats(
                index=r.index,
                status=r.status,
                n_presentations=r.n_presentations,
                n_answered=r.n_answered,
                n_invalid=r.n_invalid,
                n_candidates=r.n_candidates,
                mean_response=None if r.mean_response is None else float(r.mean_response),
                max_response=r.max_response,
                mean_reference_response=None if r.mean_ref is None else float(r.mean_ref),
                front_size=r.front_size,
                best_fitness=r.best_fitness,
                timings=r.timings,
                proposed_at=r.proposed_at,
                completed_at=r.completed_at,
            )
            for r in rows
        ]

    def front_history(self, session_id: uuid.UUID, unit_position: int = 0) -> list[FrontMember]:
        """The first front (front_index 0) of every completed generation, oldest first."""
        sql = sa.text(
            """
            SELECT g.index, p.id, p.order_in_batch, p.code_index, sc.distances, sc.fitness, sc.selected,
                   r.counts[:pos] AS response, st.sha256
            FROM scores sc
            JOIN presentations p ON p.id = sc.presentation_id
            JOIN generations g ON g.id = sc.generation_id
            JOIN responses r ON r.presentation_id = p.id
            JOIN stimuli st ON st.id = p.stimulus_id
            WHERE g.session_id = :sid AND sc.front_index = 0
            ORDER BY g.index, sc.fitness DESC NULLS LAST, p.order_in_batch
            """
        )
        with self.engine.connect() as conn:
            rows = conn.execute(sql, {"sid": session_id, "pos": unit_position + 1}).all()
        return [
            FrontMember(
                r.index,
                r.id,
                r.order_in_batch,
                r.code_index,
                r.distances,
                r.fitness,
                r.selected,
                r.response,
                _hex(r.sha256),
            )
            for r in rows
        ]

    def load_history(
        self, session_id: uuid.UUID, *, with_images: bool = False, with_states: bool = False
    ) -> SessionHistory:
        """The whole session for replay and export, column-wise; a few queries whatever its length."""
        with self.engine.connect() as conn:
            summary = self._summary(conn, session_id)
            config = conn.execute(sa.select(S.c.config).where(S.c.id == session_id)).scalar_one()
            units = [
                UnitSpec(r.channel, r.unit, r.label)
                for r in conn.execute(
                    sa.select(U.c.channel, U.c.unit, U.c.label)
                    .where(U.c.session_id == session_id)
                    .order_by(U.c.position)
                )
            ]
            gcols = [G.c.index, G.c.status, G.c.timings, G.c.proposed_at, G.c.completed_at]
            if with_states:
                gcols += [
                    G.c.optimizer_state_before,
                    G.c.rng_state_before,
                    G.c.optimizer_state_after,
                    G.c.rng_state_after,
                ]
            generations = [
                dict(r._mapping)
                for r in conn.execute(sa.select(*gcols).where(G.c.session_id == session_id).order_by(G.c.index))
            ]
            raw = conn.connection.driver_connection
            with raw.cursor(binary=True) as cur:
                cur.execute(
                    """
                    SELECT p.id, g.index, p.order_in_batch, p.attempt, p.superseded, p.kind, p.code_index, p.code,
                           st.sha256, p.display_onset, p.rig_onset, p.onset_source, p.dropped_frames, p.valid,
                           p.qc_reasons, r.counts, r.baseline_counts, r.window_start_ms, r.window_end_ms,
                           sc.distances, sc.front_index, sc.fitness, sc.selected
                    FROM presentations p
                    JOIN generations g ON g.id = p.generation_id
                    JOIN stimuli st ON st.id = p.stimulus_id
                    LEFT JOIN responses r ON r.presentation_id = p.id
                    LEFT JOIN scores sc ON sc.presentation_id = p.id
                    WHERE p.session_id = %s
                    ORDER BY g.index, p.order_in_batch, p.attempt
                    """,
                    (session_id,),
                )
                rows = cur.fetchall()
        n_units = summary.n_units
        n = len(rows)
        code_size = max((len(r[7]) // 8 for r in rows if r[7] is not None), default=0)
        codes = np.full((n, code_size), np.nan)
        counts = np.full((n, n_units), -1, dtype=np.int32)
        baseline = np.full((n, n_units), -1, dtype=np.int32)
        window = np.full((n, 2), np.nan)
        for i, r in enumerate(rows):
            if r[7] is not None:
                codes[i] = np.frombuffer(r[7], dtype="<f8")
            if r[15] is not None:
                counts[i] = r[15]
                window[i] = (r[17], r[18])
            if r[16] is not None:
                baseline[i] = r[16]

        def col(j: int, dtype: Any, fill: Any = None) -> np.ndarray:
            return np.array([fill if r[j] is None else r[j] for r in rows], dtype=dtype)

        history = SessionHistory(
            session=summary,
            config=config,
            units=units,
            generations=generations,
            presentation_id=col(0, np.int64),
            generation=col(1, np.int32),
            order_in_batch=col(2, np.int32),
            attempt=col(3, np.int16),
            superseded=col(4, bool),
            kind=col(5, object),
            code_index=col(6, np.int32, -1),
            codes=codes,
            stimulus_sha256=[bytes(r[8]).hex() for r in rows],
            display_onset=col(9, np.float64, np.nan),
            rig_onset=col(10, np.float64, np.nan),
            onset_source=[r[11] for r in rows],
            dropped_frames=col(12, np.int32, -1),
            valid=col(13, object),
            qc_reasons=[list(r[14]) for r in rows],
            counts=counts,
            baseline_counts=baseline,
            window_ms=window,
            distances=[r[19] for r in rows],
            front_index=col(20, np.int32, -1),
            fitness=col(21, np.float64, np.nan),
            selected=col(22, bool, False),
        )
        if with_images:
            history.images = self.stimulus_images(set(history.stimulus_sha256))
        return history

    def _presentations(self, conn: Connection, session_id: uuid.UUID, index: int) -> list[PresentationState]:
        rows = conn.execute(
            sa.text(
                "SELECT p.id, p.order_in_batch, p.attempt, p.kind, p.code_index, p.code, st.sha256,"
                " p.onset_source IS NOT NULL AS shown, p.valid, r.counts, r.baseline_counts"
                " FROM presentations p JOIN generations g ON g.id = p.generation_id"
                " JOIN stimuli st ON st.id = p.stimulus_id"
                " LEFT JOIN responses r ON r.presentation_id = p.id"
                " WHERE g.session_id = :sid AND g.index = :idx AND NOT p.superseded"
                " ORDER BY p.order_in_batch"
            ),
            {"sid": session_id, "idx": index},
        ).all()
        return [
            PresentationState(
                id=r.id,
                order_in_batch=r.order_in_batch,
                attempt=r.attempt,
                kind=r.kind,
                code_index=r.code_index,
                code=_code_array(r.code),
                stimulus_sha256=_hex(r.sha256),
                shown=r.shown,
                valid=r.valid,
                counts=None if r.counts is None else np.asarray(r.counts, dtype=np.int64),
                baseline_counts=None if r.baseline_counts is None else np.asarray(r.baseline_counts, dtype=np.int64),
            )
            for r in rows
        ]

    def _summary(self, conn: Connection, session_id: uuid.UUID) -> SessionSummary:
        r = conn.execute(
            sa.text(
                """
                SELECT s.id, s.operator, s.subject_id, s.rig, s.mode, s.status, s.seed, s.software_version,
                       s.created_at, s.updated_at, s.finished_at, s.n_units,
                       (SELECT count(*) FROM generations g WHERE g.session_id = s.id
                        AND g.status <> 'planned') AS n_generations,
                       (SELECT count(*) FROM generations g WHERE g.session_id = s.id AND g.status = 'completed')
                           AS n_completed,
                       pc.n_presentations, pc.n_answered, pc.n_invalid,
                       (SELECT max(sc.fitness) FROM scores sc JOIN generations g ON g.id = sc.generation_id
                         WHERE g.session_id = s.id) AS best_fitness
                FROM sessions s,
                LATERAL (SELECT count(*) AS n_presentations, count(r.presentation_id) AS n_answered,
                                count(*) FILTER (WHERE p.valid = false) AS n_invalid
                         FROM presentations p LEFT JOIN responses r ON r.presentation_id = p.id
                         WHERE p.session_id = s.id AND NOT p.superseded) pc
                WHERE s.id = :sid
                """
            ),
            {"sid": session_id},
        ).first()
        if r is None:
            raise SessionNotFound(f"no session {session_id}")
        return SessionSummary(
            id=r.id,
            operator=r.operator,
            subject_id=r.subject_id,
            rig=r.rig,
            mode=r.mode,
            status=r.status,
            seed=r.seed,
            software_version=r.software_version,
            created_at=r.created_at,
            updated_at=r.updated_at,
            finished_at=r.finished_at,
            n_units=r.n_units,
            n_generations=r.n_generations,
            n_completed_generations=r.n_completed,
            n_presentations=r.n_presentations,
            n_answered=r.n_answered,
            n_invalid=r.n_invalid,
            best_fitness=r.best_fitness,
        )
