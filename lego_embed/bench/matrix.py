"""The co-location matrix of `lego-embed bench colocation --all`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lego_embed.bench.colocation import (
    MATRIX_POLICIES,
    ColocationRun,
    ColocationSetting,
    run_colocation,
    summarize,
)
from lego_embed.engines.trace_replay import RenderTrace
from lego_embed.model.loading import LoadedModel

MATRIX_APMS = (100, 200, 300)
MATRIX_NPCS = (1, 4)
ABLATIONS = (
    ("lego", {}),
    ("no_edf", {"edf": False}),
    ("prefix_reuse_of_4_token_persona", {"prefix_min_tokens": 1}),
    ("free_text_16_tokens", {"constrained": False}),
    ("no_batching", {"batching": False}),
    ("free_text_16_tokens_no_batching", {"constrained": False, "batching": False}),
)


@dataclass
class MatrixResult:
    """Rows of the whole benchmark, the ablation rows, and the run kept for the timeline plot."""

    runs: list[dict[str, Any]]
    ablations: list[dict[str, Any]]
    timeline_run: ColocationRun | None


def run_matrix(
    loaded: LoadedModel,
    traces: list[RenderTrace],
    seconds: float,
    core: int | None,
    bundle: Any = None,
    accuracy_by_level: dict[int, float] | None = None,
    apms: tuple[int, ...] = MATRIX_APMS,
    npcs_list: tuple[int, ...] = MATRIX_NPCS,
    policies: tuple[str, ...] = MATRIX_POLICIES,
    ablation_trace: RenderTrace | None = None,
    progress: Any = print,
) -> MatrixResult:
    """Every trace x APM x NPC count x policy, each against an `off` run of the same trace."""
    runs: list[dict[str, Any]] = []
    timeline_run = None
    for trace in traces:
        off = summarize(run_colocation(None, ColocationSetting(trace, 0, "off", 0, seconds),
                                       core=core), None)
        off.update(apm=None, npcs=0, added_frame_miss_rate=0.0)
        runs.append(off)
        progress(f"{trace.name}: off frame_miss_rate={off['frame_miss_rate']}")
        for apm in apms:
            for npcs in npcs_list:
                for policy in policies:
                    setting = ColocationSetting(trace, apm, policy, npcs, seconds)
                    run = run_colocation(loaded, setting, bundle, accuracy_by_level, core)
                    row = summarize(run, off["frame_miss_rate"])
                    runs.append(row)
                    if policy == "lego" and npcs == max(npcs_list) and timeline_run is None:
                        timeline_run = run
                    progress(
                        f"{trace.name} apm={apm} npcs={npcs} {policy}: slo={row['slo_attainment']}"
                        f" added_miss={row['added_frame_miss_rate']}"
                        f" util={row['headroom_utilization']}"
                    )
    ablations = []
    if ablation_trace is not None:
        apm, npcs = max(apms), max(npcs_list)
        off = summarize(run_colocation(None, ColocationSetting(ablation_trace, 0, "off", 0,
                                                               seconds), core=core), None)
        for name, options in ABLATIONS:
            setting = ColocationSetting(ablation_trace, apm, "lego", npcs, seconds,
                                        runtime_options=options)
            row = summarize(run_colocation(loaded, setting, bundle, accuracy_by_level, core),
                            off["frame_miss_rate"])
            row["ablation"] = name
            ablations.append(row)
            progress(f"ablation {name}: slo={row['slo_attainment']} p50={row['p50_action_ms']}")
    return MatrixResult(runs, ablations, timeline_run)


