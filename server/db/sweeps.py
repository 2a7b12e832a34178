"""The sweep tables: many in-silico probes (networks x layers x units x probes x seeds) run as one sweep.

Each probe of a sweep is one row of ``sweep_probes``, keyed by a hash of its complete probe config, so a
re-run of the same sweep file finds what is finished and runs only the rest. The probe's stored in-silico
sessions (its maximize phase and the probe phase, stored exactly as `snslab insilico` stores them) are
listed in ``session_ids``; its summary (retention, stretch, affine controls, distances) is a JSONB object
and its selected image a PNG. ``attempt`` fences writes: a worker left over from a killed driver that
finishes late cannot overwrite the row of the probe's newer attempt.

Registered on the recording schema's metadata (the server.db package imports this module, so anything
that imports server.db.models sees these tables), created by migration 0003_issue16.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger, CheckConstraint, DateTime, Float, ForeignKey, Identity, Index, Integer, LargeBinary, Text, UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from server.db.models import Base

SWEEP_STATUSES = ("running", "completed")
PROBE_STATUSES = ("pending", "running", "completed", "failed")


class Sweep(Base):
    """One sweep: its name (unique: re-running the file resumes it) and the spec it was last run with."""

    __tablename__ = "sweeps"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    status: Mapped[str] = mapped_column(Text, server_default="running")
    spec: Mapped[dict[str, Any]] = mapped_column(JSONB)

    __table_args__ = (
        UniqueConstraint("name"),
        CheckConstraint("length(name) > 0", name="name"),
        CheckConstraint("status IN ('running', 'completed')", name="status"),
        CheckConstraint("jsonb_typeof(spec) = 'object'", name="spec"),
    )


class SweepProbe(Base):
    """One probe of a sweep: its grid labels, config, state, result and the sessions that store it."""

    __tablename__ = "sweep_probes"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    sweep_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(Text)
    position: Mapped[int] = mapped_column(Integer)
    labels: Mapped[dict[str, Any]] = mapped_column(JSONB)
    config: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(Text, server_default="pending")
    attempt: Mapped[int] = mapped_column(Integer, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    session_ids: Mapped[list[uuid.UUID]] = mapped_column(ARRAY(UUID(as_uuid=True)), server_default="{}")
    selected_png: Mapped[bytes | None] = mapped_column(LargeBinary)
    worker: Mapped[str | None] = mapped_column(Text)
    seconds: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("sweep_id", "key"),
        CheckConstraint("status IN ('pending', 'running', 'completed', 'failed')", name="status"),
        CheckConstraint("status <> 'failed' OR error IS NOT NULL", name="failed_error"),
        CheckConstraint("status <> 'completed' OR summary IS NOT NULL", name="completed_summary"),
        CheckConstraint("jsonb_typeof(labels) = 'object' AND jsonb_typeof(config) = 'object'", name="json"),
        Index(None, "sweep_id", "status"),
    )
