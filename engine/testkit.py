"""The Converge test kit, a pytest plugin: ``pytest -p engine.testkit``.

Our own tests use it, and so can policy authors and plugin authors:

- ``converge_project`` writes a project (policies, sites, principals) from a
  dict of file names to YAML text in a temporary folder and compiles it;
- the :class:`Outcome` it returns says ``assert_success()`` or
  ``assert_findings([...])`` with the place and code of each finding;
- :func:`plan_of` makes the typed plan a protocol session takes from the few
  members a test cares about.
"""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pluggy
import pytest

from engine.compile import Compilation, Inputs, compile_project
from engine.errors import Finding, Severity
from engine.plans.body import PlanBody, parse_body
from engine.plans.format import PLAN_FORMAT, Plan, read_plan
from engine.plugin_manager import make_plugin_manager

Expected = tuple[str, int, int, str]

_PLAN_DEFAULTS: dict[str, Any] = {
    "format": PLAN_FORMAT,
    "site": "test",
    "timezone": "UTC",
    "as_of": "2026-06-01",
    "points": [],
    "read_groups": [],
    "digest": "sha256:" + "0" * 64,
}
"""A finding as a test names it: (path, line, col, code)."""


def plan_of(members: Mapping[str, Any]) -> PlanBody:
    """A typed plan of the given members (``device`` at least), the others defaulted.

    For tests of protocol sessions: no digest is checked; ``device`` needs only
    ``id`` (``protocol``, ``endpoint`` and ``limits`` default to empty), and
    ``points`` default to one with an empty address per name the groups read.
    """
    device = {"protocol": "", "endpoint": {}, "limits": {}, **members["device"]}
    named = dict.fromkeys(n for g in members.get("read_groups", ()) for n in g["points"])
    points = [{"name": name, "address": {}} for name in named]
    body = {**_PLAN_DEFAULTS, "points": points, **members, "device": device}
    return parse_body(body, b"", "test plan")


@dataclass
class Outcome:
    """The result of compiling a test project, with assertions that print every finding."""

    compilation: Compilation

    @property
    def findings(self) -> list[Finding]:
        return self.compilation.findings

    def codes(self, severity: Severity | None = None) -> list[str]:
        return [f.code for f in self.findings if severity is None or f.severity is severity]

    def assert_success(self) -> None:
        """No error (warnings are allowed)."""
        errors = [str(f) for f in self.findings if f.severity is Severity.ERROR]
        assert not errors, "expected no errors, got:\n" + "\n".join(errors)

    def assert_findings(self, expected: Sequence[Expected], *, warnings: bool = True) -> None:
        """Exactly these findings (path, line, col, code), in any order."""
        got = sorted(
            (f.location.path, f.location.line, f.location.col, f.code)
            for f in self.findings
            if warnings or f.severity is Severity.ERROR
        )
        listing = "\n".join(str(f) for f in self.findings)
        assert got == sorted(expected), f"findings differ; got:\n{listing}"

    def finding(self, code: str) -> Finding:
        """The one finding with ``code``."""
        matches = [f for f in self.findings if f.code == code]
        assert len(matches) == 1, f"want one {code}, got {[str(f) for f in self.findings]}"
        return matches[0]

    def plan(self, device: str) -> dict[str, object]:
        """The plan of ``device`` as JSON data (what the plan file says)."""
        return self._plan(device).body

    def plan_body(self, device: str) -> PlanBody:
        """The plan of ``device`` as the collector and protocol sessions read it."""
        return read_plan(self._plan(device).canonical)

    def _plan(self, device: str) -> Plan:
        for plan in self.compilation.plans:
            if plan.device == device:
                return plan
        raise AssertionError(f"no plan for {device}: {[p.device for p in self.compilation.plans]}")


class ProjectBuilder:
    """Writes files under a root and compiles them from that root as working folder."""

    def __init__(self, root: Path, pm: pluggy.PluginManager) -> None:
        self.root = root
        self.pm = pm

    def write(self, files: dict[str, str]) -> ProjectBuilder:
        for name, text in files.items():
            path = self.root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return self

    def compile(
        self,
        policies: Sequence[str] = ("policies",),
        sites: Sequence[str] = ("sites",),
        principals: Sequence[str] = (),
        at: date | None = date(2026, 6, 1),
    ) -> Outcome:
        with contextlib.chdir(self.root):
            inputs = Inputs(
                [Path(p) for p in policies],
                [Path(s) for s in sites],
                [Path(p) for p in principals],
                at,
            )
            return Outcome(compile_project(inputs, self.pm))


@pytest.fixture(scope="session")
def converge_pm() -> pluggy.PluginManager:
    """The plugin manager with every installed plugin, as the ``converge`` command builds it."""
    return make_plugin_manager()


@pytest.fixture
def converge_project(tmp_path: Path, converge_pm: pluggy.PluginManager) -> Iterator[ProjectBuilder]:
    yield ProjectBuilder(tmp_path, converge_pm)
