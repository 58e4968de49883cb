"""What a verification found: every problem, named by what it is about, with counts and notes."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    """One failed check: what it is about, and what is wrong."""

    item: str
    message: str

    def __str__(self) -> str:
        return f"{self.item}: {self.message}"


@dataclass
class Report:
    """Every problem found (not just the first), how many of each thing were checked, and notes."""

    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """Facts an auditor should know that are not failures (entries after the last checkpoint)."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, item: str, message: str) -> None:
        self.problems.append(Problem(item, message))
