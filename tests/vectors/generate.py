"""Regenerate the verification vectors in tests/vectors/, deterministically.

    python tests/vectors/generate.py          # rewrite the files
    python tests/vectors/generate.py --check  # exit 1 if any file is stale

Each vector is one JSON file named by what it breaks, holding its inputs and
``want``: ``{"valid": true}`` or ``{"valid": false, "error": "<kind>"}``.
Hashes are lowercase hex, except inside notes (base64, as the formats say).
The expected outcome of every vector is written here by hand; the generator
refuses to write a vector that Converge's own verifier disagrees with.

The Merkle vectors use the RFC 6962 test tree (8 leaves) and its published
roots and proofs; the note vectors use two fixed Ed25519 test keys and the
published example of golang.org/x/mod/sumdb/note; the cosignature vectors
the examples of c2sp.org/tlog-cosignature (its checkpoint, timestamp, signed
message and cosignature line) and a published cosigner key.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from engine.records import Gap, GapReason, Quality, Reading, Record
from engine.sign import cosignature, merkle, note
from engine.sign import leaf as leaf_format

HERE = Path(__file__).resolve().parent
Vector = dict[str, Any]

# --- published data --------------------------------------------------------

SOURCE = (
    "transparency-dev/merkle, proof/verify_test.go (variables leaves, roots, inclusionProofs,"
    " consistencyProofs: the RFC 6962 test tree of the certificate-transparency reference"
    " implementation); the 1->8 consistency proof is also testdata/consistency/1/happy-path.json"
)
LEAVES = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
]
ROOTS = [  # roots[i] is the root of the first i + 1 leaves
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (0-based leaf index, tree size, proof); the Go source numbers leaves from 1.
INCLUSION = [
    (0, 1, []),
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip
CONSISTENCY = [  # (size1, size2, proof)
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip
GO_NOTE_SOURCE = "golang/mod, sumdb/note/note_test.go (TestSign, TestOpen)"
GO_SIGNER = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_SIG = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb"
    "6KE6RyyBwJnAM=\n"
)
ENOCH_VERIFIER = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
ENOCH_SIG = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33"
    "WWd1RvMc+QQ=\n"
)

# c2sp.org/tlog-cosignature (C2SP/C2SP, tlog-cosignature.md): the example checkpoint, its
# log signature, the example cosignature line and the example Ed25519 signed message.
SPEC_SOURCE = (
    "c2sp.org/tlog-cosignature, the examples of sections Format and Ed25519 signed message"
)
SPEC_CHECKPOINT = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
)
SPEC_LOG_LINE = (
    "— example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv"
    "2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
)
SPEC_COSIGNATURE_LINE = (
    "— witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2"
    "oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
)
SPEC_TIME = 1679315147
SPEC_MESSAGE = f"cosignature/v1\ntime {SPEC_TIME}\n{SPEC_CHECKPOINT}"
# A cosigner key published with transparency-dev/formats (note/note_cosigv1_test.go,
# TestCoSigV1NewVerifier, "native algEd25519CosignatureV1 verifier"): its key ID is of type 0x04.
REMORA_SOURCE = "transparency-dev/formats, note/note_cosigv1_test.go (TestCoSigV1NewVerifier)"
REMORA_KEY = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"
REMORA_AS_NOTE_KEY = "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6"

# --- fixed test keys (public on purpose: never use them for anything else) --

ORIGIN = "converge.example/audit"
LOG_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
LOG_VERIFIER = note.verifier_key(ORIGIN, LOG_KEY.public_key())
COSIGNER = "converge.example/witness"
COSIGNER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(64, 96)))
COSIGNER_VERIFIER = cosignature.Cosigner.of(COSIGNER, COSIGNER_KEY.public_key()).text


def valid(**extra: Any) -> dict[str, Any]:
    return {"valid": True, **extra}


def invalid(error: type[Exception]) -> dict[str, Any]:
    return {"valid": False, "error": error.__name__}


def leaf(i: int) -> str:
    return merkle.leaf_hash(bytes.fromhex(LEAVES[i])).hex()


# --- inclusion -------------------------------------------------------------


def inclusion(description: str, index: int, size: int, proof: list[str], **kw: Any) -> Vector:
    """A vector for the published proof of ``index`` in ``size``, fields overridden by ``kw``."""
    v: Vector = {"description": description, "leaf_index": index, "tree_size": size,
                 "leaf_hash": leaf(index), "proof": proof, "root": ROOTS[size - 1]}  # fmt: skip
    v.update(kw)
    return v


def inclusion_vectors() -> dict[str, Vector]:
    i, n, p = INCLUSION[2]
    ok, bad = valid(), invalid
    return {
        "happy-path": inclusion("published proof of leaf 5 in the 8-leaf tree", i, n, p,
                                source=SOURCE, want=ok),
        "happy-path-unbalanced": inclusion("published proof of leaf 1 in the 5-leaf tree",
                                           *INCLUSION[4], source=SOURCE, want=ok),
        "happy-path-single-leaf": inclusion("a one-leaf tree: empty proof, root = leaf hash",
                                            *INCLUSION[0], want=ok),
        "wrong-index": inclusion("the proof of leaf 5 claimed for leaf 4", i, n, p,
                                 leaf_index=4, want=bad(merkle.RootMismatch)),
        "wrong-leaf": inclusion("the proof of leaf 5 with the hash of leaf 4", i, n, p,
                                leaf_hash=leaf(4), want=bad(merkle.RootMismatch)),
        "swapped-siblings": inclusion("the first two proof hashes exchanged", i, n,
                                      [p[1], p[0], p[2]], want=bad(merkle.RootMismatch)),
        "flipped-bit": inclusion("bit 3 of the first byte of proof[1] flipped", i, n,
                                 [p[0], f"{int(p[1][:2], 16) ^ 8:02x}{p[1][2:]}", p[2]],
                                 want=bad(merkle.RootMismatch)),
        "truncated-proof": inclusion("the last proof hash removed", i, n, p[:-1],
                                     want=bad(merkle.ProofLengthError)),
        "extra-node": inclusion("the root appended to the proof", i, n, [*p, ROOTS[7]],
                                want=bad(merkle.ProofLengthError)),
        "wrong-root": inclusion("checked against the root of the 7-leaf tree", i, n, p,
                                root=ROOTS[6], want=bad(merkle.RootMismatch)),
        "wrong-size": inclusion("the 8-leaf proof claimed for a 16-leaf tree", i, n, p,
                                tree_size=16, want=bad(merkle.ProofLengthError)),
        "wrong-size-halved": inclusion("the 8-leaf proof claimed for a 4-leaf tree", i, n, p,
                                       tree_size=4, want=bad(merkle.IndexOutOfRange)),
        "size-not-bound-by-proof": inclusion(
            "VALID: leaf 5 has the same path in trees of 7 and 8 leaves, so the proof checks "
            "against root 8 claimed at size 7. Only a signature over (size, root) binds them.",
            i, n, p, tree_size=7, want=ok),
        "index-out-of-range": inclusion("leaf index equal to the tree size", i, n, p,
                                        leaf_index=8, want=bad(merkle.IndexOutOfRange)),
        "short-hash": inclusion("a proof hash of 31 bytes", i, n, [p[0], p[1][2:], p[2]],
                                want=bad(merkle.HashLengthError)),
    }  # fmt: skip


# --- consistency -----------------------------------------------------------


def consistency(description: str, m: int, n: int, proof: list[str], **kw: Any) -> Vector:
    """A vector for the published proof from ``m`` to ``n`` leaves, fields overridden by ``kw``."""
    v: Vector = {"description": description, "size1": m, "size2": n,
                 "root1": ROOTS[m - 1] if m else merkle.EMPTY_ROOT.hex(),
                 "root2": ROOTS[n - 1], "proof": proof}  # fmt: skip
    v.update(kw)
    return v


def consistency_vectors() -> dict[str, Vector]:
    m, n, p = CONSISTENCY[2]
    ok, bad = valid(), invalid
    return {
        "happy-path": consistency("published proof from 6 to 8 leaves", m, n, p,
                                  source=SOURCE, want=ok),
        "happy-path-power-of-two": consistency("published proof from 2 to 5 leaves (old root "
                                               "not sent)", *CONSISTENCY[3], source=SOURCE,
                                               want=ok),
        "happy-path-from-one": consistency("published proof from 1 to 8 leaves", *CONSISTENCY[1],
                                           source=SOURCE, want=ok),
        "truncated": consistency("the last proof hash removed", m, n, p[:-1],
                                 want=bad(merkle.ProofLengthError)),
        "empty-proof": consistency("no proof for different sizes", m, n, [],
                                   want=bad(merkle.ProofLengthError)),
        "extra-node": consistency("the new root appended to the proof", m, n, [*p, ROOTS[7]],
                                  want=bad(merkle.ProofLengthError)),
        "swapped-roots": consistency("root1 and root2 exchanged", m, n, p, root1=ROOTS[7],
                                     root2=ROOTS[5], want=bad(merkle.RootMismatch)),
        "wrong-root2": consistency("root2 of the 7-leaf tree", m, n, p, root2=ROOTS[6],
                                   want=bad(merkle.RootMismatch)),
        "flipped-bit": consistency("bit 4 of the first byte of proof[0] flipped", m, n,
                                   [f"{int(p[0][:2], 16) ^ 16:02x}{p[0][2:]}", *p[1:]],
                                   want=bad(merkle.RootMismatch)),
        "wrong-size": consistency("the 6->8 proof claimed for 6->16", m, n, p, size2=16,
                                  want=bad(merkle.ProofLengthError)),
        "wrong-size1": consistency("the 6->8 proof claimed for 5->8", m, n, p, size1=5,
                                   want=bad(merkle.ProofLengthError)),
        "size-not-bound-by-proof": consistency(
            "VALID: 6->7 and 6->8 proofs have the same shape, so the 6->8 proof checks against "
            "root 8 claimed at size 7. Only a signature over (size, root) binds them.",
            m, n, p, size2=7, want=ok),
        "size1-above-size2": consistency("the sizes exchanged: from 8 down to 6", m, n, p,
                                         size1=8, size2=6, want=bad(merkle.TreeSizeError)),
        "size-zero": consistency("from the empty tree: empty proof, root1 = SHA-256()", 0, 8, [],
                                 want=ok),
        "size-zero-wrong-root1": consistency("from the empty tree with a non-empty root1", 0, 8,
                                             [], root1=ROOTS[0], want=bad(merkle.RootMismatch)),
        "equal-sizes": consistency("8 to 8: empty proof, equal roots", 8, 8, [], want=ok),
        "equal-sizes-different-roots": consistency("8 to 8 with another root2", 8, 8, [],
                                                   root2=ROOTS[6], want=bad(merkle.RootMismatch)),
        "equal-sizes-nonempty-proof": consistency("8 to 8 with a proof hash", 8, 8, [ROOTS[7]],
                                                  want=bad(merkle.ProofLengthError)),
    }  # fmt: skip


# --- checkpoints and notes -------------------------------------------------


def checkpoint(size: int = 8, root: str = ROOTS[7], *extensions: str) -> note.Checkpoint:
    return note.Checkpoint(ORIGIN, size, bytes.fromhex(root), extensions)


def want_checkpoint(cp: note.Checkpoint) -> dict[str, Any]:
    fields = {"origin": cp.origin, "size": cp.size, "root_hash": cp.root_hash.hex()}
    return valid(checkpoint={**fields, "extensions": list(cp.extensions)})


def signed(text: str, key: Ed25519PrivateKey = LOG_KEY) -> str:
    return note.sign_note(text, ORIGIN, key)


def signed_unchecked(text: str) -> str:
    """Like :func:`signed`, without sign_note's refusal of malformed text."""
    sig = note.Signature(
        ORIGIN, note.key_id(ORIGIN, LOG_KEY.public_key()), LOG_KEY.sign(text.encode())
    )
    return f"{text}\n{sig.line}"


def cp_vector(description: str, signed_note: str, want: dict[str, Any], **kw: Any) -> Vector:
    v: Vector = {"description": description, "note": signed_note,
                 "verifier_keys": [LOG_VERIFIER], "origin": ORIGIN, "want": want}  # fmt: skip
    v.update(kw)
    return v


def b64(hex_hash: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_hash)).decode()


def checkpoint_vectors() -> dict[str, Vector]:
    cp = checkpoint()
    good = signed(cp.to_text())
    other_verifier = note.verifier_key(ORIGIN, OTHER_KEY.public_key())
    ext = checkpoint(8, ROOTS[7], "converge.example/epoch 3")
    bad = invalid
    first_sig_char = good.index("\u2014 ") + len(f"\u2014 {ORIGIN} ") + 8
    flipped = "A" if good[first_sig_char] != "A" else "B"
    return {
        "happy-path": cp_vector("checkpoint of the RFC 6962 8-leaf tree, signed by the log key",
                                good, want_checkpoint(cp), signer_key=note.signer_key(
                                    ORIGIN, LOG_KEY)),
        "with-extensions": cp_vector("one extension line after the root hash",
                                     signed(ext.to_text()), want_checkpoint(ext)),
        "cosigned-by-unknown-key": cp_vector("an extra signature by a key the verifier does not "
                                             "know is ignored", good + signed(cp.to_text(),
                                             OTHER_KEY).split("\n\n")[-1], want_checkpoint(cp)),
        "tampered-root": cp_vector("the root hash line replaced after signing",
                                   good.replace(b64(ROOTS[7]), b64(ROOTS[6])),
                                   bad(note.BadSignature)),
        "tampered-size": cp_vector("the size line changed after signing",
                                   good.replace("\n8\n", "\n7\n", 1), bad(note.BadSignature)),
        "tampered-signature": cp_vector("one base64 character of the signature changed",
                                        good[:first_sig_char] + flipped
                                        + good[first_sig_char + 1 :], bad(note.BadSignature)),
        "wrong-key": cp_vector("signed by another key under the log's name (other key ID)",
                               signed(cp.to_text(), OTHER_KEY), bad(note.NoKnownSignature)),
        "wrong-verifier": cp_vector("verified with another key only", good,
                                    bad(note.NoKnownSignature), verifier_keys=[other_verifier]),
        "missing-signature": cp_vector("the blank line but no signature line",
                                       cp.to_text() + "\n", bad(note.MalformedNote)),
        "missing-blank-line": cp_vector("no blank line between text and signature",
                                        good.replace("\n\n", "\n"), bad(note.MalformedNote)),
        "ascii-hyphen": cp_vector("signature line starts with '-' instead of U+2014",
                                  good.replace("\u2014", "-"), bad(note.MalformedNote)),
        "control-character": cp_vector("a tab in the origin line", signed_unchecked(
                                       cp.to_text().replace("/", "\t", 1)),
                                       bad(note.MalformedNote)),
        "bad-origin-line": cp_vector("empty origin line (validly signed)",
                                     signed(cp.to_text()[len(ORIGIN):]),
                                     bad(note.MalformedCheckpoint)),
        "wrong-origin": cp_vector("a checkpoint of another log, signed by this log's key",
                                  signed(cp.to_text().replace(ORIGIN, "other.example/log")),
                                  bad(note.OriginMismatch)),
        "bad-size-line": cp_vector("tree size with a leading zero (validly signed)",
                                   signed(cp.to_text().replace("\n8\n", "\n08\n", 1)),
                                   bad(note.MalformedCheckpoint)),
        "bad-root-line": cp_vector("root hash of 31 bytes (validly signed)",
                                   signed(cp.to_text().replace(b64(ROOTS[7]),
                                          base64.b64encode(bytes.fromhex(ROOTS[7])[:31])
                                          .decode())), bad(note.MalformedCheckpoint)),
        "missing-root-line": cp_vector("only origin and size (validly signed)",
                                       signed(f"{ORIGIN}\n8\n"), bad(note.MalformedCheckpoint)),
    }  # fmt: skip


def note_vectors() -> dict[str, Vector]:
    go_note = f"{GO_TEXT}\n{GO_SIG}"
    return {
        "go-reference": {"description": "the published example note; signing GO_TEXT with the "
                         "signer key must give exactly this note", "source": GO_NOTE_SOURCE,
                         "note": go_note, "signer_key": GO_SIGNER, "verifier_keys": [GO_VERIFIER],
                         "want": valid(text=GO_TEXT)},
        "go-reference-two-signers": {"description": "two signatures, both keys known",
                                     "source": GO_NOTE_SOURCE, "note": go_note + ENOCH_SIG,
                                     "verifier_keys": [GO_VERIFIER, ENOCH_VERIFIER],
                                     "want": valid(text=GO_TEXT)},
        "go-reference-unknown-second": {"description": "the second signer is not trusted: ignored",
                                        "source": GO_NOTE_SOURCE, "note": go_note + ENOCH_SIG,
                                        "verifier_keys": [GO_VERIFIER],
                                        "want": valid(text=GO_TEXT)},
        "go-reference-no-known-key": {"description": "only the second signer is trusted but its "
                                      "signature is absent", "source": GO_NOTE_SOURCE,
                                      "note": go_note, "verifier_keys": [ENOCH_VERIFIER],
                                      "want": invalid(note.NoKnownSignature)},
        "go-reference-edited-text": {"description": "one letter of the text changed",
                                     "source": GO_NOTE_SOURCE,
                                     "note": go_note.replace("cryptography", "cryptographY"),
                                     "verifier_keys": [GO_VERIFIER],
                                     "want": invalid(note.BadSignature)},
    }  # fmt: skip


def cosigned(text: str, timestamp: int = SPEC_TIME, key: Ed25519PrivateKey = COSIGNER_KEY) -> str:
    """``text`` with the spec's log signature line and a cosignature by ``key``."""
    return f"{text}\n{SPEC_LOG_LINE}" + cosignature.cosign(text, COSIGNER, key, timestamp).line


def cosig_vector(description: str, signed_note: str, want: dict[str, Any], **kw: Any) -> Vector:
    v: Vector = {"description": description, "note": signed_note,
                 "cosigner_keys": [COSIGNER_VERIFIER], "want": want}  # fmt: skip
    v.update(kw)
    return v


def cosignature_vectors() -> dict[str, Vector]:
    good = cosigned(SPEC_CHECKPOINT)
    line = good.rsplit("\n", 2)[-2]
    blob = base64.b64decode(line.rsplit(" ", 1)[-1])
    later = blob[:4] + (SPEC_TIME + 1).to_bytes(8, "big") + blob[12:]
    no_time = blob[:4] + blob[12:]
    huge = blob[:4] + (1 << 63).to_bytes(8, "big") + blob[12:]
    ext = SPEC_CHECKPOINT + "converge.example/epoch 3\n"
    plain = note.sign_note(SPEC_CHECKPOINT, COSIGNER, COSIGNER_KEY).split("\n\n")[-1]
    other = Ed25519PrivateKey.from_private_bytes(bytes(range(96, 128)))
    bad = invalid

    def with_blob(raw: bytes) -> str:
        return good.replace(line, f"— {COSIGNER} {base64.b64encode(raw).decode()}")

    ok = valid(cosignature={"name": COSIGNER, "timestamp": SPEC_TIME})
    return {
        "happy-path": cosig_vector("the spec's example checkpoint and log signature, cosigned at "
                                   "the spec's example time by the test cosigner",
                                   good, ok, source=SPEC_SOURCE,
                                   signer_seed=bytes(range(64, 96)).hex(),
                                   message=SPEC_MESSAGE),
        "with-extensions": cosig_vector("extension lines are part of the signed message",
                                        cosigned(ext), ok),
        "two-cosigners": cosig_vector("a second cosignature by an unknown cosigner is ignored",
                                      good + cosignature.cosign(SPEC_CHECKPOINT, "other.example/w",
                                                                other, 5).line, ok),
        "spec-line-unknown-key": cosig_vector("the spec's own example cosignature line: its "
                                              "witness key is not published, so nothing verifies",
                                              f"{SPEC_CHECKPOINT}\n{SPEC_LOG_LINE}"
                                              f"{SPEC_COSIGNATURE_LINE}",
                                              bad(note.NoKnownSignature), source=SPEC_SOURCE),
        "tampered-timestamp": cosig_vector("the timestamp field raised by one second",
                                           with_blob(later), bad(note.BadSignature)),
        "tampered-root": cosig_vector("the root hash line changed after cosigning",
                                      good.replace("CsUY", "DsUY"), bad(note.BadSignature)),
        "tampered-extension": cosig_vector("an extension line changed after cosigning",
                                           cosigned(ext).replace("epoch 3", "epoch 4"),
                                           bad(note.BadSignature)),
        "plain-note-signature": cosig_vector("the cosigner's key signs the text as an ordinary "
                                             "note (type 0x01): another key ID, not a cosignature",
                                             f"{SPEC_CHECKPOINT}\n{SPEC_LOG_LINE}{plain}",
                                             bad(note.NoKnownSignature)),
        "missing-timestamp": cosig_vector("key ID and signature without the 8-byte timestamp",
                                          with_blob(no_time), bad(note.MalformedNote)),
        "timestamp-too-large": cosig_vector("a timestamp of 2**63", with_blob(huge),
                                            bad(note.MalformedNote)),
        "wrong-cosigner-key": cosig_vector("cosigned by another key under the cosigner's name",
                                           cosigned(SPEC_CHECKPOINT, key=other),
                                           bad(note.NoKnownSignature)),
    }  # fmt: skip


def cosigner_key_vectors() -> dict[str, Vector]:
    return {
        "published-cosigner-key": {"description": "a published Ed25519 cosigner key: its key ID "
                                   "is SHA-256(name || 0x0A || 0x04 || key)[:4]",
                                   "source": REMORA_SOURCE, "key": REMORA_KEY,
                                   "want": valid(key_id="da77ade7")},
        "note-key-is-not-a-cosigner-key": {"description": "an ordinary (type 0x01) verifier key "
                                           "is refused", "source": REMORA_SOURCE,
                                           "key": REMORA_AS_NOTE_KEY,
                                           "want": invalid(note.MalformedKey)},
        "wrong-key-id": {"description": "the published key with another key ID",
                         "key": REMORA_KEY.replace("da77ade7", "00000000"),
                         "want": invalid(note.MalformedKey)},
        "test-cosigner": {"description": "the test cosigner's key (seed 0x40..0x5f)",
                          "key": COSIGNER_VERIFIER,
                          "want": valid(key_id=COSIGNER_VERIFIER.split("+")[1])},
    }  # fmt: skip


def spec_message() -> Vector:
    """The spec's example: what is signed for its checkpoint at its time, byte for byte, and
    what its example cosignature line holds."""
    blob = base64.b64decode(SPEC_COSIGNATURE_LINE.rsplit(" ", 1)[-1])
    return {
        "description": "c2sp.org/tlog-cosignature: the Ed25519 signed message of the example "
        "checkpoint at the example time, and the fields of the example cosignature line",
        "source": SPEC_SOURCE,
        "checkpoint_text": SPEC_CHECKPOINT,
        "timestamp": SPEC_TIME,
        "message": SPEC_MESSAGE,
        "line": SPEC_COSIGNATURE_LINE,
        "line_fields": {"name": "witness.example.com/w1", "key_id": blob[:4].hex(),
                        "timestamp": int.from_bytes(blob[4:12], "big"),
                        "signature": blob[12:].hex()},
    }  # fmt: skip


def rfc6962() -> Vector:
    return {
        "description": "The RFC 6962 test tree: leaf data (hex), the root of every prefix size, "
        "and the published inclusion (0-based leaf index) and consistency proofs.",
        "source": SOURCE,
        "leaves": LEAVES,
        "roots": [{"size": i + 1, "root": r} for i, r in enumerate(ROOTS)],
        "empty_root": merkle.EMPTY_ROOT.hex(),
        "inclusion_proofs": [
            {"leaf_index": i, "tree_size": n, "proof": p} for i, n, p in INCLUSION
        ],
        "consistency_proofs": [{"size1": m, "size2": n, "proof": p} for m, n, p in CONSISTENCY],
    }


# --- leaves of records (docs/records.md) ------------------------------------

LEAF_EXAMPLES: dict[str, tuple[str, dict[str, Any], str]] = {
    "reading-scheduled": (
        "docs/records.md example 1: a polled reading filling its 5 s slot",
        {"type": "reading", "device": "reactor-7", "point": "TT701_PV",
         "collected_at": "2026-06-01T12:00:05.012345Z", "scheduled_at": "2026-06-01T12:00:05Z",
         "value": 21.35, "quality": "good"},
        "000102030405060708090a0b0c0d0e0f"),
    "gap-exception": (
        "docs/records.md example 2: a gap record for a Modbus exception 2",
        {"type": "gap", "device": "reactor-7", "point": "PT701_PV",
         "scheduled_at": "2026-06-01T12:00:05Z", "reason": "exception",
         "detail": "illegal data address", "raw_code": 2},
        "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"),
    "reading-subscription": (
        "a subscribed reading with source and server times, folding 3 changes",
        {"type": "reading", "device": "press-2", "point": "PT200", "value": 1013.25,
         "collected_at": "2026-06-01T12:00:00.250000Z", "quality": "uncertain",
         "source_at": "2026-06-01T11:59:59.999999Z", "server_at": "2026-06-01T12:00:00.1Z",
         "raw_code": 1083441152, "coalesced": 3},
        "00112233445566778899aabbccddeeff"),
    "reading-bad": (
        "a bad reading keeps its place with value null",
        {"type": "reading", "device": "press-2", "point": "PT200", "value": None,
         "collected_at": "2026-06-01T12:00:01Z", "quality": "bad", "raw_code": "BadNodeIdUnknown"},
        "ffffffffffffffffffffffffffffffff"),
    "reading-integral-float": (
        "the float 20.0 is written as the JCS number 20",
        {"type": "reading", "device": "press-2", "point": "SP200", "value": 20.0,
         "collected_at": "2026-06-01T12:00:02Z", "quality": "good"},
        "0f0e0d0c0b0a09080706050403020100"),
    "gap-unicode-point": (
        "a point name outside ASCII is written as raw UTF-8, not escaped; no detail member",
        {"type": "gap", "device": "tank-3", "point": "Füllstand_µ",
         "scheduled_at": "2026-06-01T23:59:59.999Z", "reason": "timeout"},
        "a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5"),
    "reading-held": (
        "docs/records.md example 3: a subscribed point's 5 s slot holding the value delivered"
        " before it, with that delivery's times",
        {"type": "reading", "device": "press-2", "point": "PT200", "value": 1013.25,
         "collected_at": "2026-06-01T12:00:03.480000Z", "quality": "good",
         "source_at": "2026-06-01T12:00:03.400000Z", "scheduled_at": "2026-06-01T12:00:05Z",
         "held": True},
        "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"),
    "gap-run": (
        "docs/records.md example 4: one gap record for 720 consecutive 5 s slots the"
        " collector was not running at",
        {"type": "gap", "device": "reactor-7", "point": "TT701_PV",
         "scheduled_at": "2026-06-01T12:00:05Z", "last_scheduled_at": "2026-06-01T13:00:00Z",
         "slots": 720, "reason": "shutdown", "detail": "the collector was not running"},
        "0123456789abcdef0123456789abcdef"),
}  # fmt: skip


def record_from(fields: dict[str, Any]) -> Record:
    """The Reading or Gap that a vector's ``record`` describes (times as RFC 3339)."""
    args = {k: v for k, v in fields.items() if k != "type"}
    for k in ("collected_at", "scheduled_at", "source_at", "server_at", "last_scheduled_at"):
        if k in args:
            args[k] = datetime.fromisoformat(args[k])
    if fields["type"] == "gap":
        return Gap(**{**args, "reason": GapReason(args["reason"])})
    return Reading(**{**args, "quality": Quality(args["quality"])})


def leaf_vectors() -> dict[Path, Vector]:
    files: dict[Path, Vector] = {}
    for name, (description, fields, salt) in LEAF_EXAMPLES.items():
        data = leaf_format.leaf_bytes(record_from(fields), bytes.fromhex(salt))
        files[HERE / "leaf" / f"{name}.json"] = {
            "description": description, "record": fields, "salt": salt,
            "leaf": data.decode("utf-8"), "leaf_hex": data.hex(),
            "leaf_hash": merkle.leaf_hash(data).hex(),
        }  # fmt: skip
    return files


# --- outcome checks: our verifier must agree with every hand-written want ---


def h(x: str) -> bytes:
    return bytes.fromhex(x)


def run_inclusion(v: Vector) -> Any:
    merkle.verify_inclusion(h(v["leaf_hash"]), v["leaf_index"], v["tree_size"],
                            [h(x) for x in v["proof"]], h(v["root"]))  # fmt: skip
    return None


def run_consistency(v: Vector) -> Any:
    merkle.verify_consistency(v["size1"], v["size2"], h(v["root1"]), h(v["root2"]),
                              [h(x) for x in v["proof"]])  # fmt: skip
    return None


def run_checkpoint(v: Vector) -> Any:
    cp = note.open_checkpoint(v["note"], v["verifier_keys"], v["origin"])
    return {"origin": cp.origin, "size": cp.size, "root_hash": cp.root_hash.hex(),
            "extensions": list(cp.extensions)}  # fmt: skip


def run_note(v: Vector) -> Any:
    return note.verify_note(v["note"], v["verifier_keys"])


def run_cosignature(v: Vector) -> Any:
    cosigners = [cosignature.parse_cosigner_key(k) for k in v["cosigner_keys"]]
    found = cosignature.verify_cosignature(v["note"], cosigners)
    return {"name": found.name, "timestamp": found.timestamp}


def run_cosigner_key(v: Vector) -> Any:
    return cosignature.parse_cosigner_key(v["key"]).key_id.hex()


RUNNERS: dict[str, Callable[[Vector], Any]] = {
    "inclusion": run_inclusion,
    "consistency": run_consistency,
    "checkpoint": run_checkpoint,
    "note": run_note,
    "cosignature": run_cosignature,
    "cosigner-key": run_cosigner_key,
}


def outcome(kind: str, v: Vector) -> dict[str, Any]:
    """What Converge's verifier says of vector ``v``, in the shape of its ``want``."""
    try:
        result = RUNNERS[kind](v)
    except merkle.VerificationError as exc:
        return {"valid": False, "error": type(exc).__name__}
    key = {"checkpoint": "checkpoint", "note": "text", "cosignature": "cosignature",
           "cosigner-key": "key_id"}.get(kind)  # fmt: skip
    return valid(**{key: result}) if key else valid()


# --- writing ---------------------------------------------------------------


def render() -> dict[Path, str]:
    """Every vector file's path and exact content."""
    files = {HERE / "merkle" / "rfc6962-roots.json": rfc6962(), **leaf_vectors(),
             HERE / "cosigned-message" / "spec-example.json": spec_message()}  # fmt: skip
    groups = {"inclusion": inclusion_vectors(), "consistency": consistency_vectors(),
              "checkpoint": checkpoint_vectors(), "note": note_vectors(),
              "cosignature": cosignature_vectors(),
              "cosigner-key": cosigner_key_vectors()}  # fmt: skip
    for kind, vectors in groups.items():
        for name, v in vectors.items():
            got = outcome(kind, v)
            if got != v["want"]:
                raise SystemExit(f"{kind}/{name}: verifier says {got}, vector wants {v['want']}")
            files[HERE / kind / f"{name}.json"] = v
    return {p: json.dumps(v, indent=2, ensure_ascii=False) + "\n" for p, v in files.items()}


def stale(files: dict[Path, str]) -> list[Path]:
    """Files whose content on disk differs from ``files``, and vector files no longer made."""
    on_disk = set(HERE.glob("*/*.json"))
    changed = [p for p, text in files.items() if not p.is_file() or p.read_text("utf-8") != text]
    return sorted(changed + list(on_disk - set(files)))


def main(argv: list[str]) -> int:
    files = render()
    if "--check" in argv:
        for path in stale(files):
            print(f"stale: {path.relative_to(HERE)}")
        return 1 if stale(files) else 0
    for path in set(HERE.glob("*/*.json")) - set(files):
        path.unlink()
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, "utf-8")
    print(f"wrote {len(files)} vector files under {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
