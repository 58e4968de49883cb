"""The centre as the witness of every site log (c2sp.org/tlog-witness, over the transport).

A site collector sends each new checkpoint of its log as the body of a
tlog-witness ``add-checkpoint`` request: the size of the last checkpoint the
centre cosigned for it, a consistency proof from there, and the checkpoint.
The centre checks, in the transaction that records its answer:

1. the checkpoint is signed by the site's audit key (the one its origin
   names, among the site's trusted keys), valid at the time it states;
2. its log is not another site's;
3. it is no smaller than the one cosigned last (else the site **rolled its
   log back**: refused and named);
4. the old size is the size cosigned last (else a ``conflict`` answer says
   which, and the site sends a proof from there);
5. it is consistent with the one cosigned last: one root per size, and the
   RFC 9162 proof verifies (else the site showed the centre a **fork**:
   refused and named).

Then the centre records it as the newest of that log and returns its
cosignature (C2SP tlog-cosignature v1, timestamped by the centre's clock: a
second clock beside the site's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine import audit
from engine.errors import VerificationError
from engine.keys import KeyVersion
from engine.sign import note
from engine.sign.cosignature import Cosignature
from engine.sign.merkle import EMPTY_ROOT, verify_consistency
from engine.store.central import Witnessed
from engine.store.wire import CheckpointMessage, Reply
from engine.verify.trust import Trust


class CheckpointRefused(VerificationError):
    """A site's checkpoint the centre will not cosign: a rollback, a fork, a bad signature."""


@dataclass(frozen=True)
class Opened:
    """A checkpoint whose log signature verified: its log, size, root and signed note."""

    origin: str
    checkpoint: note.Checkpoint
    note: str


def open_checkpoint(message: CheckpointMessage, keys: Trust) -> Opened:
    """The checkpoint of ``message``, signed by a trusted version of the audit key its origin
    names, valid at the time it states; :class:`CheckpointRefused` otherwise."""
    try:
        text, _ = note.split_note(message.note)
        origin = note.Checkpoint.from_text(text).origin
    except VerificationError as exc:
        raise CheckpointRefused(f"not a checkpoint ({exc})") from None
    key = audit.origin_key(origin)
    versions = keys.keys.get(key or "", ())
    if key is None or not versions:
        raise CheckpointRefused(f"the log {origin} is signed by a key the site's trusted keys lack")
    return Opened(origin, _signed(message.note, origin, versions), message.note)


def _signed(text: str, origin: str, versions: Sequence[KeyVersion]) -> note.Checkpoint:
    for version in versions:
        try:
            checkpoint = note.open_checkpoint(
                text, [note.verifier_key(origin, version.key)], origin
            )
        except note.NoKnownSignature:
            continue
        except VerificationError as exc:
            raise CheckpointRefused(f"its signature does not verify ({exc})") from None
        at = audit.signed_time(checkpoint)
        if at is None or not version.valid_in_second(at):
            raise CheckpointRefused(
                f"signed by {version.name} v{version.version} outside its validity"
            )
        return checkpoint
    raise CheckpointRefused("not signed by the site's audit key")


def judge(opened: Opened, message: CheckpointMessage, last: Witnessed | None) -> Reply | None:
    """``None`` when the checkpoint may be cosigned; a ``conflict`` answer when the site's old
    size is not the centre's; :class:`CheckpointRefused` for a rollback or a fork."""
    checkpoint, site = opened.checkpoint, message.site
    if last is not None and last.site != site:
        raise CheckpointRefused(f"the log {opened.origin} is site {last.site}'s")
    size = last.size if last is not None else 0
    if checkpoint.size < size:
        raise CheckpointRefused(
            f"site {site} rolled its log {opened.origin} back: the centre cosigned {size}"
            f" entries of it, this checkpoint has {checkpoint.size}"
        )
    if message.old_size != size:
        return Reply("conflict", f"the centre cosigned size {size} last", size=size)
    if checkpoint.size == 0 and checkpoint.root_hash != EMPTY_ROOT:
        raise CheckpointRefused("an empty log whose root is not the empty tree's")
    if last is None:
        if message.proof:
            raise CheckpointRefused("a consistency proof from the empty tree, which needs none")
        return None
    try:
        verify_consistency(
            last.size, checkpoint.size, last.root, checkpoint.root_hash, list(message.proof)
        )
    except VerificationError as exc:
        raise CheckpointRefused(
            f"site {site} showed the centre a fork of its log {opened.origin}: size"
            f" {checkpoint.size} is not consistent with size {last.size} cosigned before ({exc})"
        ) from None
    return None


def cosigned(opened: Opened, site: str, cosignature: Cosignature) -> tuple[Witnessed, str]:
    """What the centre records, and the note with its cosignature line."""
    checkpoint = opened.checkpoint
    seen = Witnessed(opened.origin, site, checkpoint.size, checkpoint.root_hash)
    return seen, opened.note + cosignature.line
