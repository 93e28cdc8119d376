"""The co-location matrix's run count (its progress and time estimate) against the jobs it makes."""

from __future__ import annotations

from pathlib import Path

from lego_embed.bench.matrix import MatrixPlan, _block_jobs
from lego_embed.engines.trace_replay import RenderTrace


def trace(name: str) -> RenderTrace:
    return RenderTrace(name, Path(f"{name}.csv"), "render_ms", (8.0,) * 600)


def test_the_plan_counts_every_run_its_blocks_make() -> None:
    plan = MatrixPlan(repeats=2, regime_traces=("a",), ablation_trace="b")
    traces = [trace("a"), trace("b"), trace("c")]
    regime = {"a": [(3, 1.0), (4, 1.25), (5, 1.5)]}
    jobs = sum(len(_block_jobs(t, plan, regime.get(t.name, []))) for t in traces)
    assert plan.runs(traces) == jobs * plan.repeats
