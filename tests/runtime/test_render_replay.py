"""The render replay runs in its own process or in a thread of the LLM's process (the GPU
check's two co-location modes); both deliver the same events in the same order."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lego_embed.engines.trace_replay import PassModel, RenderProcess, RenderTrace
from lego_embed.runtime.events import FRAME_BEGIN, FRAME_END, PASS_BEGIN, PASS_END


@pytest.mark.parametrize("placement", ["process", "thread"])
def test_each_placement_replays_every_frame_in_order(placement: str, tmp_path: Path) -> None:
    trace = RenderTrace("steady", tmp_path / "steady.csv", "rendertime(ms)", (4.0,) * 6)
    model = PassModel()
    render = RenderProcess(trace, pass_model=model, placement=placement, start_delay_ms=5.0)
    render.start()
    events = []
    while not render.done:
        event = render.poll_event(5.0)
        if event is not None:
            events.append(event)
    render.join()
    per_frame = [FRAME_BEGIN] + [PASS_BEGIN, PASS_END] * len(model.passes) + [FRAME_END]
    assert [e.kind for e in events] == per_frame * 6
    assert [e.t_ns for e in events] == sorted(e.t_ns for e in events)
    assert len(render.records) == 6 and render.origin_ns > 0
    assert [r.begin_ns for r in render.records] == [e.t_ns for e in events if e.kind == FRAME_BEGIN]


def test_claimed_events_leave_the_poller_the_origin_at_once(tmp_path: Path) -> None:
    """With its events claimed by a runtime, poll_event still returns as soon as the vsync
    origin arrives (the benchmark times its requests from it), long before its timeout."""
    trace = RenderTrace("steady", tmp_path / "steady.csv", "rendertime(ms)", (4.0,) * 3)
    render = RenderProcess(trace, start_delay_ms=5.0)
    render.start(claimed=True)
    reader = render.claim_events()
    polls = 0
    while render.origin_ns == 0:
        started = time.monotonic()
        assert render.poll_event(60.0) is None
        polls += 1
    assert time.monotonic() - started < 30.0 and polls <= 60
    while not render.done:
        render.poll_event(5.0)
    render.join()
    events = reader.read_events()
    assert len(events) == 3 * (2 + 2 * len(render.pass_model.passes))
    assert [e.t_ns for e in events] == sorted(e.t_ns for e in events)


def test_unknown_placement_is_refused(tmp_path: Path) -> None:
    trace = RenderTrace("steady", tmp_path / "steady.csv", "rendertime(ms)", (4.0,))
    with pytest.raises(ValueError, match="placement"):
        RenderProcess(trace, placement="gpu")
