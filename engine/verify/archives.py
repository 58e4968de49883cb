"""The archive files: each archive a deletion receipt relied on is in the folder, as signed.

A retention run that archives records writes the bundle, then a
``retention.archive.written`` entry with the file's SHA-256 signed in its
transaction, and only then deletes, each receipt naming that entry
(:mod:`engine.retention.archive`). :mod:`engine.verify.retention` checks the
entries against each other; this checks the files (``audit verify --archives
DIR``): an archive deleted, replaced or changed since is named, with the
receipts that relied on it. What an archive holds is checked as in any bundle,
by ``converge verify FILE``.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import TypeGuard

from engine.audit import AuditEntry
from engine.verify.log import Log
from engine.verify.report import Report


def check_archives(log: Log, folder: Path, report: Report) -> None:
    """Every file a ``retention.archive.written`` entry signed, of those the log's receipts
    name, is in ``folder`` with that SHA-256; counted as ``archives``. An entry the receipts
    name wrongly is the receipts' own check's to name."""
    relied: dict[int, list[int]] = defaultdict(list)
    for entry in log.of_kind("retention.deleted"):
        said = entry.payload.get("archive")
        written = said.get("written") if isinstance(said, dict) else None
        if isinstance(written, int) and not isinstance(written, bool):
            relied[written].append(entry.seq)
    found = 0
    for seq, receipts in sorted(relied.items()):
        written = log.entries.get(seq)
        if written is not None and written.kind == "retention.archive.written":
            found += _matches(written, receipts, folder, report)
    report.counts["archives"] = found


def _matches(written: AuditEntry, receipts: list[int], folder: Path, report: Report) -> bool:
    """Whether the file ``written`` signed is in ``folder`` with its SHA-256; else names it."""
    name, signed = written.payload.get("file"), written.payload.get("sha256")
    item = f"archive {name} (audit entry {written.seq})"
    if not _plain(name):
        report.add(item, "names no file of a folder: its name is not a plain file name")
        return False
    path = folder / name
    relying = _relying(receipts)
    if not path.is_file():
        report.add(item, f"is not in {folder}, yet {relying} deleted the records it holds")
        return False
    with path.open("rb") as file:
        got = "sha256:" + hashlib.file_digest(file, "sha256").hexdigest()
    if got != signed:
        report.add(
            item,
            f"{path}'s SHA-256 is {got}, not the {signed} signed when it was written: the file"
            f" was changed or replaced, and {relying} deleted the records it held",
        )
        return False
    return True


def _plain(name: object) -> TypeGuard[str]:
    """Whether ``name`` is a file's name alone: no folder, not ``.`` or ``..``."""
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name


def _relying(receipts: list[int]) -> str:
    if len(receipts) == 1:
        return f"the receipt of audit entry {receipts[0]}"
    return f"{len(receipts)} receipts (audit entries {receipts[0]}..{receipts[-1]})"


__all__ = ["check_archives"]
