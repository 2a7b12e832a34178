"""Sweeps: many in-silico probes run as one (`snslab sweep`), each probe a row with its state and result.

Revision ID: 0003_issue16
Revises: 0002
Create Date: 2026-12-04

- sweeps: one row per sweep name (re-running a sweep file resumes it);
- sweep_probes: one row per probe (unique per sweep and config hash), with the stored in-silico sessions
  that hold its presentations, its summary, selected image and, when it failed, the error.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_issue16"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("status", sa.Text(), server_default="running", nullable=False),
        sa.Column("spec", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.CheckConstraint("length(name) > 0", name=op.f("ck_sweeps_name")),
        sa.CheckConstraint("status IN ('running', 'completed')", name=op.f("ck_sweeps_status")),
        sa.CheckConstraint("jsonb_typeof(spec) = 'object'", name=op.f("ck_sweeps_spec")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweeps")),
        sa.UniqueConstraint("name", name=op.f("uq_sweeps_name")),
    )
    op.create_table(
        "sweep_probes",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("sweep_id", sa.UUID(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("labels", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("config", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("attempt", sa.Integer(), server_default="0", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("summary", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("session_ids", postgresql.ARRAY(sa.UUID()), server_default="{}", nullable=False),
        sa.Column("selected_png", sa.LargeBinary(), nullable=True),
        sa.Column("worker", sa.Text(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'running', 'completed', 'failed')",
                           name=op.f("ck_sweep_probes_status")),
        sa.CheckConstraint("status <> 'failed' OR error IS NOT NULL", name=op.f("ck_sweep_probes_failed_error")),
        sa.CheckConstraint("status <> 'completed' OR summary IS NOT NULL",
                           name=op.f("ck_sweep_probes_completed_summary")),
        sa.CheckConstraint("jsonb_typeof(labels) = 'object' AND jsonb_typeof(config) = 'object'",
                           name=op.f("ck_sweep_probes_json")),
        sa.ForeignKeyConstraint(["sweep_id"], ["sweeps.id"], name=op.f("fk_sweep_probes_sweep_id_sweeps"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweep_probes")),
        sa.UniqueConstraint("sweep_id", "key", name=op.f("uq_sweep_probes_sweep_id_key")),
    )
    op.create_index(op.f("ix_sweep_probes_sweep_id_status"), "sweep_probes", ["sweep_id", "status"])


def downgrade() -> None:
    op.drop_index(op.f("ix_sweep_probes_sweep_id_status"), table_name="sweep_probes")
    op.drop_table("sweep_probes")
    op.drop_table("sweeps")
