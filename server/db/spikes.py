"""Raw spike times and the rig's recording identity: batched, idempotent writes and column-wise reads.

    from server.db.spikes import SpikeTrainRecord, store_spike_trains, load_spike_trains
    store_spike_trains(engine, session_id, [SpikeTrainRecord(pid, onset, -200.0, 500.0, n, 4, blob, clock)])
    trains = load_spike_trains(engine, session_id)      # {presentation id: StoredTrain}
    trains[pid].unit_times_ns(0)                        # int64 ns after onset of the unit at position 0

Spike times are integer ns after the presentation's rig onset, packed unit after unit in the session's
unit order (see analysis_models.SpikeTrain). A re-sent batch is a duplicate (ON CONFLICT DO NOTHING);
stored rows are never updated.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from psycopg.types.json import Jsonb
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Engine

from server.db.analysis_models import Recording, SpikeTrain
from server.db.bulk import ensure_temp_table
from server.db.models import Presentation

SPT = SpikeTrain.__table__
REC = Recording.__table__
P = Presentation.__table__


@dataclass(frozen=True)
class SpikeTrainRecord:
    """One presentation's spike times as stored: ``n`` per unit (session order), ``times`` packed."""

    presentation_id: int
    onset_rig_s: float
    start_ms: float
    end_ms: float
    n: Sequence[int]
    time_bytes: int
    times: bytes
    clock: dict[str, Any]


@dataclass(frozen=True)
class StoredTrain:
    presentation_id: int
    onset_rig_s: float
    start_ms: float
    end_ms: float
    n: np.ndarray
    times_ns: np.ndarray  # all units, packed, int64
    clock: dict[str, Any]

    def unit_times_ns(self, position: int) -> np.ndarray:
        edges = np.concatenate([[0], np.cumsum(self.n)])
        return self.times_ns[edges[position]:edges[position + 1]]

    def per_unit(self) -> list[np.ndarray]:
        edges = np.concatenate([[0], np.cumsum(self.n)])
        return [self.times_ns[a:b] for a, b in zip(edges[:-1], edges[1:])]


def pack_times(per_unit: Sequence[np.ndarray], window_ms: tuple[float, float]) -> tuple[list[int], int, bytes]:
    """(n per unit, bytes per time, packed little-endian) for int ns arrays; int32 while the span fits."""
    fits = max(abs(window_ms[0]), abs(window_ms[1])) * 1e6 < 2**31 - 1
    dtype = "<i4" if fits else "<i8"
    flat = np.concatenate([np.asarray(a, dtype=np.int64) for a in per_unit]) if len(per_unit) else np.empty(0)
    return [len(a) for a in per_unit], 4 if fits else 8, flat.astype(dtype).tobytes()


def unpack_times(n: Sequence[int], time_bytes: int, times: bytes) -> np.ndarray:
    flat = np.frombuffer(times, dtype="<i4" if time_bytes == 4 else "<i8").astype(np.int64)
    if len(flat) != int(np.sum(n)):
        raise ValueError(f"spike times: {len(flat)} values but the per-unit numbers add up to {int(np.sum(n))}")
    return flat


def store_spike_trains(engine: Engine, session_id: uuid.UUID, records: Sequence[SpikeTrainRecord]) -> tuple[int, list[int]]:
    """Insert spike trains (one binary COPY, then one INSERT .. ON CONFLICT DO NOTHING).

    Returns (rows inserted, presentation ids that are not presentations of this session). Committed on
    return. Repeats of stored rows are ignored (a re-sent batch after a lost acknowledgement).
    """
    if not records:
        return 0, []
    with engine.begin() as conn:
        raw = conn.connection.driver_connection
        ensure_temp_table(
            raw,
            "_incoming_spikes (presentation_id int8, onset_rig_s float8, start_ms float8, end_ms float8,"
            " n int4[], time_bytes int2, times bytea, clock jsonb)",
        )
        with raw.cursor() as cur:
            with cur.copy("COPY _incoming_spikes FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(["int8", "float8", "float8", "float8", "int4[]", "int2", "bytea", "jsonb"])
                clocks: dict[int, Jsonb] = {}
                for r in records:
                    clock = clocks.setdefault(id(r.clock), Jsonb(r.clock))
                    cp.write_row((int(r.presentation_id), float(r.onset_rig_s), float(r.start_ms), float(r.end_ms),
                                  [int(x) for x in r.n], int(r.time_bytes), r.times, clock))
            cur.execute(
                "SELECT t.presentation_id FROM _incoming_spikes t LEFT JOIN presentations p"
                " ON p.id = t.presentation_id AND p.session_id = %(sid)s WHERE p.id IS NULL",
                {"sid": session_id},
            )
            unknown = [r[0] for r in cur.fetchall()]
            cur.execute(
                "INSERT INTO spike_trains (presentation_id, onset_rig_s, start_ms, end_ms, n, time_bytes, times,"
                " clock) SELECT t.* FROM _incoming_spikes t"
                " JOIN presentations p ON p.id = t.presentation_id AND p.session_id = %(sid)s"
                " ON CONFLICT (presentation_id) DO NOTHING",
                {"sid": session_id},
            )
            inserted = cur.rowcount
    return inserted, unknown


def load_spike_trains(engine: Engine, session_id: uuid.UUID) -> dict[int, StoredTrain]:
    """Every stored spike train of a session, by presentation id."""
    q = (
        sa.select(SPT.c.presentation_id, SPT.c.onset_rig_s, SPT.c.start_ms, SPT.c.end_ms, SPT.c.n,
                  SPT.c.time_bytes, SPT.c.times, SPT.c.clock)
        .join(P, P.c.id == SPT.c.presentation_id)
        .where(P.c.session_id == session_id)
        .order_by(SPT.c.presentation_id)
    )
    out: dict[int, StoredTrain] = {}
    with engine.connect() as conn:
        for r in conn.execute(q):
            n = np.asarray(r.n, dtype=np.int64)
            out[int(r.presentation_id)] = StoredTrain(
                int(r.presentation_id), float(r.onset_rig_s), float(r.start_ms), float(r.end_ms), n,
                unpack_times(n, r.time_bytes, bytes(r.times)), dict(r.clock),
            )
    return out


def store_recording(engine: Engine, session_id: uuid.UUID, client_id: str, identity: dict[str, Any]) -> bool:
    """Remember the acquisition system's identity a bridge reported for this session (once per identity)."""
    stmt = (
        pg_insert(REC)
        .values(session_id=session_id, client_id=client_id, identity=identity)
        .on_conflict_do_nothing()
    )
    with engine.begin() as conn:
        return conn.execute(stmt).rowcount > 0


def recordings(engine: Engine, session_id: uuid.UUID) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(REC.c.client_id, REC.c.identity, REC.c.first_seen)
            .where(REC.c.session_id == session_id).order_by(REC.c.id)
        ).all()
    return [{"client_id": r.client_id, "identity": dict(r.identity), "first_seen": r.first_seen} for r in rows]
