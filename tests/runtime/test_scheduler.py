"""Scheduler: skip-level choice, per-step escalation, gap-fit dispatch, EDF and batching."""

from __future__ import annotations

import pytest

from lego_embed.model.executor import Executor, GreedySampler
from lego_embed.model.layer_plan import AdaptorStep, LayerPlan
from lego_embed.model.loading import LoadedModel
from lego_embed.model.profile import CostEntry, CostProfile
from lego_embed.model.subtask import DECODE, PREFILL, Subtask, SubtaskKind
from lego_embed.runtime.headroom import INTER_FRAME_SLOT, OpenGap
from lego_embed.runtime.scheduler import (
    AGGREGATE_REFRESH_RECORDS,
    CostModel,
    LevelOption,
    ScheduledRequest,
    Scheduler,
    SchedulerConfig,
    cost_key,
)
from lego_embed.skip.adaptor import AdaptorShape, SpanAdaptor

MS = 1_000_000
PROMPT = [5, 6, 7, 8, 9, 10, 11, 12]


def levels_for(loaded: LoadedModel) -> list[LevelOption]:
    n = loaded.num_layers
    hidden = loaded.args.hidden_size
    options = [LevelOption(0, LayerPlan.full(n), 0.95)]
    for level, skipped in ((1, 2), (2, 4), (3, 6)):
        adaptor = SpanAdaptor(AdaptorShape(hidden, hidden))
        first, last = 1, skipped
        plan = LayerPlan((0, AdaptorStep(first, last, adaptor), *range(last + 1, n)))
        options.append(LevelOption(level, plan, 0.95 - 0.05 * level))
    return options


def fixed_costs() -> CostModel:
    """1 ms per prefill attention/FFN block and decode layer, 0.2 ms per adaptor/embed/head."""
    profile_ns = {}
    for kind, phase, tokens, ms in (
        (SubtaskKind.ATTENTION, PREFILL, 8, 1.0), (SubtaskKind.FFN, PREFILL, 8, 1.0),
        (SubtaskKind.EMBED, PREFILL, 8, 0.2), (SubtaskKind.HEAD, PREFILL, 1, 0.2),
        (SubtaskKind.ADAPTOR, PREFILL, 8, 0.2), (SubtaskKind.LAYER, DECODE, 1, 1.0),
        (SubtaskKind.ADAPTOR, DECODE, 1, 0.2), (SubtaskKind.HEAD, DECODE, 1, 0.2),
    ):
        profile_ns[cost_key(Subtask(kind, phase, 0, 0, tokens, tokens))] = ms * MS
    return CostModel(profile_ns)


def make(loaded: LoadedModel, policy: str = "lego", **config) -> Scheduler:
    return Scheduler(Executor(loaded), levels_for(loaded), SchedulerConfig(policy=policy, **config),
                     fixed_costs())


def new_request(scheduler: Scheduler, request_id: int, deadline_ms: float, tokens: int = 4,
                now_ns: int = 0) -> ScheduledRequest:
    state = scheduler.executor.start(PROMPT, GreedySampler(None, tokens))
    return ScheduledRequest(request_id, f"npc{request_id}", state, now_ns,
                            now_ns + round(deadline_ms * MS), tokens)


def scarce_with_full_ms(loaded: LoadedModel) -> tuple[Scheduler, float]:
    """A `lego` scheduler while compute is scarce (usable fraction 1), and the predicted
    full-model cost (ms) of a 4-token request: embeddings, a prefill of 2 ms per layer and
    3 decode steps of 1 ms per layer plus the head."""
    scheduler = make(loaded, usable_fraction=1.0)
    scheduler.compute_scarce = True
    n = loaded.num_layers
    return scheduler, 0.4 + 2 * n + 3 * (n + 0.2)


def test_cost_profile_predicts_a_request(npc_loaded: LoadedModel) -> None:
    scheduler = make(npc_loaded)
    request = new_request(scheduler, 1, 100.0, tokens=4)
    n = npc_loaded.num_layers  # prefill: embed + 2 blocks per layer + head; 3 decode steps
    expected_ms = 0.2 + 2 * n + 0.2 + 3 * (n + 0.2)
    assert scheduler.remaining_cost_ns(request) / MS == pytest.approx(expected_ms, rel=1e-6)
    assert scheduler.remaining_cost_ns(request, 3) < scheduler.remaining_cost_ns(request, 1)


def test_remembered_remaining_cost_follows_the_cost_model_and_the_request(
    npc_loaded: LoadedModel,
) -> None:
    scheduler = make(npc_loaded)
    request = new_request(scheduler, 1, 100.0, tokens=4)
    n = npc_loaded.num_layers
    assert scheduler.remaining_cost_ns(request) / MS == pytest.approx(0.4 + 2 * n + 3 * (n + 0.2))
    decode_layer = Subtask(SubtaskKind.LAYER, DECODE, 0, 0, 1, 9)
    for _ in range(200):  # decode layers now take 3 ms: the remembered cost must follow
        scheduler.record(decode_layer, 3 * MS)
    assert scheduler.remaining_cost_ns(request) / MS == pytest.approx(
        0.4 + 2 * n + 3 * (3 * n + 0.2), rel=1e-3)
    before = scheduler.remaining_cost_ns(request)
    scheduler.executor.step(request.state)  # the embedding ran: its 0.2 ms are no longer left
    assert scheduler.remaining_cost_ns(request) / MS == pytest.approx(before / MS - 0.2)
    assert scheduler.remaining_cost_ns(request, 3) < scheduler.remaining_cost_ns(request, 1)


def test_whole_pass_predictions_follow_measurements_every_few_records(
    npc_loaded: LoadedModel,
) -> None:
    """A subtask's own prediction (gap fitting) follows every measurement; whole-pass ones
    (level choice) are recomputed every AGGREGATE_REFRESH_RECORDS measurements, and at once
    when a subtask shape is measured for the first time."""
    cost = make(npc_loaded).cost
    plan = LayerPlan.full(npc_loaded.num_layers)
    layer = Subtask(SubtaskKind.LAYER, DECODE, 0, 0, 1, 9)
    before = cost.pass_cost_ns(plan, DECODE, 1, 9)
    for _ in range(AGGREGATE_REFRESH_RECORDS - 1):
        cost.record(layer, 3 * MS)
        assert cost.pass_cost_ns(plan, DECODE, 1, 9) == before
    assert cost.predict_ns(layer, 0.0) > 2 * MS  # the subtask's own prediction moved at once
    cost.record(layer, 3 * MS)
    refreshed = cost.pass_cost_ns(plan, DECODE, 1, 9)
    assert refreshed > before
    for _ in range(AGGREGATE_REFRESH_RECORDS - 1):
        cost.record(layer, 6 * MS)
    assert cost.pass_cost_ns(plan, DECODE, 1, 9) == refreshed
    cost.record(Subtask(SubtaskKind.LAYER, DECODE, 0, 0, 300, 9), 9 * MS)  # a new shape
    assert cost.pass_cost_ns(plan, DECODE, 1, 9) > refreshed


def test_skip_level_is_the_smallest_that_fits(npc_loaded: LoadedModel) -> None:
    scheduler = make(npc_loaded, usable_fraction=1.0)
    n = npc_loaded.num_layers
    full_ms = 0.4 + 2 * n + 3 * (n + 0.2)
    roomy = new_request(scheduler, 1, 2 * full_ms)
    scheduler.admit(roomy, 0, headroom_rate=1.0)
    assert roomy.level == 0
    scheduler.finish(roomy)
    # half the time is headroom: the full model no longer fits, a skip level does
    tight = new_request(scheduler, 2, 1.5 * full_ms)
    scheduler.admit(tight, 0, headroom_rate=0.5)
    assert tight.level > 0
    assert scheduler.remaining_cost_ns(tight) <= 0.75 * full_ms * MS
    assert scheduler.remaining_cost_ns(tight, tight.level - 1) > 0.75 * full_ms * MS
    assert tight.state.plan.skipped_layers == levels_for(npc_loaded)[tight.level].skipped_layers


def test_impossible_deadline_runs_at_the_largest_level(npc_loaded: LoadedModel) -> None:
    scheduler = make(npc_loaded)
    request = new_request(scheduler, 1, 1.0)
    scheduler.admit(request, 0, headroom_rate=0.5)
    assert request.level == 3
    assert len(scheduler) == 1  # queued anyway, never dropped


def test_escalates_between_decode_steps_when_the_deadline_is_at_risk(
    npc_loaded: LoadedModel,
) -> None:
    scheduler = make(npc_loaded, usable_fraction=1.0)
    request = new_request(scheduler, 1, 1000.0, tokens=6)
    scheduler.admit(request, 0, headroom_rate=1.0)
    assert request.level == 0
    executor = scheduler.executor
    while not (request.state.at_pass_start and request.state.generated):
        executor.step(request.state)  # finish the prefill
    assert not scheduler.recheck(request, 10 * MS, headroom_rate=1.0)
    # most of the time is gone: the rest only fits with layers skipped
    remaining_full_ms = scheduler.remaining_cost_ns(request) / MS
    now_ns = request.deadline_ns - round(0.6 * remaining_full_ms * MS)
    assert scheduler.recheck(request, now_ns, headroom_rate=1.0)
    assert request.level > 0 and request.escalations == 1
    assert request.state.plan.skipped_layers > 0
    executor.run_to_completion(request.state)
    assert len(request.state.generated) == 6


def test_gap_fit_dispatch(npc_loaded: LoadedModel) -> None:
    scheduler = make(npc_loaded, margin_ns=100_000, margin_fraction=0.1)
    request = new_request(scheduler, 1, 500.0)
    scheduler.admit(request, 0, headroom_rate=1.0)
    executor = scheduler.executor
    executor.step(request.state)  # embed; next is a 1 ms attention block
    now = 50 * MS
    short_gap = OpenGap("after:shadow", now, now + round(1.1 * MS))
    long_gap = OpenGap("after:shadow", now, now + round(1.3 * MS))
    assert scheduler.next_dispatch(now, None, now) is None  # a pass is running
    assert scheduler.next_dispatch(now, short_gap, now) is None  # 1.1 ms + 0.1 ms > 1.1 ms
    intra = scheduler.next_dispatch(now, long_gap, now)
    assert intra is not None and intra.max_subtasks == 1
    inter = scheduler.next_dispatch(now, OpenGap(INTER_FRAME_SLOT, now, now + 6 * MS), now)
    assert inter is not None and inter.max_subtasks > 1 and inter.gap_end_ns == now + 6 * MS
    # an engine silent in a gap for a while (minimised, paused) has no rendering to protect;
    # one silent inside a pass is busy (a hitch): nothing starts however long it lasts
    assert scheduler.next_dispatch(now + 10**9, short_gap, now) is not None
    assert scheduler.next_dispatch(now + 10**9, None, now) is None
    assert scheduler.next_dispatch(now + 10**12, None, now) is None


def test_borrowing_frame_slack_lets_work_run_past_an_inter_frame_gap_only_when_scarce(
    npc_loaded: LoadedModel,
) -> None:
    now = 50 * MS
    tail = OpenGap(INTER_FRAME_SLOT, now - 5 * MS, now + round(0.5 * MS), round(2 * MS))
    intra = OpenGap("after:shadow", now, now + round(0.5 * MS), round(2 * MS))
    for borrow, scarce, expected_end in ((True, True, now + round(2.5 * MS)),
                                         (True, False, None), (False, True, None)):
        scheduler = make(npc_loaded, margin_ns=100_000, margin_fraction=0.1,
                         borrow_frame_slack=borrow)
        scheduler.compute_scarce = scarce
        request = new_request(scheduler, 1, 500.0)
        scheduler.admit(request, 0, headroom_rate=1.0)
        scheduler.executor.step(request.state)  # embed; next is a 1 ms attention block
        dispatch = scheduler.next_dispatch(now, tail, now)
        # 1 ms + 10% + 0.1 ms does not fit the 0.5 ms left; it fits the slack of the next frame
        if expected_end is None:
            assert dispatch is None
        else:
            assert dispatch is not None and dispatch.gap_end_ns == expected_end
        assert scheduler.next_dispatch(now, intra, now) is None  # never inside a frame


@pytest.mark.parametrize("policy", ["free", "inter_frame", "static_skip"])
def test_baseline_policies(npc_loaded: LoadedModel, policy: str) -> None:
    scheduler = make(npc_loaded, policy=policy)
    request = new_request(scheduler, 1, 500.0)
    scheduler.admit(request, 0, headroom_rate=0.1)
    assert request.level == (3 if policy == "static_skip" else 0)
    now = MS
    intra = OpenGap("after:shadow", now, now + 50 * MS)
    inter = OpenGap(INTER_FRAME_SLOT, now, now + 1)  # even a tiny inter-frame gap
    assert (scheduler.next_dispatch(now, None, now) is not None) == (policy == "free")
    assert (scheduler.next_dispatch(now, intra, now) is not None) == (policy == "free")
    assert scheduler.next_dispatch(now, inter, now) is not None


def test_static_skip_runs_a_fixed_slice_per_inter_frame_gap(npc_loaded: LoadedModel) -> None:
    scheduler = make(npc_loaded, policy="static_skip", static_slice_ns=2 * MS)
    request = new_request(scheduler, 1, 500.0)
    scheduler.admit(request, 0, headroom_rate=1.0)
    gap = OpenGap(INTER_FRAME_SLOT, 0, 16 * MS)
    assert scheduler.next_dispatch(0, gap, 0) is not None
    scheduler.record(Subtask(SubtaskKind.EMBED, PREFILL, -1, -1, 8, 8), 2 * MS)
    assert scheduler.next_dispatch(0, gap, 0) is None  # slice used up
    next_gap = OpenGap(INTER_FRAME_SLOT, 17 * MS, 33 * MS)
    assert scheduler.next_dispatch(17 * MS, next_gap, 17 * MS) is not None


def test_edf_serves_the_earliest_deadline_first(npc_loaded: LoadedModel) -> None:
    for edf, expected_first in ((True, 2), (False, 1)):
        scheduler = make(npc_loaded, policy="free", edf=edf)
        scheduler.admit(new_request(scheduler, 1, 600.0), 0, 1.0)
        scheduler.admit(new_request(scheduler, 2, 200.0), 0, 1.0)
        dispatch = scheduler.next_dispatch(0, None, None)
        assert dispatch is not None and dispatch.requests[0].request_id == expected_first


def test_waiting_prompts_of_one_length_are_prefilled_in_one_batch(npc_loaded: LoadedModel) -> None:
    scheduler = make(npc_loaded, policy="free")
    requests = [new_request(scheduler, i, 300.0 + i) for i in (1, 2, 3)]
    for request in requests:
        scheduler.admit(request, 0, 1.0)
    dispatch = scheduler.next_dispatch(0, None, None)
    assert dispatch is not None and len(dispatch.requests) == 3
    scheduler.executor.step(requests[0].state)  # one request moves ahead: no longer batchable
    dispatch = scheduler.next_dispatch(0, None, None)
    assert dispatch is not None and [r.request_id for r in dispatch.requests] == [1]


def test_a_batch_runs_whole_or_waits_and_shrinks_only_for_a_gap_it_could_never_fit(
    npc_loaded: LoadedModel,
) -> None:
    relaxed = make(npc_loaded)  # compute to spare: the most urgent part that fits runs now
    for i in (1, 2, 3):
        relaxed.admit(new_request(relaxed, i, 300.0 + i), 0, 1.0)
    part = relaxed.next_dispatch(round(0.3 * MS), OpenGap("after:shadow", 0, round(0.7 * MS)), 0)
    assert part is not None and [r.request_id for r in part.requests] == [1]
    scheduler = make(npc_loaded)
    scheduler.compute_scarce = True
    for i in (1, 2, 3):
        scheduler.admit(new_request(scheduler, i, 300.0 + i), 0, 1.0)
    # embeddings: 0.2 ms for one 8-token prompt, 0.4 ms predicted for 3 x 8 tokens (scaled from
    # the nearest measured bucket); a dispatch needs predicted * 1.1 + 0.15 ms (0.59 ms)
    long_gap = OpenGap("after:shadow", 0, round(0.7 * MS))
    whole = scheduler.next_dispatch(0, long_gap, 0)
    assert whole is not None and [r.request_id for r in whole.requests] == [1, 2, 3]
    # too little left of a gap the batch fits: nothing of the group runs (no member moves ahead)
    assert scheduler.next_dispatch(round(0.3 * MS), long_gap, 0) is None
    # an intra-frame gap too short for the batch: it waits for a longer gap
    assert scheduler.next_dispatch(0, OpenGap("after:shadow", 0, round(0.45 * MS)), 0) is None
    # an inter-frame gap too short for the batch from its start: its most urgent part runs
    short_inter = OpenGap(INTER_FRAME_SLOT, 0, round(0.45 * MS))
    single = scheduler.next_dispatch(0, short_inter, 0)
    assert single is not None and [r.request_id for r in single.requests] == [1]
    assert whole.predicted_ns > single.predicted_ns


def test_a_gap_is_filled_by_a_request_outside_any_batch_not_by_a_member_of_one(
    npc_loaded: LoadedModel,
) -> None:
    scheduler = make(npc_loaded, margin_ns=50_000, margin_fraction=0.0)
    scheduler.compute_scarce = True
    group = [new_request(scheduler, i, 300.0 + i) for i in (1, 2)]
    for request in group:
        scheduler.admit(request, 0, headroom_rate=1.0)
    scheduler.executor.step_batch([r.state for r in group])  # both past their embedding
    loner = new_request(scheduler, 3, 900.0)
    scheduler.admit(loner, 0, headroom_rate=1.0)
    # the pair's next subtask (2 x 1 ms attention) does not fit 1.2 ms, one member's would:
    # the loner's embedding runs instead, and the pair stays together
    gap = OpenGap("after:shadow", MS, MS + round(1.2 * MS))
    dispatch = scheduler.next_dispatch(MS, gap, MS)
    assert dispatch is not None and dispatch.requests == (loner,)
    scheduler.executor.step(loner.state)
    # now at the pair's point, the loner joins their batch: nothing of it fits 1.2 ms, all of
    # it fits a longer gap
    assert scheduler.next_dispatch(MS, gap, MS) is None
    long_gap = OpenGap("after:shadow", MS, MS + round(5 * MS))
    dispatch = scheduler.next_dispatch(MS, long_gap, MS)
    assert dispatch is not None and len(dispatch.requests) == 3


def test_waiting_prompts_that_would_batch_share_the_smallest_level_at_which_all_fit(
    npc_loaded: LoadedModel,
) -> None:
    scheduler, full_ms = scarce_with_full_ms(npc_loaded)
    relaxed = new_request(scheduler, 1, 10 * full_ms)
    scheduler.admit(relaxed, 0, headroom_rate=1.0)
    assert relaxed.level == 0
    urgent = new_request(scheduler, 2, 0.6 * full_ms)
    scheduler.admit(urgent, 0, headroom_rate=1.0)
    assert urgent.level > 0 and relaxed.level == urgent.level
    assert relaxed.state.plan is urgent.state.plan
    dispatch = scheduler.next_dispatch(0, None, None)
    assert dispatch is not None and len(dispatch.requests) == 2  # one batched prefill
    started = new_request(scheduler, 3, 10 * full_ms)  # the same prompt, but the pair moved on
    scheduler.executor.step_batch([urgent.state, relaxed.state])
    scheduler.admit(started, 0, headroom_rate=1.0)
    assert started.level == 0


def test_a_group_level_is_chosen_afresh_not_kept_from_its_most_urgent_member(
    npc_loaded: LoadedModel,
) -> None:
    scheduler, full_ms = scarce_with_full_ms(npc_loaded)
    early = new_request(scheduler, 1, 2 * full_ms)
    scheduler.admit(early, 0, headroom_rate=0.25)  # scarce headroom then: a high level
    assert early.level > 0
    # headroom is back when a second prompt of that length arrives: both fit the full model,
    # batched, so neither is held at the level the first one needed then
    later = new_request(scheduler, 2, 10 * full_ms)
    scheduler.admit(later, 0, headroom_rate=1.0)
    assert early.level == later.level == 0


def test_no_request_takes_a_level_below_the_window_floor(npc_loaded: LoadedModel) -> None:
    """A request with time for the full model starts at the floor; one that fits no level
    still takes the largest; batched prompts share a level at or above it; with the floor
    lowered, a request that has not started is re-chosen below its old level."""
    scheduler, full_ms = scarce_with_full_ms(npc_loaded)
    scheduler.level_floor = 2
    roomy = new_request(scheduler, 1, 10 * full_ms)
    scheduler.admit(roomy, 0, headroom_rate=1.0)
    assert roomy.level == 2 and roomy.state.plan is scheduler.levels[2].plan
    same_prompt = new_request(scheduler, 2, 10 * full_ms)
    scheduler.admit(same_prompt, 0, headroom_rate=1.0)
    assert same_prompt.level == roomy.level == 2
    hopeless = new_request(scheduler, 3, 1.0)
    scheduler.admit(hopeless, 0, headroom_rate=1.0)
    assert hopeless.level == 3
    scheduler.finish(hopeless)
    scheduler.level_floor = 0
    scheduler.relevel_waiting(0, headroom_rate=1.0)
    assert roomy.level == same_prompt.level == 0


def test_the_window_floor_raises_no_started_line_that_is_on_time(npc_loaded: LoadedModel) -> None:
    """A streamed line that started at the full model keeps it while its tokens are on time,
    whatever the floor; when a token would be late, the escalation goes to the floor or above."""
    scheduler = make(npc_loaded, usable_fraction=1.0)
    one_token_ms = npc_loaded.num_layers + 0.2
    line = new_request(scheduler, 1, 1000.0, tokens=1)
    scheduler.admit(line, 0, headroom_rate=1.0)
    while not line.state.generated:
        scheduler.executor.step(line.state)
    assert line.level == 0
    scheduler.level_floor = 2
    assert not scheduler.retarget(line, round(100 * one_token_ms * MS), 2, 0, 1.0)
    assert line.level == 0 and line.state.plan is scheduler.levels[0].plan
    assert not scheduler.recheck(line, 0, headroom_rate=1.0)
    assert line.level == 0
    line.deadline_ns = round(0.9 * one_token_ms * MS)  # the next token would be late at level 0
    assert scheduler.recheck(line, 0, headroom_rate=1.0)
    assert line.level >= 2


def test_same_level_decode_steps_are_batched(npc_loaded: LoadedModel) -> None:
    scheduler = make(npc_loaded, policy="free")
    first, second = new_request(scheduler, 1, 500.0), new_request(scheduler, 2, 600.0)
    for request in (first, second):
        scheduler.admit(request, 0, 1.0)
        while not request.state.generated:
            scheduler.executor.step(request.state)  # prefill both
    dispatch = scheduler.next_dispatch(0, None, None)
    assert dispatch is not None and len(dispatch.requests) == 2
    unbatched = make(npc_loaded, policy="free", batching=False)
    for request in (first, second):
        unbatched.admit(request, 0, 1.0)
    single = unbatched.next_dispatch(0, None, None)
    assert single is not None and len(single.requests) == 1


def test_cost_model_learns_measured_times() -> None:
    model = CostModel()
    subtask = Subtask(SubtaskKind.LAYER, DECODE, 3, 3, 1, 20)
    assert model.predict_ns(subtask) == 200_000  # default before any measurement
    for _ in range(50):
        model.record(subtask, 400_000)
    assert model.predict_ns(subtask) == pytest.approx(400_000, rel=0.05)
    # an unseen token bucket of the same kind is scaled from the nearest one
    batched = Subtask(SubtaskKind.LAYER, DECODE, 3, 3, 4, 20)
    assert model.predict_ns(batched) > model.predict_ns(subtask)


def test_remembered_predictions_follow_every_measurement_of_what_they_depend_on() -> None:
    """Predictions are remembered per cost key (kind, phase, token bucket): a measurement
    refreshes its own key's and every prediction derived from others (a slice from its whole
    block, a token bucket from the nearest measured one), and keeps the other keys'."""
    model = CostModel()
    ffn = Subtask(SubtaskKind.FFN, PREFILL, 0, 0, 16, 16)
    attention = Subtask(SubtaskKind.ATTENTION, PREFILL, 0, 0, 16, 16)
    half = Subtask(SubtaskKind.FFN_SLICE, PREFILL, 0, 0, 16, 16, 0, 2)
    wider = Subtask(SubtaskKind.FFN, PREFILL, 0, 0, 64, 64)
    model.record(ffn, 400_000)
    model.record(attention, 100_000)
    before = {s: (model.predict_ns(s), model.predict_ns(s, 0.0)) for s in (ffn, half, wider)}
    attention_before = model.predict_ns(attention, 0.0)
    model.record(ffn, 800_000)
    model._estimates.pop(cost_key(attention))  # a kept prediction no longer reads its estimate
    assert model.predict_ns(attention, 0.0) == attention_before
    for subtask, (predicted, mean) in before.items():
        assert model.predict_ns(subtask) > predicted and model.predict_ns(subtask, 0.0) > mean
    assert model.predict_ns(half, 0.0) == pytest.approx(model.predict_ns(ffn, 0.0) / 2)
    model.record(attention, 50_000)
    assert model.predict_ns(attention, 0.0) < attention_before


def test_cost_model_seeded_from_a_cost_profile() -> None:
    profile = CostProfile(
        model="m", family="llama", device="cpu", dtype="float32", num_layers=2, torch_threads=1,
        warmup=1, repeats=1, created_utc="now",
        entries=[
            CostEntry("attention", PREFILL, 16, 16, median_us=120.0, p90_us=150.0, samples=4),
            CostEntry("layer", DECODE, 1, 32, median_us=80.0, p90_us=90.0, samples=4),
            CostEntry("layer", DECODE, 1, 48, median_us=100.0, p90_us=110.0, samples=4),
        ],
    )
    model = CostModel.from_profile(profile)
    assert model.predict_ns(Subtask(SubtaskKind.ATTENTION, PREFILL, 0, 0, 16, 16)) == 120_000
    assert model.predict_ns(Subtask(SubtaskKind.LAYER, DECODE, 5, 5, 1, 40)) == 90_000


def test_a_gap_too_short_for_the_first_request_is_filled_by_another(
    npc_loaded: LoadedModel,
) -> None:
    scheduler = make(npc_loaded, margin_ns=50_000, margin_fraction=0.0)
    first, second = new_request(scheduler, 1, 300.0), new_request(scheduler, 2, 600.0)
    for request in (first, second):
        scheduler.admit(request, 0, headroom_rate=1.0)
    scheduler.executor.step(first.state)  # embed done; its next subtask is a 1 ms attention
    now = MS
    gap = OpenGap("after:shadow", now, now + round(0.5 * MS))
    dispatch = scheduler.next_dispatch(now, gap, now)
    assert dispatch is not None and dispatch.requests == (second,)  # its 0.2 ms embedding
    scheduler.executor.step(second.state)
    assert scheduler.next_dispatch(now, gap, now) is None  # nothing left that fits
    no_fill = make(npc_loaded, margin_ns=50_000, margin_fraction=0.0, fill_gaps=False)
    for request in (new_request(no_fill, 3, 300.0), new_request(no_fill, 4, 600.0)):
        no_fill.admit(request, 0, headroom_rate=1.0)
    no_fill.executor.step(no_fill.pending[0].state)
    assert no_fill.next_dispatch(now, gap, now) is None


def test_waiting_requests_are_releveled_when_the_backlog_grows(npc_loaded: LoadedModel) -> None:
    scheduler = make(npc_loaded, usable_fraction=1.0)
    n = npc_loaded.num_layers
    full_ms = 0.4 + 2 * n + 3 * (n + 0.2)
    waiting = new_request(scheduler, 1, 3 * full_ms)
    scheduler.admit(waiting, 0, headroom_rate=1.0)
    assert waiting.level == 0
    # headroom turns out scarcer: the request that has not started yet moves up a level
    assert scheduler.relevel_waiting(0, headroom_rate=0.25) == 1
    assert waiting.level > 0 and waiting.state.plan.skipped_layers > 0
    scheduler.executor.step(waiting.state)  # once it runs, its level is kept
    assert scheduler.relevel_waiting(0, headroom_rate=0.1) == 0


def test_an_ffn_block_too_long_for_the_rest_of_a_gap_runs_in_a_slice_that_fits(
    npc_loaded: LoadedModel,
) -> None:
    """1 ms FFN blocks (halves and quarters unmeasured: predicted 0.5 and 0.25 ms); a dispatch
    needs predicted + 0.1 ms (margin_fraction 0)."""
    scheduler = make(npc_loaded, margin_ns=100_000, margin_fraction=0.0)
    request = new_request(scheduler, 1, 500.0)
    scheduler.admit(request, 0, headroom_rate=1.0)
    executor = scheduler.executor
    executor.step(request.state)
    executor.step(request.state)  # embed, attention 0: next is the 1 ms FFN of layer 0
    now = MS
    whole = scheduler.next_dispatch(now, OpenGap("after:shadow", now, now + round(1.2 * MS)), now)
    assert whole is not None and not whole.split
    assert executor.peek(request.state).kind is SubtaskKind.FFN
    half = scheduler.next_dispatch(now, OpenGap("after:shadow", now, now + round(0.7 * MS)), now)
    assert half is not None and half.split and half.predicted_ns == pytest.approx(0.5 * MS)
    first = executor.peek(request.state)
    assert (first.kind, first.part, first.parts) == (SubtaskKind.FFN_SLICE, 0, 2)
    executor.step(request.state)
    # the second half is a subtask like any other: it runs where it fits, and is not split again
    tiny = OpenGap("after:shadow", now, now + round(0.4 * MS))
    assert scheduler.next_dispatch(now, tiny, now) is None
    executor.step(request.state)
    executor.step(request.state)  # second half, then attention of layer 1
    quarter = scheduler.next_dispatch(now, tiny, now)
    assert quarter is not None and quarter.split
    assert executor.peek(request.state).parts == 4
    no_split = make(npc_loaded, margin_ns=100_000, margin_fraction=0.0, split_ffn=False)
    other = new_request(no_split, 2, 500.0)
    no_split.admit(other, 0, headroom_rate=1.0)
    no_split.executor.step(other.state)
    no_split.executor.step(other.state)
    assert no_split.next_dispatch(now, OpenGap("after:shadow", now, now + round(0.7 * MS)),
                                  now) is None


def test_can_finish_is_false_exactly_when_no_level_fits_its_first_token(
    npc_loaded: LoadedModel,
) -> None:
    """The best case before shedding: the request and those ahead of it at the largest level,
    each answered by its first token (the planned tokens are the level choice's margin)."""
    scheduler = make(npc_loaded, usable_fraction=1.0)
    for deadline_ms, rate in ((1000.0, 1.0), (40.0, 1.0), (10.0, 1.0), (1000.0, 0.0)):
        request = new_request(scheduler, 1, deadline_ms)
        fits_somewhere = any(
            scheduler.remaining_cost_ns(request, level, answer_tokens=1) <= deadline_ms * MS * rate
            for level in range(4)
        )
        assert scheduler.can_finish(request, 0, rate) == fits_somewhere
    largest = 3
    probe = new_request(scheduler, 4, 1000.0)
    first_token_ms = scheduler.remaining_cost_ns(probe, largest, answer_tokens=1) / MS
    planned_ms = scheduler.remaining_cost_ns(probe, largest) / MS
    assert planned_ms > first_token_ms  # 4 planned tokens: 3 decode steps more
    between = new_request(scheduler, 5, (first_token_ms + planned_ms) / 2)
    assert scheduler.can_finish(between, 0, 1.0)
    roomy = new_request(scheduler, 2, 1000.0)
    assert scheduler.can_finish(roomy, 0, 1.0)
    scheduler.admit(new_request(scheduler, 3, 900.0), 0, 1.0)  # 900 ms deadline: ahead in EDF
    assert scheduler.can_finish(roomy, 0, 1.0)
    alone_rate = first_token_ms * 1.01 / 1000.0  # headroom for the roomy request alone
    assert not scheduler.can_finish(roomy, 0, alone_rate)  # not for the one ahead of it too


def test_an_outlier_measurement_does_not_make_a_subtask_look_too_long_for_every_gap() -> None:
    model = CostModel()
    subtask = Subtask(SubtaskKind.ATTENTION, PREFILL, 0, 0, 29, 29)
    for _ in range(30):
        model.record(subtask, 500_000)
    model.record(subtask, 9_000_000)  # preempted by another process for 8.5 ms
    assert model.predict_ns(subtask) < 1_500_000
    for _ in range(40):  # a lasting change is still learned
        model.record(subtask, 2_000_000)
    assert model.predict_ns(subtask, 0.0) == pytest.approx(2_000_000, rel=0.05)


def test_waiting_prompts_that_will_be_batched_share_their_prefill_cost(
    npc_loaded: LoadedModel,
) -> None:
    """Three same-length prompts at one level prefill as one batch: each is charged its share
    of the batch's predicted cost (3 x 8 tokens: the 16-token bucket, scaled), not a whole
    prefill; started requests and runs without batching pay in full."""
    for batching in (True, False):
        scheduler = make(npc_loaded, policy="free", batching=batching)
        requests = [new_request(scheduler, i, 300.0 + i) for i in (1, 2, 3)]
        for request in requests:
            scheduler.admit(request, 0, 1.0)
        first = requests[0]
        alone = scheduler.remaining_cost_ns(first)
        if batching:
            assert scheduler.shared_cost_ns(first) < alone
            scheduler.executor.step(first.state)
            assert scheduler.shared_cost_ns(first) == scheduler.remaining_cost_ns(first)
        else:
            assert scheduler.shared_cost_ns(first) == alone


def test_each_line_token_gets_its_own_deadline_order_and_level(npc_loaded: LoadedModel) -> None:
    """retarget: a streamed line's next token is a request of its own: EDF re-orders by the
    token's deadline, and the level is raised when that token would be late (never lowered
    within the line: skipped layers lack KV for the tokens made without them)."""
    scheduler = make(npc_loaded, usable_fraction=1.0)
    n = npc_loaded.num_layers
    stream = new_request(scheduler, 1, 1000.0, tokens=1)
    other = new_request(scheduler, 2, 500.0, tokens=1)
    scheduler.admit(stream, 0, headroom_rate=1.0)
    scheduler.admit(other, 0, headroom_rate=1.0)
    assert [r.request_id for r in scheduler.pending] == [2, 1]
    # the stream's first token is made: its next one is due sooner than the other request
    while not stream.state.generated:
        scheduler.executor.step(stream.state)
    one_token_ms = n + 0.2
    assert scheduler.retarget(stream, round(0.5 * one_token_ms * MS), 2, 0, 1.0)
    assert [r.request_id for r in scheduler.pending] == [1, 2]
    assert scheduler._head() is stream  # dispatch serves it first now
    assert stream.level == len(scheduler.levels) - 1 and stream.level_changes == 1
    # plenty of time for the token after: the level stays, the order follows the deadline
    assert not scheduler.retarget(stream, round(100 * one_token_ms * MS), 3, 0, 1.0)
    assert stream.level == len(scheduler.levels) - 1
    assert [r.request_id for r in scheduler.pending] == [2, 1]
    assert scheduler._head() is other
    # a stream that is on time stays at the full model
    calm = new_request(scheduler, 3, 1000.0, tokens=1)
    scheduler.admit(calm, 0, headroom_rate=1.0)
    while not calm.state.generated:
        scheduler.executor.step(calm.state)
    assert not scheduler.retarget(calm, round(100 * one_token_ms * MS), 2, 0, 1.0)
    assert calm.level == 0 and calm.state.plan is scheduler.levels[0].plan
