"""Tables of issue 14: raw spike times, the rig's own recording identity, and offline analyses.

- ``spike_trains``: per presentation, every unit's spike times within the response window plus a margin
  (integer ns after the rig onset, one ``bytea`` of int32/int64 little-endian values, unit after unit in
  unit position order, ``n`` per unit), with the clock model that aligned them. One row per presentation,
  idempotent (a re-sent batch is a duplicate), never updated.
- ``recordings``: the acquisition system's own identity as the bridge reported it (Open Ephys directory and
  experiment, LSL source ids and hostnames, ...), one row per distinct identity and bridge.
- ``analyses`` + ``analysis_results``: a recount or a rescore of a stored session, stored beside the
  original rows (which are never modified): one row per presentation with its recomputed counts and/or
  distances, front and selection.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from server.db.models import Base

ANALYSIS_KINDS = ("recount", "rescore")


class SpikeTrain(Base):
    """One presentation's spike times per unit, within [start_ms, end_ms) of its rig onset."""

    __tablename__ = "spike_trains"

    presentation_id: Mapped[int] = mapped_column(ForeignKey("presentations.id", ondelete="CASCADE"), primary_key=True)
    onset_rig_s: Mapped[float] = mapped_column(Float)
    start_ms: Mapped[float] = mapped_column(Float)
    end_ms: Mapped[float] = mapped_column(Float)
    n: Mapped[list[int]] = mapped_column(ARRAY(Integer))
    # 4 / 8: int32 / int64 ns after onset; 2: "dus16", whole microseconds as 16-bit steps (spike_codec)
    time_bytes: Mapped[int] = mapped_column(SmallInteger)
    times: Mapped[bytes] = mapped_column(LargeBinary)
    clock: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint("end_ms > start_ms", name="window"),
        CheckConstraint("time_bytes IN (2, 4, 8)", name="time_bytes"),
        CheckConstraint("array_ndims(n) = 1 AND array_position(n, NULL) IS NULL AND 0 <= ALL(n)", name="n"),
        CheckConstraint("jsonb_typeof(clock) = 'object'", name="clock"),
    )


class Recording(Base):
    """Where the raw data of a session lives on the rig, as the bridge reported it."""

    __tablename__ = "recordings"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    client_id: Mapped[str] = mapped_column(Text)
    identity: Mapped[dict[str, Any]] = mapped_column(JSONB)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        UniqueConstraint("session_id", "client_id", "identity"),
        CheckConstraint("jsonb_typeof(identity) = 'object'", name="identity"),
    )


class Analysis(Base):
    """An offline recomputation on a stored session (its parameters and a summary of what changed)."""

    __tablename__ = "analyses"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB)
    counts_analysis_id: Mapped[int | None] = mapped_column(ForeignKey("analyses.id", ondelete="RESTRICT"))
    summary: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    software_version: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint("kind IN ('recount', 'rescore')", name="kind"),
        CheckConstraint("jsonb_typeof(params) = 'object' AND jsonb_typeof(summary) = 'object'", name="json"),
        Index(None, "session_id", "id"),
    )


class AnalysisResult(Base):
    """One presentation's recomputed counts (recount) or distances, front and selection (rescore)."""

    __tablename__ = "analysis_results"

    analysis_id: Mapped[int] = mapped_column(ForeignKey("analyses.id", ondelete="CASCADE"), primary_key=True)
    presentation_id: Mapped[int] = mapped_column(
        ForeignKey("presentations.id", ondelete="CASCADE"), primary_key=True
    )
    counts: Mapped[list[int] | None] = mapped_column(ARRAY(Integer))
    baseline_counts: Mapped[list[int] | None] = mapped_column(ARRAY(Integer))
    distances: Mapped[dict[str, float] | None] = mapped_column(JSONB)
    front_index: Mapped[int | None] = mapped_column(Integer)
    selected: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))

    __table_args__ = (
        CheckConstraint("counts IS NULL OR (array_ndims(counts) = 1 AND 0 <= ALL(counts))", name="counts"),
        CheckConstraint("front_index >= 0", name="front_index"),
    )
