"""Per-decision scheduling overhead (pytest-benchmark; target: median < 50 us).

Run with `pytest tests/runtime/test_scheduling_overhead.py --benchmark-enable` to measure;
`make test` runs each benchmarked call once (benchmarks disabled), as a functional check.
"""

from __future__ import annotations

from test_scheduler import PROMPT, fixed_costs, levels_for

from lego_embed.model.executor import Executor, GreedySampler
from lego_embed.model.loading import LoadedModel
from lego_embed.runtime.events import EngineEvent
from lego_embed.runtime.headroom import HeadroomTracker
from lego_embed.runtime.scheduler import ScheduledRequest, Scheduler, SchedulerConfig

MS = 1_000_000


def busy_scheduler(loaded: LoadedModel) -> tuple[Scheduler, HeadroomTracker]:
    """Four NPC requests queued, a renderer that just finished a frame (inter-frame gap open)."""
    scheduler = Scheduler(Executor(loaded), levels_for(loaded), SchedulerConfig(), fixed_costs())
    for request_id in range(4):
        state = scheduler.executor.start(PROMPT, GreedySampler(None, 4))
        request = ScheduledRequest(request_id, f"npc{request_id}", state, 0,
                                   (200 + 50 * request_id) * MS, 4)
        scheduler.admit(request, 0, headroom_rate=0.4)
    tracker = HeadroomTracker()
    for kind, name, t_ms in (("frame_begin", "", 0), ("pass_begin", "a", 0), ("pass_end", "a", 4),
                             ("pass_begin", "b", 5), ("pass_end", "b", 9), ("frame_end", "", 9)):
        tracker.on_event(EngineEvent(kind, name, t_ms * MS))
    return scheduler, tracker


def test_dispatch_decision_overhead(benchmark, npc_loaded: LoadedModel) -> None:
    scheduler, tracker = busy_scheduler(npc_loaded)
    now_ns = 10 * MS

    def decide():
        return scheduler.next_dispatch(now_ns, tracker.open_gap(), now_ns)

    dispatch = benchmark(decide)
    assert dispatch is not None and dispatch.requests[0].request_id == 0


def test_skip_level_choice_overhead(benchmark, npc_loaded: LoadedModel) -> None:
    scheduler, _ = busy_scheduler(npc_loaded)
    request = scheduler.pending[-1]

    def choose():
        return scheduler.choose_level(request, 0, headroom_rate=0.4)

    assert 0 <= benchmark(choose) < len(scheduler.levels)
