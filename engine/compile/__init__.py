"""The compiler: the ordered stages from YAML files to plans, declared once.

``STAGES`` is the order a reader should follow through the code; each stage
is one module with one public entry that takes the previous stage's output.
Findings accumulate across stages; the compiler stops after ``validate`` if
any input is invalid (later stages would only report consequences of it),
and otherwise runs to the end so that every merge and plan error is shown.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pluggy

from engine.compile.load import Document, load_files, unread_places
from engine.compile.merge import MergeResult, merge
from engine.compile.plan import build_plans, plan_index
from engine.compile.select import Selection, select
from engine.compile.validate import validate
from engine.compile.validate.references import check_references, check_signing_keys
from engine.errors import Finding, Location, error, has_errors, sort_findings
from engine.heap import fewer_collections
from engine.keys import KeyStore
from engine.model import Project
from engine.plans.format import Plan

STAGES = ("load", "validate", "select", "merge", "plan")

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass
class Inputs:
    """What to compile: policy files or folders, site files or folders, principals files."""

    policies: Sequence[Path]
    sites: Sequence[Path]
    principals: Sequence[Path] = ()
    at: date | None = None
    key_store: KeyStore | None = None
    """When given, every key a policy's ``signing.keys`` names must be in it."""


@dataclass
class Compilation:
    project: Project = field(default_factory=Project)
    selection: Selection = field(default_factory=Selection)
    merged: MergeResult = field(default_factory=MergeResult)
    plans: list[Plan] = field(default_factory=list)
    as_of: dict[str, date] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    """Every file loaded, by the path findings name it with, to ``sha256:`` of its bytes."""
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not has_errors(self.findings)

    def index(self) -> bytes:
        """The canonical bytes of the plan folder's ``index.json`` for these plans."""
        return plan_index(self.plans, self.merged, self.as_of)


def compile_project(inputs: Inputs, pm: pluggy.PluginManager) -> Compilation:
    """Run every stage over ``inputs``; the result carries all findings, sorted."""
    with fewer_collections():
        return _compile(inputs, pm)


def _compile(inputs: Inputs, pm: pluggy.PluginManager) -> Compilation:
    result = Compilation()
    policy_files, site_files, principal_files, found = discover(inputs)
    documents: dict[str, list[Document]] = {}
    load_findings = found
    for kind, files in (
        ("policy", policy_files),
        ("site", site_files),
        ("principals", principal_files),
    ):
        documents[kind], more = load_files(files, display=display_path)
        load_findings += more
    result.sources = {doc.path: doc.sha256 for docs in documents.values() for doc in docs}
    result.project, valid_findings = validate(
        documents["policy"], documents["site"], documents["principals"], pm
    )
    unread = unread_places(load_findings)
    valid_findings = [f for f in valid_findings if f.location not in unread]
    result.findings = load_findings + valid_findings + check_references(result.project)
    if inputs.key_store is not None:
        result.findings += check_signing_keys(result.project, inputs.key_store)
    if not has_errors(result.findings):
        _select_merge_plan(result, inputs, pm)
    result.findings = sort_findings(result.findings)
    return result


def _select_merge_plan(result: Compilation, inputs: Inputs, pm: pluggy.PluginManager) -> None:
    result.as_of = {s.id: inputs.at or today_in(s.timezone) for s in result.project.sites}
    result.selection = select(result.project)
    result.merged = merge(result.selection, lambda site: result.as_of[site])
    result.plans, plan_findings = build_plans(
        result.merged, result.project.sites, pm, result.as_of, result.sources
    )
    result.findings += result.selection.findings + result.merged.findings + plan_findings
    if has_errors(result.findings):
        result.plans = []  # a plan is never emitted from inputs with errors


def today_in(timezone: str) -> date:
    return datetime.now(ZoneInfo(timezone)).date()


def display_path(path: Path) -> str:
    """How findings and provenance name a file: relative to the working folder when inside it."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def discover(inputs: Inputs) -> tuple[list[Path], list[Path], list[Path], list[Finding]]:
    """The files to read, each once, in a stable order; a missing path is a finding."""
    findings: list[Finding] = []
    policies = _unique(_yaml_files(inputs.policies, findings))
    sites: list[Path] = []
    principals: list[Path] = []
    for given in inputs.sites:
        for site_file in _site_files(given, findings):
            sites.append(site_file)
            beside = site_file.parent / "principals.yaml"
            if beside.is_file():
                principals.append(beside)
    principals += _yaml_files(inputs.principals, findings)
    return policies, _unique(sites), _unique(principals), findings


def _missing(path: Path) -> Finding:
    return error(Location(str(path)), "path-not-found", f"no such file or folder: {path}")


def _yaml_files(paths: Iterable[Path], findings: list[Finding]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            findings.append(_missing(path))
    return files


def _site_files(path: Path, findings: list[Finding]) -> list[Path]:
    if path.is_file():
        return [path]
    if (path / "site.yaml").is_file():
        return [path / "site.yaml"]
    if path.is_dir():
        return sorted(path.rglob("site.yaml"))
    findings.append(_missing(path))
    return []


def _unique(paths: Iterable[Path]) -> list[Path]:
    """Each file once, whatever the spelling it was given under, sorted by display path."""
    by_real = {os.path.realpath(p): p for p in paths}
    return sorted(by_real.values(), key=display_path)
