"""NPC decisions from a model: state -> prompt -> constrained decoding -> one allowed action."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lego_embed.model.executor import Executor
from lego_embed.model.loading import LoadedModel
from lego_embed.npc.actions import ActionTrie, ConstrainedActionSampler
from lego_embed.npc.prompt import build_prompt, persona_prefix
from lego_embed.npc.state import GameState, validate_state


@dataclass(frozen=True)
class PreparedDecision:
    """What the executor needs to run one decision: prompt tokens and the action sampler.

    prefix_tokens: how many leading prompt tokens are the NPC's static persona prefix.
    """

    state: GameState
    prompt_ids: list[int]
    prefix_tokens: int
    sampler: ConstrainedActionSampler


@dataclass(frozen=True)
class NpcDecision:
    """One finished decision. latency_ms: wall time from request to answer (ms);
    compute_ms: sum of the measured subtask durations (ms)."""

    action: str
    latency_ms: float
    compute_ms: float
    prompt_tokens: int
    generated_tokens: int
    subtasks: int


def prepare_decision(
    tokenizer: Any, state: Mapping[str, Any], actions: Sequence[str]
) -> PreparedDecision:
    """Validates the state and the action set, and encodes the prompt (raises typed errors)."""
    game_state = validate_state(state)
    trie = ActionTrie(tokenizer, actions, tokenizer.eos_token_id)
    prompt_ids = tokenizer.encode(build_prompt(game_state))
    prefix_ids = tokenizer.encode(persona_prefix(game_state.persona))
    prefix_tokens = len(prefix_ids) if prompt_ids[: len(prefix_ids)] == prefix_ids else 0
    return PreparedDecision(game_state, prompt_ids, prefix_tokens, ConstrainedActionSampler(trie))


class NpcDecider:
    """Runs decisions to completion on the calling thread (no scheduling): the simple path used
    by `lego-embed decide`, evaluation, and as the reference for the scheduled runtime."""

    def __init__(self, loaded: LoadedModel, executor: Executor | None = None) -> None:
        self.loaded = loaded
        self.executor = executor or Executor(loaded)

    def decide(
        self, state: Mapping[str, Any], actions: Sequence[str], layer_plan: Any = None
    ) -> NpcDecision:
        started_ns = time.perf_counter_ns()
        prepared = prepare_decision(self.loaded.tokenizer, state, actions)
        request = self.executor.start(prepared.prompt_ids, prepared.sampler, layer_plan=layer_plan)
        timings = self.executor.run_to_completion(request)
        action = prepared.sampler.action(request.generated)
        return NpcDecision(
            action=action,
            latency_ms=(time.perf_counter_ns() - started_ns) / 1e6,
            compute_ms=sum(t.duration_ns for t in timings) / 1e6,
            prompt_tokens=len(prepared.prompt_ids),
            generated_tokens=len(request.generated),
            subtasks=len(timings),
        )
