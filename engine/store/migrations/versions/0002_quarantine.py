"""Scale-out: the centre's quarantine, witnessed logs and site devices; a site's outbox and
cosignatures (docs/scale-out.md).

One revision for every table the path to a central store adds, so that a
store of either side has the same schema: a central store leaves the outbox
and cosignatures empty, a site collector's the quarantine, witnessed logs and
site devices.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("device", sa.String(), nullable=False),
        sa.Column("root", sa.LargeBinary(), nullable=False),
        sa.Column("previous_root", sa.LargeBinary(), nullable=False),
        sa.Column("plan_digest", sa.String(), nullable=False),
        sa.Column("audit_seq", ID, nullable=False),
        sa.Column("message", sa.LargeBinary(), nullable=False),
        sa.Column("queued_at", sa.String(), nullable=False),
        sa.UniqueConstraint("device", "root", name="uq_outbox_device_root"),
        sqlite_autoincrement=True,  # ids never reused: the publisher reads on from the last
    )
    op.create_table(
        "cosignatures",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("size", ID, nullable=False, index=True),
        sa.Column("cosigner", sa.String(), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("note", sa.String(), nullable=False),
        sa.Column("received_at", sa.String(), nullable=False),
    )
    op.create_table(
        "quarantine",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("received_at", sa.String(), nullable=False),
        sa.Column("site", sa.String(), nullable=False, index=True),
        sa.Column("topic", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(), nullable=False),
        sa.Column("device", sa.String(), nullable=True),
        sa.Column("root", sa.LargeBinary(), nullable=True),
        sa.Column("message", sa.LargeBinary(), nullable=True),
        sa.Column("audit_seq", ID, nullable=False),
    )
    op.create_table(
        "witnessed",
        sa.Column("origin", sa.String(), primary_key=True),
        sa.Column("site", sa.String(), nullable=False, index=True),
        sa.Column("size", ID, nullable=False),
        sa.Column("root", sa.LargeBinary(), nullable=False),
        sa.Column("note", sa.String(), nullable=False),
        sa.Column("cosigned_at", sa.String(), nullable=False),
    )
    op.create_table(
        "site_devices",
        sa.Column("device", sa.String(), primary_key=True),
        sa.Column("site", sa.String(), nullable=False, index=True),
        sa.Column("since", sa.String(), nullable=False),
    )


def downgrade() -> None:
    for table in ("site_devices", "witnessed", "quarantine", "cosignatures", "outbox"):
        op.drop_table(table)
