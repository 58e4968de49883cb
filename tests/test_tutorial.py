"""The tutorial's commands run, and print what the page says they print (issue 15).

Every ``console`` block of docs/tutorial.md is a session: each ``$ `` line is
a command, run with bash from a copy of the repository's policies and
examples (as the page says, "from the root of the repository"), and the
lines after it, up to the next command, are its output. A line ``…`` stands
for any number of lines. A ``yaml`` block whose first line is a comment
naming a file (``# scratch/plant-basel.test.yaml``) is that file's content,
written when the page reaches it. So a change that alters an output fails
here until the page follows, as the generated references do.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "tutorial.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
ELISION = "…"


@dataclass
class Step:
    """A command and the output the page shows, or a file the page has the reader write."""

    command: str = ""
    output: list[str] = field(default_factory=list)
    file: str = ""
    text: str = ""


def steps(page: str) -> list[Step]:
    """The page's sessions and files, in page order."""
    found: list[Step] = []
    for language, body in BLOCK.findall(page):
        if language == "console":
            for line in body.splitlines():
                if line.startswith("$ "):
                    found.append(Step(command=line[2:]))
                elif found and found[-1].command:
                    found[-1].output.append(line)
        elif language == "yaml" and (named := re.match(r"# (scratch/\S+)\n", body)):
            found.append(Step(file=named[1], text=body))
    return found


def matches(expected: list[str], actual: list[str]) -> bool:
    """Whether ``actual`` is ``expected``, each ``…`` line standing for any run of lines."""
    parts: list[list[str]] = [[]]
    for line in expected:
        if line.strip() == ELISION:
            parts.append([])
        else:
            parts[-1].append(line.rstrip())
    lines = [line.rstrip() for line in actual]
    while lines and not lines[-1]:
        lines.pop()  # a blank line that ends an output is not shown on the page
    if len(parts) == 1:
        return lines == parts[0]
    first, *middle, last = parts
    if lines[: len(first)] != first or (last and lines[len(lines) - len(last) :] != last):
        return False
    at, end = len(first), len(lines) - len(last)
    for part in middle:
        at = _find(lines, part, at, end)
        if at < 0:
            return False
    return at <= end


def _find(lines: list[str], part: list[str], start: int, end: int) -> int:
    """The index just after the first run of ``part`` in ``lines[start:end]``, or -1."""
    for i in range(start, end - len(part) + 1):
        if lines[i : i + len(part)] == part:
            return i + len(part)
    return -1


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of what the tutorial reads: the policies and the examples."""
    root = tmp_path_factory.mktemp("tutorial")
    for folder in ("policies", "examples"):
        shutil.copytree(REPO / folder, root / folder)
    return root


def test_the_tutorial_parses_into_commands_and_files() -> None:
    found = steps(PAGE.read_text(encoding="utf-8"))
    assert sum(1 for s in found if s.command.startswith("converge ")) >= 10
    assert [s.file for s in found if s.file] == ["scratch/plant-basel.test.yaml"]


def test_every_command_of_the_tutorial_prints_what_the_page_shows(root: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("CONVERGE_KEYS", None)
    status, wrong = 0, []
    for step in steps(PAGE.read_text(encoding="utf-8")):
        if step.file:
            (root / step.file).parent.mkdir(parents=True, exist_ok=True)
            (root / step.file).write_text(step.text, encoding="utf-8")
            continue
        done = subprocess.run(
            ["bash", "-c", f"(exit {status}); {step.command}"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        status = done.returncode
        actual = (done.stdout + done.stderr).splitlines()
        if not matches(step.output, actual):
            diff = "\n".join(
                difflib.unified_diff(step.output, actual, "page", "printed", lineterm="")
            )
            wrong.append(f"$ {step.command}\nprints other lines than the page shows:\n{diff}")
    assert not wrong, "\n\n".join(wrong)


@pytest.mark.parametrize(
    ("expected", "actual", "same"),
    [
        (["a", "b"], ["a", "b"], True),
        (["a", "…"], ["a", "b", "c"], True),
        (["a", "…", "c"], ["a", "b", "c"], True),
        (["a", "…", "c"], ["a", "c"], True),
        (["a", "…", "x", "…"], ["a", "b", "c"], False),
        (["a"], ["a", "b"], False),
        (["…", "c"], ["a", "b"], False),
    ],
)
def test_an_elision_stands_for_any_run_of_lines(expected, actual, same) -> None:
    assert matches(expected, actual) is same
