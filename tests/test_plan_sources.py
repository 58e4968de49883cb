"""A plan's ``sources``: the files behind it, each named by the SHA-256 of its bytes."""

from __future__ import annotations

import hashlib
from typing import Any

from engine.canonical import canonical_json
from engine.plans.format import read_plan, seal
from engine.testkit import Outcome, ProjectBuilder

SITE = """
    site: test-plant
    timezone: Europe/Zurich
    devices:
      - id: reactor-1
        class: reactor
        protocol: modbus
        endpoint: {host: 127.0.0.1}
        points:
          - {name: TT1_PV, signal: temperature, address: {table: holding, register: 0, type: int16}}
      - id: filler-2
        class: filler
        protocol: modbus
        endpoint: {host: 127.0.0.1}
        points:
          - {name: WT1_PV, signal: weight, address: {table: holding, register: 0, type: int16}}
    """

CAPTURE = """
    # GMP temperatures, v1
    policy: gmp-temperatures
    title: GMP temperatures
    owner: quality-assurance
    applies:
      points: {signal: temperature}
    capture:
      every: 5s
    """

SIGNING = """
    policy: security-signing
    title: Signed data
    owner: security
    applies:
      devices: {class: reactor}
    signing:
      required: true
      keys: [site-integrity]
    exceptions:
      - devices: {id: reactor-1}
        waive: [signing]
        reason: legacy controller
        approved_by: j.doe@example.com
        expires: 2027-03-31
    """

FILLERS = """
    policy: filler-weights
    title: Filler weights
    owner: production
    applies:
      devices: {class: filler}
    capture:
      every: 10s
    """

PRINCIPALS = "principals:\n  - {id: qa, kind: person, roles: [qa]}\n"


def project(builder: ProjectBuilder) -> ProjectBuilder:
    return builder.write(
        {
            "sites/plant/site.yaml": SITE,
            "sites/plant/principals.yaml": PRINCIPALS,
            "policies/gmp.yaml": CAPTURE,
            "policies/signing.yaml": SIGNING,
            "policies/fillers.yaml": FILLERS,
        }
    )


def compiled(builder: ProjectBuilder) -> Outcome:
    outcome = builder.compile()
    outcome.assert_success()
    return outcome


def sha256_of(builder: ProjectBuilder, name: str) -> str:
    return "sha256:" + hashlib.sha256((builder.root / name).read_bytes()).hexdigest()


def test_a_plan_names_every_file_it_comes_from_and_the_digest_of_its_bytes(converge_project):
    builder = project(converge_project)
    (builder.root / "policies/gmp.yaml").write_bytes(  # bytes as read: CRLF, no final newline
        (builder.root / "policies/gmp.yaml").read_bytes().replace(b"\n", b"\r\n").rstrip()
    )
    plan = compiled(builder).plan("reactor-1")
    names = ("sites/plant/site.yaml", "policies/gmp.yaml", "policies/signing.yaml")
    assert plan["sources"] == {name: sha256_of(builder, name) for name in names}
    places = [c["at"] for p in plan["points"] for cs in p["provenance"].values() for c in cs]
    places += [w["at"] for p in plan["points"] for w in p.get("waived", [])]
    assert {at.rsplit(":", 2)[0] for at in places} <= set(plan["sources"])


def test_a_policy_that_only_waives_for_the_points_is_among_the_sources(converge_project):
    plan = compiled(project(converge_project)).plan("reactor-1")
    [point] = plan["points"]
    assert "signing" not in point and point["waived"][0]["policy"] == "security-signing"
    assert "policies/signing.yaml" in plan["sources"]


def test_a_policy_file_that_governs_none_of_a_devices_points_is_not_among_its_sources(
    converge_project,
):
    outcome = compiled(project(converge_project))
    reactor, filler = outcome.plan("reactor-1"), outcome.plan("filler-2")
    assert "policies/fillers.yaml" not in reactor["sources"]
    assert set(filler["sources"]) == {"sites/plant/site.yaml", "policies/fillers.yaml"}


def test_one_changed_byte_of_a_policy_file_changes_the_sources_and_the_digest(converge_project):
    builder = project(converge_project)
    before = compiled(builder)
    gmp = builder.root / "policies/gmp.yaml"
    gmp.write_bytes(gmp.read_bytes().replace(b"v1", b"v2"))  # a comment: no value changes
    after = compiled(builder)
    old, new = before.plan("reactor-1"), after.plan("reactor-1")
    assert old["points"] == new["points"]
    changed = {k for k, v in new["sources"].items() if old["sources"][k] != v}
    assert changed == {"policies/gmp.yaml"}
    assert new["sources"]["policies/gmp.yaml"] == sha256_of(builder, "policies/gmp.yaml")
    assert old["digest"] != new["digest"]
    assert before.plan("filler-2") == after.plan("filler-2")


def test_a_plan_without_sources_is_still_a_valid_plan(converge_project):
    body: dict[str, Any] = dict(compiled(project(converge_project)).plan("reactor-1"))
    members = {k: canonical_json(v) for k, v in body.items() if k not in ("sources", "digest")}
    digest, data = seal(members)
    assert read_plan(data).digest == digest
