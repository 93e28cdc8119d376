"""Waiting for a threaded runtime's answers in tests: by their count, never by a sleep."""

from __future__ import annotations

import time

from lego_embed.runtime.runtime import Decision, Runtime


def wait_for(runtime: Runtime, count: int, timeout_s: float = 60.0) -> list[Decision]:
    """Polls until `count` answers came (each poll waits on the runtime's answer condition) or
    timeout_s (s) passed; returns what came, for the test to assert on."""
    decisions: list[Decision] = []
    give_up = time.monotonic() + timeout_s
    while len(decisions) < count and (left_s := give_up - time.monotonic()) > 0:
        decisions += runtime.poll(timeout_s=left_s)
    return decisions
