"""The recording schema: every session, generation, stimulus, presentation, response and score.

The constraints carry the rules a recording must obey, so that wrong data cannot be stored whatever writes
it: one in-flight generation per session, one active presentation per batch slot, a candidate always has
its code, an invalid presentation always says why, a score can only exist for a presentation whose response
is committed, spike counts are non-negative and one per unit.

Responses are stored one row per presentation with the counts of all units as ``int4[]`` in the session's
unit order (``units.position``): one row per (presentation, unit) cannot reach the write rate a 96-unit
array needs on a small machine (see bench/storage.py). The view ``unit_responses`` unnests them for SQL
users who want one row per unit.

Alembic migrations (migrations/versions) create exactly this metadata; a test compares the two.
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
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SESSION_MODES = ("live", "simulated", "insilico")
SESSION_STATUSES = ("running", "paused", "completed", "aborted", "failed")
GENERATION_STATUSES = ("planned", "proposed", "completed")
STIMULUS_KINDS = ("candidate", "reference", "natural", "control", "reference-check", "blank")
ONSET_SOURCES = ("photodiode", "ttl", "marker", "flip", "simulated")
EVENT_LEVELS = ("debug", "info", "warning", "error")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Session(Base):
    """One recording (or in-silico run): who, what, where, with which configuration and seed."""

    __tablename__ = "sessions"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    operator: Mapped[str] = mapped_column(Text)
    subject_id: Mapped[str] = mapped_column(Text)
    rig: Mapped[str] = mapped_column(Text)
    mode: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="running")
    config: Mapped[dict[str, Any]] = mapped_column(JSONB)
    seed: Mapped[int] = mapped_column(BigInteger)
    software_version: Mapped[str] = mapped_column(Text)
    n_units: Mapped[int] = mapped_column(Integer, server_default="0")

    __table_args__ = (
        CheckConstraint(_in("mode", SESSION_MODES), name="mode"),
        CheckConstraint(_in("status", SESSION_STATUSES), name="status"),
        CheckConstraint("seed >= 0", name="seed"),
        CheckConstraint("n_units >= 0", name="n_units"),
        CheckConstraint("length(operator) > 0 AND length(subject_id) > 0 AND length(rig) > 0", name="who"),
        CheckConstraint("jsonb_typeof(config) = 'object'", name="config"),
        CheckConstraint("(status IN ('completed', 'aborted', 'failed')) = (finished_at IS NOT NULL)", name="finished"),
        Index(None, "created_at"),
        Index(None, "subject_id", "created_at"),
    )


class Unit(Base):
    """A recorded unit (rig channel + sorted unit id). ``position`` is its index in every response array."""

    __tablename__ = "units"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    channel: Mapped[int] = mapped_column(Integer)
    unit: Mapped[int] = mapped_column(Integer)
    label: Mapped[str] = mapped_column(Text, server_default="")

    __table_args__ = (
        UniqueConstraint("session_id", "position"),
        UniqueConstraint("session_id", "channel", "unit"),
        CheckConstraint("position >= 0 AND channel >= 0 AND unit >= 0", name="nonnegative"),
    )


class Generation(Base):
    """One ask/tell cycle. Planned (its lead-in reference repeats, committed and shown while the previous
    generation is still being answered) -> proposed (candidates committed before dispatch) -> completed
    (scores + optimizer state). A generation may also start at proposed (no lead-in)."""

    __tablename__ = "generations"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(Text, server_default="proposed")
    optimizer_state_before: Mapped[bytes | None] = mapped_column(LargeBinary)  # known once it is proposed
    rng_state_before: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    optimizer_state_after: Mapped[bytes | None] = mapped_column(LargeBinary)
    rng_state_after: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    timings: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    proposed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("session_id", "index"),
        # target of the composite foreign key that keeps a presentation in its generation's session
        UniqueConstraint("id", "session_id"),
        CheckConstraint('"index" >= 0', name="index"),
        CheckConstraint(_in("status", GENERATION_STATUSES), name="status"),
        CheckConstraint(
            "(status = 'completed') = (optimizer_state_after IS NOT NULL AND completed_at IS NOT NULL)",
            name="completed",
        ),
        CheckConstraint("jsonb_typeof(timings) = 'object'", name="timings"),
        CheckConstraint("status = 'planned' OR optimizer_state_before IS NOT NULL", name="state_before"),
        # at most one generation in flight and one planned ahead per session
        Index("uq_generations_in_flight", "session_id", unique=True, postgresql_where=text("status = 'proposed'")),
        Index("uq_generations_planned", "session_id", unique=True, postgresql_where=text("status = 'planned'")),
    )


class Stimulus(Base):
    """An image, stored once by content (sha256 of its PNG bytes), in the database or as a file.

    The role (candidate, reference, ...) and the generator code belong to each presentation, not to the
    image: the same picture can be a reference in one session and a natural image in another, and two codes
    can render the same picture.
    """

    __tablename__ = "stimuli"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    sha256: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    media_type: Mapped[str] = mapped_column(Text, server_default="image/png")
    height: Mapped[int | None] = mapped_column(Integer)
    width: Mapped[int | None] = mapped_column(Integer)
    nbytes: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes | None] = mapped_column(LargeBinary)
    path: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint("octet_length(sha256) = 32", name="sha256"),
        CheckConstraint("(data IS NULL) <> (path IS NULL)", name="data_or_path"),
        CheckConstraint("data IS NULL OR octet_length(data) = nbytes", name="nbytes"),
        CheckConstraint("height > 0 AND width > 0", name="size"),
    )


class Presentation(Base):
    """One showing of a stimulus in a generation's batch, with its timing and quality control.

    A batch slot (generation, order_in_batch) has exactly one active (not superseded) presentation;
    re-showing a slot after a crash supersedes the old presentation with a new attempt that ``replaces`` it,
    so a late answer to the old one is kept but never counted twice.
    """

    __tablename__ = "presentations"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    generation_id: Mapped[int] = mapped_column(BigInteger)
    stimulus_id: Mapped[int] = mapped_column(ForeignKey("stimuli.id", ondelete="RESTRICT"))
    kind: Mapped[str] = mapped_column(Text)
    order_in_batch: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    code: Mapped[bytes | None] = mapped_column(LargeBinary)
    code_size: Mapped[int | None] = mapped_column(Integer)
    code_index: Mapped[int | None] = mapped_column(Integer)
    scheduled_onset: Mapped[float | None] = mapped_column(Float)
    display_onset: Mapped[float | None] = mapped_column(Float)
    rig_onset: Mapped[float | None] = mapped_column(Float)
    onset_source: Mapped[str | None] = mapped_column(Text)
    dropped_frames: Mapped[int | None] = mapped_column(Integer)
    valid: Mapped[bool | None] = mapped_column(Boolean)
    qc_reasons: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'::text[]"))
    shown_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    replaces: Mapped[int | None] = mapped_column(ForeignKey("presentations.id"), unique=True)
    superseded: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        ForeignKeyConstraint(
            ["generation_id", "session_id"], ["generations.id", "generations.session_id"], ondelete="CASCADE"
        ),
        UniqueConstraint("generation_id", "order_in_batch", "attempt"),
        UniqueConstraint("id", "generation_id"),  # target of scores' composite foreign key
        Index(
            "uq_presentations_active_slot",
            "generation_id",
            "order_in_batch",
            unique=True,
            postgresql_where=text("NOT superseded"),
        ),
        Index(None, "session_id", "generation_id"),
        Index(None, "stimulus_id"),
        CheckConstraint(_in("kind", STIMULUS_KINDS), name="kind"),
        CheckConstraint("order_in_batch >= 0 AND attempt >= 0 AND code_index >= 0", name="nonnegative"),
        CheckConstraint("(code IS NULL) = (code_size IS NULL)", name="code_size_given"),
        CheckConstraint("code_size > 0 AND octet_length(code) = 8 * code_size", name="code_float64"),
        CheckConstraint("kind <> 'candidate' OR (code IS NOT NULL AND code_index IS NOT NULL)", name="candidate"),
        CheckConstraint(f"onset_source IS NULL OR {_in('onset_source', ONSET_SOURCES)}", name="onset_source"),
        # timing is recorded in one piece: a presentation is either not shown yet or fully described
        CheckConstraint(
            "(onset_source IS NULL) = (valid IS NULL) AND (onset_source IS NULL) = (shown_at IS NULL)"
            " AND (onset_source IS NULL) = (dropped_frames IS NULL)",
            name="timing_complete",
        ),
        CheckConstraint("dropped_frames >= 0", name="dropped_frames"),
        CheckConstraint("valid IS NOT FALSE OR cardinality(qc_reasons) > 0", name="invalid_has_reason"),
        CheckConstraint(
            "onset_source IS NULL OR onset_source IN ('flip', 'simulated') OR rig_onset IS NOT NULL",
            name="rig_onset",
        ),
        CheckConstraint("(attempt = 0) = (replaces IS NULL) AND replaces <> id", name="attempt"),
    )


class Response(Base):
    """Spike counts of every unit for one presentation, in unit position order (idempotent per presentation)."""

    __tablename__ = "responses"

    presentation_id: Mapped[int] = mapped_column(ForeignKey("presentations.id", ondelete="CASCADE"), primary_key=True)
    counts: Mapped[list[int]] = mapped_column(ARRAY(Integer))
    baseline_counts: Mapped[list[int] | None] = mapped_column(ARRAY(Integer))
    window_start_ms: Mapped[float] = mapped_column(Float)
    window_end_ms: Mapped[float] = mapped_column(Float)
    baseline_start_ms: Mapped[float | None] = mapped_column(Float)
    baseline_end_ms: Mapped[float | None] = mapped_column(Float)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint(
            "array_ndims(counts) = 1 AND array_position(counts, NULL) IS NULL AND 0 <= ALL(counts)",
            name="counts",
        ),
        CheckConstraint(
            "baseline_counts IS NULL OR (array_ndims(baseline_counts) = 1"
            " AND cardinality(baseline_counts) = cardinality(counts)"
            " AND array_position(baseline_counts, NULL) IS NULL AND 0 <= ALL(baseline_counts))",
            name="baseline_counts",
        ),
        CheckConstraint("window_end_ms > window_start_ms", name="window"),
        CheckConstraint(
            "(baseline_counts IS NULL) = (baseline_start_ms IS NULL)"
            " AND (baseline_start_ms IS NULL) = (baseline_end_ms IS NULL)"
            " AND (baseline_end_ms > baseline_start_ms OR baseline_end_ms IS NULL)",
            name="baseline_window",
        ),
    )


class Score(Base):
    """How the optimizer ranked an answered presentation: per-stage distances, front, fitness, selection."""

    __tablename__ = "scores"

    presentation_id: Mapped[int] = mapped_column(
        ForeignKey("responses.presentation_id", ondelete="CASCADE"), primary_key=True
    )
    generation_id: Mapped[int] = mapped_column(BigInteger)
    distances: Mapped[dict[str, float]] = mapped_column(JSONB)
    front_index: Mapped[int | None] = mapped_column(Integer)
    fitness: Mapped[float | None] = mapped_column(Float)
    selected: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))

    __table_args__ = (
        ForeignKeyConstraint(
            ["presentation_id", "generation_id"],
            ["presentations.id", "presentations.generation_id"],
            ondelete="CASCADE",
        ),
        CheckConstraint("front_index >= 0", name="front_index"),
        CheckConstraint("jsonb_typeof(distances) = 'object'", name="distances"),
        CheckConstraint("fitness <> 'NaN'::float8", name="fitness"),
        Index(None, "generation_id", "front_index"),
    )


class Event(Base):
    """The session's log: operator actions, connections, conflicts and errors."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    session_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.clock_timestamp())
    level: Mapped[str] = mapped_column(Text, server_default="info")
    kind: Mapped[str] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))

    __table_args__ = (
        CheckConstraint(_in("level", EVENT_LEVELS), name="level"),
        CheckConstraint("length(kind) > 0", name="kind"),
        CheckConstraint("jsonb_typeof(payload) = 'object'", name="payload"),
        Index(None, "session_id", "id"),
        Index(None, "session_id", "kind"),
    )


UNIT_RESPONSES_VIEW = """
CREATE VIEW unit_responses AS
SELECT r.presentation_id, u.id AS unit_id, u.position, u.channel, u.unit,
       c.count, r.baseline_counts[c.pos] AS baseline_count,
       r.window_start_ms, r.window_end_ms
FROM responses r
JOIN presentations p ON p.id = r.presentation_id
CROSS JOIN LATERAL unnest(r.counts) WITH ORDINALITY AS c(count, pos)
JOIN units u ON u.session_id = p.session_id AND u.position = c.pos - 1
"""
