"""The plans in force: an index on a device's batches by plan digest and window end.

The guard asks on every request which plans the batches of a device in a range name. With
this index that is a walk over the device's distinct plan digests (a few) and one probe of
the range for each, not a visit to every batch of the range (a thousand a day per device).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_batches_device_plan_digest_window_end",
        "batches",
        ["device", "plan_digest", "window_end"],
    )


def downgrade() -> None:
    op.drop_index("ix_batches_device_plan_digest_window_end", table_name="batches")
