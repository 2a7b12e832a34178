"""Sessions and their units: created before the first generation, status changes after."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from server.db.models import SESSION_MODES, SESSION_STATUSES
from server.db.records import SessionNotFound, StorageError, UnitSpec
from server.db.repo_base import FINISHED_STATUSES, G, S, U, RepositoryBase


class SessionWrites(RepositoryBase):
    """create_session -> add_units (before generation 0) -> set_session_status."""

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
