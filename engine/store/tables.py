"""The evidence tables, declared once with SQLAlchemy Core for SQLite and PostgreSQL.

Every record is stored as its **leaf bytes** (docs/records.md), the salt
inside: the stored bytes *are* what was hashed, so a verifier recomputes each
leaf hash from the row itself, and a lawful deletion of the row deletes the
salt with it. Nothing about a record is stored twice: there is no column a
tamperer could change beside the bytes the hash covers.

A batch row keeps its signed statement and, as columns for queries, what the
statement says; the verifier checks the two agree. It also keeps the batch's
point map (each position's point), which the statement signs by its SHA-256:
the one thing about its records a batch keeps beside their leaves, so that it
outlives the records retention deletes. Audit entries are stored as
their canonical JSON (the audit log's leaves), with ``kind`` and ``time``
beside them for listing, also checked against the entry.

The tables are Core :class:`~sqlalchemy.Table` objects, not ORM classes: the
store reads and writes rows through statements and the driver, never through
objects, and declaring them so costs every ``converge`` command a fraction of
what an ORM layer (SQLModel, pydantic) cost to import.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

ID = BigInteger().with_variant(Integer, "sqlite")
"""64-bit ids; on SQLite ``INTEGER PRIMARY KEY`` (the rowid, 64-bit already)."""

METADATA = MetaData()


def _text(name: str, *, index: bool = False, doc: str | None = None) -> Column[str]:
    return Column(name, String, nullable=False, index=index, doc=doc)


def _maybe_text(name: str, doc: str | None = None) -> Column[str]:
    return Column(name, String, nullable=True, doc=doc)


def _blob(name: str, nullable: bool = False, doc: str | None = None) -> Column[bytes]:
    return Column(name, LargeBinary, nullable=nullable, doc=doc)


def _id() -> Column[int]:
    return Column("id", ID, primary_key=True, autoincrement=True)


def _seq(name: str, *, index: bool = False, doc: str | None = None) -> Column[int]:
    """A 64-bit reference to an audit entry, a log size or a batch."""
    return Column(name, ID, nullable=False, index=index, doc=doc)


def _records(name: str) -> Table:
    """Readings or gap records: each its leaf bytes at ``position`` in its batch's sorted
    leaves. The batch is named without a foreign key: checking one per row tripled the cost
    of PostgreSQL's COPY, and ``converge audit verify`` names every record of a batch that is
    not stored anyway."""
    return Table(
        name,
        METADATA,
        _id(),
        _seq("batch_id"),
        Column("position", Integer, nullable=False),
        _blob("leaf"),
        Index(f"ix_{name}_batch_position", "batch_id", "position", unique=True),
    )


META = Table(
    "meta",
    METADATA,
    Column("key", String, primary_key=True),
    _text("value"),
)
"""Facts about the store itself, such as the audit log's origin line."""

PLANS = Table(
    "plans",
    METADATA,
    Column("digest", String, primary_key=True),
    _text("device", index=True),
    _blob("body"),
    _maybe_text("signature", doc="The plan's C2SP signed note (``<device>.plan.sig``), if signed."),
    _text("deployed_at"),
)
"""A device plan as deployed: its exact bytes (digest-checked) and detached signature."""

BATCHES = Table(
    "batches",
    METADATA,
    _id(),
    _text("device", index=True),
    _text("window_start"),
    _text("window_end", index=True),
    Column("count", Integer, nullable=False),
    _blob("root"),
    _blob("previous_root"),
    _text("plan_digest"),
    _blob("statement"),
    _text("keys", doc="JSON list of the keys that must sign (empty: unsigned)."),
    _text("waiver", doc="Canonical JSON list of the waivers that allow an unsigned batch."),
    _seq("audit_seq", index=True),
    _blob(
        "point_map",
        nullable=True,
        doc="The batch's point map (canonical JSON array of its records' points, in batch"
        " order), whose SHA-256 the statement signs: it outlives the records retention deletes."
        " Null only in a batch stored before statements signed one (converge.batch/v1).",
    ),
    UniqueConstraint("device", "root", name="uq_batches_device_root"),
    # the plans in force over a range (engine.store.data.plans_named)
    Index("ix_batches_device_plan_digest_window_end", "device", "plan_digest", "window_end"),
)
"""One signed (or waived) batch: statement, chain link and where its audit entry is."""

SIGNATURES = Table(
    "batch_signatures",
    METADATA,
    Column("batch_id", ID, ForeignKey("batches.id"), primary_key=True),
    Column("key", String, primary_key=True),
    _blob("signature"),
)
"""One Ed25519 signature of a batch statement, by a named key."""

READINGS = _records("readings")
"""A reading: its leaf bytes at ``position`` in its batch's sorted leaves."""
GAPS = _records("gap_records")
"""A gap record: its leaf bytes at ``position`` in its batch's sorted leaves."""

AUDIT = Table(
    "audit_entries",
    METADATA,
    Column("seq", ID, primary_key=True, autoincrement=False),
    _text("time"),
    _text("kind", index=True),
    _blob("entry"),
)
"""Entry ``seq`` of the audit log: its canonical JSON bytes (the log's leaf ``seq``)."""

CHECKPOINTS = Table(
    "checkpoints",
    METADATA,
    _id(),
    _seq("size", index=True),
    _text("note"),
    _text("created_at"),
)
"""A signed checkpoint of the audit log (C2SP tlog-checkpoint as a signed note)."""


# --- scale-out (docs/scale-out.md): a site collector's outbox and cosignatures; the centre's
# quarantine, the edge logs it witnessed and which site sends each device -----------------

OUTBOX = Table(
    "outbox",
    METADATA,
    _id(),
    _text("device"),
    _blob("root"),
    _blob("previous_root"),
    _text("plan_digest"),
    _seq(
        "audit_seq",
        doc="The entry of this store's log recording the batch (``batch.stored`` or "
        "``batch.sealed``).",
    ),
    _blob("message", doc="The batch as it travels (engine/store/message.py)."),
    _text("queued_at"),
    UniqueConstraint("device", "root", name="uq_outbox_device_root"),
    sqlite_autoincrement=True,  # ids never reused: the publisher reads on from the last
)
"""A site collector's sealed batch waiting for the centre: it leaves only when the centre
answers that it committed it (or quarantined it)."""

COSIGNATURES = Table(
    "cosignatures",
    METADATA,
    _id(),
    _seq("size", index=True),
    _text("cosigner"),
    Column("timestamp", BigInteger, nullable=False),
    _text("note", doc="The checkpoint's signed note with the cosignature line appended."),
    _text("received_at"),
)
"""A checkpoint of this store's log as the centre cosigned it (C2SP tlog-cosignature)."""

QUARANTINE = Table(
    "quarantine",
    METADATA,
    _id(),
    _text("received_at"),
    _text("site", index=True),
    _text("topic"),
    _text(
        "kind",
        doc="What the message was: ``batch``, ``plan``, ``keys``, ``checkpoint`` or ``message``.",
    ),
    _text("reason"),
    Column("size", BigInteger, nullable=False),
    _text("sha256"),
    _maybe_text("device"),
    _blob("root", nullable=True),
    _blob(
        "message",
        nullable=True,
        doc="The message itself, unless it was larger than the ingester accepts.",
    ),
    _seq("audit_seq"),
)
"""A message the centre refused: where it came from, why, and its audit entry."""

WITNESSED = Table(
    "witnessed",
    METADATA,
    Column("origin", String, primary_key=True),
    _text("site", index=True),
    _seq("size"),
    _blob("root"),
    _text("note", doc="The checkpoint's signed note with the centre's cosignature line."),
    _text("cosigned_at"),
)
"""The newest checkpoint the centre cosigned of one site collector's log."""

SITE_DEVICES = Table(
    "site_devices",
    METADATA,
    Column("device", String, primary_key=True),
    _text("site", index=True),
    _text("since"),
)
"""Which site sends a device's batches: the first that deployed a plan of it."""

ERASURES = Table(
    "erasures",
    METADATA,
    _id(),
    _seq("batch_id", index=True),
    Column(
        "receipt",
        ID,
        nullable=False,
        unique=True,
        doc="The ``seq`` of the ``retention.deleted`` audit entry that removed them.",
    ),
    _text(
        "positions",
        doc="Canonical JSON of the positions removed, as runs ``[[first, last], ...]`` ascending.",
    ),
    _blob(
        "leaf_hashes",
        doc="The 32-byte leaf hashes of those positions, concatenated in position order; empty "
        "when they were the batch's last records (nothing is left whose inclusion they would "
        "prove).",
    ),
)
"""What a deletion receipt removed from one batch: the positions, and the leaf hash of each.

The records' rows (their values and salts) are gone; their leaf hashes stay while records
of the batch remain, so those records' inclusion proofs still verify and the batch root
can be rebuilt (docs/retention.md). The receipt (audit entry ``receipt``) says the same;
the verifier checks that the two agree.
"""

HOLDS = Table(
    "holds",
    METADATA,
    _id(),
    _text("devices", doc="Canonical JSON list of the device ids it covers (``[]``: every device)."),
    _text("points", doc="Canonical JSON list of point-name globs it covers (``[]``: every point)."),
    _maybe_text("from_time", doc="The first instant it covers (``None``: from the beginning)."),
    _maybe_text("to_time", doc="The instant it covers up to, excluded (``None``: without end)."),
    _text("reason"),
    _text("placed_by"),
    _text("placed_at"),
    _seq("placed_seq"),
    _maybe_text("released_by"),
    _maybe_text("released_at"),
    _maybe_text("release_reason"),
    Column("released_seq", ID, nullable=True),
)
"""A legal hold: what it covers, who placed it and why; released, never deleted."""
