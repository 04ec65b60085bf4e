"""What the edge and admin parts of the chaos run report: one row per finding."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


@dataclass
class FindingFigures:
    """One row per finding: what it is, and the answer measured now."""

    # Names the part in a problem's text.
    part: ClassVar[str] = ""

    rows: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, finding: str, answer: str, *, as_specified: bool) -> None:
        self.rows.append((finding, answer))
        if not as_specified:
            self.problems.append(f"{self.part}: {finding}: {answer}")
