"""Digital twin invariants on real-calibrated instances."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from lego_embed.fleet.calibration import Calibration
from lego_embed.fleet.spec import AdapterSpec
from lego_embed.fleet.twin import InstanceConfig, StepSnapshot, _StepLatency, simulate


def _adapters(n: int, rate: float, ranks=(8, 16)) -> list[AdapterSpec]:
    return [AdapterSpec(adapter_id=f"a{i}", rank=ranks[i % len(ranks)], rate_req_s=rate)
            for i in range(n)]


@pytest.mark.parametrize(
    ("n", "rate", "max_loras", "rank"),
    [(8, 0.2, 8, 16), (64, 0.5, 8, 16), (128, 1.0, 32, 16), (96, 0.6, 192, 32)],
)
def test_every_request_is_accounted_for_and_memory_is_never_exceeded(
        calibration: Calibration, n: int, rate: float, max_loras: int, rank: int) -> None:
    snapshots: list[StepSnapshot] = []
    config = InstanceConfig(max_loras=max_loras, max_cpu_loras=n, max_lora_rank=rank)
    result = simulate(_adapters(n, rate), config, calibration, duration_s=120, seed=1,
                      observer=snapshots.append)
    assert not result.memory_error
    assert snapshots
    for s in snapshots:
        assert s.arrived == s.dropped + s.waiting + s.running + s.finished
        assert s.kv_used_tokens <= s.kv_capacity_tokens
        assert s.distinct_adapters <= s.max_loras
    assert result.completed <= result.arrived
    assert result.max_kv_usage_frac <= 1.0


def test_light_load_is_served_fully_and_heavy_load_starves(calibration: Calibration) -> None:
    config = InstanceConfig(max_loras=16, max_cpu_loras=16, max_lora_rank=16)
    light = simulate(_adapters(16, 0.1), config, calibration, duration_s=600, seed=0)
    assert not light.starved
    assert light.throughput_to_ideal > 0.93
    assert light.total_throughput_tok_s == pytest.approx(
        light.input_throughput_tok_s + light.output_throughput_tok_s)
    heavy = simulate(_adapters(16, 5.0), config, calibration, duration_s=600, seed=0)
    assert heavy.starved
    assert heavy.total_throughput_tok_s > light.total_throughput_tok_s
    assert heavy.mean_itl_ms > light.mean_itl_ms


def test_infeasible_configurations_are_memory_errors(calibration: Calibration) -> None:
    too_big = InstanceConfig(max_loras=256, max_cpu_loras=256, max_lora_rank=32)
    result = simulate(_adapters(4, 0.1), too_big, calibration, duration_s=60)
    assert result.memory_error and result.starved
    rank_too_low = InstanceConfig(max_loras=8, max_cpu_loras=8, max_lora_rank=8)
    assert simulate(_adapters(4, 0.1, ranks=(32,)), rank_too_low, calibration,
                    duration_s=60).memory_error


def test_same_seed_same_result_and_more_slots_cost_memory(calibration: Calibration) -> None:
    adapters = _adapters(32, 0.3)
    config = InstanceConfig(max_loras=8, max_cpu_loras=32, max_lora_rank=16)
    a = simulate(adapters, config, calibration, duration_s=120, seed=7)
    b = simulate(adapters, config, calibration, duration_s=120, seed=7)
    assert a == b
    wide = InstanceConfig(max_loras=128, max_cpu_loras=32, max_lora_rank=16)
    assert simulate(adapters, wide, calibration, duration_s=10).kv_cache_tokens < a.kv_cache_tokens


def test_few_slots_force_adapter_swaps(calibration: Calibration) -> None:
    adapters = _adapters(40, 0.2)
    few = simulate(adapters, InstanceConfig(4, 40, 16), calibration, duration_s=300, seed=2)
    many = simulate(adapters, InstanceConfig(64, 40, 16), calibration, duration_s=300, seed=2)
    assert few.adapter_loads > many.adapter_loads
    assert many.adapter_loads <= 40


def test_latency_percentiles_are_ordered_and_grow_with_load(calibration: Calibration) -> None:
    config = InstanceConfig(max_loras=16, max_cpu_loras=16, max_lora_rank=16)
    light = simulate(_adapters(16, 0.1), config, calibration, duration_s=600, seed=0)
    busy = simulate(_adapters(16, 0.8), config, calibration, duration_s=600, seed=0)
    for result in (light, busy):
        for table in (result.ttft_percentiles_ms, result.itl_percentiles_ms):
            values = [table[q] for q in sorted(table)]
            assert len(values) == 4 and values == sorted(values) and values[0] > 0
        assert result.latency_ms("ttft", 99) == result.p99_ttft_ms
    assert busy.latency_ms("itl", 50) > light.latency_ms("itl", 50)
    assert busy.latency_ms("ttft", 99) > light.latency_ms("ttft", 99)
    assert 5.0 < light.latency_ms("itl", 50) < 40.0


def test_lora_cost_follows_the_kernels_rank_tiles(calibration: Calibration) -> None:
    """vLLM's LoRA kernels block the rank by 16: a `--max-lora-rank` of 8 or 16 gives the same
    step times (light load, so the smaller KV cache of rank 16 does not matter), 32 slower ones."""
    adapters = _adapters(48, 0.1, ranks=(8,))

    def mean_itl(rank: int) -> float:
        config = InstanceConfig(max_loras=32, max_cpu_loras=48, max_lora_rank=rank)
        result = simulate(adapters, config, calibration, duration_s=300, seed=3)
        assert result.preemptions == 0
        return result.mean_itl_ms

    assert mean_itl(8) == pytest.approx(mean_itl(16), rel=1e-12)
    assert mean_itl(32) > mean_itl(16) * 1.02


def test_more_slots_cost_prefill_tokens_at_their_own_weight(
        shipped_calibration: Calibration) -> None:
    """The LoRA kernels' grid spans every slot for every block of a step's tokens: what more
    slots add to a step of P prefill tokens is what they add to one of
    lora_slot_prefill_factor x P decode tokens, and it grows with the factor."""
    def slot_cost(cal: Calibration, decodes: int, prefills: int) -> float:
        few, many = _StepLatency(cal, 16, 8), _StepLatency(cal, 16, 256)
        return many.ms(decodes, prefills, 0, 1, 0) - few.ms(decodes, prefills, 0, 1, 0)

    factor = shipped_calibration.corrections.lora_slot_prefill_factor
    assert slot_cost(shipped_calibration, 0, 1000) == pytest.approx(
        slot_cost(shipped_calibration, round(factor * 1000), 0), rel=1e-9)
    heavier = shipped_calibration.with_corrections(
        replace(shipped_calibration.corrections, lora_slot_prefill_factor=factor + 0.5))
    assert slot_cost(heavier, 0, 1000) > slot_cost(shipped_calibration, 0, 1000) * 1.2


def test_equal_prefill_weights_give_the_single_weight_model(
        shipped_calibration: Calibration) -> None:
    """With lora_slot_prefill_factor = prefill_token_factor the step latency is the model with one
    prefill weight: lora_step + (D0 - lora_step) / ref_batch x T x (1 - s + s max_loras / ref)
    plus the per-adapter term."""
    corr = shipped_calibration.corrections
    single = shipped_calibration.with_corrections(
        replace(corr, lora_slot_prefill_factor=corr.prefill_token_factor))
    step = single.step
    intercept = float(np.polyfit(step.lora_u_points, step.lora_u_ms, 1)[1])
    per_token = (intercept - corr.lora_step_ms) / step.lora_ref_batch
    for max_loras in (8, 64, 384):
        latency = _StepLatency(single, 16, max_loras)
        slots = 1 - corr.lora_slot_share + corr.lora_slot_share * max_loras / \
            step.lora_ref_max_loras
        for decodes, prefills in ((100, 0), (40, 1500), (0, 2048)):
            tokens = decodes + corr.prefill_token_factor * prefills
            assert latency.ms(decodes, prefills, 0, 0, 0) == pytest.approx(
                corr.step_scale * (step.c0_ms + step.c_token_ms * tokens))
            one_adapter = latency.ms(decodes, prefills, 0, 1, 0) - latency.ms(
                decodes, prefills, 0, 0, 0)
            per_adapter = latency.lora_u[1] * max(1.0, tokens / step.lora_ref_batch) ** \
                corr.lora_batch_exponent
            assert one_adapter == pytest.approx(corr.step_scale * (
                corr.lora_step_ms + per_token * tokens * slots + per_adapter), rel=1e-12)
