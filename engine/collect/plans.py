"""Reading a plan folder for a run: every plan verified, none expired, signed when asked."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.errors import ConvergeError, PlanRejected
from engine.plan import verify_plan
from engine.planfiles import INDEX

PlanCheck = Callable[[Path, dict[str, Any]], object]
"""``check(plan_path, body)`` of a plan whose digest verified; raises :class:`PlanRejected`
to refuse it (e.g. :class:`engine.plansign.PlanVerifier`, which checks its signature)."""


def load_plans(
    folder: Path, now: float, verify: PlanCheck | None = None
) -> list[dict[str, Any]]:
    """The verified plan bodies listed in ``folder/index.json``, in index order.

    Refuses (raises :class:`PlanRejected`) a plan whose digest does not
    verify, that differs from the digest in the index, that ``verify`` refuses
    (when given), or whose ``valid_until`` has passed: it must be recompiled first.
    """
    index = _index(folder)
    plans = []
    for entry in index.get("plans", []):
        path = folder / str(entry["file"])
        body = verify_plan(_read(path), str(path))
        if body["digest"] != entry.get("digest"):
            raise PlanRejected(f"{path}: digest {body['digest']} is not the one in {INDEX} "
                               f"({entry.get('digest')}); recompile the plan folder")
        if verify is not None:
            verify(path, body)
        check_valid(body, now, str(path))
        plans.append(body)
    if not plans:
        raise ConvergeError(f"{folder / INDEX} lists no plans: nothing to collect")
    return plans


def valid_until_ms(body: dict[str, Any]) -> int | None:
    text = body.get("valid_until")
    if text is None:
        return None
    moment = datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def check_valid(body: dict[str, Any], now: float, source: str) -> None:
    until = valid_until_ms(body)
    if until is not None and now * 1000 >= until:
        raise PlanRejected(f"{source}: plan expired at {body['valid_until']} (a waiver it relies "
                           "on has expired); recompile it with converge plan")


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
