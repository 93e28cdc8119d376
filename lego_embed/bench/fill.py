"""How much of the renderer's headroom the LLM used, overall and while requests were waiting.

A replay's headroom is its gaps (`gap_spans_ns`): after each pass its planned gap, after each
frame up to the next vsync tick. `backlogged_fill` is the share of the gap time during which at
least one request was queued in the runtime (its scheduler not empty) that LLM subtasks used:
the headroom the runtime could have used and did. The unused part is split into where it went
in each backlogged gap piece: the wake-up (from the piece's start to the first subtask), the
tail (from the last subtask's end to the piece's end) and pieces with no subtask at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lego_embed.engines.trace_replay import FrameRecord, PassModel, next_vsync_ns


@dataclass(frozen=True)
class GapSpan:
    """One headroom span of a replay, in monotonic ns; `inter` for the inter-frame gap."""

    start_ns: int
    end_ns: int
    inter: bool


def gap_spans_ns(
    frames: Sequence[FrameRecord], budget_ns: int, pass_model: PassModel | None = None
) -> list[GapSpan]:
    """Headroom spans of a replay: after each pass, its planned gap (the pass model's length,
    cut short if the next pass began earlier); after each frame, up to the next vsync tick.
    A render delayed by the LLM does not stretch the headroom it is counted against."""
    pass_model = pass_model or PassModel()
    gaps = []
    for index, frame in enumerate(frames):
        spans = frame.pass_spans_ns
        _, planned_ms = pass_model.split(frame.render_ms)
        for k, ((_, _, end), (_, begin, _)) in enumerate(zip(spans, spans[1:], strict=False)):
            gaps.append(GapSpan(end, min(begin, end + round(planned_ms[k] * 1e6)), False))
        if index + 1 < len(frames):
            vsync_ns = next_vsync_ns(frame.end_ns, frame.deadline_ns - budget_ns, budget_ns)
            gaps.append(GapSpan(frame.end_ns, min(frames[index + 1].begin_ns, vsync_ns), True))
    return [gap for gap in gaps if gap.end_ns > gap.start_ns]


def overlap_ns(spans: Sequence[tuple[int, int]], others: Sequence[tuple[int, int]]) -> int:
    """Total length of the intersection of two sets of spans (each sorted, non-overlapping)."""
    return sum(end - start for start, end in intersect(spans, others))


def intersect(
    spans: Sequence[tuple[int, int]], others: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The intersection of two sorted lists of non-overlapping spans, as sorted spans."""
    out, i, j = [], 0, 0
    while i < len(spans) and j < len(others):
        start, end = max(spans[i][0], others[j][0]), min(spans[i][1], others[j][1])
        if end > start:
            out.append((start, end))
        if spans[i][1] < others[j][1]:
            i += 1
        else:
            j += 1
    return out


def backlog_spans(timeline: Sequence[tuple[int, int]], end_ns: int) -> list[tuple[int, int]]:
    """Spans during which the runtime's queue held at least one request, from its
    (t_ns, queued requests) record of every change; the last span ends at end_ns."""
    spans, start = [], None
    for t_ns, queued in timeline:
        if queued and start is None:
            start = t_ns
        elif not queued and start is not None:
            spans.append((start, t_ns))
            start = None
    if start is not None and end_ns > start:
        spans.append((start, end_ns))
    return spans


def fill_report(
    llm_spans: Sequence[tuple[int, int]],
    gaps: Sequence[GapSpan],
    backlog: Sequence[tuple[int, int]],
) -> dict[str, Any]:
    """backlogged_fill (all gaps, inter-frame, intra-frame), the backlogged gap time (ms), and
    per backlogged gap piece the mean wake-up and tail (ms) and the share of pieces in which no
    subtask ran. None where there was no backlogged gap time."""
    llm = sorted(llm_spans)
    report: dict[str, Any] = {}
    for name, chosen in (("", gaps), ("_inter", [g for g in gaps if g.inter]),
                         ("_intra", [g for g in gaps if not g.inter])):
        pieces = intersect([(g.start_ns, g.end_ns) for g in chosen], backlog)
        total_ns = sum(end - start for start, end in pieces)
        report[f"backlogged_fill{name}"] = (
            round(overlap_ns(llm, pieces) / total_ns, 4) if total_ns else None
        )
        if name:
            continue
        report["backlogged_gap_ms"] = round(total_ns / 1e6, 2)
        wakes, tails, empty = [], [], 0
        k = 0
        for start, end in pieces:
            while k < len(llm) and llm[k][1] <= start:
                k += 1
            inside = []
            m = k
            while m < len(llm) and llm[m][0] < end:
                inside.append((max(llm[m][0], start), min(llm[m][1], end)))
                m += 1
            if not inside:
                empty += 1
                continue
            wakes.append(inside[0][0] - start)
            tails.append(end - inside[-1][1])
        report["backlogged_wake_ms"] = round(float(np.mean(wakes)) / 1e6, 3) if wakes else None
        report["backlogged_tail_ms"] = round(float(np.mean(tails)) / 1e6, 3) if tails else None
        report["backlogged_empty_gap_share"] = round(empty / len(pieces), 4) if pieces else None
    return report
