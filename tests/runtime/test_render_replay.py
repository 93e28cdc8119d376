"""The render replay runs in its own process or in a thread of the LLM's process (the GPU
check's two co-location modes); both deliver the same events in the same order."""

from __future__ import annotations

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


def test_unknown_placement_is_refused(tmp_path: Path) -> None:
    trace = RenderTrace("steady", tmp_path / "steady.csv", "rendertime(ms)", (4.0,))
    with pytest.raises(ValueError, match="placement"):
        RenderProcess(trace, placement="gpu")
