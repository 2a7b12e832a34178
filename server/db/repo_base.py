"""What every part of the repository shares: the engine, the table handles, the session lock and the
event log (a write problem is logged in the same transaction as the write)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from server.db.models import EVENT_LEVELS, Event, Generation, Presentation, Score, Session, Stimulus, Unit
from server.db.records import SessionNotFound

log = logging.getLogger("server.db.repository")

FINISHED_STATUSES = ("completed", "aborted", "failed")

S = Session.__table__
U = Unit.__table__
G = Generation.__table__
ST = Stimulus.__table__
P = Presentation.__table__
SC = Score.__table__
E = Event.__table__


def _code_array(raw: bytes | None) -> np.ndarray | None:
    return None if raw is None else np.frombuffer(raw, dtype="<f8").copy()


def _hex(b: bytes) -> str:
    return bytes(b).hex()


class RepositoryBase:
    """The engine and the stimulus folder, the per-session row lock and the event log."""

    def __init__(self, engine: Engine, *, stimulus_dir: Path | None = None):
        """``stimulus_dir`` set: images are stored as content-addressed files there, not as BYTEA."""
        self.engine = engine
        self.stimulus_dir = Path(stimulus_dir) if stimulus_dir is not None else None

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

    def _lock_session(self, conn: Connection, session_id: uuid.UUID):
        """Serialise generation-level writes of one session (row lock until commit)."""
        row = conn.execute(
            sa.select(S.c.id, S.c.status, S.c.n_units).where(S.c.id == session_id).with_for_update()
        ).first()
        if row is None:
            raise SessionNotFound(f"no session {session_id}")
        return row

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
