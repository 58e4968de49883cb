"""Plans on disk: one ``<device>.plan.json`` per device plus ``index.json``.

When plans are signed, each has a detached signature ``<device>.plan.sig``
beside it (see :mod:`engine.plansign`) and its ``index.json`` entry names it.

Files are written atomically (a temporary file renamed into place), so a
collector reading the folder, or a ``converge plan`` killed half-way, never
leaves half a plan; plan files and signatures that this run did not write
are removed, so a stale plan cannot run and a stale signature cannot linger.
Files are not fsync'ed one by one (that doubled the time to write 100,000
points): plans are derived from the policies and can be written again, and a
plan torn by a power cut fails its digest check, which the collector makes
before running anything.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from engine.canonical import canonical_json
from engine.compile import Compilation
from engine.errors import ConvergeError
from engine.plan import Plan, plan_index
from engine.plansign import SIGNATURE_SUFFIX, signature_name
from engine.render import findings_text

INDEX = "index.json"
PLAN_SUFFIX = ".plan.json"

Sign = Callable[[Plan], bytes]
"""The bytes of a plan's detached signature (e.g. :class:`engine.plansign.PlanSigner`)."""


def write_plans(out: Path, result: Compilation, sign: Sign | None = None) -> list[Path]:
    """Write every plan (and, with ``sign``, its signature) and the index; remove stale ones."""
    if out.exists() and not out.is_dir():
        raise ConvergeError(f"{out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConvergeError(f"cannot create {out}: {exc.strerror}") from exc
    written, signatures = [], {}
    for plan in result.plans:
        written.append(_write_atomically(out / plan.file_name, plan.canonical))
        if sign is not None:
            signatures[plan.device] = signature_name(plan.device)
            _write_atomically(out / signatures[plan.device], sign(plan))
    index = plan_index(result.plans, result.merged, result.as_of)
    _write_atomically(out / INDEX, _with_signatures(index, signatures))
    _remove_stale(out, PLAN_SUFFIX, {p.name for p in written})
    _remove_stale(out, SIGNATURE_SUFFIX, set(signatures.values()))
    return written


def _with_signatures(index: bytes, signatures: dict[str, str]) -> bytes:
    """The canonical index with ``"signature"`` in the entry of each signed plan."""
    if not signatures:
        return index
    body = json.loads(index)
    for entry in body["plans"]:
        entry["signature"] = signatures[entry["device"]]
    return canonical_json(body)


def _remove_stale(out: Path, suffix: str, keep: set[str]) -> None:
    for stale in out.glob(f"*{suffix}"):
        if stale.name not in keep:
            stale.unlink()


def _write_atomically(path: Path, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o644)  # plans are not secret; collectors read them
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def render_plans(console: Console, result: Compilation, written: list[Path], fmt: str) -> None:
    if fmt == "json":
        if result.findings:
            findings_text(Console(stderr=True, soft_wrap=True), result.findings)
        rows = [{"device": p.device, "file": str(path), "digest": p.digest,
                 "points": p.points, "read_groups": p.read_groups}
                for p, path in zip(result.plans, written, strict=True)]
        print(json.dumps(rows, indent=2))
        return
    if result.findings:
        findings_text(console, result.findings)
    table = Table(title=f"{len(written)} plans", title_justify="left")
    for column in ("device", "points", "read groups", "valid until", "digest"):
        table.add_column(column)
    for plan in result.plans:
        table.add_row(plan.device, str(plan.points), str(plan.read_groups),
                      plan.valid_until or "-", plan.digest[:19] + "…")
    console.print(table)
