"""C2SP signed notes and tlog checkpoints: the shared vectors, the Go reference note, properties."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from sign_vectors import VECTORS, outcome, vectors

from engine.sign.note import (
    BadSignature,
    Checkpoint,
    MalformedCheckpoint,
    MalformedKey,
    MalformedNote,
    NoKnownSignature,
    OriginMismatch,
    key_id,
    open_checkpoint,
    parse_signer_key,
    parse_verifier_key,
    sign_checkpoint,
    sign_note,
    signer_key,
    split_note,
    verifier_key,
    verify_note,
)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
NAME = "converge.example/audit"
VKEY = verifier_key(NAME, KEY.public_key())


# --- the vectors -----------------------------------------------------------


@pytest.mark.parametrize("v", vectors("checkpoint"))
def test_checkpoint_vector(v):
    def run():
        cp = open_checkpoint(v["note"], v["verifier_keys"], v["origin"])
        got = {"origin": cp.origin, "size": cp.size, "root_hash": cp.root_hash.hex()}
        return {"valid": True, "checkpoint": {**got, "extensions": list(cp.extensions)}}

    assert outcome(run) == v["want"]


@pytest.mark.parametrize("v", vectors("note"))
def test_note_vector(v):
    def run():
        return {"valid": True, "text": verify_note(v["note"], v["verifier_keys"])}

    assert outcome(run) == v["want"]


@pytest.mark.parametrize("kind", ["checkpoint", "note"])
def test_signing_reproduces_every_signed_vector(kind):
    for param in vectors(kind):
        v = param.values[0]
        if "signer_key" in v and v["want"]["valid"]:
            name, key = parse_signer_key(v["signer_key"])
            text, _ = split_note(v["note"])
            assert sign_note(text, name, key) == v["note"]


def test_every_named_vector_exists():
    names = {p.stem for p in (VECTORS / "checkpoint").glob("*.json")}
    assert {"happy-path", "tampered-root", "wrong-key", "missing-signature"} <= names
    assert "bad-origin-line" in names


# --- the published Go example ----------------------------------------------


def test_keys_match_the_go_reference():
    go = json.loads((VECTORS / "note" / "go-reference.json").read_text("utf-8"))
    name, key = parse_signer_key(go["signer_key"])
    assert signer_key(name, key) == go["signer_key"]
    assert verifier_key(name, key.public_key()) == go["verifier_keys"][0]
    assert key_id(name, key.public_key()).hex() == "c74f20a3"
    assert parse_verifier_key(go["verifier_keys"][0]).name == "PeterNeumann"


def test_mangled_verifier_keys_are_refused():
    for i in range(len(VKEY)):
        mangled = VKEY[:i] + chr(ord(VKEY[i]) + 1) + VKEY[i + 1 :]
        with pytest.raises(MalformedKey):
            parse_verifier_key(mangled)
    for cut in (VKEY[:-1], VKEY[1:], VKEY.replace("+", " ", 1)):
        with pytest.raises(MalformedKey):
            parse_verifier_key(cut)


# --- signed notes ----------------------------------------------------------


def test_a_signed_note_is_text_blank_line_signature():
    note = sign_note("hello\n", NAME, KEY)
    text, sigs = split_note(note)
    assert note.startswith("hello\n\n\u2014 converge.example/audit ")
    assert text == "hello\n" and len(sigs) == 1
    blob = base64.b64decode(note.rsplit(" ", 1)[1])
    assert blob[:4] == key_id(NAME, KEY.public_key()) and len(blob) == 68


def test_note_errors_name_what_failed():
    note = sign_note("hello\n", NAME, KEY)
    with pytest.raises(BadSignature, match=r"invalid signature for key converge.example/audit\+"):
        verify_note(note.replace("hello", "hullo"), VKEY)
    with pytest.raises(NoKnownSignature, match="known: other"):
        verify_note(note, verifier_key("other", KEY.public_key()))
    with pytest.raises(MalformedKey, match="given twice"):
        verify_note(note, [VKEY, VKEY])
    with pytest.raises(MalformedNote):
        verify_note(note.encode("utf-16"), VKEY)
    with pytest.raises(MalformedNote, match="got 101, want at most 100"):
        verify_note(note + note.split("\n\n")[1] * 100, VKEY)


def test_a_bad_signature_from_a_known_key_rejects_the_note_even_beside_a_good_one():
    note = sign_note("hello\n", NAME, KEY)
    good_line = note.split("\n\n")[1]
    bad_line = good_line[:40] + ("A" if good_line[40] != "A" else "B") + good_line[41:]
    with pytest.raises(BadSignature):
        verify_note(note + bad_line, VKEY)


def test_sign_note_refuses_what_it_could_not_verify():
    with pytest.raises(MalformedNote):
        sign_note("no newline", NAME, KEY)
    with pytest.raises(MalformedNote):
        sign_note("tab\there\n", NAME, KEY)
    with pytest.raises(MalformedKey):
        sign_note("hello\n", "has space", KEY)
    with pytest.raises(MalformedKey):
        sign_note("hello\n", "a+b", KEY)


# --- checkpoints -----------------------------------------------------------


def test_checkpoint_text_is_byte_exact():
    cp = Checkpoint("example.com/log", 0, bytes(32), ("ext one",))
    zeros = "A" * 43 + "="
    assert cp.to_text() == f"example.com/log\n0\n{zeros}\next one\n"


def test_origin_mismatch_says_got_and_want():
    note = sign_checkpoint(Checkpoint(NAME, 1, bytes(32)), NAME, KEY)
    with pytest.raises(OriginMismatch, match=r"got 'converge\.example/audit', want 'x\.example'"):
        open_checkpoint(note, VKEY, "x.example")


@pytest.mark.parametrize(
    "text",
    [
        "o\n1\n",
        "o\n01\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "o\n-1\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "o\n1\n" + base64.b64encode(bytes(32)).decode(),
        "o\n1\n" + base64.b64encode(bytes(32)).decode().rstrip("=") + "\n",
        "o\n1\n" + base64.b64encode(bytes(32)).decode() + "\n\n",
        "\n1\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "o\n１\n" + base64.b64encode(bytes(32)).decode() + "\n",
    ],
    ids=[
        "two-lines",
        "leading-zero",
        "negative",
        "no-final-newline",
        "unpadded-root",
        "empty-extension",
        "empty-origin",
        "fullwidth-digit",
    ],
)
def test_malformed_checkpoint_texts(text):
    with pytest.raises(MalformedCheckpoint):
        Checkpoint.from_text(text)


line = st.text(
    st.characters(min_codepoint=0x20, blacklist_characters="\x7f", blacklist_categories=("Cs",)),
    min_size=1,
)


@given(line, st.integers(0, 2**64 - 1), st.binary(min_size=32, max_size=32), st.lists(line))
def test_checkpoints_round_trip_through_a_signed_note(origin, size, root_hash, extensions):
    cp = Checkpoint(origin, size, root_hash, tuple(extensions))
    assert Checkpoint.from_text(cp.to_text()) == cp
    note = sign_checkpoint(cp, NAME, KEY)
    assert open_checkpoint(note, [VKEY], origin) == cp


def test_a_note_that_is_not_utf8_text_is_refused():
    with pytest.raises(MalformedNote, match="lone surrogate"):
        sign_note("origin \ud800\n", NAME, KEY)
