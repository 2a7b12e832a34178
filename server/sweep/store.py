"""The sweep tables (server/db/sweeps.py) read and written: what the driver and the probe tasks share.

Every write that finishes a probe is fenced by its ``attempt``: the driver bumps the attempt of each probe
it (re)submits, so a task left over from a killed driver can never overwrite a newer attempt's row.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from server.db.sweeps import Sweep, SweepProbe

S = Sweep.__table__
P = SweepProbe.__table__


@dataclass
class PendingProbe:
    id: int
    key: str
    attempt: int
    config: dict[str, Any]
    labels: dict[str, Any]


def finite(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (PostgreSQL's JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if hasattr(obj, "item"):  # numpy scalar
        return finite(obj.item())
    return obj


def open_sweep(engine, spec, *, retry_failed: bool = False) -> tuple[uuid.UUID, list[PendingProbe], dict[str, int]]:
    """Create or find the sweep by name, add its probes that are not stored yet, and claim the ones to run.

    Probes neither completed nor (unless ``retry_failed``) failed get a new attempt; the sessions an
    interrupted attempt had stored are marked aborted. Returns (sweep id, probes to run, counts by status
    before this run).
    """
    with engine.begin() as conn:
        conn.execute(insert(S).values(id=uuid.uuid4(), name=spec.name, spec=spec.raw)
                     .on_conflict_do_nothing(index_elements=["name"]))
        sweep_id = conn.execute(sa.select(S.c.id).where(S.c.name == spec.name).with_for_update()).scalar_one()
        conn.execute(S.update().where(S.c.id == sweep_id).values(spec=spec.raw, status="running", updated_at=sa.func.now()))
        if spec.probes:
            conn.execute(insert(P).values([
                dict(sweep_id=sweep_id, key=p.key, position=p.position, labels=finite(p.labels), config=p.config)
                for p in spec.probes
            ]).on_conflict_do_nothing(index_elements=["sweep_id", "key"]))
        keys = [p.key for p in spec.probes]
        rows = conn.execute(sa.select(P.c.id, P.c.key, P.c.status, P.c.attempt, P.c.config, P.c.labels,
                                      P.c.session_ids)
                            .where(P.c.sweep_id == sweep_id, P.c.key.in_(keys)).order_by(P.c.position)).all()
        before: dict[str, int] = {}
        todo: list[PendingProbe] = []
        stale: list[uuid.UUID] = []
        for r in rows:
            before[r.status] = before.get(r.status, 0) + 1
            if r.status == "completed" or (r.status == "failed" and not retry_failed):
                continue
            stale += list(r.session_ids or [])
            conn.execute(P.update().where(P.c.id == r.id).values(
                status="pending", attempt=r.attempt + 1, error=None, session_ids=[], started_at=None, worker=None))
            todo.append(PendingProbe(r.id, r.key, r.attempt + 1, r.config, r.labels))
        if stale:  # an interrupted attempt's sessions: kept for the record, marked as not finished
            conn.execute(sa.text("UPDATE sessions SET status = 'aborted', finished_at = now() "
                                 "WHERE id = ANY(:ids) AND status NOT IN ('completed', 'aborted', 'failed')"),
                         {"ids": stale})
    return sweep_id, todo, before


def mark_running(engine, probe_id: int, attempt: int, worker: str) -> bool:
    with engine.begin() as conn:
        n = conn.execute(P.update().where(P.c.id == probe_id, P.c.attempt == attempt, P.c.status == "pending")
                         .values(status="running", started_at=sa.func.now(), worker=worker)).rowcount
    return n == 1


def add_session(engine, probe_id: int, attempt: int, session_id: uuid.UUID) -> None:
    with engine.begin() as conn:
        conn.execute(P.update().where(P.c.id == probe_id, P.c.attempt == attempt)
                     .values(session_ids=sa.func.array_append(P.c.session_ids, session_id)))


def finish(engine, probe_id: int, attempt: int, *, status: str, seconds: float, summary: dict | None = None,
           selected_png: bytes | None = None, error: str | None = None) -> bool:
    """Record a probe's outcome (only if ``attempt`` is still its current one, and it is not finished)."""
    with engine.begin() as conn:
        n = conn.execute(P.update().where(P.c.id == probe_id, P.c.attempt == attempt,
                                          P.c.status.in_(("pending", "running")))
                         .values(status=status, seconds=seconds, summary=finite(summary) if summary else None,
                                 selected_png=selected_png, error=error, finished_at=sa.func.now())).rowcount
    return n == 1


def outcome(engine, probe_id: int, attempt: int) -> dict[str, Any] | None:
    """A probe's recorded {"status", "error", "seconds"} while ``attempt`` is its current one."""
    with engine.connect() as conn:
        r = conn.execute(sa.select(P.c.status, P.c.error, P.c.seconds)
                         .where(P.c.id == probe_id, P.c.attempt == attempt)).first()
    return None if r is None else {"status": r.status, "error": r.error, "seconds": r.seconds}


def close_sweep(engine, sweep_id: uuid.UUID) -> dict[str, int]:
    """Counts by status; the sweep is 'completed' once no probe is pending or running."""
    with engine.begin() as conn:
        counts = dict(conn.execute(sa.select(P.c.status, sa.func.count()).where(P.c.sweep_id == sweep_id)
                                   .group_by(P.c.status)).all())
        if not counts.get("pending") and not counts.get("running"):
            conn.execute(S.update().where(S.c.id == sweep_id).values(status="completed", updated_at=sa.func.now()))
    return counts


def find_sweep(engine, name_or_id: str) -> uuid.UUID | None:
    with engine.connect() as conn:
        try:
            sid = uuid.UUID(name_or_id)
            found = conn.execute(sa.select(S.c.id).where(S.c.id == sid)).scalar()
            if found:
                return found
        except ValueError:
            pass
        return conn.execute(sa.select(S.c.id).where(S.c.name == name_or_id)).scalar()


def probe_rows(engine, sweep_id: uuid.UUID) -> list[dict[str, Any]]:
    """Every probe of a sweep, in grid order (summary, labels, sessions, state; no images)."""
    cols = [c for c in P.c if c.name != "selected_png"]
    with engine.connect() as conn:
        name = conn.execute(sa.select(S.c.name).where(S.c.id == sweep_id)).scalar_one()
        rows = conn.execute(sa.select(*cols).where(P.c.sweep_id == sweep_id).order_by(P.c.position)).mappings().all()
    return [dict(r, sweep=name) for r in rows]


def selected_images(engine, sweep_id: uuid.UUID) -> dict[str, bytes]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(P.c.key, P.c.selected_png).where(
            P.c.sweep_id == sweep_id, P.c.selected_png.is_not(None))).all()
    return {k: bytes(v) for k, v in rows}
