"""Cross-file references that no single file's schema can check.

Device ids across sites, and roles named in policies against the roles
principals hold. Following the
policy language, a role nobody holds is a warning, not an error: grants may
be written before people are hired. Without any principals file there is
nothing to check against, and nothing is reported.
"""

from __future__ import annotations

from collections.abc import Iterator, Set

from engine.errors import Finding, Location, error, warning
from engine.keys import KeyStore
from engine.model import Policy, Project

ROLE_FACETS = ("access.read", "access.export", "access.hold", "access.deny")


def check_references(project: Project) -> list[Finding]:
    return _device_clashes(project) + _roles(project)


def _device_clashes(project: Project) -> list[Finding]:
    """Plans are files named by device id, so ids must be unique across compiled sites."""
    first: dict[str, str] = {}
    findings = []
    for site in project.sites:
        for device in site.devices:
            other = first.setdefault(device.id, site.id)
            if other != site.id:
                findings.append(
                    error(
                        device.location,
                        "device-id-clash",
                        f"device {device.id} of site {site.id} has the same id as a device of site "
                        f"{other}; compile the sites separately or rename one",
                    )
                )
    return findings


def _roles(project: Project) -> list[Finding]:
    if not project.principals:
        return []
    held = {role for principal in project.principals for role in principal.roles}
    return [
        warning(
            place,
            "role-unheld",
            f"role '{role}' in {facet} of policy {policy.id} is held by no principal",
        )
        for facet in ROLE_FACETS
        for policy, role, place in names_missing(project, facet, held)
    ]


def names_missing(
    project: Project, facet: str, known: Set[str]
) -> Iterator[tuple[Policy, str, Location]]:
    """Each name a policy lists in ``facet`` that ``known`` lacks, with where it is written."""
    for policy in project.policies:
        demand = policy.demands.get(facet)
        if demand is None or not isinstance(demand.value, tuple):
            continue
        places = dict(demand.items)
        for name in demand.value:
            if name not in known:
                yield policy, name, places.get(f"[{name}]", demand.location)


SIGNING_KEYS = "signing.keys"
"""The policy facet that names keys."""


def check_signing_keys(project: Project, store: KeyStore) -> list[Finding]:
    """A ``signing-key-unknown`` error at each key name a policy writes that ``store`` lacks."""
    held = set(store.names())
    listing = ", ".join(sorted(held)) or "none"
    return [
        error(
            place,
            "signing-key-unknown",
            f"signing key '{name}' of policy {policy.id} is in no key store"
            f" (held: {listing}); converge keys generate {name}",
        )
        for policy, name, place in names_missing(project, SIGNING_KEYS, held)
    ]
