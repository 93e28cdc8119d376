"""The partitioned executor: runs our decoder (`model.decoder`) one subtask at a time.

A request is a program of subtasks over the decoder's modules (the embedding, each layer's
`attention_block` and `ffn_block`, the head). The program is built one pass at a time (one
prefill chunk, or one decode step), so the layer plan can change between decode steps. The KV
cache and the hidden state live in RequestState, so a request can pause between any two
subtasks and resume later with no recomputation. A prefill FFN block can be split into slices
of its intermediate dimension (`split_next`), so a piece that fits the end of a gap can run
there; the partial sum lives in RequestState too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lego_embed.errors import ExecutorUsageError, InvalidPromptError, PromptTooLongError
from lego_embed.model.decoder import attention_mask
from lego_embed.model.kv_cache import LayerKV, PrefixCache
from lego_embed.model.layer_plan import AdaptorStep, LayerPlan, LayerStep, as_layer_plan
from lego_embed.model.loading import LoadedModel
from lego_embed.model.sampling import GreedySampler, TokenSampler
from lego_embed.model.subtask import DECODE, PREFILL, Subtask, SubtaskKind, SubtaskTiming
from lego_embed.model.timing import DeviceTimer, SubtaskTimer

__all__ = [
    "AdaptorStep",
    "Executor",
    "GreedySampler",
    "LayerPlan",
    "PrefixCache",
    "RequestState",
    "TokenSampler",
]


@dataclass(frozen=True)
class _PlannedSubtask:
    subtask: Subtask
    adaptor: AdaptorStep | None = None


@dataclass(eq=False)
class RequestState:
    """One request in flight: its KV cache, hidden state and position in its program.

    `generated` holds the sampled token ids; `timings` every subtask run so far. `position` is
    the absolute position of the current pass's first query token; `pending_ids` the prompt
    tokens not yet embedded. Only the Executor mutates it.
    """

    prompt_ids: tuple[int, ...]
    sampler: TokenSampler
    plan: LayerPlan
    kv: list[LayerKV]
    position: int
    pending_ids: list[int]
    generated: list[int] = field(default_factory=list)
    finished: bool = False
    timings: list[SubtaskTiming] = field(default_factory=list)
    hidden: torch.Tensor | None = None
    program: list[_PlannedSubtask] | None = None
    cursor: int = 0
    ffn_partial: tuple[torch.Tensor, torch.Tensor] | None = None
    split_at: int = 0

    @property
    def in_static_part(self) -> bool:
        """True while the next pass prefills the prompt's static start (see `Executor.start`'s
        `split_after`)."""
        return self.position < self.split_at

    @property
    def at_pass_start(self) -> bool:
        """True between passes, where `Executor.set_layer_plan` is allowed."""
        return self.cursor == 0

    @property
    def prefill_tokens_left(self) -> int:
        """Prompt tokens not yet embedded (0 once the last prefill chunk started)."""
        return len(self.pending_ids)

    def kv_tokens(self, layer: int) -> int:
        """How many positions decoder layer `layer` holds keys/values for (tokens)."""
        return len(self.kv[layer])


def batch_key(subtask: Subtask) -> tuple[SubtaskKind, str, int, int, int, int, int]:
    """Subtasks with equal keys can run as one batched forward (`Executor.step_batch`): same
    kind, phase, layers and slice, and in prefill the same number of new tokens."""
    tokens = subtask.tokens if subtask.phase == PREFILL else 1
    return (subtask.kind, subtask.phase, subtask.first_layer, subtask.last_layer, tokens,
            subtask.part, subtask.parts)


def _padded(
    tensors: list[torch.Tensor | None], length: int, template: torch.Tensor
) -> torch.Tensor:
    """Right-pads each (1, heads, n, dim) tensor (None: n = 0) to `length` and stacks them."""
    rows = []
    for tensor in tensors:
        if tensor is None:
            tensor = template.new_zeros(1, template.shape[1], 0, template.shape[3])
        rows.append(F.pad(tensor, (0, 0, 0, length - tensor.shape[2])))
    return torch.cat(rows)


class Executor:
    """Runs requests on a LoadedModel subtask by subtask (see the module docstring).

    `prefill_chunk_tokens` splits the prompt into chunks of at most that many tokens; each
    chunk runs through every layer before the next one starts. `timer` runs and times each
    subtask (default `SubtaskTimer`: measured on the model's device).
    """

    def __init__(self, loaded: LoadedModel, prefill_chunk_tokens: int | None = None,
                 timer: DeviceTimer | None = None) -> None:
        if prefill_chunk_tokens is not None and prefill_chunk_tokens < 1:
            raise ExecutorUsageError(
                f"prefill_chunk_tokens={prefill_chunk_tokens}; pass a positive number or None"
            )
        self.loaded = loaded
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.device = loaded.device
        self.model = loaded.model
        self.layers = self.model.layers
        self.num_layers = len(self.layers)
        self.vocab_size = self.model.args.vocab_size
        self.timer = timer or SubtaskTimer(self.device)
        self._no_kv = LayerKV.empty(self.device)  # immutable: every new request shares it
        self._positions_cache: tuple | None = None

    # ----------------------------------------------------------------- requests
    def start(
        self,
        prompt_ids: Sequence[int],
        sampler: TokenSampler,
        layer_plan: LayerPlan | Sequence[LayerStep] | None = None,
        prefix: PrefixCache | None = None,
        split_after: int = 0,
    ) -> RequestState:
        """A new request; nothing runs until `step`. With `prefix`, `prompt_ids` must start with
        `prefix.token_ids` (tokenize the static part separately and concatenate the ids) or be
        a start of them; the prefix's KV is reused for all but the prompt's last token.
        `split_after` > 0 prefills the first that many prompt tokens as passes of their own,
        without a head: a static prompt part whose KV `prefix_from` can keep afterwards."""
        ids = self.check_prompt(prompt_ids, sampler)
        plan = as_layer_plan(layer_plan, self.num_layers)
        kv = [self._no_kv] * self.num_layers
        position = 0
        if prefix is not None:
            shared = min(len(prefix.token_ids), len(ids))
            if tuple(ids[:shared]) != prefix.token_ids[:shared]:
                raise InvalidPromptError(
                    "the prompt does not start with the prefix's token ids; build it as "
                    "prefix.token_ids + suffix ids"
                )
            if len(prefix.layers) != self.num_layers:
                raise InvalidPromptError(
                    f"the prefix has {len(prefix.layers)} layers, the model {self.num_layers}; "
                    "prefill the prefix with this executor"
                )
            position = min(len(prefix.token_ids), len(ids) - 1)
            kv = [layer.truncated(position) for layer in prefix.layers]
        if not 0 <= split_after < len(ids):
            raise ExecutorUsageError(
                f"split_after={split_after}; it must leave at least the prompt's last token "
                f"(0..{len(ids) - 1})"
            )
        return RequestState(tuple(ids), sampler, plan, kv, position, ids[position:],
                            split_at=split_after)

    def check_prompt(self, prompt_ids: Sequence[int], sampler: TokenSampler) -> list[int]:
        """The prompt's ids as ints, or the typed error `start` would raise (empty prompt, ids
        outside the vocabulary, prompt plus answer longer than the model's context)."""
        ids = [int(token) for token in prompt_ids]
        if not ids:
            raise InvalidPromptError("the prompt is empty; pass at least one token id")
        outside = sorted({t for t in ids if not 0 <= t < self.vocab_size})
        if outside:
            raise InvalidPromptError(
                f"token ids {outside[:5]} are outside the vocabulary 0..{self.vocab_size - 1}; "
                "encode the prompt with this model's tokenizer"
            )
        max_new_tokens = int(getattr(sampler, "max_new_tokens", 1))
        limit = self.loaded.max_context_tokens
        if len(ids) + max_new_tokens > limit:
            raise PromptTooLongError(
                f"prompt of {len(ids)} tokens + {max_new_tokens} new tokens exceeds the model's "
                f"context of {limit} tokens; shorten the prompt or generate fewer tokens"
            )
        return ids

    def prefill_prefix(
        self, prompt_ids: Sequence[int], layer_plan: LayerPlan | Sequence[LayerStep] | None = None
    ) -> PrefixCache:
        """Prefills a static prompt part once; pass the result to `start(prefix=...)`."""
        state = self.start(prompt_ids, GreedySampler(None, 1), layer_plan)
        while self.peek(state).kind is not SubtaskKind.HEAD:
            self.step(state)
        return PrefixCache(state.prompt_ids, tuple(state.kv))

    def prefix_from(self, state: RequestState, num_tokens: int) -> PrefixCache:
        """The KV of a request's first `num_tokens` prompt tokens as a reusable PrefixCache (for
        example a persona prompt, after a full-model request). Every layer must hold them all."""
        if not 1 <= num_tokens <= len(state.prompt_ids):
            raise ExecutorUsageError(
                f"num_tokens={num_tokens}; a prefix is 1..{len(state.prompt_ids)} prompt tokens"
            )
        layers = tuple(kv.truncated(num_tokens) for kv in state.kv)
        if any(len(layer) != num_tokens for layer in layers):
            raise ExecutorUsageError(
                f"the request's layers hold {[len(layer) for layer in layers]} of the first "
                f"{num_tokens} positions (skipped layers or an unfinished prefill); use a "
                "request prefilled with all layers"
            )
        return PrefixCache(state.prompt_ids[:num_tokens], layers)

    def remaining_pass(self, state: RequestState) -> list[Subtask]:
        """The subtasks left in the request's current pass, next first ([] when finished)."""
        if self.peek(state) is None:
            return []
        return [planned.subtask for planned in state.program[state.cursor :]]

    def set_layer_plan(self, state: RequestState, plan: LayerPlan | Sequence[LayerStep]) -> None:
        """Changes the plan between passes (between decode steps or prefill chunks)."""
        if not state.at_pass_start:
            raise ExecutorUsageError(
                "the layer plan can change only between passes; step the request to the end "
                "of its current pass (the next subtask after HEAD) first"
            )
        state.plan = as_layer_plan(plan, self.num_layers)
        state.program = None

    def split_next(self, state: RequestState, parts: int) -> bool:
        """Replaces the request's next subtask, if it is a whole FFN block, by `parts`
        FFN_SLICE subtasks over equal slices of the intermediate dimension (the same result up
        to summation order); False, and nothing changed, for any other next subtask."""
        subtask = self.peek(state)
        inter = self.model.args.intermediate_size
        if subtask is None or subtask.kind is not SubtaskKind.FFN or not 2 <= parts <= inter:
            return False
        slices = [
            _PlannedSubtask(Subtask(SubtaskKind.FFN_SLICE, subtask.phase, subtask.first_layer,
                                    subtask.last_layer, subtask.tokens, subtask.context_tokens,
                                    part, parts))
            for part in range(parts)
        ]
        state.program[state.cursor:state.cursor + 1] = slices
        return True

    def peek(self, state: RequestState) -> Subtask | None:
        """The next subtask the request would run, or None when it is finished."""
        if state.finished:
            return None
        if state.program is None:
            state.program = self._build_pass(state)
        return state.program[state.cursor].subtask

    @torch.inference_mode()
    def step(self, state: RequestState) -> SubtaskTiming:
        """Runs exactly one subtask of the request."""
        planned = self._next(state)
        duration_ns = self.timer.run(lambda: self._run(planned, [state]), planned.subtask)
        timing = SubtaskTiming(planned.subtask, duration_ns)
        state.timings.append(timing)
        self._advance(state)
        return timing

    @torch.inference_mode()
    def step_batch(self, states: Sequence[RequestState]) -> SubtaskTiming:
        """Runs the same subtask (same kind, phase and layers) of several requests in one
        forward: decode steps, or prefill subtasks over the same number of new tokens (e.g.
        NPC prompts of one format). Each request records its own subtask with the batch's
        duration; the returned timing's subtask counts all query tokens and the longest
        context."""
        if len(states) == 1:
            return self.step(states[0])
        if not states or len({id(s) for s in states}) != len(states):
            raise ExecutorUsageError("step_batch needs distinct requests; got none or duplicates")
        planned = [self._next(s) for s in states]
        first = planned[0]
        key = batch_key(first.subtask)
        for p in planned:
            if batch_key(p.subtask) != key:
                raise ExecutorUsageError(
                    "step_batch needs the same subtask (kind, phase, layers; in prefill the "
                    f"same token count) in every request; got {[q.subtask for q in planned]}"
                )
            if p.adaptor is not None and p.adaptor.module is not first.adaptor.module:
                raise ExecutorUsageError("batched ADAPTOR subtasks must share one adaptor module")
        batch = Subtask(
            first.subtask.kind,
            first.subtask.phase,
            first.subtask.first_layer,
            first.subtask.last_layer,
            sum(p.subtask.tokens for p in planned),
            max(p.subtask.context_tokens for p in planned),
        )
        duration_ns = self.timer.run(lambda: self._run(first, list(states)), batch)
        for state, p in zip(states, planned, strict=True):
            state.timings.append(SubtaskTiming(p.subtask, duration_ns))
            self._advance(state)
        return SubtaskTiming(batch, duration_ns)

    def run_to_completion(self, state: RequestState) -> list[SubtaskTiming]:
        """Steps the request until it is finished; returns the timings of the steps run here."""
        timings = []
        while self.peek(state) is not None:
            timings.append(self.step(state))
        return timings

    # ----------------------------------------------------------------- program
    def _build_pass(self, state: RequestState) -> list[_PlannedSubtask]:
        """The subtasks of the next pass: one prefill chunk, or one decode step."""
        if state.pending_ids:
            phase = PREFILL
            tokens = min(
                len(state.pending_ids), self.prefill_chunk_tokens or len(state.pending_ids)
            )
            if state.in_static_part:
                tokens = min(tokens, state.split_at - state.position)
            last_chunk = tokens == len(state.pending_ids)
        else:
            phase, tokens, last_chunk = DECODE, 1, True
        seen = state.position + tokens
        program = []
        if phase == PREFILL:
            program.append(_PlannedSubtask(Subtask(SubtaskKind.EMBED, phase, -1, -1, tokens, seen)))
        for step in state.plan.steps:
            if isinstance(step, AdaptorStep):
                subtask = Subtask(
                    SubtaskKind.ADAPTOR, phase, step.first_layer, step.last_layer, tokens, seen
                )
                program.append(_PlannedSubtask(subtask, step))
                continue
            context = len(state.kv[step]) + tokens
            kinds = (
                (SubtaskKind.ATTENTION, SubtaskKind.FFN)
                if phase == PREFILL
                else (SubtaskKind.LAYER,)
            )
            program.extend(
                _PlannedSubtask(Subtask(kind, phase, step, step, tokens, context)) for kind in kinds
            )
        if last_chunk:
            program.append(_PlannedSubtask(Subtask(SubtaskKind.HEAD, phase, -1, -1, 1, seen)))
        return program

    def _next(self, state: RequestState) -> _PlannedSubtask:
        if self.peek(state) is None:
            raise ExecutorUsageError("the request is finished; start a new one")
        return state.program[state.cursor]

    def _advance(self, state: RequestState) -> None:
        state.cursor += 1
        if state.cursor == len(state.program):
            state.position += state.program[0].subtask.tokens
            state.program, state.cursor = None, 0

    # ----------------------------------------------------------------- compute
    def _run(self, planned: _PlannedSubtask, states: list[RequestState]) -> None:
        subtask = planned.subtask
        if subtask.kind is SubtaskKind.EMBED:
            rows = []
            for state in states:
                rows.append(state.pending_ids[: subtask.tokens])
                del state.pending_ids[: subtask.tokens]
            hidden = self.model.embed(torch.tensor(rows, device=self.device))
            for row, state in enumerate(states):
                state.hidden = hidden[row : row + 1]
            return
        if subtask.kind is SubtaskKind.HEAD:
            self._head(states)
            return
        hidden = states[0].hidden if len(states) == 1 else torch.cat([s.hidden for s in states])
        if subtask.kind is SubtaskKind.FFN_SLICE:
            self._ffn_slice(subtask, hidden, states)
            return
        if subtask.kind is SubtaskKind.ADAPTOR:
            hidden = planned.adaptor.module(hidden)
        else:
            layer = self.layers[subtask.first_layer]
            if subtask.kind in (SubtaskKind.ATTENTION, SubtaskKind.LAYER):
                hidden = self._attention(subtask.first_layer, hidden, states)
            if subtask.kind in (SubtaskKind.FFN, SubtaskKind.LAYER):
                hidden = layer.ffn_block(hidden)
        for row, state in enumerate(states):
            state.hidden = hidden if len(states) == 1 else hidden[row : row + 1]

    def _ffn_slice(
        self, subtask: Subtask, hidden: torch.Tensor, states: list[RequestState]
    ) -> None:
        """One slice of a split FFN block: the first normalises the input and starts the sum,
        each adds its share, the last adds the sum to the residual stream."""
        layer = self.layers[subtask.first_layer]
        if subtask.part == 0:
            normed = layer.ffn_norm(hidden)
            total = torch.zeros_like(hidden)
        else:
            normed = torch.cat([s.ffn_partial[0] for s in states])
            total = torch.cat([s.ffn_partial[1] for s in states])
        inter = self.model.args.intermediate_size
        start = subtask.part * inter // subtask.parts
        end = (subtask.part + 1) * inter // subtask.parts
        last = subtask.part == subtask.parts - 1
        total = total + layer.feed_forward.partial(normed, start, end, with_bias=last)
        for row, state in enumerate(states):
            if last:
                state.hidden = state.hidden + total[row : row + 1]
                state.ffn_partial = None
            else:
                state.ffn_partial = (normed[row : row + 1], total[row : row + 1])

    def _attention(
        self, layer_idx: int, hidden: torch.Tensor, states: list[RequestState]
    ) -> torch.Tensor:
        """The layer's attention block over its own cached positions + the new ones; appends
        the new tokens' KV to each request's cache of this layer."""
        layer = self.layers[layer_idx]
        caches = [s.kv[layer_idx] for s in states]
        starts = tuple(s.position for s in states)
        query_pos, cos, sin = self._positions(hidden, starts)
        past = max(len(cache) for cache in caches)
        keys = values = None
        if len(states) == 1:
            keys, values = caches[0].keys, caches[0].values
        elif past:
            template = next(c.keys for c in caches if c.keys is not None)
            keys = _padded([c.keys for c in caches], past, template)
            values = _padded([c.values for c in caches], past, template)
        mask = self._mask(caches, query_pos, starts, past, layer.window)
        hidden, new_keys, new_values = layer.attention_block(hidden, cos, sin, keys, values, mask)
        for row, (state, cache) in enumerate(zip(states, caches, strict=True)):
            state.kv[layer_idx] = cache.appended(
                new_keys[row : row + 1], new_values[row : row + 1], query_pos[row]
            )
        return hidden

    def _positions(
        self, hidden: torch.Tensor, starts: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Absolute query positions (batch, tokens) and their rotary cos/sin, computed once
        per pass rather than once per layer."""
        key = (starts, hidden.shape[1], hidden.dtype)
        if self._positions_cache is None or self._positions_cache[0] != key:
            offsets = torch.arange(hidden.shape[1], device=self.device)
            query_pos = torch.tensor(starts, device=self.device)[:, None] + offsets
            cos, sin = self.model.rotary(query_pos, hidden.dtype)
            self._positions_cache = (key, query_pos, cos, sin)
        return self._positions_cache[1:]

    def _mask(
        self,
        caches: list[LayerKV],
        query_pos: torch.Tensor,
        starts: tuple[int, ...],
        past: int,
        window: int | None,
    ) -> torch.Tensor | None:
        """Which keys each query may attend to (see decoder.attention_mask). None where plain
        causal attention over everything is exact: one request whose keys are all visible to
        every query (one query, or no past), with the window not reached."""
        batch, tokens = query_pos.shape
        last_query = starts[0] + tokens - 1
        if batch == 1 and (tokens == 1 or past == 0) and (window is None or last_query < window):
            return None
        past_pos = torch.stack([F.pad(c.positions, (0, past - len(c))) for c in caches])
        past_valid = torch.arange(past, device=self.device)[None, :] < torch.tensor(
            [[len(c)] for c in caches], device=self.device
        )
        key_pos = torch.cat([past_pos, query_pos], dim=1)
        key_valid = torch.cat([past_valid, torch.ones_like(query_pos, dtype=torch.bool)], dim=1)
        return attention_mask(query_pos, key_pos, key_valid, window)

    def _head(self, states: list[RequestState]) -> None:
        """Final norm + output head on each request's last position, sampling, and embedding
        the new token. A batch's requests may end prefill chunks of different lengths (the head
        counts one token each), so only their last positions are stacked."""
        last = torch.cat([s.hidden[:, -1, :] for s in states])
        logits = self.model.head(last).float()
        next_ids = []
        for row, state in enumerate(states):
            token = int(state.sampler.next_token(logits[row], state.generated))
            state.generated.append(token)
            sequence_tokens = state.position + state.hidden.shape[1] + 1  # prompt + generated
            state.finished = bool(state.sampler.finished(state.generated)) or (
                sequence_tokens >= self.loaded.max_context_tokens
            )
            next_ids.append(token)
        embedded = self.model.embed(torch.tensor(next_ids, device=self.device)[:, None])
        for row, state in enumerate(states):
            state.hidden = None if state.finished else embedded[row : row + 1]
