"""Retention: erasures (what each deletion receipt removed, leaf hashes kept) and legal holds.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "erasures",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("batch_id", ID, nullable=False, index=True),
        sa.Column("receipt", ID, nullable=False, unique=True),
        sa.Column("positions", sa.String(), nullable=False),
        sa.Column("leaf_hashes", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "holds",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("devices", sa.String(), nullable=False),
        sa.Column("points", sa.String(), nullable=False),
        sa.Column("from_time", sa.String(), nullable=True),
        sa.Column("to_time", sa.String(), nullable=True),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("placed_by", sa.String(), nullable=False),
        sa.Column("placed_at", sa.String(), nullable=False),
        sa.Column("placed_seq", ID, nullable=False),
        sa.Column("released_by", sa.String(), nullable=True),
        sa.Column("released_at", sa.String(), nullable=True),
        sa.Column("release_reason", sa.String(), nullable=True),
        sa.Column("released_seq", ID, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("holds")
    op.drop_table("erasures")
