"""The evidence tables, declared once with SQLModel (SQLAlchemy 2) for SQLite and PostgreSQL.

Every record is stored as its **leaf bytes** (docs/records.md), the salt
inside: the stored bytes *are* what was hashed, so a verifier recomputes each
leaf hash from the row itself, and a lawful deletion of the row deletes the
salt with it. Nothing about a record is stored twice: there is no column a
tamperer could change beside the bytes the hash covers.

A batch row keeps its signed statement and, as columns for queries, what the
statement says; the verifier checks the two agree. Audit entries are stored as
their canonical JSON (the audit log's leaves), with ``kind`` and ``time``
beside them for listing, also checked against the entry.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Table,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel

ID = BigInteger().with_variant(Integer, "sqlite")
"""64-bit ids; on SQLite ``INTEGER PRIMARY KEY`` (the rowid, 64-bit already)."""


def _blob(nullable: bool = False) -> Column[bytes]:
    return Column(LargeBinary, nullable=nullable)


def _id() -> Column[int]:
    return Column(ID, primary_key=True, autoincrement=True)


def _batch_ref() -> Column[int]:
    """A record's batch, without a foreign key: checking one per row tripled the cost of
    PostgreSQL's COPY, and ``converge audit verify`` names every record of a batch that is
    not stored anyway."""
    return Column(ID, nullable=False)


class Meta(SQLModel, table=True):
    """Facts about the store itself, such as the audit log's origin line."""

    __tablename__ = "meta"
    key: str = Field(primary_key=True)
    value: str


class PlanRow(SQLModel, table=True):
    """A device plan as deployed: its exact bytes (digest-checked) and detached signature."""

    __tablename__ = "plans"
    digest: str = Field(primary_key=True)
    device: str = Field(index=True)
    body: bytes = Field(sa_column=_blob())
    signature: str | None = None
    """The plan's C2SP signed note (``<device>.plan.sig``), when it was signed."""
    deployed_at: str


class BatchRow(SQLModel, table=True):
    """One signed (or waived) batch: statement, chain link and where its audit entry is."""

    __tablename__ = "batches"
    __table_args__ = (UniqueConstraint("device", "root", name="uq_batches_device_root"),)
    id: int | None = Field(default=None, sa_column=_id())
    device: str = Field(index=True)
    window_start: str
    window_end: str = Field(index=True)
    count: int
    root: bytes = Field(sa_column=_blob())
    previous_root: bytes = Field(sa_column=_blob())
    plan_digest: str
    statement: bytes = Field(sa_column=_blob())
    keys: str
    """JSON list of the keys that must sign (empty: unsigned)."""
    waiver: str
    """Canonical JSON list of the waivers that allow an unsigned batch."""
    audit_seq: int = Field(sa_column=Column(ID, nullable=False, index=True))


class BatchSignatureRow(SQLModel, table=True):
    """One Ed25519 signature of a batch statement, by a named key."""

    __tablename__ = "batch_signatures"
    batch_id: int = Field(sa_column=Column(ID, ForeignKey("batches.id"), primary_key=True))
    key: str = Field(primary_key=True)
    signature: bytes = Field(sa_column=_blob())


class ReadingRow(SQLModel, table=True):
    """A reading: its leaf bytes at ``position`` in its batch's sorted leaves."""

    __tablename__ = "readings"
    __table_args__ = (Index("ix_readings_batch_position", "batch_id", "position", unique=True),)
    id: int | None = Field(default=None, sa_column=_id())
    batch_id: int = Field(sa_column=_batch_ref())
    position: int
    leaf: bytes = Field(sa_column=_blob())


class GapRow(SQLModel, table=True):
    """A gap record: its leaf bytes at ``position`` in its batch's sorted leaves."""

    __tablename__ = "gap_records"
    __table_args__ = (Index("ix_gap_records_batch_position", "batch_id", "position", unique=True),)
    id: int | None = Field(default=None, sa_column=_id())
    batch_id: int = Field(sa_column=_batch_ref())
    position: int
    leaf: bytes = Field(sa_column=_blob())


class AuditRow(SQLModel, table=True):
    """Entry ``seq`` of the audit log: its canonical JSON bytes (the log's leaf ``seq``)."""

    __tablename__ = "audit_entries"
    seq: int = Field(sa_column=Column(ID, primary_key=True, autoincrement=False))
    time: str
    kind: str = Field(index=True)
    entry: bytes = Field(sa_column=_blob())


class CheckpointRow(SQLModel, table=True):
    """A signed checkpoint of the audit log (C2SP tlog-checkpoint as a signed note)."""

    __tablename__ = "checkpoints"
    id: int | None = Field(default=None, sa_column=_id())
    size: int = Field(sa_column=Column(ID, nullable=False, index=True))
    note: str
    created_at: str


# --- scale-out (docs/scale-out.md): a site collector's outbox and cosignatures; the centre's
# quarantine, the edge logs it witnessed and which site sends each device -----------------


class OutboxRow(SQLModel, table=True):
    """A site collector's sealed batch waiting for the centre: it leaves only when the centre
    answers that it committed it (or quarantined it)."""

    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("device", "root", name="uq_outbox_device_root"),
        {"sqlite_autoincrement": True},  # ids never reused: the publisher reads on from the last
    )
    id: int | None = Field(default=None, sa_column=_id())
    device: str
    root: bytes = Field(sa_column=_blob())
    previous_root: bytes = Field(sa_column=_blob())
    plan_digest: str
    audit_seq: int = Field(sa_column=Column(ID, nullable=False))
    """The entry of this store's log recording the batch (``batch.stored`` or ``batch.sealed``)."""
    message: bytes = Field(sa_column=_blob())
    """The batch as it travels (engine/store/message.py)."""
    queued_at: str


class CosignatureRow(SQLModel, table=True):
    """A checkpoint of this store's log as the centre cosigned it (C2SP tlog-cosignature)."""

    __tablename__ = "cosignatures"
    id: int | None = Field(default=None, sa_column=_id())
    size: int = Field(sa_column=Column(ID, nullable=False, index=True))
    cosigner: str
    timestamp: int = Field(sa_column=Column(BigInteger, nullable=False))
    note: str
    """The checkpoint's signed note with the cosignature line appended."""
    received_at: str


class QuarantineRow(SQLModel, table=True):
    """A message the centre refused: where it came from, why, and its audit entry."""

    __tablename__ = "quarantine"
    id: int | None = Field(default=None, sa_column=_id())
    received_at: str
    site: str = Field(index=True)
    topic: str
    kind: str
    """What the message was: ``batch``, ``plan``, ``keys``, ``checkpoint`` or ``message``."""
    reason: str
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    sha256: str
    device: str | None = None
    root: bytes | None = Field(default=None, sa_column=_blob(nullable=True))
    message: bytes | None = Field(default=None, sa_column=_blob(nullable=True))
    """The message itself, unless it was larger than the ingester accepts."""
    audit_seq: int = Field(sa_column=Column(ID, nullable=False))


class WitnessedRow(SQLModel, table=True):
    """The newest checkpoint the centre cosigned of one site collector's log."""

    __tablename__ = "witnessed"
    origin: str = Field(primary_key=True)
    site: str = Field(index=True)
    size: int = Field(sa_column=Column(ID, nullable=False))
    root: bytes = Field(sa_column=_blob())
    note: str
    """The checkpoint's signed note with the centre's cosignature line."""
    cosigned_at: str


class SiteDeviceRow(SQLModel, table=True):
    """Which site sends a device's batches: the first that deployed a plan of it."""

    __tablename__ = "site_devices"
    device: str = Field(primary_key=True)
    site: str = Field(index=True)
    since: str


class ErasureRow(SQLModel, table=True):
    """What a deletion receipt removed from one batch: the positions, and the leaf hash of each.

    The records' rows (their values and salts) are gone; their leaf hashes stay while records
    of the batch remain, so those records' inclusion proofs still verify and the batch root
    can be rebuilt (docs/retention.md). The receipt (audit entry ``receipt``) says the same;
    the verifier checks that the two agree.
    """

    __tablename__ = "erasures"
    id: int | None = Field(default=None, sa_column=_id())
    batch_id: int = Field(sa_column=Column(ID, nullable=False, index=True))
    receipt: int = Field(sa_column=Column(ID, nullable=False, unique=True))
    """The ``seq`` of the ``retention.deleted`` audit entry that removed them."""
    positions: str
    """Canonical JSON of the positions removed, as runs ``[[first, last], ...]`` ascending."""
    leaf_hashes: bytes = Field(sa_column=_blob())
    """The 32-byte leaf hashes of those positions, concatenated in position order; empty when
    they were the batch's last records (nothing is left whose inclusion they would prove)."""


class HoldRow(SQLModel, table=True):
    """A legal hold: what it covers, who placed it and why; released, never deleted."""

    __tablename__ = "holds"
    id: int | None = Field(default=None, sa_column=_id())
    devices: str
    """Canonical JSON list of the device ids it covers (``[]``: every device)."""
    points: str
    """Canonical JSON list of point-name globs it covers (``[]``: every point)."""
    from_time: str | None = None
    """The first instant it covers (``None``: from the beginning)."""
    to_time: str | None = None
    """The instant it covers up to, excluded (``None``: without end)."""
    reason: str
    placed_by: str
    placed_at: str
    placed_seq: int = Field(sa_column=Column(ID, nullable=False))
    released_by: str | None = None
    released_at: str | None = None
    release_reason: str | None = None
    released_seq: int | None = Field(default=None, sa_column=Column(ID, nullable=True))


METADATA = SQLModel.metadata
META: Table = METADATA.tables["meta"]
PLANS: Table = METADATA.tables["plans"]
BATCHES: Table = METADATA.tables["batches"]
SIGNATURES: Table = METADATA.tables["batch_signatures"]
READINGS: Table = METADATA.tables["readings"]
GAPS: Table = METADATA.tables["gap_records"]
AUDIT: Table = METADATA.tables["audit_entries"]
CHECKPOINTS: Table = METADATA.tables["checkpoints"]
OUTBOX: Table = METADATA.tables["outbox"]
COSIGNATURES: Table = METADATA.tables["cosignatures"]
QUARANTINE: Table = METADATA.tables["quarantine"]
WITNESSED: Table = METADATA.tables["witnessed"]
SITE_DEVICES: Table = METADATA.tables["site_devices"]
ERASURES: Table = METADATA.tables["erasures"]
HOLDS: Table = METADATA.tables["holds"]
