"""Raw spike times and the rig's recording identity: batched, idempotent writes and column-wise reads.

    from server.db.spikes import SpikeTrainRecord, store_spike_trains, load_spike_trains
    store_spike_trains(engine, session_id, [SpikeTrainRecord(pid, onset, -200.0, 500.0, n, 4, blob, clock)])
    trains = load_spike_trains(engine, session_id)      # {presentation id: StoredTrain}
    trains[pid].unit_times_ns(0)                        # int64 ns after onset of the unit at position 0

Spike times are packed unit after unit in the session's unit order (see analysis_models.SpikeTrain): as
the bridge sends them, either whole microseconds after the presentation's rig onset in 16-bit steps
(``time_bytes`` 2, snslab_common.spike_codec; what bridges send since migration 0005) or int32/int64 ns
(``time_bytes`` 4/8). Readers get int64 ns either way. A re-sent batch is a duplicate (ON CONFLICT DO
NOTHING); stored rows are never updated.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Engine

from server.db.analysis_models import Recording, SpikeTrain
from server.db.bulk import ensure_temp_table
from server.db.models import Presentation
from snslab_common import spike_codec

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
    resolution_ns: int = 1  # 1000 for rows stored as microsecond steps

    def unit_times_ns(self, position: int) -> np.ndarray:
        edges = np.concatenate([[0], np.cumsum(self.n)])
        return self.times_ns[edges[position]:edges[position + 1]]

    def per_unit(self) -> list[np.ndarray]:
        edges = np.concatenate([[0], np.cumsum(self.n)])
        return [self.times_ns[a:b] for a, b in zip(edges[:-1], edges[1:])]


STEPS = 2  # time_bytes of a spike_codec blob


def pack_times(per_unit: Sequence[np.ndarray], window_ms: tuple[float, float],
               steps: bool = True) -> tuple[list[int], int, bytes]:
    """(n per unit, time_bytes, blob) for int ns arrays: microsecond steps when every time is on a whole
    microsecond (and ``steps``), else little-endian int32 ns while the span fits, else int64 ns."""
    per_unit = [np.asarray(a, dtype=np.int64) for a in per_unit]
    if steps:
        us = [a // 1000 for a in per_unit]
        if all(np.array_equal(a, b * 1000) for a, b in zip(per_unit, us)) and spike_codec.fits(us):
            return [len(a) for a in per_unit], STEPS, spike_codec.encode_us(us, spike_codec.base_us(window_ms[0]))
    fits = max(abs(window_ms[0]), abs(window_ms[1])) * 1e6 < 2**31 - 1
    dtype = "<i4" if fits else "<i8"
    flat = np.concatenate([np.asarray(a, dtype=np.int64) for a in per_unit]) if len(per_unit) else np.empty(0)
    return [len(a) for a in per_unit], 4 if fits else 8, flat.astype(dtype).tobytes()


def unpack_times(n: Sequence[int], time_bytes: int, times: bytes, start_ms: float = 0.0) -> np.ndarray:
    """All units' times as int64 ns (``start_ms``: the row's window start, the codec's reference)."""
    if time_bytes == STEPS:
        return spike_codec.decode_flat(n, times, spike_codec.base_us(start_ms)) * 1000
    flat = np.frombuffer(times, dtype="<i4" if time_bytes == 4 else "<i8").astype(np.int64)
    if len(flat) != int(np.sum(n)):
        raise ValueError(f"spike times: {len(flat)} values but the per-unit numbers add up to {int(np.sum(n))}")
    return flat


def store_spike_trains(engine: Engine, session_id: uuid.UUID, records: Sequence[SpikeTrainRecord]) -> tuple[int, list[int]]:
    """Insert spike trains; returns (rows inserted, presentation ids that are not presentations of this session).

    Idempotent: rows already stored (a re-sent batch after a lost acknowledgement) are skipped. The new rows
    go in with one binary COPY straight into the table (spike times are the bulk of a recording: a staging
    table would write every byte twice); should another writer store the same presentation in between, the
    unique key refuses the COPY and the batch goes through a staging table with ON CONFLICT DO NOTHING.
    Committed on return.
    """
    if not records:
        return 0, []
    ids = [int(r.presentation_id) for r in records]
    with engine.begin() as conn:
        raw = conn.connection.driver_connection
        with raw.cursor() as cur:
            cur.execute(
                "SELECT i, p.session_id = %(sid)s, s.presentation_id IS NOT NULL FROM unnest(%(ids)s::int8[]) i"
                " LEFT JOIN presentations p ON p.id = i LEFT JOIN spike_trains s ON s.presentation_id = i",
                {"sid": session_id, "ids": ids},
            )
            state = {pid: (bool(mine), bool(stored)) for pid, mine, stored in cur.fetchall()}
            unknown = [pid for pid in ids if not state[pid][0]]
            seen: set[int] = set()
            fresh = []
            for r in records:
                pid = int(r.presentation_id)
                if state[pid][0] and not state[pid][1] and pid not in seen:
                    seen.add(pid)
                    fresh.append(r)
            if not fresh:
                return 0, unknown
            cur.execute("SAVEPOINT spikes")
            try:
                _copy(cur, "spike_trains (presentation_id, onset_rig_s, start_ms, end_ms, n, time_bytes, times, clock)",
                      fresh)
                cur.execute("RELEASE SAVEPOINT spikes")
                return len(fresh), unknown
            except Exception as exc:  # a concurrent writer stored one of them first
                if getattr(exc, "sqlstate", None) != "23505":
                    raise
                cur.execute("ROLLBACK TO SAVEPOINT spikes")
            ensure_temp_table(
                raw,
                "_incoming_spikes (presentation_id int8, onset_rig_s float8, start_ms float8, end_ms float8,"
                " n int4[], time_bytes int2, times bytea, clock jsonb)",
            )
            _copy(cur, "_incoming_spikes", fresh)
            cur.execute("INSERT INTO spike_trains (presentation_id, onset_rig_s, start_ms, end_ms, n, time_bytes, times,"
                        " clock) SELECT * FROM _incoming_spikes ON CONFLICT (presentation_id) DO NOTHING")
            return cur.rowcount, unknown


_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
_INT4_OID = 23


def copy_stream(records: Sequence[SpikeTrainRecord]) -> bytes:
    """The rows as PostgreSQL's binary COPY stream. The fixed part of every row (ids, window, the int4[] of
    spike numbers, time_bytes, the blob's length) is one numpy structured array for the whole batch, so the
    cost per row is joining three byte strings (psycopg's per-value dumpers, or struct per field, cost more
    than the database's own work on these rows)."""
    if not records:
        return _SIGNATURE + b"\xff\xff"
    if len({len(r.n) for r in records}) > 1:  # rows with different numbers of units (never from one session)
        return b"".join([copy_stream([r])[:-2] if i == 0 else copy_stream([r])[len(_SIGNATURE):-2]
                         for i, r in enumerate(records)]) + b"\xff\xff"
    n = np.array([np.asarray(r.n, dtype=np.int64) for r in records]).reshape(len(records), -1)
    if n.size and (n.min() < 0 or n.max() > 2**31 - 1):
        bad = int(np.flatnonzero((n < 0).any(1) | (n > 2**31 - 1).any(1))[0])
        raise ValueError(f"presentation {records[bad].presentation_id}: spike numbers out of range")
    units = n.shape[1]
    row = np.zeros(len(records), dtype=[
        ("nf", ">i2"), ("l0", ">i4"), ("pid", ">i8"), ("l1", ">i4"), ("onset", ">f8"), ("l2", ">i4"),
        ("start", ">f8"), ("l3", ">i4"), ("end", ">f8"),
        ("l4", ">i4"), ("ndim", ">i4"), ("hasnull", ">i4"), ("oid", ">i4"), ("dim", ">i4"), ("lbound", ">i4"),
        ("n", ">i4", (units, 2)), ("l5", ">i4"), ("tb", ">i2"), ("l6", ">i4")])
    row["nf"], row["l0"], row["l1"], row["l2"], row["l3"] = 8, 8, 8, 8, 8
    row["l4"], row["ndim"], row["oid"], row["dim"], row["lbound"] = 20 + 8 * units, 1, _INT4_OID, units, 1
    row["l5"] = 2
    row["pid"] = [int(r.presentation_id) for r in records]
    row["onset"] = [float(r.onset_rig_s) for r in records]
    row["start"] = [float(r.start_ms) for r in records]
    row["end"] = [float(r.end_ms) for r in records]
    row["n"][:, :, 0] = 4
    row["n"][:, :, 1] = n
    row["tb"] = [int(r.time_bytes) for r in records]
    row["l6"] = [len(r.times) for r in records]
    fixed = memoryview(row.tobytes())
    size = row.dtype.itemsize
    clocks: dict[int, bytes] = {}
    parts = [_SIGNATURE]
    for i, r in enumerate(records):
        clock = clocks.get(id(r.clock))
        if clock is None:
            body = b"\x01" + json.dumps(r.clock, allow_nan=False).encode()
            clock = clocks[id(r.clock)] = struct.pack(">i", len(body)) + body
        parts += [fixed[i * size:(i + 1) * size], r.times, clock]
    parts.append(b"\xff\xff")
    return b"".join(parts)


def _copy(cur, target: str, records: Sequence[SpikeTrainRecord]) -> None:
    with cur.copy(f"COPY {target} FROM STDIN (FORMAT BINARY)") as cp:
        cp.write(copy_stream(records))


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
                unpack_times(n, r.time_bytes, bytes(r.times), float(r.start_ms)), dict(r.clock),
                1000 if r.time_bytes == STEPS else 1,
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
