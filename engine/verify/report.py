"""What a verification found: every problem, named by what it is about, with counts and notes;
lawful deletions with their receipts, and findings that are no failure."""

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
    deletions: list[Problem] = field(default_factory=list)
    """Records deleted lawfully, each run's per device, with their receipts (not failures)."""
    findings: list[Problem] = field(default_factory=list)
    """What an auditor must see that is no failure of the evidence: data kept past its
    ``keep_at_most`` with no hold (a data-minimisation breach)."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, item: str, message: str) -> None:
        self.problems.append(Problem(item, message))
