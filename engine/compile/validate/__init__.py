"""Stage 2, validate: loaded documents to the typed :class:`~engine.model.Project`.

Each document is checked against its cerberus schema (:mod:`engine.compile.validate.schemas`,
plus the protocol plugins' schemas for endpoints and addresses), every
problem becomes a finding at its exact ``path:line:col``, and model objects
are built only from valid data: a policy or principal with an error is left
out, a site keeps its valid devices. Ids that must be unique across files
(policies, sites) are checked last. Every finding is returned, sorted by
place; nothing is raised for bad input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import pluggy

from engine.compile.load import Document
from engine.compile.validate.policy import check_policy
from engine.compile.validate.schema_errors import dotted, not_a_mapping, run, value_at
from engine.compile.validate.schemas import PRINCIPALS
from engine.compile.validate.site import check_site
from engine.errors import Finding, Location, error, sort_findings
from engine.model import Principal, Project
from engine.plugin_manager import protocol_names

T = TypeVar("T")


def validate(
    policies: list[Document],
    sites: list[Document],
    principals: list[Document],
    pm: pluggy.PluginManager,
) -> tuple[Project, list[Finding]]:
    """The project built from every valid document, and every finding, sorted by place."""
    protocols = protocol_names(pm)
    findings: list[Finding] = []
    project = Project()
    project.policies = _collect(policies, check_policy, findings)
    project.sites = _collect(sites, lambda doc: check_site(doc, pm, protocols), findings)
    for doc in principals:
        found_principals, found = check_principals(doc)
        project.principals += found_principals
        findings += found
    policy_twins = _duplicate_ids(policies, "policy", "policy-duplicate-id")
    site_twins = _duplicate_ids(sites, "site", "site-duplicate-id")
    project.policies = [p for p in project.policies if p.location not in policy_twins]
    project.sites = [s for s in project.sites if s.location not in site_twins]
    findings += [*policy_twins.values(), *site_twins.values()]
    return project, sort_findings(findings)


def _collect(
    docs: Sequence[Document],
    check: Callable[[Document], tuple[T | None, list[Finding]]],
    findings: list[Finding],
) -> list[T]:
    built: list[T] = []
    for doc in docs:
        item, found = check(doc)
        findings += found
        if item is not None:
            built.append(item)
    return built


def _duplicate_ids(docs: Sequence[Document], key: str, code: str) -> dict[Location, Finding]:
    """An id (``policy:`` or ``site:``) written in two files: an error at the second.

    Keyed by the second's location, which is also the location of the model
    object built from it (so that it can be left out).
    """
    first: dict[str, Location] = {}
    found: dict[Location, Finding] = {}
    for doc in docs:
        written = value_at(doc.data, (key,))
        if not isinstance(written, str):
            continue
        here = doc.at((key,))
        if written in first:
            message = f"{key} id '{written}' is already defined at {first[written]}"
            found[here] = error(here, code, message)
        else:
            first.setdefault(written, here)
    return found


def check_principals(doc: Document) -> tuple[list[Principal], list[Finding]]:
    """The valid principals of one file (a broken entry is left out) and the findings."""
    if not isinstance(doc.data, dict):
        return [], [not_a_mapping(doc, "principals", "principals")]
    found, _ = run(PRINCIPALS, doc.data, doc)
    findings = [problem.finding for problem in found]
    if any(len(problem.path) < 2 for problem in found):
        return [], findings
    dropped = {problem.path[1] for problem in found}
    for index, finding in _duplicate_principals(doc):
        dropped.add(index)
        findings.append(finding)
    entries = range(len(doc.data["principals"]))
    return [_principal(doc, i) for i in entries if i not in dropped], findings


def _duplicate_principals(doc: Document) -> list[tuple[int, Finding]]:
    """A principal id listed twice in one file: an error at the second."""
    first: dict[str, Location] = {}
    found: list[tuple[int, Finding]] = []
    for index, raw in enumerate(doc.data["principals"]):
        principal_id = raw.get("id") if isinstance(raw, dict) else None
        if not isinstance(principal_id, str):
            continue
        path = ("principals", index, "id")
        if principal_id in first:
            message = f"{dotted(path)} '{principal_id}' is already defined at {first[principal_id]}"
            found.append((index, error(doc.at(path), "principal-duplicate-id", message)))
        else:
            first[principal_id] = doc.at(path)
    return found


def _principal(doc: Document, index: int) -> Principal:
    raw = doc.data["principals"][index]
    return Principal(
        id=raw["id"],
        kind=raw["kind"],
        roles=tuple(sorted(set(raw.get("roles") or ()))),
        location=doc.at(("principals", index)),
        name=raw.get("name"),
        os_users=tuple(raw.get("os_users") or ()),
        certificates=tuple(raw.get("certificates") or ()),
    )
