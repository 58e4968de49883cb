"""An insider's toolkit: rewrite a signed evidence store with write access and some keys.

What someone with write access to the database (SQLite or PostgreSQL, plain
SQL through SQLAlchemy) and some of the site's private keys would write to
change the record and cover the tracks: change a record's leaf and rebuild its
batch's root and chain; re-sign a batch statement with the keys at hand and
make its ``keys``/``waiver`` columns and signature rows say so; rewrite a plan;
rewrite, delete, reorder or insert audit entries, renumbering the log and
saving its state; re-sign checkpoints with any key held, under any name, with
any ``time`` line; delete checkpoints; roll the store back; copy it.

Every operation works in one transaction (:meth:`Forger.on`) and leaves the
store in the shape a careless verifier would accept: the columns agree with
the statements, the entries with the batches, the saved state with the
entries. What still gives the forgery away is for ``converge audit verify``
to find (tests/test_insider.py).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from engine.audit import ORIGIN_KEY, STATE_KEY, AuditEntry, signed_time, time_line
from engine.canonical import canonical_json
from engine.keys import KeyVersion
from engine.plans.format import seal
from engine.plans.signature import PlanClaim, sign_claim
from engine.sign import note
from engine.sign.leaf import instant, point_map_of
from engine.sign.merkle import MerkleLog, MerkleTree, leaf_hash, root_of_hashes
from plugins.filekeys.store import FileKeyStore

RECORD_TABLES = ("readings", "gap_records")
SIGNATURE_FIELDS = ("signed_at", "signer", "name", "meaning")
"""What a ``plan.deployed`` entry records of the plan's signature."""


class NotHeld(Exception):
    """The insider does not hold the private key this forgery needs."""


# --- the keys an insider holds ----------------------------------------------------------


@dataclass(frozen=True)
class Holder:
    """Some versions of some of the site's keys, taken from its key folder (with the
    passphrase): the private keys an insider stole or was given."""

    keys: FileKeyStore
    held: frozenset[tuple[str, int]]

    @classmethod
    def of(cls, keys: FileKeyStore, *names: str) -> Holder:
        """Every version of each key in ``names``."""
        return cls(keys, frozenset((n, v.version) for n in names for v in keys.versions(n)))

    @classmethod
    def version(cls, keys: FileKeyStore, name: str, number: int) -> Holder:
        """One version of one key (a retired one, say, leaked after its rotation)."""
        return cls(keys, frozenset({(name, number)}))

    def __or__(self, other: Holder) -> Holder:
        return Holder(self.keys, self.held | other.held)

    def versions(self, name: str) -> list[KeyVersion]:
        return [v for v in self.keys.versions(name) if (name, v.version) in self.held]

    def private(self, version: KeyVersion) -> Ed25519PrivateKey:
        """The private key of ``version``: the key folder hands out a version for a time in
        its validity, and the key signs whatever it is given, whenever."""
        if (version.name, version.version) not in self.held:
            raise NotHeld(f"{version.name} v{version.version}")
        return self.keys.signer(version.name, version.not_before)

    def signer(self, name: str, at: datetime) -> Ed25519PrivateKey:
        """The held version of ``name`` valid at ``at``, else the newest held one (it signs,
        even where verify will judge it out of its validity)."""
        held = self.versions(name)
        if not held:
            raise NotHeld(name)
        valid = [v for v in held if v.valid_at(at)]
        return self.private((valid or held)[-1])


def retire(keys: FileKeyStore, name: str, at: datetime) -> KeyVersion:
    """Rotate ``name`` as of ``at`` (``KeyStore.rotate`` on a clock set there): the version
    current then is retired at ``at``; returns the new one."""
    clock = keys.clock
    keys.clock = lambda: at
    try:
        return keys.rotate(name)
    finally:
        keys.clock = clock


# --- the database -----------------------------------------------------------------------


def database(target: str) -> sa.Engine:
    """The store's database, opened beside Converge (a SQLite path or a database URL)."""
    url = target if "://" in target else f"sqlite:///{target}"
    return sa.create_engine(url, poolclass=sa.NullPool)


def clone(source: str, folder: Path) -> str:
    """A copy of the store at ``source``: a file copy (SQLite, into ``folder``), or a new
    database made from it as a template (PostgreSQL; nobody may be connected to ``source``)."""
    if "://" not in source:
        copy = folder / f"copy-{secrets.token_hex(4)}.db"
        shutil.copy(source, copy)
        return str(copy)
    url = sa.make_url(source)
    name = f"{url.database}_{secrets.token_hex(4)}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{url.database}"'))
    admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def drop(target: str, admin_url: str) -> None:
    """Drop the PostgreSQL database at ``target`` (a copy :func:`clone` made), connected to
    the server as ``admin_url``."""
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        name = sa.make_url(target).database
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


# --- the forger -------------------------------------------------------------------------


class Forger:
    """Rewrites one store in one transaction, with the keys of ``holder``."""

    def __init__(self, conn: sa.Connection, holder: Holder) -> None:
        self.conn, self.holder = conn, holder

    @classmethod
    @contextmanager
    def on(cls, target: str, holder: Holder) -> Iterator[Forger]:
        engine = database(target)
        try:
            with engine.begin() as conn:
                yield cls(conn, holder)
        finally:
            engine.dispose()

    # --- reading ------------------------------------------------------------------------

    def rows(self, query: str, **params: object) -> list[sa.Row[Any]]:
        return list(self.conn.execute(sa.text(query), params))

    def one(self, query: str, **params: object) -> sa.Row[Any]:
        return self.conn.execute(sa.text(query), params).one()

    def run(self, query: str, **params: object) -> None:
        self.conn.execute(sa.text(query), params)

    def origin(self) -> str:
        return str(self.one("SELECT value FROM meta WHERE key = :k", k=ORIGIN_KEY).value)

    def entries(self) -> list[AuditEntry]:
        """Every audit entry, in sequence order."""
        rows = self.rows("SELECT entry FROM audit_entries ORDER BY seq")
        return [AuditEntry.parse(bytes(r.entry)) for r in rows]

    def entry(self, seq: int) -> AuditEntry:
        row = self.one("SELECT entry FROM audit_entries WHERE seq = :seq", seq=seq)
        return AuditEntry.parse(bytes(row.entry))

    def of_kind(self, kind: str) -> list[AuditEntry]:
        return [e for e in self.entries() if e.kind == kind]

    def batch(self, batch_id: int) -> sa.Row[Any]:
        return self.one("SELECT * FROM batches WHERE id = :id", id=batch_id)

    def batches(self, device: str | None = None) -> list[sa.Row[Any]]:
        """Every batch (of ``device``), in the order they were stored."""
        where = "" if device is None else "WHERE device = :device"
        return self.rows(f"SELECT * FROM batches {where} ORDER BY id", device=device)

    def checkpoints(self) -> list[sa.Row[Any]]:
        return self.rows("SELECT id, size, note FROM checkpoints ORDER BY id")

    @staticmethod
    def signed_at(text: str) -> datetime:
        """The time a checkpoint's ``time`` line states (its signature unchecked)."""
        body, _ = note.split_note(text)
        at = signed_time(note.Checkpoint.from_text(body))
        assert at is not None, text
        return at

    # --- records and batches ------------------------------------------------------------

    def change_record(self, table: str, record_id: int, **change: object) -> int:
        """Rewrite a record's leaf as canonical JSON with ``change`` made; its batch's id."""
        row = self.one(f"SELECT batch_id, leaf FROM {table} WHERE id = :id", id=record_id)
        leaf = canonical_json({**json.loads(bytes(row.leaf)), **change})
        self.run(f"UPDATE {table} SET leaf = :leaf WHERE id = :id", leaf=leaf, id=record_id)
        return int(row.batch_id)

    def first_reading(self, batch_id: int) -> int:
        row = self.one(
            "SELECT id FROM readings WHERE batch_id = :b ORDER BY position LIMIT 1", b=batch_id
        )
        return int(row.id)

    def leaves(self, batch_id: int) -> list[bytes]:
        """A batch's leaves in position order, from both record tables."""
        found = [
            (r.position, bytes(r.leaf))
            for table in RECORD_TABLES
            for r in self.rows(
                f"SELECT position, leaf FROM {table} WHERE batch_id = :b", b=batch_id
            )
        ]
        return [leaf for _, leaf in sorted(found)]

    def restate(self, batch_id: int, **members: object) -> None:
        """Give a batch's statement (and the columns that repeat it) new ``members`` (``root``
        and ``previous_root`` as raw bytes); its signatures are stale until re-signed."""
        said = json.loads(bytes(self.batch(batch_id).statement))
        for name, value in members.items():
            said[name] = value.hex() if isinstance(value, bytes) else value
        statement = canonical_json(said)
        self.run(
            "UPDATE batches SET statement = :s, root = :root, previous_root = :prev, "
            "count = :count, plan_digest = :plan, window_start = :ws, window_end = :we "
            "WHERE id = :id",
            s=statement,
            root=bytes.fromhex(said["root"]),
            prev=bytes.fromhex(said["previous_root"]),
            count=said["count"],
            plan=said["plan_digest"],
            ws=said["window_start"],
            we=said["window_end"],
            id=batch_id,
        )

    def reroot(self, batch_id: int) -> list[int]:
        """Rebuild a batch's root and count from its records, and the chain after it (each
        following batch's previous root); the ids of the batches whose statement changed."""
        row = self.batch(batch_id)
        leaves = self.leaves(batch_id)
        root = root_of_hashes([leaf_hash(leaf) for leaf in leaves])
        self.restate(batch_id, root=root, count=len(leaves))
        changed = [batch_id]
        for after in self.rows(
            "SELECT id FROM batches WHERE device = :d AND previous_root = :r AND id != :id",
            d=row.device,
            r=bytes(row.root),
            id=batch_id,
        ):
            self.restate(after.id, previous_root=root)
            changed.append(int(after.id))
        return changed

    def resign_batch(
        self, batch_id: int, keys: Sequence[str] | None = None, waiver: Sequence[object] = ()
    ) -> None:
        """Sign the batch's statement with ``keys`` (default: those its row names), as of its
        audit entry's time; its signature rows, ``keys`` and ``waiver`` columns say so."""
        row = self.batch(batch_id)
        keys = sorted(json.loads(row.keys) if keys is None else keys)
        at = datetime.fromisoformat(self.entry(row.audit_seq).time)
        statement = bytes(row.statement)
        self.run("DELETE FROM batch_signatures WHERE batch_id = :b", b=batch_id)
        for key in keys:
            self.run(
                "INSERT INTO batch_signatures (batch_id, key, signature) VALUES (:b, :k, :s)",
                b=batch_id,
                k=key,
                s=self.holder.signer(key, at).sign(statement),
            )
        self.run(
            "UPDATE batches SET keys = :k, waiver = :w WHERE id = :id",
            k=canonical_json(keys).decode(),
            w=canonical_json(list(waiver)).decode(),
            id=batch_id,
        )

    def record_batch(self, batch_id: int) -> None:
        """Make the batch's ``batch.stored`` entry say what its row now says."""
        row = self.batch(batch_id)
        said = json.loads(bytes(row.statement))
        said.pop("format")
        payload = {**said, "keys": json.loads(row.keys), "waiver": json.loads(row.waiver)}
        self.set_entry(replace(self.entry(row.audit_seq), payload=payload))

    def rewrite_batches(self, batch_ids: Iterable[int], keys: Sequence[str] | None = None) -> None:
        """Re-sign each batch (with ``keys``, default its own) and make its entry agree."""
        for batch_id in batch_ids:
            self.resign_batch(batch_id, keys)
            self.record_batch(batch_id)

    def add_batch(self, after: int, leaves: Sequence[bytes], keys: Sequence[str]) -> int:
        """A new batch of ``leaves`` in the window after batch ``after``, following it in its
        device's chain, signed by ``keys``, its ``batch.stored`` entry appended; its id."""
        prev = self.batch(after)
        start, end = map(datetime.fromisoformat, (prev.window_start, prev.window_end))
        said = {
            "format": "converge.batch/v2",
            "device": prev.device,
            "window_start": prev.window_end,
            "window_end": instant(end + (end - start)),
            "count": len(leaves),
            "root": root_of_hashes([leaf_hash(leaf) for leaf in leaves]).hex(),
            "plan_digest": prev.plan_digest,
            "previous_root": bytes(prev.root).hex(),
            "point_map": hashlib.sha256(point_map_of(leaves)).hexdigest(),
        }
        seq = self.append("batch.stored", {}, datetime.now(UTC))
        batch_id = self.conn.execute(
            sa.text(
                "INSERT INTO batches (device, window_start, window_end, count, root, "
                "previous_root, plan_digest, statement, keys, waiver, audit_seq, point_map) VALUES "
                "(:device, :ws, :we, :count, :root, :prev, :plan, :s, '[]', '[]', :seq, :map) "
                "RETURNING id"
            ),
            {
                "device": prev.device,
                "ws": said["window_start"],
                "we": said["window_end"],
                "count": len(leaves),
                "root": bytes.fromhex(said["root"]),
                "prev": bytes(prev.root),
                "plan": prev.plan_digest,
                "s": canonical_json(said),
                "seq": seq,
                "map": point_map_of(leaves),
            },
        ).scalar_one()
        for position, leaf in enumerate(leaves):
            table = "gap_records" if b'"type":"gap"' in leaf else "readings"
            self.run(
                f"INSERT INTO {table} (batch_id, position, leaf) VALUES (:b, :p, :leaf)",
                b=batch_id,
                p=position,
                leaf=leaf,
            )
        self.resign_batch(batch_id, keys)
        self.record_batch(batch_id)
        return int(batch_id)

    def delete_batch(self, batch_id: int) -> None:
        """Delete a batch with its records and signatures (not its entry)."""
        for table in (*RECORD_TABLES, "batch_signatures"):
            self.run(f"DELETE FROM {table} WHERE batch_id = :b", b=batch_id)
        self.run("DELETE FROM batches WHERE id = :b", b=batch_id)

    # --- plans --------------------------------------------------------------------------

    def rewrite_plan(
        self,
        digest: str,
        change: Callable[[dict[str, Any]], None],
        sign_with: str | None = None,
    ) -> str:
        """Replace a stored plan by a changed one (``change`` edits its JSON), sealed under its
        new digest and signed by ``sign_with`` (else unsigned); its ``plan.deployed`` entry
        and its batches' statements follow (their signatures are stale until re-signed)."""
        deployed = next(e for e in self.of_kind("plan.deployed") if e.payload["digest"] == digest)
        row = self.one("SELECT * FROM plans WHERE digest = :d", d=digest)
        self.run("DELETE FROM plans WHERE digest = :d", d=digest)
        new, signed = self._store_plan(row, change, sign_with, deployed.time)
        payload = {**deployed.payload, "digest": new, "signed": signed}
        if not signed:  # what the store records of a signature: nothing, without one
            payload = {k: v for k, v in payload.items() if k not in SIGNATURE_FIELDS}
        self.set_entry(replace(deployed, payload=payload))
        for batch in self.rows("SELECT id FROM batches WHERE plan_digest = :d", d=digest):
            self.restate(batch.id, plan_digest=new)
        return new

    def deploy_plan(
        self, digest: str, change: Callable[[dict[str, Any]], None], sign_with: str | None = None
    ) -> str:
        """Store a changed copy of a stored plan as a new plan, with a ``plan.deployed`` entry
        appended; its digest."""
        row = self.one("SELECT * FROM plans WHERE digest = :d", d=digest)
        at = datetime.now(UTC)
        new, signed = self._store_plan(row, change, sign_with, instant(at))
        self.append("plan.deployed", {"device": row.device, "digest": new, "signed": signed}, at)
        return new

    def _store_plan(
        self,
        row: sa.Row[Any],
        change: Callable[[dict[str, Any]], None],
        sign_with: str | None,
        deployed: str,
    ) -> tuple[str, bool]:
        """Store ``row``'s plan changed, sealed, and signed as of ``deployed`` if asked."""
        body = json.loads(bytes(row.body))
        change(body)
        new, data = seal({k: canonical_json(v) for k, v in body.items() if k != "digest"})
        signature = None
        if sign_with is not None:
            claim = self._claim_like(row, new, deployed)
            signed = sign_claim(claim, sign_with, self.holder.signer(sign_with, claim.signed_at))
            signature = signed.decode()
        self.run(
            "INSERT INTO plans (digest, device, body, signature, deployed_at) "
            "VALUES (:d, :device, :body, :sig, :at)",
            d=new,
            device=row.device,
            body=data,
            sig=signature,
            at=deployed,
        )
        return new, signature is not None

    @staticmethod
    def _claim_like(row: sa.Row[Any], digest: str, deployed: str) -> PlanClaim:
        """A claim for the plan ``digest`` saying what ``row``'s signature says (its time and
        signer), else signed when it was deployed."""
        if row.signature is None:
            at = datetime.fromisoformat(deployed).replace(microsecond=0)
            return PlanClaim(row.device, digest, at)
        said = PlanClaim.parse(note.split_note(row.signature)[0])
        return replace(said, digest=digest)

    # --- the audit log ------------------------------------------------------------------

    def set_entry(self, entry: AuditEntry) -> None:
        """Overwrite entry ``entry.seq`` (bytes, time and kind), and the log's saved state."""
        self.run(
            "UPDATE audit_entries SET entry = :e, time = :t, kind = :k WHERE seq = :seq",
            e=entry.to_bytes(),
            t=entry.time,
            k=entry.kind,
            seq=entry.seq,
        )
        self.save_state()

    def append(
        self, kind: str, payload: dict[str, Any], at: datetime | None = None, actor: Any = None
    ) -> int:
        """Append an entry after the last one, by ``actor`` (default: the last one's), and save
        the state; its seq."""
        entries = self.entries()
        when = instant(at) if at else entries[-1].time
        entry = AuditEntry(len(entries), when, kind, actor or entries[-1].actor, payload)
        self.run(
            "INSERT INTO audit_entries (seq, time, kind, entry) VALUES (:s, :t, :k, :e)",
            s=entry.seq,
            t=entry.time,
            k=kind,
            e=entry.to_bytes(),
        )
        self.save_state()
        return entry.seq

    def relog(self, entries: Sequence[AuditEntry]) -> None:
        """Make the log ``entries``, in this order, numbered from 0: each entry's ``seq`` says
        where it was (batches follow their entry), a new one has seq -1. Entries left out are
        deleted (their batches are the caller's to delete). A checkpoint keeps signing the
        entries it signed: its size becomes theirs (its note is the caller's to re-sign)."""
        moved = {e.seq: new for new, e in enumerate(entries) if e.seq >= 0}
        for checkpoint in self.checkpoints():
            signed = [new for old, new in moved.items() if old < checkpoint.size]
            self.run(
                "UPDATE checkpoints SET size = :s WHERE id = :id",
                s=max(signed, default=-1) + 1,
                id=checkpoint.id,
            )
        for batch in self.rows("SELECT id, audit_seq FROM batches"):
            self.run(
                "UPDATE batches SET audit_seq = :s WHERE id = :id",
                s=moved.get(batch.audit_seq, -1 - batch.audit_seq),
                id=batch.id,
            )
        self.run("DELETE FROM audit_entries")
        for seq, entry in enumerate(entries):
            renumbered = replace(entry, seq=seq)
            self.run(
                "INSERT INTO audit_entries (seq, time, kind, entry) VALUES (:s, :t, :k, :e)",
                s=seq,
                t=entry.time,
                k=entry.kind,
                e=renumbered.to_bytes(),
            )
        self.save_state()

    def save_state(self) -> None:
        """The log's saved state (``meta`` ``audit.state``) recomputed from its entries."""
        log = MerkleLog()
        for entry in self.rows("SELECT entry FROM audit_entries ORDER BY seq"):
            log.append(bytes(entry.entry))
        state = json.dumps({"size": log.size, "hashes": [h.hex() for h in log.hashes]})
        self.run("UPDATE meta SET value = :v WHERE key = :k", v=state, k=STATE_KEY)

    def tree(self) -> MerkleTree:
        rows = self.rows("SELECT entry FROM audit_entries ORDER BY seq")
        return MerkleTree(leaf_hash(bytes(r.entry)) for r in rows)

    # --- checkpoints --------------------------------------------------------------------

    def checkpoint_note(
        self,
        size: int,
        key: str,
        at: datetime,
        *,
        version: int | None = None,
        name: str | None = None,
    ) -> str:
        """A checkpoint of the stored log's first ``size`` entries saying it was signed at
        ``at``, signed by ``key`` (``version``, default the held one valid at ``at``) under
        ``name`` (default: the origin, as the log's own checkpoints are)."""
        origin = self.origin()
        checkpoint = note.Checkpoint(origin, size, self.tree().root(size), (time_line(at),))
        if version is None:
            private = self.holder.signer(key, at)
        else:
            held = [v for v in self.holder.versions(key) if v.version == version]
            if not held:
                raise NotHeld(f"{key} v{version}")
            private = self.holder.private(held[0])
        return note.sign_checkpoint(checkpoint, name or origin, private)

    def resign_checkpoints(
        self,
        key: str,
        *,
        when: Callable[[datetime], datetime] = lambda at: at,
        version: int | None = None,
        name: str | None = None,
        ids: Iterable[int] | None = None,
    ) -> list[sa.Row[Any]]:
        """Re-sign each checkpoint (of ``ids``, default all) over the stored log, stating the
        time ``when`` makes of the one it stated; the rows re-signed."""
        chosen = None if ids is None else set(ids)
        done = []
        for row in self.checkpoints():
            if chosen is not None and row.id not in chosen:
                continue
            at = when(self.signed_at(row.note))
            text = self.checkpoint_note(row.size, key, at, version=version, name=name)
            self.run("UPDATE checkpoints SET note = :n WHERE id = :id", n=text, id=row.id)
            done.append(row)
        return done

    def add_checkpoint(self, size: int, key: str, at: datetime, **how: Any) -> int:
        """Store a new checkpoint of the first ``size`` entries (see :meth:`checkpoint_note`)."""
        text = self.checkpoint_note(size, key, at, **how)
        return int(
            self.conn.execute(
                sa.text(
                    "INSERT INTO checkpoints (size, note, created_at) VALUES (:s, :n, :c) "
                    "RETURNING id"
                ),
                {"s": size, "n": text, "c": instant(datetime.now(UTC))},
            ).scalar_one()
        )

    def delete_checkpoints(self, ids: Iterable[int]) -> None:
        for checkpoint_id in ids:
            self.run("DELETE FROM checkpoints WHERE id = :id", id=checkpoint_id)

    # --- the whole store ----------------------------------------------------------------

    def roll_back(self, size: int) -> None:
        """Make the store what it was when its log held ``size`` entries: later entries, the
        batches and plans they record, and the checkpoints that sign them are deleted."""
        for batch in self.rows("SELECT id FROM batches WHERE audit_seq >= :s", s=size):
            self.delete_batch(batch.id)
        for entry in self.entries()[size:]:
            if entry.kind == "plan.deployed":
                self.run("DELETE FROM plans WHERE digest = :d", d=entry.payload["digest"])
        self.run("DELETE FROM audit_entries WHERE seq >= :s", s=size)
        self.run("DELETE FROM checkpoints WHERE size > :s", s=size)
        self.save_state()
