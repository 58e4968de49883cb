"""First schema: plans, batches and their signatures, readings, gap records, audit log, checkpoints.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _records(name: str) -> None:
    op.create_table(
        name,
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("batch_id", ID, nullable=False),  # no foreign key: see engine/store/tables.py
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("leaf", sa.LargeBinary(), nullable=False),
    )
    op.create_index(f"ix_{name}_batch_position", name, ["batch_id", "position"], unique=True)


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("value", sa.String(), nullable=False),
    )
    op.create_table(
        "plans",
        sa.Column("digest", sa.String(), primary_key=True),
        sa.Column("device", sa.String(), nullable=False, index=True),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.String(), nullable=True),
        sa.Column("deployed_at", sa.String(), nullable=False),
    )
    op.create_table(
        "batches",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("device", sa.String(), nullable=False, index=True),
        sa.Column("window_start", sa.String(), nullable=False),
        sa.Column("window_end", sa.String(), nullable=False, index=True),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("root", sa.LargeBinary(), nullable=False),
        sa.Column("previous_root", sa.LargeBinary(), nullable=False),
        sa.Column("plan_digest", sa.String(), nullable=False),
        sa.Column("statement", sa.LargeBinary(), nullable=False),
        sa.Column("keys", sa.String(), nullable=False),
        sa.Column("waiver", sa.String(), nullable=False),
        sa.Column("audit_seq", ID, nullable=False, index=True),
        sa.UniqueConstraint("device", "root", name="uq_batches_device_root"),
    )
    op.create_table(
        "batch_signatures",
        sa.Column("batch_id", ID, sa.ForeignKey("batches.id"), primary_key=True),
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
    )
    _records("readings")
    _records("gap_records")
    op.create_table(
        "audit_entries",
        sa.Column("seq", ID, primary_key=True, autoincrement=False),
        sa.Column("time", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False, index=True),
        sa.Column("entry", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "checkpoints",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("size", ID, nullable=False, index=True),
        sa.Column("note", sa.String(), nullable=False),
        sa.Column("created_at", sa.String(), nullable=False),
    )


def downgrade() -> None:
    for table in (
        "checkpoints",
        "audit_entries",
        "gap_records",
        "readings",
        "batch_signatures",
        "batches",
        "plans",
        "meta",
    ):
        op.drop_table(table)
