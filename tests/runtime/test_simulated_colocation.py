"""The co-location run on a simulated clock (`bench.simulated`): reproducible outcomes, a
device that runs one thing at a time, and costs that say what is wrong with them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from runtime_replay import flat_subtask_costs

from lego_embed.bench.colocation import ColocationSetting, summarize
from lego_embed.bench.fill import overlap_ns
from lego_embed.bench.simulated import (
    SimulatedDevice,
    SimulatedRender,
    SubtaskCosts,
    calibrate_costs,
    simulate_colocation,
)
from lego_embed.engines.trace_replay import PassModel, RenderTrace, simulate_frames
from lego_embed.errors import BenchmarkConfigError
from lego_embed.model.loading import LoadedModel
from lego_embed.model.subtask import Subtask, SubtaskKind
from lego_embed.runtime.clock import ManualClock
from lego_embed.runtime.events import FRAME_BEGIN, FRAME_END, PASS_BEGIN, PASS_END

MS = 1_000_000
TWO_PASSES = PassModel(passes=("a", "b"), pass_weights=(1.0, 1.0), intra_gap_fraction=0.2,
                       gap_weights=(1.0,))


def steady(tmp_path: Path, frame_ms: float = 8.0, frames: int = 90) -> RenderTrace:
    return RenderTrace("steady", tmp_path / "steady.csv", "rendertime(ms)", (frame_ms,) * frames)


def test_a_simulated_run_is_reproducible(npc_loaded: LoadedModel, tmp_path: Path) -> None:
    """The same setting, seed and costs give the same answers, levels, subtask spans and frames,
    whatever this machine's load; every request is answered."""
    setting = ColocationSetting(steady(tmp_path), 300, "lego", 3, 1.2)
    costs = flat_subtask_costs(jitter=0.1)
    runs = [simulate_colocation(npc_loaded, setting, costs, seed=4) for _ in range(2)]
    first, second = runs
    assert first.requests == 11 and len(first.decisions) == 11
    assert first.timeline and first.timeline == second.timeline
    def answers(run) -> list[tuple]:
        return [(d.request_id, d.status, d.action, d.skip_level, d.latency_ms)
                for d in run.decisions]

    assert answers(first) == answers(second)
    assert first.frames == second.frames and len(first.frames) == 72
    row = summarize(first, 0.0)
    assert row["answered"] == row["requests"] == 11


def test_lego_never_holds_the_device_when_a_pass_is_due(
    npc_loaded: LoadedModel, tmp_path: Path
) -> None:
    """With exact costs (no noise) lego's subtasks fit their gaps: no pass waits for one, so no
    subtask overlaps a pass and no frame is missed; `free` takes the device whenever it has
    work, so its passes wait behind subtasks."""
    trace = steady(tmp_path, frame_ms=12.0)
    costs = flat_subtask_costs(subtask_us=600.0)
    lego = simulate_colocation(npc_loaded, ColocationSetting(trace, 300, "lego", 4, 1.2), costs)
    free = simulate_colocation(npc_loaded, ColocationSetting(trace, 300, "free", 4, 1.2), costs)

    def passes(run) -> list[tuple[int, int]]:
        return sorted((b, e) for f in run.frames for _, b, e in f.pass_spans_ns)

    def subtasks(run) -> list[tuple[int, int]]:
        return sorted((s, e) for s, e, _, _ in run.timeline)

    assert lego.timeline and overlap_ns(subtasks(lego), passes(lego)) == 0
    assert not any(f.missed for f in lego.frames)
    planned = [record for record, _ in simulate_frames([12.0] * 72)]
    assert [f.end_ns - f.begin_ns for f in lego.frames] == [
        r.end_ns - r.begin_ns for r in planned]
    assert sum(f.end_ns - f.begin_ns for f in free.frames) > sum(
        r.end_ns - r.begin_ns for r in planned)


def test_a_pass_due_while_the_device_is_busy_begins_when_it_is_free() -> None:
    """Frames of 10 ms (passes of 4 ms, a 2 ms gap): a subtask holding the device from 5 to
    9 ms delays pass b from 6 to 9 ms and the frame's end to 13 ms; the next frame begins at
    the next vsync tick as planned."""
    render = SimulatedRender([10.0, 10.0], TWO_PASSES, origin_ns=0)
    events = []
    while render.next_ns() is not None and render.next_ns() <= 5 * MS:
        events.append(render.pop())
    assert [(e.kind, e.name, e.t_ns) for e in events] == [
        (FRAME_BEGIN, "", 0), (PASS_BEGIN, "a", 0), (PASS_END, "a", 4 * MS)]
    assert render.busy_until(5 * MS) == 5 * MS  # in the gap: nothing of the render runs
    assert render.next_ns(device_free_ns=9 * MS) == 9 * MS
    delayed = render.pop(device_free_ns=9 * MS)
    assert (delayed.kind, delayed.t_ns) == (PASS_BEGIN, 9 * MS)
    assert render.busy_until(10 * MS) == 13 * MS  # the pass holds the device until its end
    rest = []
    while not render.done:
        rest.append(render.pop())
    assert [(e.kind, e.t_ns) for e in rest[:3]] == [
        (PASS_END, 13 * MS), (FRAME_END, 13 * MS), (FRAME_BEGIN, round(1000 / 60 * MS))]
    first, second = render.records
    assert first.pass_spans_ns == (("a", 0, 4 * MS), ("b", 9 * MS, 13 * MS))
    assert first.end_ns == 13 * MS and not first.missed
    assert second.end_ns - second.begin_ns == 10 * MS


def test_the_device_charges_the_modelled_cost_on_the_clock() -> None:
    """Without noise a subtask takes its median, after the worker's turn; the work really
    runs."""
    clock = ManualClock(1_000)
    costs = replace(flat_subtask_costs(subtask_us=250.0), turn_us=40.0)
    device = SimulatedDevice(clock, costs, seed=0)
    ran = []
    duration_ns = device.run(lambda: ran.append(True),
                             Subtask(SubtaskKind.LAYER, "decode", 0, 0, 1, 20))
    assert ran == [True] and duration_ns == 250_000
    assert clock.now_ns() == 1_000 + 40_000 + 250_000


def test_calibrated_costs_cover_what_the_runtime_runs(npc_loaded: LoadedModel,
                                                      tmp_path: Path) -> None:
    costs = calibrate_costs(npc_loaded, warmups=1)
    kinds = {key.split("/")[0] for key in costs.median_ns}
    assert {"embed", "attention", "ffn", "head", "layer", "ffn_slice"} <= kinds
    assert all(ns > 0 for ns in costs.median_ns.values())
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"rows": [], "simulated_costs": costs.to_json()}))
    loaded = SubtaskCosts.load(path)
    assert loaded.median_ns == {k: round(v) for k, v in costs.median_ns.items()}
    assert (loaded.jitter, loaded.wake_us, loaded.turn_us) == (
        costs.jitter, costs.wake_us, costs.turn_us)


def test_bad_costs_say_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkConfigError, match="cannot read subtask costs"):
        SubtaskCosts.load(tmp_path / "absent.json")
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(BenchmarkConfigError, match="holds no subtask costs"):
        SubtaskCosts.load(tmp_path / "other.json")
    (tmp_path / "bad.json").write_text(json.dumps({"median_ns": {"layer/decode/1": "x"}}))
    with pytest.raises(BenchmarkConfigError, match="malformed"):
        SubtaskCosts.load(tmp_path / "bad.json")
    with pytest.raises(BenchmarkConfigError, match="finite number >= 0"):
        SubtaskCosts({"layer/decode/1": -5.0})
    with pytest.raises(BenchmarkConfigError, match="no cost entries"):
        SubtaskCosts({})
    with pytest.raises(BenchmarkConfigError, match="is not kind/phase/token bucket"):
        SubtaskCosts({"layer": 5.0})


def test_a_pass_waits_only_for_a_subtask_that_holds_the_device(
    npc_loaded: LoadedModel, tmp_path: Path
) -> None:
    """`free` takes the device whenever it has work: a pass that begins later than planned
    (its frame's begin, or the previous pass's end plus the planned gap) begins exactly when a
    subtask ends, and no subtask runs during a pass (the worker's turn before a subtask leaves
    the device to the render)."""
    trace = steady(tmp_path, frame_ms=12.0)
    run = simulate_colocation(npc_loaded, ColocationSetting(trace, 300, "free", 4, 1.2),
                              flat_subtask_costs(subtask_us=600.0))
    subtask_ends = {end for _, end, _, _ in run.timeline}
    _, gaps_ms = PassModel().split(12.0)
    delayed = 0
    for frame in run.frames:
        planned = frame.begin_ns
        for k, (_, begin, end) in enumerate(frame.pass_spans_ns):
            assert begin >= planned
            if begin > planned:
                delayed += 1
                assert begin in subtask_ends
            planned = end + (round(gaps_ms[k] * 1e6) if k < len(gaps_ms) else 0)
    assert delayed > 0
    passes = sorted((b, e) for f in run.frames for _, b, e in f.pass_spans_ns)
    assert overlap_ns(sorted((s, e) for s, e, _, _ in run.timeline), passes) == 0


def test_the_off_run_replays_the_render_alone(tmp_path: Path) -> None:
    run = simulate_colocation(None, ColocationSetting(steady(tmp_path), 0, "off", 0, 1.2),
                              flat_subtask_costs())
    planned = [record for record, _ in simulate_frames([8.0] * 72, origin_ns=100 * MS)]
    assert run.frames == planned and run.requests == 0 and not run.timeline
