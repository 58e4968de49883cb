"""Point maps: each batch keeps the points of its positions, which its statement signs.

A ``converge.batch/v2`` statement signs the SHA-256 of its batch's point map (docs/records.md),
so a deletion receipt's positions are tied to the points it names after the records are gone.
Batches stored before hold ``converge.batch/v1`` statements, which sign none: their column
stays empty, as a map the statement does not sign would vouch for nothing (and verifiers
refuse v1 statements: docs/records.md, "Batch statement").

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("point_map", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    op.drop_column("batches", "point_map")
