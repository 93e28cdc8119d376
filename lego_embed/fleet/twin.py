"""Digital twin of one vLLM (V1 engine) instance serving many LoRA adapters.

A step-level discrete-event simulation of what vLLM 0.8.5's V1 scheduler does each engine step:
- running requests first: every decoding request gets one token, requests still in (chunked)
  prefill get what is left of the `max_num_batched_tokens` budget;
- then waiting requests in arrival order (preempted ones first), skipping any whose adapter is not
  in the batch when the batch already holds `max_loras` distinct adapters, until the token budget,
  `max_num_seqs` or the KV cache runs out;
- the KV cache holds `kv_cache_tokens` (GPU memory minus weights minus the LoRA slot buffers);
  when a decode does not fit, the most recently admitted request is preempted (recompute);
- an adapter entering the batch is loaded into a GPU slot (LRU over `max_loras` slots) in the
  calibrated CPU->GPU time, and from disk first when it is not in the `max_cpu_loras` CPU cache;
- the step latency grows with scheduled tokens, KV context, distinct adapters, the LoRA rank and
  the number of waiting requests the scheduler scans.

Arrivals are Poisson per adapter. Stretches of pure decode steps with nothing to admit are
advanced in one jump (aggregated token accounting), so an hour of serving takes seconds.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from lego_embed.fleet.calibration import Calibration
from lego_embed.fleet.spec import AdapterSpec

STARVATION_THRESHOLD = 0.10
KV_BLOCK_TOKENS = 16
LORA_RANK_TILE = 16
"""Ranks per block along the rank dimension of vLLM 0.8.5's Triton LoRA shrink/expand kernels."""
PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class InstanceConfig:
    """vLLM launch settings of one instance (`--max-loras`, `--max-cpu-loras`,
    `--max-lora-rank`, `--max-num-seqs`, `--max-num-batched-tokens`, `--max-model-len` in
    tokens) and its GPU (GiB; None = the calibration's)."""

    max_loras: int
    max_cpu_loras: int
    max_lora_rank: int
    max_num_seqs: int = 2048
    max_num_batched_tokens: int = 2048
    gpu_memory_gib: float | None = None
    max_model_len: int = 32768


@dataclass
class TwinResult:
    """What one simulated run measured. Throughputs in tokens/s over completed requests (the
    benchmark's definition); latencies in ms over completed requests."""

    memory_error: bool
    kv_cache_tokens: int
    duration_s: float
    arrived: int = 0
    dropped_by_client: int = 0
    completed: int = 0
    input_throughput_tok_s: float = 0.0
    output_throughput_tok_s: float = 0.0
    ideal_throughput_tok_s: float = 0.0
    mean_ttft_ms: float = 0.0
    mean_itl_ms: float = 0.0
    ttft_percentiles_ms: dict[int, float] = field(default_factory=dict)
    itl_percentiles_ms: dict[int, float] = field(default_factory=dict)
    max_waiting: int = 0
    max_running: int = 0
    max_kv_usage_frac: float = 0.0
    preemptions: int = 0
    adapter_loads: int = 0
    engine_steps: int = 0
    per_adapter_completion: dict[str, float] = field(default_factory=dict)

    @property
    def total_throughput_tok_s(self) -> float:
        return self.input_throughput_tok_s + self.output_throughput_tok_s

    @property
    def p50_ttft_ms(self) -> float:
        return self.ttft_percentiles_ms.get(50, 0.0)

    @property
    def p99_ttft_ms(self) -> float:
        return self.ttft_percentiles_ms.get(99, 0.0)

    def latency_ms(self, metric: str, percentile: int) -> float:
        """`metric` 'ttft' or 'itl' at one of PERCENTILES (ms; inf when nothing completed)."""
        table = self.ttft_percentiles_ms if metric == "ttft" else self.itl_percentiles_ms
        return table.get(percentile, float("inf"))

    @property
    def throughput_to_ideal(self) -> float:
        if self.ideal_throughput_tok_s <= 0:
            return 1.0
        return self.total_throughput_tok_s / self.ideal_throughput_tok_s

    @property
    def starved(self) -> bool:
        """The authors' rule: starving when 1 - throughput / ideal >= 0.10 (or memory error)."""
        return self.memory_error or 1.0 - self.throughput_to_ideal >= STARVATION_THRESHOLD


@dataclass(frozen=True)
class StepSnapshot:
    """State after one engine step (for observers and invariant checks). Counts in requests,
    KV in tokens, time in seconds."""

    t_s: float
    arrived: int
    dropped: int
    waiting: int
    running: int
    finished: int
    kv_used_tokens: int
    kv_capacity_tokens: int
    distinct_adapters: int
    max_loras: int


@dataclass
class _Arrivals:
    time_s: list[float]
    adapter: list[int]
    prompt: list[int]
    generated: list[int]
    requested: list[int]


def generate_arrivals(adapters: Sequence[AdapterSpec], duration_s: float,
                      rng: np.random.Generator, generated_to_requested: float,
                      max_request_tokens: int) -> _Arrivals:
    """Poisson arrivals per adapter over [0, duration_s), merged in time order; prompt + output
    of a request is held to max_request_tokens (the instance's max_model_len)."""
    times, ids, prompts, requested = [], [], [], []
    for index, adapter in enumerate(adapters):
        n = int(rng.poisson(adapter.rate_req_s * duration_s))
        times.append(rng.uniform(0.0, duration_s, n))
        ids.append(np.full(n, index, dtype=np.int64))
        p = adapter.prompt.sample(rng, n)
        o = adapter.output.sample(rng, n)
        prompts.append(p)
        requested.append(np.maximum(1, np.minimum(o, max_request_tokens - p)))
    t = np.concatenate(times) if times else np.zeros(0)
    order = np.argsort(t, kind="stable")
    req = np.concatenate(requested)[order]
    gen = np.maximum(1, np.rint(req * generated_to_requested)).astype(np.int64)
    return _Arrivals(time_s=t[order].tolist(), adapter=np.concatenate(ids)[order].tolist(),
                     prompt=np.concatenate(prompts)[order].tolist(), generated=gen.tolist(),
                     requested=req.tolist())


class _StepLatency:
    """Step latency (ms) from the calibration; see calibration.StepModel and Corrections:
    step_scale x (c0 + c_token T + c_context KV + LoRA) + waiting_scan x waiting, with
    T = decodes + prefill_token_factor x prefill tokens and, when the batch holds u adapters,
    LoRA = lora_step + (D0 - lora_step) / ref_batch x ((1 - s) T + s S max_loras / ref_max_loras)
    + rank factor x (D(u) - D0) x max(1, T / ref_batch) ** g, where S = decodes +
    lora_slot_prefill_factor x prefill tokens, D(u) is the sweep's LoRA cost with u adapters at
    ref_batch tokens and ref_max_loras slots, D0 its intercept, s the slot share and g the batch
    exponent. The rank factor is lora_adapter_scale x (rank tiles / the sweep's) **
    lora_rank_exponent with a tile of LORA_RANK_TILE ranks (the LoRA kernels' rank blocking:
    ranks 8 and 16 cost the same)."""

    def __init__(self, calibration: Calibration, max_lora_rank: int, max_loras: int) -> None:
        step, corr = calibration.step, calibration.corrections
        self.c0 = step.c0_ms
        self.c_token = step.c_token_ms
        self.c_context = step.c_context_ms
        self.prefill_factor = corr.prefill_token_factor
        self.scale = corr.step_scale
        rank_tiles = math.ceil(max_lora_rank / LORA_RANK_TILE) / math.ceil(
            step.lora_ref_rank / LORA_RANK_TILE)
        rank_scale = corr.lora_adapter_scale * rank_tiles ** corr.lora_rank_exponent
        points, costs = np.array(step.lora_u_points, float), np.array(step.lora_u_ms, float)
        slope, intercept = np.polyfit(points, costs, 1)
        u = np.arange(4097, dtype=float)
        per_adapter = np.interp(u, points, costs) - intercept
        per_adapter[u > points[-1]] = costs[-1] - intercept + slope * (u[u > points[-1]]
                                                                        - points[-1])
        self.lora_u = (rank_scale * per_adapter).tolist()
        self.lora_step = corr.lora_step_ms
        per_token = max(0.0, float(intercept) - corr.lora_step_ms) / step.lora_ref_batch
        self.lora_token = per_token * (1.0 - corr.lora_slot_share)
        self.lora_slot_token = per_token * corr.lora_slot_share * max_loras / \
            step.lora_ref_max_loras
        self.slot_prefill_factor = corr.lora_slot_prefill_factor
        self.ref_batch = float(step.lora_ref_batch)
        self.batch_exponent = corr.lora_batch_exponent
        self.scan_ms = corr.waiting_scan_us / 1000.0

    def ms(self, decode_tokens: int, prefill_tokens: int, context_tokens: int,
           distinct_adapters: int, waiting: int) -> float:
        tokens = decode_tokens + self.prefill_factor * prefill_tokens
        base = self.c0 + self.c_token * tokens + self.c_context * context_tokens
        if distinct_adapters > 0 and tokens > 0:
            per_adapter = self.lora_u[min(distinct_adapters, len(self.lora_u) - 1)]
            if tokens > self.ref_batch:
                per_adapter *= (tokens / self.ref_batch) ** self.batch_exponent
            slot_tokens = decode_tokens + self.slot_prefill_factor * prefill_tokens
            base += (self.lora_step + self.lora_token * tokens
                     + self.lora_slot_token * slot_tokens + per_adapter)
        return self.scale * base + self.scan_ms * waiting


def simulate(adapters: Sequence[AdapterSpec], config: InstanceConfig, calibration: Calibration,
             duration_s: float = 3600.0, seed: int = 0,
             observer: Callable[[StepSnapshot], None] | None = None) -> TwinResult:
    """Simulates `duration_s` seconds of serving `adapters` on one instance. `observer`, when
    given, sees a StepSnapshot after every simulated step (or jump)."""
    memory = calibration.memory
    kv_capacity = memory.kv_cache_tokens(config.max_loras, config.max_lora_rank,
                                         config.gpu_memory_gib)
    if not memory.fits(config.max_loras, config.max_lora_rank, config.gpu_memory_gib,
                       config.max_model_len) or any(a.rank > config.max_lora_rank
                                                    for a in adapters):
        return TwinResult(memory_error=True, kv_cache_tokens=kv_capacity, duration_s=duration_s)
    corr = calibration.corrections
    rng = np.random.default_rng(seed)
    arrivals = generate_arrivals(adapters, duration_s, rng, corr.generated_to_requested,
                                 config.max_model_len)
    return _Engine(adapters, config, calibration, kv_capacity, arrivals, duration_s,
                   observer).run()


class _WaitingQueue:
    """vLLM's waiting queue seen per adapter: FIFO queues, heaps of queue heads (arrival order),
    the set of adapters in the batch (`loaded`) and the ones still admitting (`active`).

    Rotation rule: when the batch already holds max_loras adapters and requests of other
    adapters are waiting, a loaded adapter whose backlog is empty stops admitting (`drained`) and
    leaves its slot when its running requests finish. See docs/FLEET.md for why.
    """

    def __init__(self, n_adapters: int, max_loras: int) -> None:
        self.queues: list[deque[int]] = [deque() for _ in range(n_adapters)]
        self.heap_all: list[tuple[int, int]] = []
        self.heap_active: list[tuple[int, int]] = []
        self.loaded: set[int] = set()
        self.active: set[int] = set()
        self.max_loras = max_loras
        self.count = 0
        self.waiting_loaded = 0

    def push(self, r: int, a: int) -> None:
        q = self.queues[a]
        if not q:
            heapq.heappush(self.heap_all, (r, a))
            if a in self.active:
                heapq.heappush(self.heap_active, (r, a))
        q.append(r)
        self.count += 1
        if a in self.loaded:
            self.waiting_loaded += 1

    def _valid_head(self, heap: list[tuple[int, int]], eligible: set[int] | None) -> bool:
        queues = self.queues
        while heap:
            head, a = heap[0]
            q = queues[a]
            if q and q[0] == head and (eligible is None or a in eligible):
                return True
            heapq.heappop(heap)
        return False

    def has_admissible(self) -> bool:
        if self.count == 0:
            return False
        if len(self.loaded) < self.max_loras:
            return self._valid_head(self.heap_all, None)
        return self._valid_head(self.heap_active, self.active) or (
            self.count == self.waiting_loaded and self.waiting_loaded > 0)

    def pop(self) -> int:
        """Oldest admissible waiting request, or -1."""
        if self.count == 0:
            return -1
        if len(self.loaded) < self.max_loras:
            if not self._valid_head(self.heap_all, None):
                return -1
            _, a = self.heap_all[0]
        elif self._valid_head(self.heap_active, self.active):
            _, a = self.heap_active[0]
        elif self.count == self.waiting_loaded and self.waiting_loaded > 0:
            a = min((self.queues[x][0], x) for x in self.loaded if self.queues[x])[1]
            self.active.add(a)
        else:
            return -1
        q = self.queues[a]
        r = q.popleft()
        self.count -= 1
        if a in self.loaded:
            self.waiting_loaded -= 1
        if q:
            heapq.heappush(self.heap_all, (q[0], a))
            if a in self.active:
                heapq.heappush(self.heap_active, (q[0], a))
        elif len(self.loaded) >= self.max_loras and self.count > self.waiting_loaded:
            self.active.discard(a)
        return r

    def load(self, a: int) -> None:
        self.loaded.add(a)
        self.active.add(a)
        q = self.queues[a]
        self.waiting_loaded += len(q)
        if q:
            heapq.heappush(self.heap_active, (q[0], a))

    def unload(self, a: int) -> None:
        self.loaded.discard(a)
        self.active.discard(a)
        self.waiting_loaded -= len(self.queues[a])

    def drain_idle(self) -> None:
        """Batch full, nothing admissible, others waiting: idle loaded adapters stop admitting."""
        if len(self.loaded) >= self.max_loras and self.count > self.waiting_loaded:
            for a in [x for x in self.active if not self.queues[x]]:
                self.active.discard(a)


class _Engine:
    """The simulation state; `run` is the step loop."""

    def __init__(self, adapters: Sequence[AdapterSpec], config: InstanceConfig,
                 calibration: Calibration, kv_capacity: int, arrivals: _Arrivals,
                 duration_s: float, observer: Callable[[StepSnapshot], None] | None) -> None:
        self.observer = observer
        self.adapters = adapters
        self.config = config
        self.calibration = calibration
        self.kv_capacity = kv_capacity
        self.arr = arrivals
        self.duration_s = duration_s
        self.latency = _StepLatency(calibration, config.max_lora_rank, config.max_loras)
        self.load_gpu_ms = [calibration.loading.cpu_to_gpu_ms(a.rank) for a in adapters]
        self.load_disk_ms = [calibration.loading.disk_ms(a.rank) for a in adapters]
        self.client_cap = corr_cap if (corr_cap := calibration.corrections.
                                       client_max_outstanding) > 0 else 1 << 62

    def run(self) -> TwinResult:  # noqa: C901 - one loop mirrors one vLLM engine step
        cfg = self.config
        arr = self.arr
        n_req = len(arr.time_s)
        arr_t, arr_adapter, arr_gen = arr.time_s, arr.adapter, arr.generated
        budget_max = cfg.max_num_batched_tokens
        max_seqs = cfg.max_num_seqs
        max_loras = cfg.max_loras
        kv_cap = self.kv_capacity
        latency = self.latency
        half_block = KV_BLOCK_TOKENS // 2

        first_t = [0.0] * n_req
        finish_t = [-1.0] * n_req
        decode_start = [0] * n_req
        prompt_done = [0] * n_req  # KV tokens of the prompt already computed (or recomputed)
        prefill_target = list(arr.prompt)  # tokens to (re)compute before decoding resumes
        generated_before = [0] * n_req  # output tokens generated before a preemption
        tag = [0] * n_req
        last_token_t: dict[int, float] = {}  # preempted request -> time of its last token
        itl_ms: list[float] = []  # inter-token gaps (ms) and how many tokens saw each gap
        itl_count: list[int] = []
        dropped = 0

        waiting = _WaitingQueue(len(self.adapters), max_loras)
        preempted: deque[int] = deque()
        running: OrderedDict[int, None] = OrderedDict()
        prefilling: list[int] = []
        calendar: dict[int, list[tuple[int, int]]] = {}
        calendar_steps: list[int] = []
        running_per_adapter = [0] * len(self.adapters)
        gpu_slots: OrderedDict[int, None] = OrderedDict()
        cpu_cache: OrderedDict[int, None] = OrderedDict()

        n_decoding = 0
        kv_used = 0
        context_decode = 0
        t = 0.0
        step = 0
        ai = 0
        max_waiting = max_running = max_kv = 0
        preemptions = loads = finished = 0
        observer = self.observer
        duration = self.duration_s

        def load_adapter(a: int) -> float:
            nonlocal loads
            waiting.load(a)
            if a in gpu_slots:
                gpu_slots.move_to_end(a)
                return 0.0
            cost = 0.0
            if a in cpu_cache:
                cpu_cache.move_to_end(a)
            else:
                cost += self.load_disk_ms[a]
                cpu_cache[a] = None
                if len(cpu_cache) > cfg.max_cpu_loras:
                    cpu_cache.popitem(last=False)
            cost += self.load_gpu_ms[a]
            loads += 1
            gpu_slots[a] = None
            if len(gpu_slots) > max_loras:
                for victim in gpu_slots:
                    if victim not in waiting.loaded:
                        del gpu_slots[victim]
                        break
            return cost

        def leave(r: int) -> None:
            a = arr_adapter[r]
            running_per_adapter[a] -= 1
            if running_per_adapter[a] == 0:
                waiting.unload(a)

        while t < duration:
            # --- arrivals up to now join the waiting queue (the client cap drops the excess)
            while ai < n_req and arr_t[ai] <= t:
                if waiting.count + len(preempted) + len(running) >= self.client_cap:
                    upto = bisect.bisect_right(arr_t, t, ai)
                    dropped += upto - ai
                    ai = upto
                    break
                waiting.push(ai, arr_adapter[ai])
                ai += 1

            budget = budget_max
            step_load_ms = 0.0
            prefill_tokens = 0
            started_decode: list[int] = []
            preempted_now = False
            # --- running requests: decodes need one token each (and KV room)
            free = kv_cap - kv_used - half_block * len(running)
            while n_decoding > free and running:
                victim, _ = running.popitem(last=True)
                preempted_now = True
                preemptions += 1
                tag[victim] += 1
                if victim in prefilling:
                    prefilling.remove(victim)
                    kv_used -= prompt_done[victim]
                else:
                    last_token_t[victim] = t
                    produced = step - decode_start[victim] + 1
                    ctx = prefill_target[victim] + produced - 1
                    kv_used -= ctx
                    context_decode -= ctx
                    n_decoding -= 1
                    generated_before[victim] += produced
                    prefill_target[victim] += produced
                prompt_done[victim] = 0
                leave(victim)
                preempted.appendleft(victim)
                free = kv_cap - kv_used - half_block * len(running)
            budget -= n_decoding
            free -= n_decoding
            kv_used += n_decoding
            decode_tokens = n_decoding
            # --- running requests still in chunked prefill, then waiting requests (these only
            # in a step without preemption, as in vLLM V1)
            admitting = list(prefilling)
            prefilling = []
            while budget > 0 and free > 0:
                if admitting:
                    r = admitting.pop(0)
                else:
                    if preempted_now or len(running) >= max_seqs:
                        break
                    r = -1
                    for candidate in preempted:
                        a = arr_adapter[candidate]
                        if a in waiting.loaded or len(waiting.loaded) < max_loras:
                            r = candidate
                            break
                    if r >= 0:
                        preempted.remove(r)
                    else:
                        r = waiting.pop()
                        if r < 0:
                            waiting.drain_idle()
                            break
                    a = arr_adapter[r]
                    if a not in waiting.loaded:
                        step_load_ms += load_adapter(a)
                    running_per_adapter[a] += 1
                    running[r] = None
                chunk = min(prefill_target[r] - prompt_done[r], budget, free)
                prompt_done[r] += chunk
                budget -= chunk
                free -= chunk
                kv_used += chunk
                prefill_tokens += chunk
                if prompt_done[r] >= prefill_target[r]:
                    started_decode.append(r)
                else:
                    prefilling.append(r)
            prefilling.extend(admitting)

            # --- the step itself
            n_waiting = waiting.count + len(preempted)
            scanned = n_waiting if len(waiting.loaded) >= max_loras else 0
            step_ms = latency.ms(decode_tokens, prefill_tokens, context_decode,
                                 len(waiting.loaded), scanned) + step_load_ms
            t += step_ms / 1000.0
            step += 1
            if decode_tokens:
                itl_ms.append(step_ms)
                itl_count.append(decode_tokens)
            if kv_used > max_kv:
                max_kv = kv_used
            context_decode += decode_tokens
            done = calendar.pop(step, None)
            if done is not None:
                for r, r_tag in done:
                    if tag[r] != r_tag:
                        continue
                    del running[r]
                    finish_t[r] = t
                    finished += 1
                    n_decoding -= 1
                    ctx = prefill_target[r] + arr_gen[r] - generated_before[r] - 1
                    kv_used -= ctx
                    context_decode -= ctx
                    leave(r)
            # prefills completing now produce their first (or next) token
            for r in started_decode:
                if generated_before[r] == 0:
                    first_t[r] = t
                elif r in last_token_t:
                    itl_ms.append((t - last_token_t.pop(r)) * 1000.0)
                    itl_count.append(1)
                remaining = arr_gen[r] - generated_before[r]
                decode_start[r] = step
                if remaining <= 1:
                    del running[r]
                    finish_t[r] = t
                    finished += 1
                    kv_used -= prefill_target[r]
                    leave(r)
                    continue
                n_decoding += 1
                context_decode += prefill_target[r]
                end = step + remaining - 1
                if end not in calendar:
                    calendar[end] = []
                    heapq.heappush(calendar_steps, end)
                calendar[end].append((r, tag[r]))
            n_waiting = waiting.count + len(preempted)
            if n_waiting > max_waiting:
                max_waiting = n_waiting
            if len(running) > max_running:
                max_running = len(running)
            if observer is not None:
                observer(StepSnapshot(t, ai, dropped, n_waiting, len(running), finished, kv_used,
                                      kv_cap, len(waiting.loaded), max_loras))

            # --- jump over pure-decode stretches where nothing can be admitted
            if not running:
                if n_waiting == 0:
                    if ai >= n_req:
                        break
                    t = max(t, arr_t[ai])
                continue
            if prefilling or preempted or (n_waiting > 0 and len(running) < max_seqs
                                           and waiting.has_admissible()):
                continue
            while calendar_steps and calendar_steps[0] not in calendar:
                heapq.heappop(calendar_steps)
            k = (calendar_steps[0] if calendar_steps else step + 1) - step - 1
            if k <= 0:
                continue
            scanned = n_waiting if len(waiting.loaded) >= max_loras else 0
            dt_ms = latency.ms(n_decoding, 0, context_decode, len(waiting.loaded), scanned)
            if ai < n_req:
                k = min(k, int((arr_t[ai] - t) * 1000.0 / dt_ms))
            k = min(k, int((duration - t) * 1000.0 / dt_ms) + 1)
            if n_decoding > 0:
                k = min(k, (kv_cap - kv_used - half_block * len(running)) // n_decoding - 1)
            if k <= 0:
                continue
            t += k * dt_ms / 1000.0
            step += k
            if n_decoding:
                itl_ms.append(dt_ms)
                itl_count.append(k * n_decoding)
            kv_used += k * n_decoding
            context_decode += k * n_decoding

        result = TwinResult(memory_error=False, kv_cache_tokens=kv_cap, duration_s=duration,
                            engine_steps=step, max_waiting=max_waiting, max_running=max_running,
                            max_kv_usage_frac=max_kv / kv_cap, preemptions=preemptions,
                            adapter_loads=loads, dropped_by_client=dropped)
        self._fill_metrics(result, finish_t, first_t, ai)
        result.itl_percentiles_ms = _weighted_percentiles(np.array(itl_ms), np.array(itl_count))
        return result

    def _fill_metrics(self, res: TwinResult, finish_t: list[float], first_t: list[float],
                      n_arrived: int) -> None:
        arr = self.arr
        duration = self.duration_s
        finish = np.array(finish_t[:n_arrived])
        done = (finish >= 0) & (finish <= duration)
        prompt = np.array(arr.prompt[:n_arrived])
        gen = np.array(arr.generated[:n_arrived])
        req = np.array(arr.requested[:n_arrived])
        arrive = np.array(arr.time_s[:n_arrived])
        first = np.array(first_t[:n_arrived])
        adapter = np.array(arr.adapter[:n_arrived], dtype=np.int64)
        res.arrived = n_arrived
        res.completed = int(done.sum())
        res.input_throughput_tok_s = float(prompt[done].sum() / duration)
        res.output_throughput_tok_s = float(gen[done].sum() / duration)
        res.ideal_throughput_tok_s = float((prompt.sum() + req.sum()) / duration)
        if res.completed:
            ttft = (first[done] - arrive[done]) * 1000.0
            res.mean_ttft_ms = float(ttft.mean())
            res.ttft_percentiles_ms = {q: float(v) for q, v in
                                       zip(PERCENTILES, np.percentile(ttft, PERCENTILES),
                                           strict=True)}
            gaps = gen[done] - 1
            if gaps.sum() > 0:
                res.mean_itl_ms = float((finish[done] - first[done]).sum() * 1000.0 / gaps.sum())
        arrived_per = np.bincount(adapter, minlength=len(self.adapters))
        done_per = np.bincount(adapter[done], minlength=len(self.adapters))
        res.per_adapter_completion = {
            a.adapter_id: (float(done_per[i] / arrived_per[i]) if arrived_per[i] else 1.0)
            for i, a in enumerate(self.adapters)
        }


def _weighted_percentiles(values: np.ndarray, weights: np.ndarray) -> dict[int, float]:
    """PERCENTILES of `values` where value i occurs weights[i] times (empty -> {})."""
    if values.size == 0 or weights.sum() <= 0:
        return {}
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    ranks = np.array(PERCENTILES) / 100.0 * cumulative[-1]
    index = np.minimum(np.searchsorted(cumulative, ranks, side="left"), values.size - 1)
    return {q: float(values[order][i]) for q, i in zip(PERCENTILES, index, strict=True)}
