"""Fallbacks: what an NPC does at its deadline when the model's answer is not there.

A request may carry a fallback: an action (one of its allowed actions) or a game callback that
supplies one when it is needed, `fallback(FallbackContext) -> action`. When the deadline passes
with no answer, or when the runtime predicts that the request cannot finish by its deadline even
at the largest skip level, the request is answered at its deadline with the fallback (status
`fallback`). The model's late action is then discarded, or delivered as a correction if the
request asked for corrections. `FallbackSchedule` holds the deadlines the worker must wake for.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lego_embed.errors import InvalidActionSetError

DEADLINE_PASSED = "deadline_passed"
PREDICTED_MISS = "predicted_miss"


@dataclass(frozen=True)
class FallbackContext:
    """What a fallback callback is told: which request, the NPC, its allowed actions, and why
    (`deadline_passed`, or `predicted_miss`: the model could not have made the deadline)."""

    request_id: int
    npc_id: str
    actions: tuple[str, ...]
    reason: str


Fallback = str | Callable[[FallbackContext], str]


def check_fallback(fallback: object, actions: Sequence[str]) -> None:
    """Raises InvalidActionSetError unless `fallback` is None, one of `actions`, or callable."""
    if fallback is None or callable(fallback):
        return
    if not isinstance(fallback, str) or fallback not in actions:
        raise InvalidActionSetError(
            f"fallback {fallback!r} must be one of the allowed actions {list(actions)} (or a "
            "callable that returns one at the deadline)"
        )


def resolve_fallback(fallback: Fallback, context: FallbackContext) -> str:
    """The fallback action; calls the game's callback if it is one. Raises
    InvalidActionSetError when the callback returns something that is not an allowed action
    (its own exceptions propagate: the runtime answers the request with them)."""
    action = fallback(context) if callable(fallback) else fallback
    if not isinstance(action, str) or action not in context.actions:
        raise InvalidActionSetError(
            f"the fallback callback returned {action!r}, which is not one of the allowed actions "
            f"{list(context.actions)}"
        )
    return action


class FallbackSchedule:
    """Deadlines (ns on the runtime's clock) of open requests that carry a fallback, earliest
    first. Not thread-safe: the runtime's worker owns it."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int]] = []

    def add(self, deadline_ns: int, request_id: int) -> None:
        heapq.heappush(self._heap, (deadline_ns, request_id))

    def due(self, now_ns: int) -> list[int]:
        """Request ids whose deadline is at or before now_ns, removed from the schedule."""
        ids = []
        while self._heap and self._heap[0][0] <= now_ns:
            ids.append(heapq.heappop(self._heap)[1])
        return ids

    def next_ns(self) -> int | None:
        """The earliest deadline still scheduled (possibly of a request answered meanwhile)."""
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)
