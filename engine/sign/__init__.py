"""Sign: RFC 9162 Merkle trees and proofs, C2SP signed notes and tlog checkpoints.

``proof`` decides which nodes form a proof (index arithmetic only),
``merkle`` hashes and checks, ``note`` signs and opens notes and checkpoints.
The byte formats are in docs/evidence.md; every failure is a
:class:`VerificationError`::

    ConvergeError
    └── VerificationError
        ├── RootMismatch(got, want)        ├── NoteError
        ├── ProofLengthError(got, want)    │   ├── MalformedNote
        ├── HashLengthError(got, want)     │   ├── MalformedKey
        ├── IndexOutOfRange(got, want)     │   ├── NoKnownSignature
        ├── TreeSizeError(got, want)       │   └── BadSignature
        │                                  └── CheckpointError
        │                                      ├── MalformedCheckpoint
        │                                      └── OriginMismatch(got, want)
"""

from __future__ import annotations

from engine.errors import VerificationError
from engine.sign.merkle import (
    EMPTY_ROOT,
    HashLengthError,
    IndexOutOfRange,
    MerkleLog,
    MerkleTree,
    ProofLengthError,
    RootMismatch,
    TreeSizeError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    root_from_inclusion,
    root_of_hashes,
    verify_consistency,
    verify_inclusion,
)
from engine.sign.note import (
    BadSignature,
    Checkpoint,
    CheckpointError,
    MalformedCheckpoint,
    MalformedKey,
    MalformedNote,
    NoKnownSignature,
    NoteError,
    OriginMismatch,
    key_id,
    open_checkpoint,
    parse_signer_key,
    parse_verifier_key,
    sign_checkpoint,
    sign_note,
    signer_key,
    verifier_key,
    verify_note,
)

__all__ = [
    "EMPTY_ROOT",
    "BadSignature",
    "Checkpoint",
    "CheckpointError",
    "HashLengthError",
    "IndexOutOfRange",
    "MalformedCheckpoint",
    "MalformedKey",
    "MalformedNote",
    "MerkleLog",
    "MerkleTree",
    "NoKnownSignature",
    "NoteError",
    "OriginMismatch",
    "ProofLengthError",
    "RootMismatch",
    "TreeSizeError",
    "VerificationError",
    "consistency_proof",
    "inclusion_proof",
    "key_id",
    "leaf_hash",
    "node_hash",
    "open_checkpoint",
    "parse_signer_key",
    "parse_verifier_key",
    "root",
    "root_from_inclusion",
    "root_of_hashes",
    "sign_checkpoint",
    "sign_note",
    "signer_key",
    "verifier_key",
    "verify_consistency",
    "verify_inclusion",
    "verify_note",
]
