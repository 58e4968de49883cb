"""A site collector's cosignatures: the centre's word that it saw the log as the store has it.

A site that publishes to a centre keeps, for each checkpoint the centre
cosigned, the checkpoint with the centre's cosignature line (C2SP
tlog-cosignature, docs/scale-out.md). Each must still be of this log: signed
by the log's key, of a prefix the store holds, with the root the store's
entries hash to. A log rolled back, or rewritten, since the centre cosigned
it fails here, as long as one cosignature survives; the centre itself refuses
to cosign the rolled-back log and names the site. With the centre's witness
key (``--cosigned-by``), every cosignature must verify by a version of it
valid at the cosignature's own timestamp: a second clock beside the log's.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection

from engine import audit
from engine.errors import VerificationError
from engine.sign.cosignature import Cosigner, verify_cosignature
from engine.sign.merkle import MerkleTree
from engine.store import reads
from engine.verify.checkpoints import LogKey, open_signed
from engine.verify.log import Log
from engine.verify.report import Report
from engine.verify.trust import Trust


def check_cosignatures(
    conn: Connection, log: Log, key: LogKey, cosigned_by: Trust | None, report: Report
) -> None:
    """Every kept cosignature is of this log as stored, and (with ``cosigned_by``) by a trusted
    version of the centre's witness key valid when it cosigned."""
    rows = reads.cosignatures(conn)
    if not rows:
        if cosigned_by is not None:
            report.add("cosignatures", "none: the centre cosigned no checkpoint of this log")
        return
    report.counts["cosignatures"] = len(rows)
    if cosigned_by is None:
        report.notes.append(
            f"{len(rows)} cosignatures of the centre are kept but not checked: name the"
            " centre's witness key with --cosigned-by"
        )
    tree = MerkleTree(log.hashes)
    for row in rows:
        label = f"cosignature {row.id} (size {row.size})"
        signed = open_signed(label, row.note, key, report)
        if signed is None:
            continue
        size, root = signed.checkpoint.size, signed.checkpoint.root_hash
        if size > tree.size:
            report.add(
                label,
                f"the centre cosigned {size} entries of this log, the store holds {tree.size}"
                " (rolled back, or restored from an older copy?)",
            )
        elif tree.root(size) != root:
            report.add(label, "the store's log differs from the one the centre cosigned")
        if cosigned_by is not None:
            _check_cosigner(label, row.note, cosigned_by, report)
    newest = max(int(row.size) for row in rows)
    if newest < tree.size:
        report.notes.append(
            f"the centre cosigned this log up to {newest} of its {tree.size} entries"
        )


def _check_cosigner(label: str, text: str, cosigned_by: Trust, report: Report) -> None:
    for name, versions in cosigned_by.keys.items():
        cosigner_name = audit.cosigner_name(name)
        for version in versions:
            cosigner = Cosigner.of(cosigner_name, version.key)
            try:
                made = verify_cosignature(text, [cosigner])
            except VerificationError:
                continue
            try:
                at = datetime.fromtimestamp(made.timestamp, UTC)
            except (OverflowError, ValueError, OSError):
                report.add(label, f"a cosignature timestamp out of range ({made.timestamp})")
                return
            if not version.valid_in_second(at):
                report.add(
                    label,
                    f"cosigned by {name} v{version.version} at {at.isoformat()}, outside its"
                    " validity",
                )
            return
    report.add(label, "not cosigned by a trusted version of the centre's witness key")
