"""Plan folders: one ``<device>.plan.json`` per device plus ``index.json``, written and read.

When plans are signed, each has a detached signature ``<device>.plan.sig``
beside it (see :mod:`engine.plans.signature`) and its ``index.json`` entry names it.

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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engine.canonical import canonical_json
from engine.errors import ConvergeError, PlanRejected
from engine.plans.body import PlanBody
from engine.plans.format import Plan, read_plan
from engine.plans.signature import SIGNATURE_SUFFIX, signature_name

INDEX = "index.json"
PLAN_SUFFIX = ".plan.json"

Sign = Callable[[Plan], bytes]
"""The bytes of a plan's detached signature (e.g. :class:`engine.plans.signature.PlanSigner`)."""


def write_plans(
    out: Path, plans: Sequence[Plan], index: bytes, sign: Sign | None = None
) -> list[Path]:
    """Write every plan (and, with ``sign``, its signature) and the ``index`` (canonical
    ``index.json`` bytes); remove stale ones."""
    if out.exists() and not out.is_dir():
        raise ConvergeError(f"{out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConvergeError(f"cannot create {out}: {exc.strerror}") from exc
    written, signatures = [], {}
    for plan in plans:
        written.append(_write_atomically(out / plan.file_name, plan.canonical))
        if sign is not None:
            signatures[plan.device] = signature_name(plan.device)
            _write_atomically(out / signatures[plan.device], sign(plan))
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


# --- reading a plan folder for a run -------------------------------------------------


PlanCheck = Callable[[Path, PlanBody], object]
"""``check(plan_path, body)`` of a plan whose digest verified; raises :class:`PlanRejected`
to refuse it (e.g. :class:`engine.plans.signature.PlanVerifier`, which checks its signature)."""


def load_plans(folder: Path, now: float, verify: PlanCheck | None = None) -> list[PlanBody]:
    """The verified plans listed in ``folder/index.json``, in index order.

    Refuses (raises :class:`PlanRejected`) a plan whose digest does not
    verify, that differs from the digest in the index, that ``verify`` refuses
    (when given), or whose ``valid_until`` has passed: it must be recompiled first.
    """
    index = _index(folder)
    plans = []
    for entry in index.get("plans", []):
        path = folder / str(entry["file"])
        body = read_plan(_read(path), str(path))
        if body.digest != entry.get("digest"):
            raise PlanRejected(
                f"{path}: digest {body.digest} is not the one in {INDEX} "
                f"({entry.get('digest')}); recompile the plan folder"
            )
        if verify is not None:
            verify(path, body)
        check_valid(body, now, str(path))
        plans.append(body)
    if not plans:
        raise ConvergeError(f"{folder / INDEX} lists no plans: nothing to collect")
    return plans


def check_valid(body: PlanBody, now: float, source: str) -> None:
    until = body.valid_until_ms
    if until is not None and now * 1000 >= until:
        raise PlanRejected(
            f"{source}: plan expired at {body.valid_until} (a waiver it relies "
            "on has expired); recompile it with converge plan"
        )


def _index(folder: Path) -> dict[str, Any]:
    try:
        index = json.loads(_read(folder / INDEX))
    except ValueError as exc:
        raise ConvergeError(f"{folder / INDEX}: not JSON ({exc})") from exc
    if not isinstance(index, dict):
        raise ConvergeError(f"{folder / INDEX}: not a plan index")
    return index


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConvergeError(f"cannot read {path}: {exc.strerror}") from exc
