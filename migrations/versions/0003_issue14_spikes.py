"""Raw spike times, the rig's recording identity, and offline analyses (issue 14).

Revision ID: 0003_issue14
Revises: 0003_issue16
Create Date: 2026-12-04

Mirrors server/db/analysis_models.py. ``spike_trains.times`` is stored EXTERNAL: packed integer spike
times do not compress, and trying to costs write time (as for stimuli.data in 0002).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_issue14"
down_revision: str | Sequence[str] | None = "0003_issue16"  # chained after issue 16 (merged into main first)
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSONB = postgresql.JSONB(astext_type=sa.Text())


def upgrade() -> None:
    op.create_table(
        "spike_trains",
        sa.Column("presentation_id", sa.BigInteger(), nullable=False),
        sa.Column("onset_rig_s", sa.Float(), nullable=False),
        sa.Column("start_ms", sa.Float(), nullable=False),
        sa.Column("end_ms", sa.Float(), nullable=False),
        sa.Column("n", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("time_bytes", sa.SmallInteger(), nullable=False),
        sa.Column("times", sa.LargeBinary(), nullable=False),
        sa.Column("clock", _JSONB, server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("end_ms > start_ms", name=op.f("ck_spike_trains_window")),
        sa.CheckConstraint("time_bytes IN (4, 8)", name=op.f("ck_spike_trains_time_bytes")),
        sa.CheckConstraint("array_ndims(n) = 1 AND array_position(n, NULL) IS NULL AND 0 <= ALL(n)",
                           name=op.f("ck_spike_trains_n")),
        sa.CheckConstraint("jsonb_typeof(clock) = 'object'", name=op.f("ck_spike_trains_clock")),
        sa.ForeignKeyConstraint(["presentation_id"], ["presentations.id"], ondelete="CASCADE",
                                name=op.f("fk_spike_trains_presentation_id_presentations")),
        sa.PrimaryKeyConstraint("presentation_id", name=op.f("pk_spike_trains")),
    )
    op.execute("ALTER TABLE spike_trains ALTER COLUMN times SET STORAGE EXTERNAL")
    op.create_table(
        "recordings",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("session_id", sa.UUID(), nullable=False),
        sa.Column("client_id", sa.Text(), nullable=False),
        sa.Column("identity", _JSONB, nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("jsonb_typeof(identity) = 'object'", name=op.f("ck_recordings_identity")),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"], ondelete="CASCADE",
                                name=op.f("fk_recordings_session_id_sessions")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recordings")),
        sa.UniqueConstraint("session_id", "client_id", "identity",
                            name=op.f("uq_recordings_session_id_client_id_identity")),
    )
    op.create_table(
        "analyses",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("session_id", sa.UUID(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("params", _JSONB, nullable=False),
        sa.Column("counts_analysis_id", sa.BigInteger(), nullable=True),
        sa.Column("summary", _JSONB, server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("software_version", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("kind IN ('recount', 'rescore')", name=op.f("ck_analyses_kind")),
        sa.CheckConstraint("jsonb_typeof(params) = 'object' AND jsonb_typeof(summary) = 'object'",
                           name=op.f("ck_analyses_json")),
        sa.ForeignKeyConstraint(["counts_analysis_id"], ["analyses.id"], ondelete="RESTRICT",
                                name=op.f("fk_analyses_counts_analysis_id_analyses")),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"], ondelete="CASCADE",
                                name=op.f("fk_analyses_session_id_sessions")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_analyses")),
    )
    op.create_index(op.f("ix_analyses_session_id_id"), "analyses", ["session_id", "id"], unique=False)
    op.create_table(
        "analysis_results",
        sa.Column("analysis_id", sa.BigInteger(), nullable=False),
        sa.Column("presentation_id", sa.BigInteger(), nullable=False),
        sa.Column("counts", postgresql.ARRAY(sa.Integer()), nullable=True),
        sa.Column("baseline_counts", postgresql.ARRAY(sa.Integer()), nullable=True),
        sa.Column("distances", _JSONB, nullable=True),
        sa.Column("front_index", sa.Integer(), nullable=True),
        sa.Column("selected", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.CheckConstraint("counts IS NULL OR (array_ndims(counts) = 1 AND 0 <= ALL(counts))",
                           name=op.f("ck_analysis_results_counts")),
        sa.CheckConstraint("front_index >= 0", name=op.f("ck_analysis_results_front_index")),
        sa.ForeignKeyConstraint(["analysis_id"], ["analyses.id"], ondelete="CASCADE",
                                name=op.f("fk_analysis_results_analysis_id_analyses")),
        sa.ForeignKeyConstraint(["presentation_id"], ["presentations.id"], ondelete="CASCADE",
                                name=op.f("fk_analysis_results_presentation_id_presentations")),
        sa.PrimaryKeyConstraint("analysis_id", "presentation_id", name=op.f("pk_analysis_results")),
    )


def downgrade() -> None:
    op.drop_table("analysis_results")
    op.drop_index(op.f("ix_analyses_session_id_id"), table_name="analyses")
    op.drop_table("analyses")
    op.drop_table("recordings")
    op.drop_table("spike_trains")
