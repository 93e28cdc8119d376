"""The window's level floor from outcomes (`runtime.level_floor.OutcomeFloor`)."""

from __future__ import annotations

import math

import pytest
from runtime_replay import MS, SECOND, Delivery, frames, identity_bundle, manual_runtime, replay

from lego_embed.errors import RuntimeConfigError
from lego_embed.model.loading import LoadedModel
from lego_embed.runtime.level_floor import CALM_WINDOWS, LOWER_AT, RAISE_AT, OutcomeFloor
from lego_embed.runtime.runtime import RuntimeConfig


def window(floor: OutcomeFloor, *fractions: float) -> int:
    for fraction in fractions:
        floor.note_answer(fraction)
    return floor.on_window()


def test_a_late_answer_or_a_fallback_raises_the_floor_and_calm_windows_lower_it() -> None:
    floor = OutcomeFloor(largest=2)
    assert window(floor, 0.1, RAISE_AT - 0.01) == 0  # near, not late: no change
    assert window(floor, 0.2, RAISE_AT) == 1  # one answer at RAISE_AT of its deadline
    assert window(floor, math.inf) == 2  # a fallback
    assert window(floor, 1.5) == 2  # never above the largest level
    assert window(floor) == 2  # a window without answers changes nothing
    for _ in range(CALM_WINDOWS - 1):
        assert window(floor, LOWER_AT - 0.01) == 2
    assert window(floor, 0.1) == 1  # the CALM_WINDOWS-th calm window in a row
    for _ in range(CALM_WINDOWS - 1):
        assert window(floor, 0.1) == 1
    assert window(floor, LOWER_AT) == 1  # not calm: the count starts again
    for _ in range(CALM_WINDOWS):
        window(floor, 0.1)
    assert floor.level == 0
    for _ in range(CALM_WINDOWS):
        window(floor, 0.1)
    assert floor.level == 0  # never below 0


def test_the_floor_source_is_checked() -> None:
    assert RuntimeConfig(level_floor_from="outcomes").validate().level_floor_from == "outcomes"
    with pytest.raises(RuntimeConfigError, match="level_floor_from must be one of rate, outcomes"):
        RuntimeConfig(level_floor_from="guess").validate()


def test_the_runtime_raises_its_outcome_floor_when_answers_come_late(
    npc_loaded: LoadedModel,
) -> None:
    """The overload of test_overload's floor test on the manual clock (50 requests a second
    with 50 us gaps, every one answered by its fallback at the deadline): with the floor from
    outcomes the runtime's floor rises to the largest level, one level per window; with 2
    requests a second in roomy gaps every answer is on time and it stays at 0."""
    bundle = identity_bundle(npc_loaded, [(1, 2), (1, 4), (1, 6)])
    heavy = frames(SECOND, 180, passes=1, pass_ns=16_500_000, gap_ns=50_000)  # 3 s
    asks = [Delivery(SECOND + k * 20 * MS, None, (100.0,), npc_id=f"npc{k % 5}",
                     options={"fallback": "block"}) for k in range(100)]  # 50/s for 2 s
    runtime, clock = manual_runtime(npc_loaded, bundle, window_ms=100.0,
                                    level_floor_from="outcomes")
    result = replay(runtime, clock, sorted(heavy + asks, key=lambda d: d.arrival_ns),
                    settle_ns=())
    assert any(d.status == "fallback" for d in result.callback_answers)
    assert runtime.stats()["level_floor"] == 3
    light = frames(SECOND, 180, passes=2, pass_ns=4 * MS, gap_ns=MS)
    calm = [Delivery(SECOND + k * 500 * MS, None, (500.0,), npc_id=f"calm{k % 2}")
            for k in range(5)]
    runtime, clock = manual_runtime(npc_loaded, bundle, window_ms=100.0,
                                    level_floor_from="outcomes")
    result = replay(runtime, clock, sorted(light + calm, key=lambda d: d.arrival_ns),
                    settle_ns=())
    assert result.callback_answers and all(d.deadline_met for d in result.callback_answers)
    assert runtime.stats()["level_floor"] == 0
