"""C2SP tlog-cosignature v1 (Ed25519): the vectors built from the spec, signing, properties."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from sign_vectors import VECTORS, outcome, vectors

from engine.sign import cosignature, note
from engine.sign.cosignature import (
    Cosignature,
    Cosigner,
    add_line,
    cosign,
    parse_cosigner_key,
    signed_message,
    verify_cosignature,
)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(64, 96)))
NAME = "converge.example/witness"
LOG_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
ORIGIN = "converge.example/audit"


@pytest.mark.parametrize("v", vectors("cosignature"))
def test_cosignature_vector(v):
    def run():
        found = verify_cosignature(v["note"], [parse_cosigner_key(k) for k in v["cosigner_keys"]])
        return {"valid": True, "cosignature": {"name": found.name, "timestamp": found.timestamp}}

    assert outcome(run) == v["want"]


@pytest.mark.parametrize("v", vectors("cosigner-key"))
def test_cosigner_key_vector(v):
    def run():
        return {"valid": True, "key_id": parse_cosigner_key(v["key"]).key_id.hex()}

    assert outcome(run) == v["want"]


def test_the_spec_example_message_and_line():
    """The signed message of the spec's example is its bytes exactly; its example line holds the
    timestamp its example message states."""
    spec = json.loads((VECTORS / "cosigned-message" / "spec-example.json").read_text("utf-8"))
    assert signed_message(spec["checkpoint_text"], spec["timestamp"]).decode() == spec["message"]
    _, lines = note.split_note(f"{spec['checkpoint_text']}\n{spec['line']}")
    made = Cosignature.of(lines[0])
    assert (made.name, made.key_id.hex(), made.timestamp, made.signature.hex()) == tuple(
        spec["line_fields"].values()
    )
    assert made.line == spec["line"]


def test_signing_reproduces_the_happy_path_byte_for_byte():
    v = json.loads((VECTORS / "cosignature" / "happy-path.json").read_text("utf-8"))
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["signer_seed"]))
    text, lines = note.split_note(v["note"])
    want = v["want"]["cosignature"]
    made = cosign(text, want["name"], key, want["timestamp"])
    assert made.line == lines[-1].line
    assert signed_message(text, made.timestamp).decode() == v["message"]


def test_a_cosigner_key_never_verifies_a_plain_note_signature():
    """Type 0x04 and 0x01 key IDs differ: neither key text opens the other's signature."""
    checkpoint = note.Checkpoint(ORIGIN, 3, bytes(32), ("time 1780315200",))
    signed = note.sign_checkpoint(checkpoint, ORIGIN, LOG_KEY)
    cosigner = Cosigner.of(ORIGIN, LOG_KEY.public_key())
    with pytest.raises(note.NoKnownSignature):
        verify_cosignature(signed, [cosigner])
    both = add_line(signed, cosign(checkpoint.to_text(), ORIGIN, LOG_KEY, 1780315201))
    assert verify_cosignature(both, [cosigner]).timestamp == 1780315201
    assert note.open_checkpoint(both, [note.verifier_key(ORIGIN, LOG_KEY.public_key())], ORIGIN)
    assert cosigner.key_id != note.key_id(ORIGIN, LOG_KEY.public_key())


def test_a_trusted_cosignature_that_fails_rejects_the_note():
    text = note.Checkpoint(ORIGIN, 1, bytes(32)).to_text()
    good = add_line(note.sign_note(text, ORIGIN, LOG_KEY), cosign(text, NAME, KEY, 7))
    cosigner = Cosigner.of(NAME, KEY.public_key())
    forged = good.replace(cosign(text, NAME, KEY, 7).line, cosign(text, NAME, KEY, 8).line[:-6])
    with pytest.raises(note.MalformedNote):
        verify_cosignature(forged, [cosigner])
    other = cosign(text.replace("\n1\n", "\n2\n"), NAME, KEY, 7)
    with pytest.raises(note.BadSignature):
        verify_cosignature(add_line(note.sign_note(text, ORIGIN, LOG_KEY), other), [cosigner])


def test_the_verifier_key_text_round_trips():
    cosigner = Cosigner.of(NAME, KEY.public_key())
    assert parse_cosigner_key(cosigner.text) == cosigner
    with pytest.raises(note.MalformedKey):
        parse_cosigner_key(cosigner.text.replace(NAME, "bad name"))
    with pytest.raises(note.MalformedKey):
        Cosigner.of("a+b", KEY.public_key())
    assert cosignature.key_id(NAME, KEY.public_key()) == cosigner.key_id


@given(timestamp=st.integers(0, (1 << 63) - 1), size=st.integers(0, 1 << 40))
def test_any_timestamp_and_size_round_trip(timestamp, size):
    text = note.Checkpoint(ORIGIN, size, bytes(range(32))).to_text()
    signed = add_line(note.sign_note(text, ORIGIN, LOG_KEY), cosign(text, NAME, KEY, timestamp))
    found = verify_cosignature(signed, [Cosigner.of(NAME, KEY.public_key())])
    assert found.timestamp == timestamp


def test_a_timestamp_beyond_the_spec_is_refused():
    with pytest.raises(note.MalformedNote):
        signed_message("a\n1\nAAAA\n", 1 << 63)
    with pytest.raises(note.MalformedNote):
        signed_message("no newline", 1)
