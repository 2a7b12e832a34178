"""Offline analyses of a stored session (recount, rescore): written beside the original rows, never over them.

    aid = create_analysis(engine, sid, "recount", {"window_ms": [60, 220]}, {"presentations": 3000}, rows)
    meta, results = load_analysis(engine, aid)      # results: {presentation id: AnalysisRow}
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from server import __version__
from server.db.analysis_models import Analysis, AnalysisResult
from server.db.records import SessionNotFound
from server.db.models import Session

A = Analysis.__table__
AR = AnalysisResult.__table__
S = Session.__table__


@dataclass(frozen=True)
class AnalysisRow:
    presentation_id: int
    counts: list[int] | None = None
    baseline_counts: list[int] | None = None
    distances: dict[str, float] | None = None
    front_index: int | None = None
    selected: bool = False


@dataclass(frozen=True)
class AnalysisInfo:
    id: int
    session_id: uuid.UUID
    kind: str
    params: dict[str, Any]
    summary: dict[str, Any]
    counts_analysis_id: int | None


def create_analysis(engine: Engine, session_id: uuid.UUID, kind: str, params: dict[str, Any],
                    summary: dict[str, Any], rows: Sequence[AnalysisRow],
                    counts_analysis_id: int | None = None) -> int:
    """One analysis and its per-presentation results, in one transaction (all or nothing)."""
    with engine.begin() as conn:
        if conn.execute(sa.select(S.c.id).where(S.c.id == session_id)).first() is None:
            raise SessionNotFound(f"no session {session_id}")
        aid = conn.execute(
            A.insert().values(session_id=session_id, kind=kind, params=params, summary=summary,
                              counts_analysis_id=counts_analysis_id, software_version=__version__)
            .returning(A.c.id)
        ).scalar_one()
        if rows:
            conn.execute(AR.insert(), [
                {"analysis_id": aid, "presentation_id": r.presentation_id, "counts": r.counts,
                 "baseline_counts": r.baseline_counts, "distances": r.distances, "front_index": r.front_index,
                 "selected": r.selected}
                for r in rows
            ])
    return int(aid)


def load_analysis(engine: Engine, analysis_id: int) -> tuple[AnalysisInfo, dict[int, AnalysisRow]]:
    with engine.connect() as conn:
        a = conn.execute(sa.select(A).where(A.c.id == analysis_id)).first()
        if a is None:
            raise LookupError(f"no analysis {analysis_id}")
        rows = conn.execute(sa.select(AR).where(AR.c.analysis_id == analysis_id)).all()
    info = AnalysisInfo(int(a.id), a.session_id, a.kind, dict(a.params), dict(a.summary), a.counts_analysis_id)
    return info, {
        int(r.presentation_id): AnalysisRow(int(r.presentation_id), r.counts, r.baseline_counts,
                                            None if r.distances is None else dict(r.distances), r.front_index,
                                            bool(r.selected))
        for r in rows
    }


def list_analyses(engine: Engine, session_id: uuid.UUID) -> list[AnalysisInfo]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(A).where(A.c.session_id == session_id).order_by(A.c.id)).all()
    return [AnalysisInfo(int(a.id), a.session_id, a.kind, dict(a.params), dict(a.summary), a.counts_analysis_id)
            for a in rows]
