"""The shared vectors in tests/vectors (built by tests/vectors/generate.py), as pytest params."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine import sign

VECTORS = Path(__file__).with_name("vectors")


def vectors(kind: str) -> list[Any]:
    """Every vector of ``kind`` (a folder of VECTORS), one param each, named by its file."""
    paths = sorted((VECTORS / kind).glob("*.json"))
    return [pytest.param(json.loads(p.read_text("utf-8")), id=p.stem) for p in paths]


def outcome(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """What ``run`` returns, or the failure a vector's ``want`` names: an error engine.sign
    exports."""
    try:
        return run()
    except sign.VerificationError as exc:
        assert isinstance(exc, getattr(sign, type(exc).__name__))
        return {"valid": False, "error": type(exc).__name__}
