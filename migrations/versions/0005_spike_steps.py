"""Spike times as microsecond steps: ``spike_trains.time_bytes`` may be 2 (the ``dus16`` codec).

Revision ID: 0005_spike_steps
Revises: 0004_reference_check
Create Date: 2026-12-04

``time_bytes`` 2 marks a ``times`` blob in snslab_common.spike_codec's form (whole microseconds after the
onset, 16-bit steps per unit, int32 escapes): about half the bytes of int32 ns, which is what PostgreSQL's
write path costs. Rows stored before (4: int32 ns, 8: int64 ns) are read as they are; nothing is rewritten.
Downgrading refuses while rows of the new form exist (older code cannot read them).
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

revision: str = "0005_spike_steps"
down_revision: str | Sequence[str] | None = "0004_reference_check"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint(op.f("ck_spike_trains_time_bytes"), "spike_trains", type_="check")
    op.create_check_constraint(op.f("ck_spike_trains_time_bytes"), "spike_trains", "time_bytes IN (2, 4, 8)")


def downgrade() -> None:
    n = op.get_bind().execute(text("SELECT count(*) FROM spike_trains WHERE time_bytes = 2")).scalar()
    if n:
        raise RuntimeError(f"spike_trains: {n} rows hold microsecond steps (time_bytes 2), which revision "
                           "0004_reference_check cannot read; export or delete them first")
    op.drop_constraint(op.f("ck_spike_trains_time_bytes"), "spike_trains", type_="check")
    op.create_check_constraint(op.f("ck_spike_trains_time_bytes"), "spike_trains", "time_bytes IN (4, 8)")
