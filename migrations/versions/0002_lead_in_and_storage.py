"""Planned generations (lead-in reference repeats shown ahead) and uncompressed storage of PNGs and codes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

- generations.status gains 'planned': a generation whose first reference repeats are committed and shown
  while the previous generation's last answers are still coming, so the display never waits for the
  server; its optimizer_state_before is known only once it is proposed (nullable until then).
- stimuli.data and presentations.code are stored EXTERNAL: PNG bytes and float64 codes do not compress,
  and trying to (PostgreSQL's default for large values) cost ~15 ms per generation at n = 4096.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint(op.f("ck_generations_status"), "generations", type_="check")
    op.create_check_constraint(
        op.f("ck_generations_status"), "generations", "status IN ('planned', 'proposed', 'completed')"
    )
    op.alter_column("generations", "optimizer_state_before", nullable=True)
    op.create_check_constraint(
        op.f("ck_generations_state_before"), "generations", "status = 'planned' OR optimizer_state_before IS NOT NULL"
    )
    op.create_index(
        "uq_generations_planned", "generations", ["session_id"], unique=True,
        postgresql_where=sa.text("status = 'planned'"),
    )
    op.execute("ALTER TABLE stimuli ALTER COLUMN data SET STORAGE EXTERNAL")
    op.execute("ALTER TABLE presentations ALTER COLUMN code SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.execute("ALTER TABLE presentations ALTER COLUMN code SET STORAGE EXTENDED")
    op.execute("ALTER TABLE stimuli ALTER COLUMN data SET STORAGE EXTENDED")
    # planned generations hold only lead-in presentations: they cannot be expressed without the status
    op.execute("DELETE FROM generations WHERE status = 'planned'")
    op.drop_index("uq_generations_planned", table_name="generations", postgresql_where=sa.text("status = 'planned'"))
    op.drop_constraint(op.f("ck_generations_state_before"), "generations", type_="check")
    op.alter_column("generations", "optimizer_state_before", nullable=False)
    op.drop_constraint(op.f("ck_generations_status"), "generations", type_="check")
    op.create_check_constraint(op.f("ck_generations_status"), "generations", "status IN ('proposed', 'completed')")
