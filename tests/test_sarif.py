"""``converge check --format sarif`` is valid SARIF 2.1.0, and its URIs are URIs (issue 15).

The log is validated against the OASIS schema (vendored in ``tests/sarif/``,
so the test runs offline), with the schema's ``uri`` and ``uri-reference``
formats checked as RFC 3986 says: a path with a space or a non-ASCII
character must be percent-encoded, a relative one must resolve against the
run's declared ``originalUriBaseIds`` root, an absolute one must be a
``file://`` URI.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import jsonschema
import pytest

from engine.cli import main
from engine.commands.findings import findings_sarif
from engine.errors import Location, error, warning

SCHEMA = json.loads((Path(__file__).parent / "sarif" / "sarif-schema-2.1.0.json").read_text())

_PCHAR = r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})"
URI_REFERENCE = re.compile(rf"{_PCHAR}*(?:#{_PCHAR}*)?")
URI = re.compile(rf"[A-Za-z][A-Za-z0-9+.\-]*:{_PCHAR}*(?:#{_PCHAR}*)?")

FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("uri")
def _uri(value: object) -> bool:
    return not isinstance(value, str) or URI.fullmatch(value) is not None


@FORMATS.checks("uri-reference")
def _uri_reference(value: object) -> bool:
    return not isinstance(value, str) or URI_REFERENCE.fullmatch(value) is not None


def validate(log: dict) -> None:
    validator = jsonschema.Draft4Validator(SCHEMA, format_checker=FORMATS)
    problems = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(log)]
    assert not problems, problems


def resolved(log: dict, location: dict) -> str:
    """The file path a result's artifact location names, as a reader of the log finds it."""
    artifact = location["physicalLocation"]["artifactLocation"]
    uri = artifact["uri"]
    if "uriBaseId" in artifact:
        base = log["runs"][0]["originalUriBaseIds"][artifact["uriBaseId"]]["uri"]
        uri = urljoin(base, uri)
    parts = urlsplit(uri)
    assert parts.scheme == "file", uri
    return unquote(parts.path)


@pytest.mark.parametrize(
    "path",
    [
        "policies/gmp.yaml",
        "policies/with space/gmp.yaml",
        "policies/zürich ☃/gmp.yaml",
        "policies/50%#1?.yaml",
        "c:/not-a-scheme.yaml",
    ],
)
def test_a_relative_path_is_a_percent_encoded_reference_to_the_declared_root(
    path: str, tmp_path: Path
) -> None:
    finding = error(Location(path, 3, 5), "unknown-key", "unknown key 'x'")
    with contextlib.chdir(tmp_path):
        log = json.loads(findings_sarif([finding], "0.1.0"))
    validate(log)
    [location] = log["runs"][0]["results"][0]["locations"]
    artifact = location["physicalLocation"]["artifactLocation"]
    assert artifact["uriBaseId"] == "SRCROOT"
    root = log["runs"][0]["originalUriBaseIds"]["SRCROOT"]["uri"]
    assert root == tmp_path.as_uri() + "/"
    assert resolved(log, location) == f"{tmp_path}/{path}"


def test_an_absolute_path_is_a_file_uri(tmp_path: Path) -> None:
    path = f"{tmp_path}/sites/Bâle usine/site.yaml"
    log = json.loads(findings_sarif([warning(Location(path), "role-unheld", "x")], "0.1.0"))
    validate(log)
    [location] = log["runs"][0]["results"][0]["locations"]
    artifact = location["physicalLocation"]["artifactLocation"]
    assert "uriBaseId" not in artifact
    assert artifact["uri"].startswith("file:///")
    assert resolved(log, location) == path


def test_the_sarif_of_a_real_check_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    repo = Path(__file__).resolve().parent.parent
    folder = tmp_path / "pull request ü"
    folder.mkdir()
    text = (repo / "policies/gmp/critical-process-data.yaml").read_text()
    (folder / "gmp policy.yaml").write_text(text.replace("\nretention:", "\nretension:"))
    site = repo / "examples/sites/plant-basel"
    with contextlib.chdir(tmp_path):
        code = main(["check", "-p", str(folder.name), "-s", str(site), "--format", "sarif"])
    log = json.loads(capsys.readouterr().out)
    assert code == 1
    validate(log)
    run = log["runs"][0]
    assert run["columnKind"] == "unicodeCodePoints"
    [result] = run["results"]
    assert result["ruleId"] == "unknown-key"
    assert resolved(log, result["locations"][0]) == f"{folder}/gmp policy.yaml"
