"""The write and read paths of a recording, in the order a generation flows through them.

    create_session -> add_units
    begin_generation      proposals + stimuli + optimizer state, ONE transaction, committed before dispatch
    record_timings        display/rig onsets and QC, batched, first write wins
    record_responses      spike counts, batched (COPY), idempotent per presentation, first write wins
    generation_data       what the optimizer is told: read back from the database, i.e. committed
    complete_generation   scores + optimizer state after tell, ONE transaction
    load_resume_point     after a crash: the last completed generation and the in-flight one

Every write method commits before it returns, so whatever the caller does next (dispatch, tell) only
depends on data that survives a kill -9. A repeated write (a re-sent response or timing, a begin_generation
repeated after a crash) is recognised and changes nothing; a repeat that *differs* is logged to the event
table as an error and never overwrites what was stored.

    >>> repo = Repository(engine)                                               # doctest: +SKIP
    >>> sid = repo.create_session(config={"probe": "invariance"}, seed=7, mode="insilico",
    ...                           operator="ana", subject_id="m01", rig="sim")
    >>> repo.add_units(sid, [(12, 1, "V4 12a")])
    >>> ids = repo.begin_generation(sid, 0, [Proposal(png, "candidate", 0, code=z, code_index=0)], state)
    >>> repo.record_responses(sid, [ResponseRecord(ids[0], [4], 50.0, 200.0)])
    >>> data = repo.generation_data(sid, 0)                                     # -> optimizer.tell(...)
    >>> repo.complete_generation(sid, 0, [ScoreRecord(ids[0], {"pixel": 3.2}, 0, 1.5)], new_state)
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import struct
import uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from server.db.bulk import ResponseBatch, ensure_temp_table
from server.db.jsonb import json_dumps
from server.db.models import (
    EVENT_LEVELS,
    ONSET_SOURCES,
    SESSION_MODES,
    SESSION_STATUSES,
    STIMULUS_KINDS,
    Event,
    Generation,
    Presentation,
    Score,
    Session,
    Stimulus,
    Unit,
)
from server.db.records import (  # noqa: F401  (re-exported: callers import the records from here too)
    FrontMember,
    GenerationData,
    GenerationImage,
    GenerationStateError,
    GenerationStats,
    InFlightGeneration,
    PresentationState,
    PresentationTiming,
    Proposal,
    ResponseRecord,
    ResumePoint,
    ScoreRecord,
    SessionHistory,
    SessionNotFound,
    SessionSummary,
    StorageError,
    UnitSpec,
    WriteResult,
    group_unit_rows,
)

log = logging.getLogger(__name__)

FINISHED_STATUSES = ("completed", "aborted", "failed")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encode_png(image: np.ndarray) -> bytes:
    """(H, W, 3) float in [0, 1] or uint8 -> PNG bytes (deterministic, so equal pixels hash equally).

    8-bit RGB, every row with the PNG "up" filter, zlib level 1: the same pixels any PNG reader returns,
    at twice Pillow's speed (whose per-row adaptive filtering costs more than it saves on these images);
    it runs for every new image at every generation boundary.
    """
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"stimulus image must be (H, W, 3), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if not np.all(np.isfinite(arr)):
            raise ValueError("stimulus image contains NaN or infinite values")
        arr = np.clip(np.rint(np.asarray(arr, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    height, width, _ = arr.shape
    rows = arr.reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), np.uint8)
    filtered[:, 0] = 2  # filter type "up": each byte minus the byte above it (mod 256)
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, RGB, deflate, no interlace
    return b"".join((PNG_SIGNATURE, _png_chunk(b"IHDR", header),
                     _png_chunk(b"IDAT", zlib.compress(filtered.tobytes(), 1)), _png_chunk(b"IEND", b"")))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@lru_cache(maxsize=1)
def png_pool() -> ThreadPoolExecutor:
    """zlib and PIL's encoder release the GIL: a generation's PNGs encode in parallel, off the loop's path."""
    return ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="snslab-png")


def encode_pngs(images: Sequence[Any]) -> list[bytes]:
    """PNG bytes for each image (bytes pass through); an image object repeated (reference repeats) is
    encoded once."""
    unique: dict[int, Any] = {}
    for im in images:
        if not isinstance(im, (bytes, bytearray, memoryview)):
            unique.setdefault(id(im), im)
    encoded = dict(zip(unique, png_pool().map(encode_png, unique.values()))) if len(unique) > 1 else {
        k: encode_png(v) for k, v in unique.items()}
    return [bytes(im) if isinstance(im, (bytes, bytearray, memoryview)) else encoded[id(im)] for im in images]


def png_size(png: bytes) -> tuple[int, int]:
    """(height, width) from the PNG header; ValueError if the bytes are not a PNG."""
    if len(png) < 24 or png[:8] != PNG_SIGNATURE or png[12:16] != b"IHDR":
        raise ValueError("stimulus image bytes are not a PNG")
    width, height = struct.unpack(">II", png[16:24])
    return height, width


def _code_bytes(code: np.ndarray | Sequence[float]) -> tuple[bytes, int]:
    arr = np.asarray(code, dtype=np.float64).ravel()
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError("code must be a non-empty vector of finite numbers")
    return arr.astype("<f8").tobytes(), arr.size


def _code_array(raw: bytes | None) -> np.ndarray | None:
    return None if raw is None else np.frombuffer(raw, dtype="<f8").copy()


def _check_finite_mapping(values: Mapping[str, float], what: str) -> dict[str, float]:
    out = {}
    for k, v in values.items():
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(f"{what}[{k!r}] is {f}; distances must be finite")
        out[str(k)] = f
    return out


def _hex(b: bytes) -> str:
    return bytes(b).hex()


S = Session.__table__
U = Unit.__table__
G = Generation.__table__
ST = Stimulus.__table__
P = Presentation.__table__
SC = Score.__table__
E = Event.__table__


class Repository:
    """All reads and writes of recordings. Thread-safe (one pooled connection per call)."""

    def __init__(self, engine: Engine, *, stimulus_dir: Path | None = None):
        """``stimulus_dir`` set: images are stored as content-addressed files there, not as BYTEA."""
        self.engine = engine
        self.stimulus_dir = Path(stimulus_dir) if stimulus_dir is not None else None

    # --- sessions and units ------------------------------------------------------------------------------

    def create_session(
        self,
        *,
        config: Mapping[str, Any],
        seed: int,
        mode: str,
        operator: str,
        subject_id: str,
        rig: str,
        software_version: str | None = None,
        session_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        """Record a new session (status 'running') and return its id."""
        if mode not in SESSION_MODES:
            raise ValueError(f"mode: unknown mode {mode!r} (allowed: {', '.join(SESSION_MODES)})")
        seed = int(seed)
        if not 0 <= seed < 2**63:
            raise ValueError(f"seed: {seed} out of range (allowed: 0 <= seed < 2**63)")
        for name, value in (("operator", operator), ("subject_id", subject_id), ("rig", rig)):
            if not value:
                raise ValueError(f"{name}: must not be empty")
        if software_version is None:
            from server import __version__ as software_version
        sid = session_id or uuid.uuid4()
        with self.engine.begin() as conn:
            conn.execute(
                S.insert().values(
                    id=sid,
                    config=dict(config),
                    seed=seed,
                    mode=mode,
                    operator=operator,
                    subject_id=subject_id,
                    rig=rig,
                    software_version=software_version,
                )
            )
        return sid

    def set_session_status(self, session_id: uuid.UUID, status: str) -> None:
        """running / paused / completed / aborted / failed (the last three stamp finished_at)."""
        if status not in SESSION_STATUSES:
            raise ValueError(f"status: unknown status {status!r} (allowed: {', '.join(SESSION_STATUSES)})")
        finished = sa.func.coalesce(S.c.finished_at, sa.func.now()) if status in FINISHED_STATUSES else None
        with self.engine.begin() as conn:
            n = conn.execute(
                S.update()
                .where(S.c.id == session_id)
                .values(status=status, finished_at=finished, updated_at=sa.func.now())
            ).rowcount
        if n == 0:
            raise SessionNotFound(f"no session {session_id}")

    def add_units(
        self, session_id: uuid.UUID, units: Sequence[UnitSpec | tuple[int, int] | tuple[int, int, str]]
    ) -> list[int]:
        """Register recorded units before the first generation; their order is the order of every
        response's counts. Returns unit ids."""
        specs = [u if isinstance(u, UnitSpec) else UnitSpec(*u) for u in units]
        if not specs:
            return []
        with self.engine.begin() as conn:
            row = self._lock_session(conn, session_id)
            started = conn.execute(sa.select(sa.func.count()).where(G.c.session_id == session_id)).scalar()
            if started:
                raise StorageError("units must be added before the first generation begins")
            base = row.n_units
            ids = (
                conn.execute(
                    U.insert().returning(U.c.id, sort_by_parameter_order=True),
                    [
                        dict(session_id=session_id, position=base + i, channel=u.channel, unit=u.unit, label=u.label)
                        for i, u in enumerate(specs)
                    ],
                )
                .scalars()
                .all()
            )
            conn.execute(
                S.update().where(S.c.id == session_id).values(n_units=base + len(specs), updated_at=sa.func.now())
            )
        return list(ids)

    def units(self, session_id: uuid.UUID) -> list[tuple[int, UnitSpec]]:
        """(unit id, spec) in position order."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(U.c.id, U.c.channel, U.c.unit, U.c.label)
                .where(U.c.session_id == session_id)
                .order_by(U.c.position)
            ).all()
        return [(r.id, UnitSpec(r.channel, r.unit, r.label)) for r in rows]

    # --- the generation write path ----------------------------------------------------------------------

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
        rows, dupes_in_batch, conflicts_in_batch = _first_per_id(rows)
        cols = "id, scheduled_onset, display_onset, rig_onset, onset_source, dropped_frames, valid, qc_reasons"
        with self.engine.begin() as conn:
            raw = conn.connection.driver_connection
            with raw.cursor() as cur:
                ensure_temp_table(
                    raw,
                    "_incoming_timings (id int8, scheduled_onset float8, display_onset float8, rig_onset float8,"
                    " onset_source text, dropped_frames int4, valid bool, qc_reasons text[])",
                )
                with cur.copy(f"COPY _incoming_timings ({cols}) FROM STDIN (FORMAT BINARY)") as cp:
                    cp.set_types(["int8", "float8", "float8", "float8", "text", "int4", "bool", "text[]"])
                    for r in rows:
                        cp.write_row(r)
                cur.execute(
                    "UPDATE presentations p SET scheduled_onset = t.scheduled_onset, display_onset = t.display_onset,"
                    " rig_onset = t.rig_onset, onset_source = t.onset_source, dropped_frames = t.dropped_frames,"
                    " valid = t.valid, qc_reasons = t.qc_reasons, shown_at = now()"
                    " FROM _incoming_timings t"
                    " WHERE p.id = t.id AND p.session_id = %s AND p.onset_source IS NULL RETURNING p.id",
                    (session_id,),
                )
                written = [r[0] for r in cur.fetchall()]
                inserted = len(written)
                duplicates, conflicts, rejected = dupes_in_batch, list(conflicts_in_batch), []
                bad: list[tuple[int, str]] = []
                if inserted != len(rows):
                    cur.execute(
                        "SELECT t.id, p.id IS NULL,"
                        " (p.scheduled_onset, p.display_onset, p.rig_onset, p.onset_source, p.dropped_frames,"
                        "  p.valid, p.qc_reasons) IS NOT DISTINCT FROM (t.scheduled_onset, t.display_onset,"
                        "  t.rig_onset, t.onset_source, t.dropped_frames, t.valid, t.qc_reasons)"
                        " FROM _incoming_timings t LEFT JOIN presentations p ON p.id = t.id AND p.session_id = %s"
                        " WHERE NOT t.id = ANY(%s)",
                        (session_id, written),
                    )
                    for pid, unknown, same in cur.fetchall():
                        if unknown:
                            rejected.append(pid)
                            bad.append((pid, f"no presentation {pid} in this session"))
                        elif same:
                            duplicates += 1
                        else:
                            conflicts.append(pid)
            self._log_write_problems(conn, session_id, "timing", conflicts, rejected, bad)
        return WriteResult(inserted, duplicates, tuple(conflicts), tuple(rejected))

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
                raw = conn.connection.driver_connection
                with raw.cursor() as cur:
                    ensure_temp_table(
                        raw,
                        "_incoming_responses (presentation_id int8, counts int4[], baseline_counts int4[],"
                        " window_start_ms float8, window_end_ms float8, baseline_start_ms float8,"
                        " baseline_end_ms float8)",
                    )
                    with cur.copy("COPY _incoming_responses FROM STDIN (FORMAT BINARY)") as cp:
                        cp.write(batch.copy_binary())
                    cur.execute(
                        "INSERT INTO responses (presentation_id, counts, baseline_counts, window_start_ms,"
                        " window_end_ms, baseline_start_ms, baseline_end_ms)"
                        " SELECT t.* FROM _incoming_responses t"
                        " JOIN presentations p ON p.id = t.presentation_id AND p.session_id = %(sid)s"
                        " JOIN sessions s ON s.id = p.session_id AND cardinality(t.counts) = s.n_units"
                        " ON CONFLICT (presentation_id) DO NOTHING RETURNING presentation_id",
                        {"sid": session_id},
                    )
                    written = [r[0] for r in cur.fetchall()]
                    inserted = len(written)
                    if inserted != len(batch):
                        cur.execute(
                            "SELECT t.presentation_id, p.id IS NULL,"
                            " (r.counts, r.baseline_counts, r.window_start_ms, r.window_end_ms,"
                            "  r.baseline_start_ms, r.baseline_end_ms) IS NOT DISTINCT FROM"
                            " (t.counts, t.baseline_counts, t.window_start_ms, t.window_end_ms,"
                            "  t.baseline_start_ms, t.baseline_end_ms)"
                            " FROM _incoming_responses t"
                            " LEFT JOIN presentations p ON p.id = t.presentation_id AND p.session_id = %(sid)s"
                            " LEFT JOIN responses r ON r.presentation_id = t.presentation_id"
                            " WHERE NOT t.presentation_id = ANY(%(written)s)",
                            {"sid": session_id, "written": written},
                        )
                        for pid, unknown, same in cur.fetchall():
                            if unknown:
                                rejected.append(pid)
                                bad.append((pid, f"no presentation {pid} in this session"))
                            elif same:
                                duplicates += 1
                            else:
                                conflicts.append(pid)
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

    def generation_data(self, session_id: uuid.UUID, index: int) -> GenerationData:
        """The generation's active presentations with their committed responses, in batch order."""
        with self.engine.connect() as conn:
            status = conn.execute(
                sa.select(G.c.status).where(G.c.session_id == session_id, G.c.index == index)
            ).scalar()
            if status is None:
                raise GenerationStateError(f"session {session_id} has no generation {index}")
            return GenerationData(session_id, index, status, self._presentations(conn, session_id, index))

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

    # --- resume ------------------------------------------------------------------------------------------

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

    # --- events -----------------------------------------------------------------------------------------

    def log_event(
        self,
        session_id: uuid.UUID | None,
        kind: str,
        message: str,
        payload: Mapping[str, Any] | None = None,
        level: str = "info",
    ) -> int:
        """Append to the event log (committed at once) and return the event id."""
        with self.engine.begin() as conn:
            return self._log(conn, session_id, kind, message, payload, level)

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

    # --- read side ---------------------------------------------------------------------------------------

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

    def generation_images(
        self, session_id: uuid.UUID, index: int, kinds: Iterable[str] | None = None
    ) -> list[GenerationImage]:
        """PNG bytes of a generation's active presentations, in batch order."""
        q = (
            sa.select(P.c.id, P.c.order_in_batch, P.c.kind, ST.c.sha256, ST.c.data, ST.c.path)
            .join(G, G.c.id == P.c.generation_id)
            .join(ST, ST.c.id == P.c.stimulus_id)
            .where(G.c.session_id == session_id, G.c.index == index, P.c.superseded.is_(False))
            .order_by(P.c.order_in_batch)
        )
        if kinds is not None:
            q = q.where(P.c.kind.in_(list(kinds)))
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        cache: dict[bytes, bytes] = {}
        out = []
        for r in rows:
            key = bytes(r.sha256)
            if key not in cache:
                cache[key] = self._image_bytes(r.data, r.path, key)
            out.append(GenerationImage(r.id, r.order_in_batch, r.kind, key.hex(), cache[key]))
        return out

    def stimulus_images(self, sha256_hex: Iterable[str]) -> dict[str, bytes]:
        """PNG bytes by content hash."""
        keys = [bytes.fromhex(h) for h in set(sha256_hex)]
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(ST.c.sha256, ST.c.data, ST.c.path).where(ST.c.sha256.in_(keys))).all()
        return {_hex(r.sha256): self._image_bytes(r.data, r.path, bytes(r.sha256)) for r in rows}

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

    # --- internals --------------------------------------------------------------------------------------

    def _lock_session(self, conn: Connection, session_id: uuid.UUID):
        """Serialise generation-level writes of one session (row lock until commit)."""
        row = conn.execute(
            sa.select(S.c.id, S.c.status, S.c.n_units).where(S.c.id == session_id).with_for_update()
        ).first()
        if row is None:
            raise SessionNotFound(f"no session {session_id}")
        return row

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

    def _store_stimuli(self, conn: Connection, images: list[dict[str, Any]]) -> dict[bytes, int]:
        """Insert images not stored yet (by content hash); return {sha256: stimulus id}."""
        keys = [im["sha256"] for im in images]
        rows = conn.execute(sa.select(ST.c.sha256, ST.c.id).where(ST.c.sha256.in_(keys))).all()
        known = {bytes(k): v for k, v in rows}
        new = [im for im in images if im["sha256"] not in known]
        if new:
            paths = [self._write_stimulus_file(im["sha256"], im["png"]) if self.stimulus_dir else None for im in new]
            # one statement with binary array parameters (PNG bytes are not text-escaped on the way)
            conn.exec_driver_sql(
                "INSERT INTO stimuli (sha256, height, width, nbytes, data, path)"
                " SELECT * FROM unnest(%(sha)b::bytea[], %(h)s::int4[], %(w)s::int4[], %(n)s::int4[],"
                " %(data)b::bytea[], %(path)s::text[]) ON CONFLICT (sha256) DO NOTHING",
                {
                    "sha": [im["sha256"] for im in new],
                    "h": [im["height"] for im in new],
                    "w": [im["width"] for im in new],
                    "n": [len(im["png"]) for im in new],
                    "data": [None if path else im["png"] for im, path in zip(new, paths)],
                    "path": paths,
                },
            )
            rows = conn.execute(
                sa.select(ST.c.sha256, ST.c.id).where(ST.c.sha256.in_([im["sha256"] for im in new]))
            ).all()
            known.update({bytes(k): v for k, v in rows})
        return known

    def _write_stimulus_file(self, sha: bytes, png: bytes) -> str:
        """Content-addressed file, written atomically and flushed to disk before the row is committed."""
        h = sha.hex()
        rel = f"{h[:2]}/{h}.png"
        target = self.stimulus_dir / rel
        if target.exists() and target.stat().st_size == len(png):
            return rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(png)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return rel

    def _image_bytes(self, data: bytes | None, path: str | None, sha: bytes) -> bytes:
        if data is not None:
            return bytes(data)
        if self.stimulus_dir is None:
            raise StorageError(f"stimulus {sha.hex()} is stored as a file but no stimulus folder is configured")
        png = (self.stimulus_dir / path).read_bytes()
        if hashlib.sha256(png).digest() != sha:
            raise StorageError(f"stimulus file {path} does not match its content hash")
        return png

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

    def _log(
        self,
        conn: Connection,
        session_id: uuid.UUID | None,
        kind: str,
        message: str,
        payload: Mapping[str, Any] | None,
        level: str,
    ) -> int:
        if level not in EVENT_LEVELS:
            raise ValueError(f"level: unknown level {level!r} (allowed: {', '.join(EVENT_LEVELS)})")
        return conn.execute(
            E.insert()
            .values(session_id=session_id, kind=kind, message=message, payload=dict(payload or {}), level=level)
            .returning(E.c.id)
        ).scalar_one()

    def _log_write_problems(
        self,
        conn: Connection,
        session_id: uuid.UUID,
        what: str,
        conflicts: Sequence[int],
        rejected: Sequence[int],
        reasons: Sequence[tuple[int, str]] = (),
    ) -> None:
        if conflicts:
            msg = f"{len(conflicts)} repeated {what}s differ from the stored ones; kept the stored ones"
            self._log(conn, session_id, f"{what}_conflict", msg, {"presentation_ids": list(conflicts)}, "error")
            log.error("session %s: %s: %s", session_id, msg, list(conflicts)[:10])
        if rejected:
            why = [[pid, reason] for pid, reason in reasons]
            msg = f"{len(rejected)} {what}s rejected: " + "; ".join(sorted({r for _, r in reasons}))[:500]
            self._log(
                conn, session_id, f"{what}_rejected", msg, {"presentation_ids": list(rejected), "reasons": why}, "error"
            )
            log.error("session %s: %s: %s", session_id, msg, list(rejected)[:10])


def _first_per_id(rows: list[tuple]) -> tuple[list[tuple], int, list[int]]:
    """Keep the first row per presentation id within one batch. Returns (rows, identical repeats,
    ids whose repeat differed)."""
    seen: dict[int, tuple] = {}
    dupes, conflicts = 0, []
    for r in rows:
        first = seen.get(r[0])
        if first is None:
            seen[r[0]] = r
        elif first == r:
            dupes += 1
        else:
            conflicts.append(r[0])
    return list(seen.values()), dupes, conflicts
