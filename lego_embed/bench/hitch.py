"""Render hitches: an injected long frame (shader compilation, asset streaming) and what it did.

`Hitch(at_s, ms)` replaces the replay segment's frame at `at_s` seconds with one of `ms` ms
render time, split into passes by the pass model like any frame. `hitch_metrics` reports, per
hitch, how long after the hitch frame ended the first decision arrived and the SLO attainment
of the requests issued after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lego_embed.engines.trace_replay import FRAME_BUDGET_60FPS_MS
from lego_embed.errors import BenchmarkConfigError

if TYPE_CHECKING:
    from lego_embed.bench.colocation import ColocationRun


@dataclass(frozen=True)
class Hitch:
    """An injected long frame: the replay segment's frame at `at_s` seconds (from the segment's
    first frame, in 60 FPS frames) gets a render time of `ms` milliseconds."""

    at_s: float
    ms: float

    @classmethod
    def parse(cls, spec: str) -> Hitch:
        """'MS@S', e.g. '745@4': a 745 ms frame 4 s into the replay."""
        ms_text, at, at_text = spec.partition("@")
        try:
            hitch = cls(float(at_text), float(ms_text))
        except ValueError:
            hitch = None
        if not at or hitch is None or not (math.isfinite(hitch.ms) and hitch.ms > 0) or not (
            math.isfinite(hitch.at_s) and hitch.at_s >= 0
        ):
            raise BenchmarkConfigError(
                f"hitch {spec!r}: write it as MS@S with MS > 0 the frame's render time in ms and "
                "S >= 0 its position in seconds from the start of the replay, e.g. 745@4"
            )
        return hitch

    @property
    def frame_index(self) -> int:
        return round(self.at_s * 1000.0 / FRAME_BUDGET_60FPS_MS)


def hitch_metrics(run: ColocationRun) -> list[dict[str, Any]]:
    """Per injected hitch: the hitch frame's measured length, how long after it ended the first
    decision (an allowed action) arrived, and the SLO attainment of the requests issued after
    it ended (and before the next hitch). A decision's arrival time is its request's issue time
    plus its latency."""
    frames = run.frames
    issued_at = dict(run.issued)
    answered_at = sorted(
        issued_at[d.request_id] + round(d.latency_ms * 1e6)
        for d in run.decisions if d.action is not None and d.request_id in issued_at
    )
    by_id = {d.request_id: d for d in run.decisions}
    hitches = sorted(run.setting.hitches, key=lambda h: h.frame_index)
    rows = []
    for k, hitch in enumerate(hitches):
        if hitch.frame_index >= len(frames):
            continue
        end_ns = frames[hitch.frame_index].end_ns
        until_ns = (frames[hitches[k + 1].frame_index].begin_ns
                    if k + 1 < len(hitches) and hitches[k + 1].frame_index < len(frames)
                    else None)
        after = [rid for rid, t in run.issued if t >= end_ns and (until_ns is None or t < until_ns)]
        met = sum(by_id[rid].deadline_met for rid in after if rid in by_id)
        first = next((t for t in answered_at if t >= end_ns), None)
        rows.append({
            "at_s": hitch.at_s,
            "ms": hitch.ms,
            "frame_index": hitch.frame_index,
            "hitch_frame_ms": round(frames[hitch.frame_index].frame_ms, 2),
            "first_decision_after_hitch_ms": (
                round((first - end_ns) / 1e6, 2) if first is not None else None
            ),
            "requests_after_hitch": len(after),
            "slo_attainment_after_hitch": round(met / len(after), 4) if after else None,
        })
    return rows
