"""Three verifiers, one verdict on legal holds.

Whether a deletion was lawful under the holds is decided three times, by design, so that
an auditor need not trust the code that wrote the evidence: ``audit verify`` on the store
(engine/verify/retention.py), the bundle verifier every export carries and ``converge
verify`` runs (engine/export/verifier.py), and the verifier written from the
documentation alone (tests/docs_verifier.py, which reads stores, not bundles). The rules
are one (docs/retention.md, docs/audit.md, docs/bundle.md); the example tests check each
case apart, and this test generates histories and requires the three to agree on each.

A history is made on a real SQLite store through the engine's own APIs: readings of two
devices stored window after window (line-a, whose points are kept at most 10 minutes, and
lab-c, whose P1 is kept at least 3 hours: the records are one to two hours old, so a run
finds line-a's and lab-c's P2 expired, never lab-c's P1); holds on devices, points and ranges
placed and released by lena (who has the ``access.hold`` grant) and tried by alice (who
has none) and bob (denied); retention runs in between, so that a run comes before, during
or after a hold. Then, perhaps, an insider's tampering after the fact, with the audit
log's key (every checkpoint still verifies) and the store's rows made to match:

- held records deleted with a receipt and erasure in a run's shape, signed;
- a hold's release removed from the log (renumbered, re-signed), after a run deleted what
  the hold covered;
- a hold's release made to name another decision: none, the one that placed the hold, or
  one that refused alice;
- a read decision of the same id inserted before the decision that allowed a hold's
  placing or release (the first of its id, it is the entry's decision);
- a hold's ``from`` spelled as the same instant at a UTC offset (as text, an hour later).

The store is then exported (some devices, points, a range), the bundle checked in-process
with the auditor's trust file (tests/test_export.py holds the standalone ``verify.py`` to
the same verdict), and the verdicts compared on what both sides see.
``audit verify`` and the docs verifier read the whole store: they name the same receipts
and hold entries. A bundle carries only the receipts and holds touching its points and
range (``retention.json``): the bundle verifier names exactly those of the store
verifiers' that its bundle carries. A lawful history passes all three, and a tampered
entry fails every verifier that sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

import docs_verifier
import pytest
import sqlalchemy as sa
from evidence_kit import T0, Site, collect, open_store, public_keys, records
from forger import Forger, Holder
from hypothesis import example, given, settings
from hypothesis import strategies as st
from retention_kit import DEVICES, kinds, run, sealed
from test_export import read, trust_file
from test_retention_tamper import forge_deletion

from engine.audit import Actor, AuditEntry, seal_with
from engine.cli import main
from engine.errors import AccessDenied
from engine.export import verifier
from engine.retention import StoreUnverified
from engine.retention.holds import HoldRefused, place, release
from engine.sign.leaf import instant
from engine.store.retention import Scope
from engine.store.spool import Spool
from engine.store.store import Store
from engine.verify.whole import verify_store
from plugins.fileprincipals import PrincipalsFile

WINDOW = timedelta(seconds=30)
LENA, ALICE, BOB = "lena@example.com", "alice@example.com", "bob@contractor.example"
AUDITOR = "dana@audit.example"


@pytest.fixture(scope="module")
def site(retention_site: Site) -> Site:
    """line-a and lab-c of the retention site."""
    plans = [sealed(device, DEVICES[device]) for device in ("line-a", "lab-c")]
    return Site(retention_site.keys_dir, retention_site.plans_dir, plans)


def window(k: int) -> tuple[str, str]:
    """The ``k``-th 30-second window from T0, as instants."""
    return instant(T0 + k * WINDOW), instant(T0 + (k + 1) * WINDOW)


# --- a history, made through the engine's APIs ------------------------------------------


class History:
    """A store being written: readings window after window, holds, retention runs."""

    def __init__(self, site: Site, principals: Path, folder: Path) -> None:
        self.site, self.principals, self.folder = site, principals, folder
        self.people = PrincipalsFile(principals)
        self.keys = site.key_store()
        self.target = str(folder / "evidence.db")
        self.store = open_store(site, self.target)
        self.windows = 0
        self.holds: list[int] = []
        for _ in range(2):  # a run before any other step deletes something
            self.store_window()

    def store_window(self) -> int:
        """One more window of readings of every point, signed and stored; its number."""
        spool = Spool(self.folder / f"spool-{self.windows}.db")
        readings = records(self.site, WINDOW.seconds, T0 + self.windows * WINDOW)
        asyncio.run(collect(self.site, self.store, spool, list(readings)))
        spool.close()
        self.windows += 1
        return self.windows - 1

    def place(self, principal: str, scope: Scope) -> int | None:
        """The hold's id; None when the guard refused it, or there was nothing to hold."""
        try:
            placed = place(self.store, self.people, principal, scope, "dispute", keys=self.keys)
        except (AccessDenied, HoldRefused):
            return None
        self.holds.append(placed.id)
        return placed.id

    def release(self, principal: str, hold: int) -> None:
        """Released, unless the guard refused it or it was released already."""
        with contextlib.suppress(AccessDenied, HoldRefused):
            release(self.store, self.people, principal, hold, "settled", keys=self.keys)

    def run(self) -> None:
        run(self.site, self.store)

    def batch(self, device: str, k: int) -> int:
        """The id of ``device``'s batch of window ``k``."""
        with self.store.reading() as conn:
            found = conn.execute(
                sa.text("SELECT id FROM batches WHERE device = :d AND window_start = :s"),
                {"d": device, "s": window(k)[0]},
            )
            return int(found.scalar_one())

    def every(self, kind: str, **said: Any) -> list[AuditEntry]:
        """The ``kind`` entries whose payload says ``said``."""
        return [e for e in kinds(self.store, kind) if said.items() <= e.payload.items()]

    def last(self, kind: str, **said: Any) -> AuditEntry:
        """The last ``kind`` entry whose payload says ``said``."""
        return self.every(kind, **said)[-1]

    @contextlib.contextmanager
    def insider(self) -> Iterator[Forger]:
        """The insider with the audit log's key, rewriting the store in one transaction."""
        self.store.close()
        with Forger.on(self.target, Holder.of(self.keys, "audit-log")) as forger:
            yield forger
        self.store = Store.open(self.target, actor=Actor.job("test"))


@dataclass(frozen=True)
class StoreWindow:
    def apply(self, history: History) -> None:
        history.store_window()


@dataclass(frozen=True)
class PlaceHold:
    principal: str
    scope: Scope

    def apply(self, history: History) -> None:
        history.place(self.principal, self.scope)


@dataclass(frozen=True)
class ReleaseHold:
    principal: str
    pick: int
    """Which of the holds placed so far (modulo their number)."""

    def apply(self, history: History) -> None:
        if history.holds:
            history.release(self.principal, history.holds[self.pick % len(history.holds)])


@dataclass(frozen=True)
class RunRetention:
    def apply(self, history: History) -> None:
        history.run()


ranges = st.sampled_from([(None, None), *(window(k) for k in range(4))]) | st.builds(
    lambda k: (window(k)[0], None), st.integers(0, 3)
)
scopes = st.builds(
    lambda devices, points, span: Scope(devices, points, *span),
    st.sampled_from([(), ("line-a",), ("lab-c",), ("line-a", "lab-c")]),
    st.sampled_from([(), ("P1",), ("P2",), ("P*",)]),
    ranges,
)
steps = st.one_of(
    st.just(StoreWindow()),
    st.just(RunRetention()),
    st.builds(PlaceHold, st.sampled_from([LENA, LENA, ALICE, BOB]), scopes),
    st.builds(ReleaseHold, st.sampled_from([LENA, LENA, ALICE]), st.integers(0, 5)),
)


# --- an insider's tampering after the fact ------------------------------------------------
# Each returns the entry every verifier that sees it must name (None: the change left the
# history lawful, as when no run deleted what a removed release had released).

RECEIPT = {
    "run": {"id": "forged", "started": instant(T0)},
    "holds": {"in_force": [], "kept": {}},
    "archive": None,
}
"""A receipt's members beside its batch and records (which forge_deletion fills in)."""


@dataclass(frozen=True)
class DeleteHeldRecords:
    """Lena holds ``device``'s ``points`` from a new window on; the insider deletes the
    window's records with a signed receipt."""

    device: str
    points: tuple[str, ...]

    def apply(self, history: History) -> int:
        k = history.store_window()
        history.place(LENA, Scope((self.device,), self.points, window(k)[0], None))
        batch = history.batch(self.device, k)
        with history.store.signed(partial(seal_with, history.keys, "audit-log")) as conn:
            return forge_deletion(conn, batch, RECEIPT)


@dataclass(frozen=True)
class RemoveRelease:
    """Lena holds a new window of ``device`` and releases it, and a run deletes it; the
    insider removes the release (from the log, renumbered, and from the hold's row), so that
    the run deleted the window during the hold."""

    device: str

    def apply(self, history: History) -> int | None:
        k, hold = placed_and_released(history, self.device)
        batch = history.batch(self.device, k)
        gone = history.last("hold.released", hold=hold).seq
        receipts = kinds(history.store, "retention.deleted")
        exposed = [r.seq for r in receipts if r.payload["batch"] == batch]
        with history.insider() as insider:
            insider.relog([e for e in insider.entries() if e.seq != gone])
            renumber(insider, at=gone + 1, by=-1)
            insider.run(
                "UPDATE holds SET released_by = NULL, released_at = NULL,"
                " release_reason = NULL, released_seq = NULL WHERE id = :h",
                h=hold,
            )
            insider.resign_checkpoints("audit-log")
        return exposed[0] - 1 if exposed else None


SEQ_COLUMNS = (("holds", "placed_seq"), ("holds", "released_seq"), ("erasures", "receipt"))
"""The columns naming audit entries by number, which Forger.relog leaves as they were."""


def renumber(insider: Forger, *, at: int, by: int) -> None:
    """Move the entry numbers of :data:`SEQ_COLUMNS`, from entry ``at`` on, by ``by``, as
    Forger.relog moved the entries (through negatives: a unique column never holds one
    number twice)."""
    for table, column in SEQ_COLUMNS:
        moved = f"UPDATE {table} SET {column} = -1 - ({column} + :by) WHERE {column} >= :at"
        insider.run(moved, by=by, at=at)
        insider.run(f"UPDATE {table} SET {column} = -1 - {column} WHERE {column} < 0")


@dataclass(frozen=True)
class ForgeReleaseDecision:
    """Lena holds a new window of ``device`` and releases it (after alice was refused), and a
    run deletes it; the insider makes the release name another decision: ``none``, the
    ``placing`` one, or alice's ``refused`` one."""

    device: str
    named: str

    def apply(self, history: History) -> int:
        _, hold = placed_and_released(history, self.device)
        released = history.last("hold.released", hold=hold)
        decision = {
            "none": lambda: str(uuid.uuid4()),
            "placing": lambda: history.last("hold.placed", hold=hold).payload["decision"],
            "refused": lambda: history.last("access.decision", principal=ALICE).payload["decision"],
        }[self.named]()
        with history.insider() as insider:
            insider.set_entry(replace(released, payload=released.payload | {"decision": decision}))
            insider.resign_checkpoints("audit-log")
        return released.seq


@dataclass(frozen=True)
class ShadowDecision:
    """Lena holds a new window of ``device`` and releases it (after alice was refused), and a
    run deletes it; the insider inserts, before the decision that allowed the hold's ``kind``
    entry, a read decision of the same id: the first of its id, it is that entry's decision."""

    device: str
    kind: str

    def apply(self, history: History) -> int:
        _, hold = placed_and_released(history, self.device)
        entry = history.last(self.kind, hold=hold)
        decided = history.last("access.decision", decision=entry.payload["decision"])
        read = replace(decided, seq=-1, payload=decided.payload | {"action": "read"})
        with history.insider() as insider:
            entries = insider.entries()
            insider.relog([*entries[: decided.seq], read, *entries[decided.seq :]])
            renumber(insider, at=decided.seq, by=1)
            insider.resign_checkpoints("audit-log")
        return entry.seq + 1


def placed_and_released(history: History, device: str) -> tuple[int, int]:
    """A new window of ``device`` held by lena, released by her (alice is refused first),
    then a run: the window's number and the hold's id."""
    k = history.store_window()
    hold = history.place(LENA, Scope((device,), (), *window(k)))
    assert hold is not None
    history.release(ALICE, hold)
    history.release(LENA, hold)
    history.run()
    return k, hold


@dataclass(frozen=True)
class RespellHoldRange:
    """Lena holds ``device`` from a new window on; the insider spells the hold's ``from`` as
    the same instant at UTC offset ``hours`` (in its entry and its row); then a run."""

    device: str
    hours: int

    def apply(self, history: History) -> int:
        k = history.store_window()
        hold = history.place(LENA, Scope((self.device,), (), window(k)[0], None))
        placed = history.last("hold.placed", hold=hold)
        offset = timezone(timedelta(hours=self.hours))
        spelled = datetime.fromisoformat(window(k)[0]).astimezone(offset).isoformat()
        with history.insider() as insider:
            insider.set_entry(replace(placed, payload=placed.payload | {"from": spelled}))
            insider.run("UPDATE holds SET from_time = :t WHERE id = :h", t=spelled, h=hold)
            insider.resign_checkpoints("audit-log")
        with contextlib.suppress(StoreUnverified):  # it deletes nothing when it sees it
            history.run()
        return placed.seq


@dataclass(frozen=True)
class MisstateCalculation:
    """A run deletes a new window of line-a, lawfully; the insider changes one member of its
    receipt's expiry calculation (``said``: the member and its new value), which no deletion
    is judged by but an auditor reads. Nothing to change when a hold kept the window."""

    member: str
    value: Any

    def apply(self, history: History) -> int | None:
        k = history.store_window()
        history.run()
        batch = history.batch("line-a", k)
        receipts = history.every("retention.deleted", batch=batch)
        if not receipts:  # a hold placed before kept every record of the window
            return None
        receipt = receipts[-1]
        first, *rest = receipt.payload["expiries"]
        changed = receipt.payload | {"expiries": [first | {self.member: self.value}, *rest]}
        with history.insider() as insider:
            insider.set_entry(replace(receipt, payload=changed))
            insider.resign_checkpoints("audit-log")
        return receipt.seq


MISSTATEMENTS = [
    ("rule", "keep_at_least"),
    ("keep_at_most_ms", 3_600_000),
    ("expires", instant(T0)),
    ("policies", ["sox-evidence @ policies/forged.yaml:1:1"]),
]
"""Members of line-a's calculation (kept at most 10 minutes) and another value of each."""

devices = st.sampled_from(["line-a", "lab-c"])
tampers = st.one_of(
    st.none(),
    st.builds(DeleteHeldRecords, devices, st.sampled_from([(), ("P1",), ("P2",)])),
    st.builds(RemoveRelease, devices),
    st.builds(ForgeReleaseDecision, devices, st.sampled_from(["none", "placing", "refused"])),
    st.builds(ShadowDecision, devices, st.sampled_from(["hold.placed", "hold.released"])),
    st.builds(RespellHoldRange, devices, st.sampled_from([0, 1])),
    st.sampled_from(MISSTATEMENTS).map(lambda said: MisstateCalculation(*said)),
)


# --- the three verdicts ---------------------------------------------------------------------


@dataclass(frozen=True)
class Asked:
    """What the auditor exports: devices and points (none: every one), and a range."""

    devices: tuple[str, ...]
    points: tuple[str, ...]
    start: str | None
    end: str | None

    def options(self) -> list[str]:
        named = [*(f"--device={d}" for d in self.devices), *(f"--point={p}" for p in self.points)]
        span = [f"--from={self.start}"] * bool(self.start) + [f"--to={self.end}"] * bool(self.end)
        return named + span


asked = st.builds(
    lambda devices, points, span: Asked(devices, points, *span),
    st.sampled_from([(), ("line-a",), ("lab-c",)]),
    st.sampled_from([(), ("P1",), ("P2",)]),
    st.sampled_from([(None, None), (window(1)[0], None), (None, window(1)[1]), window(3)]),
)


def exported(history: History, asked: Asked) -> Path:
    """The auditor's bundle of what ``asked`` names."""
    out = history.folder / "bundle.zip"
    command = ["export", "--db", history.target, "--principals", str(history.principals)]
    keys = ["--keys", str(history.site.keys_dir)]
    assert main([*command, "--as", AUDITOR, *keys, *asked.options(), "-o", str(out)]) == 0
    return out


ENTRY = re.compile(r"(?:receipt \()?audit entry (\d+)\)?")


def named(items: Iterable[str]) -> set[int]:
    """The audit entries (receipts and hold entries) the failed ``items`` name."""
    return {int(found[1]) for item in items if (found := ENTRY.fullmatch(item))}


def carried(bundle: Path) -> set[int]:
    """The receipts and hold entries a bundle carries (``retention.json``)."""
    said = json.loads(read(bundle)["retention.json"])
    holds = [h[e] for h in said["holds"] for e in ("placed", "released") if h[e] is not None]
    return {*said["receipts"], *holds}


@settings(max_examples=25)
@given(steps=st.lists(steps, max_size=6), tamper=tampers, asked=asked)
@example(  # a hold on a point the bundle does not name, of a receipt it carries
    steps=[],
    tamper=DeleteHeldRecords("line-a", ("P2",)),
    asked=Asked(("line-a",), ("P1",), None, None),
)
@example(  # a hold's decision shadowed by a read decision of its id, which it does not carry
    steps=[], tamper=ShadowDecision("line-a", "hold.placed"), asked=Asked((), (), None, None)
)
@example(  # a hold's range narrowed by spelling its start at +01:00
    steps=[], tamper=RespellHoldRange("line-a", 1), asked=Asked((), (), None, None)
)
@example(  # a receipt's stated policies not its plan's
    steps=[], tamper=MisstateCalculation(*MISSTATEMENTS[3]), asked=Asked((), (), None, None)
)
@example(  # a hold on everything first: no receipt to misstate
    steps=[PlaceHold(LENA, Scope((), (), None, None))],
    tamper=MisstateCalculation(*MISSTATEMENTS[0]),
    asked=Asked((), (), None, None),
)
def test_audit_verify_the_bundle_verifier_and_the_docs_verifier_agree_on_holds(
    site, principals_file, tmp_path_factory, *, steps, tamper, asked
):
    """The same receipts and hold entries named by all three, the bundle verifier's
    restricted to those its bundle carries (see the module)."""
    history = History(site, principals_file, tmp_path_factory.mktemp("history"))
    for step in steps:
        step.apply(history)
    tampered = tamper.apply(history) if tamper else None
    history.store.close()
    bundle = exported(history, asked)
    trust = trust_file(history.target, site.keys_dir, history.folder / "trust.json")
    with Store.open_existing(history.target) as store:
        audit = verify_store(store, site.trust())
    docs = docs_verifier.verify(history.target, public_keys(site.keys_dir))
    bundled = verifier.verify(str(bundle), trust.read_bytes())

    by_audit = named(p.item for p in audit.problems)
    by_docs = named(p.split(": ", 1)[0] for p in docs.problems)
    by_bundle = named(item for item, _ in bundled.problems)
    seen = carried(bundle)
    assert by_docs == by_audit, (audit.problems, docs.problems)
    assert by_bundle == by_audit & seen, (audit.problems, bundled.problems, seen)
    assert (audit.ok, docs.ok, bundled.ok) == (not by_audit, not by_docs, not by_bundle)
    if tampered is None:
        assert audit.ok, audit.problems
    else:
        assert tampered in by_audit, audit.problems
