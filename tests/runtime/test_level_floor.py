"""The window's level floor from outcomes (`runtime.level_floor.OutcomeFloor`)."""

from __future__ import annotations

import math

import pytest
from runtime_replay import (
    MS,
    SECOND,
    Delivery,
    SteppingClock,
    flat_subtask_costs,
    frames,
    identity_bundle,
    replay,
)

from lego_embed.bench.simulated import SimulatedDevice
from lego_embed.errors import RuntimeConfigError
from lego_embed.model.loading import LoadedModel
from lego_embed.runtime.level_floor import CALM_WINDOWS, LOWER_AT, RAISE_AT, OutcomeFloor
from lego_embed.runtime.runtime import Runtime, RuntimeConfig


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


def outcome_runtime(loaded: LoadedModel) -> tuple[Runtime, SteppingClock]:
    """A runtime with the floor from outcomes whose subtasks take 300 us on the manual clock
    (a simulated device), so that when answers come does not depend on this machine."""
    clock = SteppingClock(SECOND)
    config = RuntimeConfig(warmup=False, window_ms=100.0, level_floor_from="outcomes")
    runtime = Runtime(loaded, identity_bundle(loaded, [(1, 2), (1, 4), (1, 6)]), config,
                      clock=clock, timer=SimulatedDevice(clock, flat_subtask_costs(), seed=0))
    runtime.start(thread=False)
    return runtime, clock


def floors_by_window(runtime: Runtime, clock: SteppingClock, deliveries: list[Delivery],
                     start_ns: int, end_ns: int, step_ns: int = 100 * MS) -> list[int]:
    """Replays the deliveries 100 ms (one window) at a time; the floor after each."""
    floors = []
    for t_ns in range(start_ns, end_ns, step_ns):
        chunk = [d for d in deliveries if t_ns <= d.arrival_ns < t_ns + step_ns]
        replay(runtime, clock, chunk, settle_ns=())
        floors.append(runtime.scheduler.level_floor)
    return floors


def test_fallbacks_raise_the_outcome_floor_one_level_per_window(npc_loaded: LoadedModel) -> None:
    """50 requests a second with 50 us gaps on the manual clock: nothing runs, every request
    gets its fallback at its deadline, and the floor from outcomes climbs one level per window
    to the largest (the rate's floor may jump there at once)."""
    heavy = frames(SECOND, 120, passes=1, pass_ns=16_500_000, gap_ns=50_000)  # 2 s
    asks = [Delivery(SECOND + k * 20 * MS, None, (100.0,), npc_id=f"npc{k % 5}",
                     options={"fallback": "block"}) for k in range(50)]  # 50/s for 1 s
    runtime, clock = outcome_runtime(npc_loaded)
    floors = floors_by_window(runtime, clock, sorted(heavy + asks, key=lambda d: d.arrival_ns),
                              SECOND, 2 * SECOND)
    assert floors[-1] == 3
    assert all(b - a in (0, 1) for a, b in zip([0, *floors], floors, strict=False))


def test_late_model_answers_raise_the_outcome_floor_and_calm_windows_lower_it(
    npc_loaded: LoadedModel,
) -> None:
    """Requests without a fallback wait through 0.5 s without gaps; once gaps come, the model
    answers them after their deadline and the floor rises; then 2 requests a second in roomy
    gaps are answered early, and calm windows bring it back to 0."""
    stream = frames(SECOND, 30, passes=1, pass_ns=16_500_000, gap_ns=50_000)  # 0.5 s
    light_start = SECOND + 30 * round(SECOND / 60)
    stream += frames(light_start, 150, passes=2, pass_ns=4 * MS, gap_ns=MS)  # 2.5 s
    stream += [Delivery(SECOND + k * 50 * MS, None, (100.0,), npc_id=f"npc{k}")
               for k in range(4)]  # no fallback: the model answers them, late
    stream += [Delivery(light_start + SECOND + k * 500 * MS, None, (500.0,),
                        npc_id=f"calm{k % 2}") for k in range(3)]
    runtime, clock = outcome_runtime(npc_loaded)
    floors = floors_by_window(runtime, clock, sorted(stream, key=lambda d: d.arrival_ns),
                              SECOND, light_start + 5 * SECOND // 2)
    assert max(floors) >= 1 and floors[-1] == 0
