"""Presentation kinds of the live reference check (issue 12): ``reference-check`` and ``blank``.

Revision ID: 0004_reference_check
Revises: 0003_issue14
Create Date: 2026-12-04

After a live maximize session's last generation, its best image and a blank (mean-grey) screen are shown
``reference.check_repeats`` times each (server/reference_phase.py). They are stored like every
presentation, under kinds of their own so that no optimizer ever sees them and analyses can find them.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004_reference_check"
down_revision: str | Sequence[str] | None = "0003_issue14"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD = "kind IN ('candidate', 'reference', 'natural', 'control')"
_NEW = "kind IN ('candidate', 'reference', 'natural', 'control', 'reference-check', 'blank')"


def upgrade() -> None:
    op.drop_constraint(op.f("ck_presentations_kind"), "presentations", type_="check")
    op.create_check_constraint(op.f("ck_presentations_kind"), "presentations", _NEW)


def downgrade() -> None:
    op.execute("DELETE FROM presentations WHERE kind IN ('reference-check', 'blank')")
    op.drop_constraint(op.f("ck_presentations_kind"), "presentations", type_="check")
    op.create_check_constraint(op.f("ck_presentations_kind"), "presentations", _OLD)
