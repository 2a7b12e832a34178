"""Raw spike times and the rig's recording identity: batched, idempotent writes and column-wise reads.

    from server.db.spikes import SpikeTrainRecord, store_spike_trains, load_spike_trains
    store_spike_trains(engine, session_id, [SpikeTrainRecord(pid, onset, -200.0, 500.0, n, 4, blob, clock)])
    trains = load_spike_trains(engine, session_id)      # {presentation id: StoredTrain}
    trains[pid].unit_times_ns(0)                        # int64 ns after onset of the unit at position 0

Spike times come and go as integer ns after the presentation's rig onset, unit after unit in the
session's unit order. They are stored once per batch (analysis_models.SpikeChunk: neighbouring margins
overlap ~3.5x, and bytes are what limits this path), each presentation naming its run (SpikeTrain), and
read back exactly as sent. A re-sent batch is a duplicate; stored rows are never updated.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from psycopg.types.json import Jsonb
from sqlalchemy.engine import Engine

from server.db.analysis_models import Recording, SpikeChunk, SpikeTrain
from server.db.bulk import ensure_temp_table
from server.db.models import Presentation

SPT = SpikeTrain.__table__
SPC = SpikeChunk.__table__
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
    """Insert spike trains; returns (rows inserted, presentation ids that are not presentations of this session).

    The fresh trains of the call go into one ``spike_chunks`` row holding every spike once (neighbouring
    presentations' margins overlap ~3.5x at the usual pace), plus one small ``spike_trains`` row per
    presentation naming its run in the chunk: the bytes written are what limits this path.
    Idempotent: presentations already stored (a re-sent batch after a lost acknowledgement) are skipped;
    should another writer store the same presentation in between, the unique key refuses the COPY and the
    rows go through a staging table with ON CONFLICT DO NOTHING (the chunk then holds a few spikes nobody
    references, which is harmless). Committed on return.
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
            groups: dict[tuple[str, int], list[SpikeTrainRecord]] = {}
            for r in fresh:  # one chunk per clock model and number of units (normally one per call)
                groups.setdefault((json.dumps(r.clock, sort_keys=True), len(r.n)), []).append(r)
            streams, fresh = [], []
            for group in groups.values():
                group.sort(key=lambda r: onset_ns(r.onset_rig_s))
                chunk = build_chunk(group)
                cur.execute(
                    "INSERT INTO spike_chunks (session_id, base_ns, time_bytes, n, times, clock)"
                    " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                    (session_id, chunk.base_ns, chunk.time_bytes, chunk.n.tolist(), chunk.times, Jsonb(chunk.clock)),
                )
                streams.append(train_rows_stream(cur.fetchone()[0], group, chunk))
                fresh += group
            stream = _SIGNATURE + b"".join(x[len(_SIGNATURE):-2] for x in streams) + b"\xff\xff"
            cur.execute("SAVEPOINT spikes")
            try:
                _copy(cur, "spike_trains (presentation_id, chunk_id, onset_rig_s, onset_ns, start_ms, end_ms, first, n, fix)",
                      stream)
                cur.execute("RELEASE SAVEPOINT spikes")
                return len(fresh), unknown
            except Exception as exc:  # a concurrent writer stored one of them first
                if getattr(exc, "sqlstate", None) != "23505":
                    raise
                cur.execute("ROLLBACK TO SAVEPOINT spikes")
            ensure_temp_table(
                raw,
                "_incoming_spikes (presentation_id int8, chunk_id int8, onset_rig_s float8, onset_ns int8,"
                " start_ms float8, end_ms float8, first int4[], n int4[], fix bytea)",
            )
            _copy(cur, "_incoming_spikes", stream)
            cur.execute("INSERT INTO spike_trains (presentation_id, chunk_id, onset_rig_s, onset_ns, start_ms, end_ms,"
                        " first, n, fix) SELECT * FROM _incoming_spikes ON CONFLICT (presentation_id) DO NOTHING")
            return cur.rowcount, unknown


@dataclass(frozen=True)
class Chunk:
    """Every spike of a batch once: per unit (session order) ``n[u]`` ascending rig times in ns, stored as
    deltas (the first relative to ``base_ns``); ``first[k, u]`` is where presentation k's run starts, and
    presentation k's spike j is ``value + fix_of(fix[k])[j] - onset_ns[k]``."""

    base_ns: int
    time_bytes: int
    n: np.ndarray
    times: bytes
    first: np.ndarray  # (presentations, units)
    onset_ns: np.ndarray
    clock: dict[str, Any]
    fix: list[bytes]  # per presentation: +1 then -1 bit planes per spike (np.packbits), b"" when all 0


def onset_ns(onset_rig_s: float) -> int:
    return int(np.rint(float(onset_rig_s) * 1e9))


def build_chunk(records: Sequence[SpikeTrainRecord]) -> Chunk:
    """The chunk of ``records`` (in onset order, the same number of units each), in O(spikes), no sort.

    A presentation's spikes as rig ns are onset_ns + offset. Those before the end of the previous
    presentations' spans are already in the chunk (its run starts that many values back); the rest are
    appended. The bridge rounds each offset from its own onset, so a spike seen from two onsets may be 1 ns
    apart: each spike keeps its difference to the stored value (-1, 0 or +1: two bit planes, ``fix``).
    Should a presentation not match its predecessors that closely, the batch is stored as sent.
    """
    k = len(records)
    n_units = len(records[0].n)
    if any(len(r.n) != n_units for r in records):
        raise ValueError("spike trains of one batch must have the same number of units")
    n = np.array([r.n for r in records], dtype=np.int64).reshape(k, n_units)
    if n.size and n.min() < 0:
        raise ValueError("spike numbers must be >= 0")
    on = np.array([onset_ns(r.onset_rig_s) for r in records], dtype=np.int64)
    if np.any(np.diff(on) < 0):
        raise ValueError("spike trains of one chunk must come in onset order")
    flat = np.concatenate([unpack_times(r.n, r.time_bytes, r.times) for r in records])
    seg = n.ravel()
    per_p = n.sum(axis=1)
    absolute = flat + np.repeat(on, per_p)
    seg_id = np.repeat(np.arange(k * n_units), seg)
    seg_start = np.concatenate([[0], np.cumsum(seg)[:-1]])
    j = np.arange(len(flat)) - seg_start[seg_id]
    ends = on + np.array([int(round(r.end_ms * 1e6)) for r in records], dtype=np.int64)
    end_before = np.concatenate([[np.iinfo(np.int64).min], np.maximum.accumulate(ends)[:-1]])
    for as_sent in (False, True):
        if as_sent:
            old = np.zeros(len(flat), dtype=bool)
        else:  # a prefix of each (presentation, unit) run: spikes inside an earlier presentation's span
            old = absolute < np.repeat(end_before, per_p)
        cs = np.concatenate([[0], np.cumsum(old)])
        known = (cs[seg_start + seg] - cs[seg_start]).reshape(k, n_units)
        fresh = n - known
        before = np.cumsum(fresh, axis=0) - fresh  # values of each unit already in the chunk
        per_unit = fresh.sum(axis=0)
        unit_start = np.concatenate([[0], np.cumsum(per_unit)[:-1]])
        first = before - known
        if np.any(first[n > 0] < 0):
            continue
        idx = np.tile(unit_start, k)[seg_id] + first.ravel()[seg_id] + j
        values = np.empty(int(per_unit.sum()), dtype=np.int64)
        values[idx[~old]] = absolute[~old]
        fix = absolute - values[idx]
        if not len(fix) or (fix.min() >= -1 and fix.max() <= 1):
            break
    base = int(on.min())
    deltas = np.diff(values, prepend=base)
    deltas[unit_start[per_unit > 0]] = values[unit_start[per_unit > 0]] - base
    fits = not len(deltas) or (deltas.min() >= -(2**31) and deltas.max() < 2**31)
    times = deltas.astype("<i4" if fits else "<i8").tobytes()
    fixes = []
    for f in np.split(fix, np.cumsum(per_p)[:-1]):
        fixes.append(np.packbits(f == 1).tobytes() + np.packbits(f == -1).tobytes() if f.any() else b"")
    return Chunk(base, 4 if fits else 8, per_unit, times, first, on, dict(records[0].clock), fixes)


def fix_of(fix: bytes, count: int) -> np.ndarray:
    """The -1/0/+1 per spike of a presentation from its two bit planes (+1 bits, then -1 bits)."""
    if not fix:
        return np.zeros(count, dtype=np.int64)
    planes = np.frombuffer(fix, np.uint8)
    half = len(planes) // 2
    return (np.unpackbits(planes[:half], count=count).astype(np.int64)
            - np.unpackbits(planes[half:], count=count))


def chunk_values(base_ns: int, time_bytes: int, n: Sequence[int], times: bytes) -> np.ndarray:
    """Rig ns of every spike in a chunk, unit after unit (inverse of the delta encoding)."""
    d = np.frombuffer(times, dtype="<i4" if time_bytes == 4 else "<i8").astype(np.int64)
    n = np.asarray(n, dtype=np.int64)
    if len(d) != int(n.sum()):
        raise ValueError(f"spike chunk: {len(d)} values but the per-unit numbers add up to {int(n.sum())}")
    cs = np.cumsum(d)
    starts = np.concatenate([[0], np.cumsum(n)[:-1]])
    before = np.where(starts > 0, cs[np.maximum(starts - 1, 0)] if len(cs) else 0, 0)
    return int(base_ns) + cs - np.repeat(before, n)


_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
_INT4_OID = 23


def train_rows_stream(chunk_id: int, records: Sequence[SpikeTrainRecord], chunk: Chunk) -> bytes:
    """The ``spike_trains`` rows as one binary COPY stream, built as one numpy record array (every row has
    the same layout; psycopg's per-value dumpers would cost more than the database's own work)."""
    k, u = chunk.first.shape
    n = np.array([r.n for r in records], dtype=np.int64).reshape(k, u)
    if n.size and n.max() > 2**31 - 1:
        raise ValueError("spike numbers out of range")
    array = [("al", ">i4"), ("ndim", ">i4"), ("flags", ">i4"), ("oid", ">i4"), ("dim", ">i4"), ("lb", ">i4"),
             ("v", ">i4", (u, 2))]
    row = np.dtype([("nf", ">i2"), ("l0", ">i4"), ("pid", ">i8"), ("l1", ">i4"), ("chunk", ">i8"),
                    ("l2", ">i4"), ("onset", ">f8"), ("l3", ">i4"), ("onset_ns", ">i8"), ("l4", ">i4"),
                    ("start", ">f8"), ("l5", ">i4"), ("end", ">f8"), ("first", array), ("n", array)])
    rec = np.zeros(k, dtype=row)
    rec["nf"] = 9
    for f in ("l0", "l1", "l2", "l3", "l4", "l5"):
        rec[f] = 8
    rec["pid"] = [int(r.presentation_id) for r in records]
    rec["chunk"] = chunk_id
    rec["onset"] = [float(r.onset_rig_s) for r in records]
    rec["onset_ns"] = chunk.onset_ns
    rec["start"] = [float(r.start_ms) for r in records]
    rec["end"] = [float(r.end_ms) for r in records]
    for name, values in (("first", chunk.first), ("n", n)):
        col = rec[name]
        col["al"], col["ndim"], col["flags"], col["oid"], col["dim"], col["lb"] = 20 + 8 * u, 1, 0, _INT4_OID, u, 1
        col["v"][:, :, 0] = 4
        col["v"][:, :, 1] = values
        rec[name] = col
    rows = rec.tobytes()
    size = row.itemsize
    parts = [_SIGNATURE]
    for i, fix in enumerate(chunk.fix):
        parts += [rows[i * size:(i + 1) * size], len(fix).to_bytes(4, "big"), fix]
    return b"".join(parts) + b"\xff\xff"


def _copy(cur, target: str, stream: bytes) -> None:
    with cur.copy(f"COPY {target} FROM STDIN (FORMAT BINARY)") as cp:
        cp.write(stream)


def load_spike_trains(engine: Engine, session_id: uuid.UUID) -> dict[int, StoredTrain]:
    """Every stored spike train of a session, by presentation id (cut out of the session's chunks)."""
    with engine.connect() as conn:
        chunks = {}
        for r in conn.execute(sa.select(SPC.c.id, SPC.c.base_ns, SPC.c.time_bytes, SPC.c.n, SPC.c.times, SPC.c.clock)
                              .where(SPC.c.session_id == session_id)):
            n = np.asarray(r.n, dtype=np.int64)
            chunks[int(r.id)] = (chunk_values(r.base_ns, r.time_bytes, n, bytes(r.times)),
                                 np.concatenate([[0], np.cumsum(n)[:-1]]), dict(r.clock))
        q = (
            sa.select(SPT.c.presentation_id, SPT.c.chunk_id, SPT.c.onset_rig_s, SPT.c.onset_ns, SPT.c.start_ms,
                      SPT.c.end_ms, SPT.c.first, SPT.c.n, SPT.c.fix)
            .join(P, P.c.id == SPT.c.presentation_id)
            .where(P.c.session_id == session_id)
            .order_by(SPT.c.presentation_id)
        )
        out: dict[int, StoredTrain] = {}
        for r in conn.execute(q):
            values, unit_start, clock = chunks[int(r.chunk_id)]
            n = np.asarray(r.n, dtype=np.int64)
            at = unit_start + np.asarray(r.first, dtype=np.int64)
            total = int(n.sum())
            idx = np.repeat(at - np.concatenate([[0], np.cumsum(n)[:-1]]), n) + np.arange(total)
            times = values[idx] - int(r.onset_ns)
            if r.fix:
                times += fix_of(bytes(r.fix), total)
            out[int(r.presentation_id)] = StoredTrain(
                int(r.presentation_id), float(r.onset_rig_s), float(r.start_ms), float(r.end_ms), n,
                times, dict(clock),
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
