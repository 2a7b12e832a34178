"""Recording schema: sessions, units, generations, stimuli, presentations, responses, scores, events.

Revision ID: 0001
Revises:
Create Date: 2026-11-29

Mirrors server/db/models.py (a test checks that autogenerate finds no difference), plus the
``unit_responses`` view that unnests the per-presentation count arrays into one row per unit.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from server.db.models import UNIT_RESPONSES_VIEW

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create every table, constraint and index, then the unit_responses view."""
    op.create_table(
        "sessions",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("operator", sa.Text(), nullable=False),
        sa.Column("subject_id", sa.Text(), nullable=False),
        sa.Column("rig", sa.Text(), nullable=False),
        sa.Column("mode", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="running", nullable=False),
        sa.Column("config", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("software_version", sa.Text(), nullable=False),
        sa.Column("n_units", sa.Integer(), server_default="0", nullable=False),
        sa.CheckConstraint(
            "(status IN ('completed', 'aborted', 'failed')) = (finished_at IS NOT NULL)",
            name=op.f("ck_sessions_finished"),
        ),
        sa.CheckConstraint("jsonb_typeof(config) = 'object'", name=op.f("ck_sessions_config")),
        sa.CheckConstraint("mode IN ('live', 'simulated', 'insilico')", name=op.f("ck_sessions_mode")),
        sa.CheckConstraint(
            "status IN ('running', 'paused', 'completed', 'aborted', 'failed')", name=op.f("ck_sessions_status")
        ),
        sa.CheckConstraint(
            "length(operator) > 0 AND length(subject_id) > 0 AND length(rig) > 0", name=op.f("ck_sessions_who")
        ),
        sa.CheckConstraint("n_units >= 0", name=op.f("ck_sessions_n_units")),
        sa.CheckConstraint("seed >= 0", name=op.f("ck_sessions_seed")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
    )
    op.create_index(op.f("ix_sessions_created_at"), "sessions", ["created_at"], unique=False)
    op.create_index(op.f("ix_sessions_subject_id_created_at"), "sessions", ["subject_id", "created_at"], unique=False)
    op.create_table(
        "stimuli",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("sha256", sa.LargeBinary(), nullable=False),
        sa.Column("media_type", sa.Text(), server_default="image/png", nullable=False),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("nbytes", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=True),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("(data IS NULL) <> (path IS NULL)", name=op.f("ck_stimuli_data_or_path")),
        sa.CheckConstraint("data IS NULL OR octet_length(data) = nbytes", name=op.f("ck_stimuli_nbytes")),
        sa.CheckConstraint("height > 0 AND width > 0", name=op.f("ck_stimuli_size")),
        sa.CheckConstraint("octet_length(sha256) = 32", name=op.f("ck_stimuli_sha256")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stimuli")),
        sa.UniqueConstraint("sha256", name=op.f("uq_stimuli_sha256")),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("session_id", sa.UUID(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.text("clock_timestamp()"), nullable=False),
        sa.Column("level", sa.Text(), server_default="info", nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column(
            "payload", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.CheckConstraint("jsonb_typeof(payload) = 'object'", name=op.f("ck_events_payload")),
        sa.CheckConstraint("level IN ('debug', 'info', 'warning', 'error')", name=op.f("ck_events_level")),
        sa.CheckConstraint("length(kind) > 0", name=op.f("ck_events_kind")),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name=op.f("fk_events_session_id_sessions"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index(op.f("ix_events_session_id_id"), "events", ["session_id", "id"], unique=False)
    op.create_index(op.f("ix_events_session_id_kind"), "events", ["session_id", "kind"], unique=False)
    op.create_table(
        "generations",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("session_id", sa.UUID(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("status", sa.Text(), server_default="proposed", nullable=False),
        sa.Column("optimizer_state_before", sa.LargeBinary(), nullable=False),
        sa.Column("rng_state_before", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("optimizer_state_after", sa.LargeBinary(), nullable=True),
        sa.Column("rng_state_after", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "timings", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("proposed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(status = 'completed') = (optimizer_state_after IS NOT NULL AND completed_at IS NOT NULL)",
            name=op.f("ck_generations_completed"),
        ),
        sa.CheckConstraint("jsonb_typeof(timings) = 'object'", name=op.f("ck_generations_timings")),
        sa.CheckConstraint("status IN ('proposed', 'completed')", name=op.f("ck_generations_status")),
        sa.CheckConstraint('"index" >= 0', name=op.f("ck_generations_index")),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name=op.f("fk_generations_session_id_sessions"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generations")),
        sa.UniqueConstraint("id", "session_id", name=op.f("uq_generations_id_session_id")),
        sa.UniqueConstraint("session_id", "index", name=op.f("uq_generations_session_id_index")),
    )
    op.create_index(
        "uq_generations_in_flight",
        "generations",
        ["session_id"],
        unique=True,
        postgresql_where=sa.text("status = 'proposed'"),
    )
    op.create_table(
        "units",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("session_id", sa.UUID(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("channel", sa.Integer(), nullable=False),
        sa.Column("unit", sa.Integer(), nullable=False),
        sa.Column("label", sa.Text(), server_default="", nullable=False),
        sa.CheckConstraint("position >= 0 AND channel >= 0 AND unit >= 0", name=op.f("ck_units_nonnegative")),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name=op.f("fk_units_session_id_sessions"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_units")),
        sa.UniqueConstraint("session_id", "channel", "unit", name=op.f("uq_units_session_id_channel_unit")),
        sa.UniqueConstraint("session_id", "position", name=op.f("uq_units_session_id_position")),
    )
    op.create_table(
        "presentations",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("session_id", sa.UUID(), nullable=False),
        sa.Column("generation_id", sa.BigInteger(), nullable=False),
        sa.Column("stimulus_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("order_in_batch", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.SmallInteger(), server_default="0", nullable=False),
        sa.Column("code", sa.LargeBinary(), nullable=True),
        sa.Column("code_size", sa.Integer(), nullable=True),
        sa.Column("code_index", sa.Integer(), nullable=True),
        sa.Column("scheduled_onset", sa.Float(), nullable=True),
        sa.Column("display_onset", sa.Float(), nullable=True),
        sa.Column("rig_onset", sa.Float(), nullable=True),
        sa.Column("onset_source", sa.Text(), nullable=True),
        sa.Column("dropped_frames", sa.Integer(), nullable=True),
        sa.Column("valid", sa.Boolean(), nullable=True),
        sa.Column("qc_reasons", postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'::text[]"), nullable=False),
        sa.Column("shown_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("replaces", sa.BigInteger(), nullable=True),
        sa.Column("superseded", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "kind <> 'candidate' OR (code IS NOT NULL AND code_index IS NOT NULL)",
            name=op.f("ck_presentations_candidate"),
        ),
        sa.CheckConstraint(
            "kind IN ('candidate', 'reference', 'natural', 'control')", name=op.f("ck_presentations_kind")
        ),
        sa.CheckConstraint(
            "onset_source IS NULL OR onset_source IN ('flip', 'simulated') OR rig_onset IS NOT NULL",
            name=op.f("ck_presentations_rig_onset"),
        ),
        sa.CheckConstraint(
            "onset_source IS NULL OR onset_source IN ('photodiode', 'ttl', 'marker', 'flip', 'simulated')",
            name=op.f("ck_presentations_onset_source"),
        ),
        sa.CheckConstraint(
            "(attempt = 0) = (replaces IS NULL) AND replaces <> id", name=op.f("ck_presentations_attempt")
        ),
        sa.CheckConstraint("(code IS NULL) = (code_size IS NULL)", name=op.f("ck_presentations_code_size_given")),
        sa.CheckConstraint(
            "(onset_source IS NULL) = (valid IS NULL) AND (onset_source IS NULL) = (shown_at IS NULL) AND (onset_source IS NULL) = (dropped_frames IS NULL)",
            name=op.f("ck_presentations_timing_complete"),
        ),
        sa.CheckConstraint(
            "code_size > 0 AND octet_length(code) = 8 * code_size", name=op.f("ck_presentations_code_float64")
        ),
        sa.CheckConstraint("dropped_frames >= 0", name=op.f("ck_presentations_dropped_frames")),
        sa.CheckConstraint(
            "order_in_batch >= 0 AND attempt >= 0 AND code_index >= 0", name=op.f("ck_presentations_nonnegative")
        ),
        sa.CheckConstraint(
            "valid IS NOT FALSE OR cardinality(qc_reasons) > 0", name=op.f("ck_presentations_invalid_has_reason")
        ),
        sa.ForeignKeyConstraint(
            ["generation_id", "session_id"],
            ["generations.id", "generations.session_id"],
            name=op.f("fk_presentations_generation_id_session_id_generations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["replaces"], ["presentations.id"], name=op.f("fk_presentations_replaces_presentations")
        ),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name=op.f("fk_presentations_session_id_sessions"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["stimulus_id"], ["stimuli.id"], name=op.f("fk_presentations_stimulus_id_stimuli"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_presentations")),
        sa.UniqueConstraint(
            "generation_id",
            "order_in_batch",
            "attempt",
            name=op.f("uq_presentations_generation_id_order_in_batch_attempt"),
        ),
        sa.UniqueConstraint("id", "generation_id", name=op.f("uq_presentations_id_generation_id")),
        sa.UniqueConstraint("replaces", name=op.f("uq_presentations_replaces")),
    )
    op.create_index(
        op.f("ix_presentations_session_id_generation_id"),
        "presentations",
        ["session_id", "generation_id"],
        unique=False,
    )
    op.create_index(op.f("ix_presentations_stimulus_id"), "presentations", ["stimulus_id"], unique=False)
    op.create_index(
        "uq_presentations_active_slot",
        "presentations",
        ["generation_id", "order_in_batch"],
        unique=True,
        postgresql_where=sa.text("NOT superseded"),
    )
    op.create_table(
        "responses",
        sa.Column("presentation_id", sa.BigInteger(), nullable=False),
        sa.Column("counts", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("baseline_counts", postgresql.ARRAY(sa.Integer()), nullable=True),
        sa.Column("window_start_ms", sa.Float(), nullable=False),
        sa.Column("window_end_ms", sa.Float(), nullable=False),
        sa.Column("baseline_start_ms", sa.Float(), nullable=True),
        sa.Column("baseline_end_ms", sa.Float(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "(baseline_counts IS NULL) = (baseline_start_ms IS NULL) AND (baseline_start_ms IS NULL) = (baseline_end_ms IS NULL) AND (baseline_end_ms > baseline_start_ms OR baseline_end_ms IS NULL)",
            name=op.f("ck_responses_baseline_window"),
        ),
        sa.CheckConstraint(
            "array_ndims(counts) = 1 AND array_position(counts, NULL) IS NULL AND 0 <= ALL(counts)",
            name=op.f("ck_responses_counts"),
        ),
        sa.CheckConstraint(
            "baseline_counts IS NULL OR (array_ndims(baseline_counts) = 1 AND cardinality(baseline_counts) = cardinality(counts) AND array_position(baseline_counts, NULL) IS NULL AND 0 <= ALL(baseline_counts))",
            name=op.f("ck_responses_baseline_counts"),
        ),
        sa.CheckConstraint("window_end_ms > window_start_ms", name=op.f("ck_responses_window")),
        sa.ForeignKeyConstraint(
            ["presentation_id"],
            ["presentations.id"],
            name=op.f("fk_responses_presentation_id_presentations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("presentation_id", name=op.f("pk_responses")),
    )
    op.create_table(
        "scores",
        sa.Column("presentation_id", sa.BigInteger(), nullable=False),
        sa.Column("generation_id", sa.BigInteger(), nullable=False),
        sa.Column("distances", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("front_index", sa.Integer(), nullable=True),
        sa.Column("fitness", sa.Float(), nullable=True),
        sa.Column("selected", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.CheckConstraint("fitness <> 'NaN'::float8", name=op.f("ck_scores_fitness")),
        sa.CheckConstraint("jsonb_typeof(distances) = 'object'", name=op.f("ck_scores_distances")),
        sa.CheckConstraint("front_index >= 0", name=op.f("ck_scores_front_index")),
        sa.ForeignKeyConstraint(
            ["presentation_id", "generation_id"],
            ["presentations.id", "presentations.generation_id"],
            name=op.f("fk_scores_presentation_id_generation_id_presentations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["presentation_id"],
            ["responses.presentation_id"],
            name=op.f("fk_scores_presentation_id_responses"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("presentation_id", name=op.f("pk_scores")),
    )
    op.create_index(
        op.f("ix_scores_generation_id_front_index"), "scores", ["generation_id", "front_index"], unique=False
    )
    op.execute(UNIT_RESPONSES_VIEW)


def downgrade() -> None:
    """Remove everything upgrade() created."""
    op.execute("DROP VIEW unit_responses")
    op.drop_index(op.f("ix_scores_generation_id_front_index"), table_name="scores")
    op.drop_table("scores")
    op.drop_table("responses")
    op.drop_index(
        "uq_presentations_active_slot", table_name="presentations", postgresql_where=sa.text("NOT superseded")
    )
    op.drop_index(op.f("ix_presentations_stimulus_id"), table_name="presentations")
    op.drop_index(op.f("ix_presentations_session_id_generation_id"), table_name="presentations")
    op.drop_table("presentations")
    op.drop_table("units")
    op.drop_index("uq_generations_in_flight", table_name="generations", postgresql_where=sa.text("status = 'proposed'"))
    op.drop_table("generations")
    op.drop_index(op.f("ix_events_session_id_kind"), table_name="events")
    op.drop_index(op.f("ix_events_session_id_id"), table_name="events")
    op.drop_table("events")
    op.drop_table("stimuli")
    op.drop_index(op.f("ix_sessions_subject_id_created_at"), table_name="sessions")
    op.drop_index(op.f("ix_sessions_created_at"), table_name="sessions")
    op.drop_table("sessions")
