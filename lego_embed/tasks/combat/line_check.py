"""Judges a generated bark against the line corpus: right for the persona and the action?"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lego_embed.tasks.combat.lines import CorpusLine, corpus


@dataclass(frozen=True)
class LineVerdict:
    """right: the line is one the corpus gives this persona for this action. exact: it is
    also the one written for this situation's mood and allies. known: the line is in the corpus
    at all (possibly another persona's or another action's)."""

    right: bool
    exact: bool
    known: bool


class LineChecker:
    """Built from a corpus: the lines each (persona, action) may say."""

    def __init__(self, lines: Iterable[CorpusLine] | None = None) -> None:
        self._allowed: dict[tuple[str, str], set[str]] = {}
        self._known: set[str] = set()
        for line in corpus() if lines is None else lines:
            self._allowed.setdefault((line.persona, line.action), set()).add(line.text)
            self._known.add(line.text)

    def judge(self, persona: str, action: str, line: str, expected: str) -> LineVerdict:
        """`line`: what the model said (surrounding blanks ignored); `expected`: the corpus
        line for this situation (`lines.line_for`)."""
        text = " ".join(line.split())
        right = text in self._allowed.get((persona, action), set())
        return LineVerdict(right=right, exact=right and text == expected, known=text in self._known)
