"""NPC answers from a model without scheduling: prompt -> constrained decoding -> answer.

`prepare` checks and encodes a request before any model work (typed errors); `NpcDecider` runs
it to completion on the calling thread. It is the reference path for `lego-embed decide`,
evaluation and tests; the runtime schedules the same prepared request subtask by subtask.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from lego_embed.model.executor import Executor
from lego_embed.model.loading import LoadedModel
from lego_embed.npc.answer import AnswerSampler, make_sampler, read_answer
from lego_embed.npc.chat_template import ChatTemplate
from lego_embed.npc.output_spec import OutputSpec
from lego_embed.npc.prompt_parts import EncodedPrompt, Prompt, encode_prompt


@dataclass(frozen=True)
class PreparedRequest:
    """What the executor needs to run one request: the encoded prompt and a fresh sampler."""

    encoded: EncodedPrompt
    sampler: AnswerSampler

    @property
    def prompt_ids(self) -> list[int]:
        return list(self.encoded.ids)


@dataclass(frozen=True)
class NpcAnswer:
    """One finished answer. action / line: as the output spec asks (None where it asks for
    none). latency_ms: wall time from the call to the answer (ms); compute_ms: sum of the
    measured subtask durations (ms)."""

    action: str | None
    line: str | None
    latency_ms: float
    compute_ms: float
    prompt_tokens: int
    generated_tokens: int
    subtasks: int


def prepare(tokenizer: Any, prompt: Prompt, output: OutputSpec,
            chat: ChatTemplate | None = None) -> PreparedRequest:
    """Encodes the prompt and builds the output spec's sampler (raises typed errors)."""
    return PreparedRequest(encode_prompt(tokenizer, prompt, chat), make_sampler(tokenizer, output))


class NpcDecider:
    """Runs requests to completion on the calling thread (no scheduling). The model folder's
    chat template is applied when it has one and `chat_template` is True."""

    def __init__(self, loaded: LoadedModel, executor: Executor | None = None,
                 chat_template: bool = True) -> None:
        self.loaded = loaded
        self.executor = executor or Executor(loaded)
        self.chat = (ChatTemplate.from_folder(loaded.path, loaded.tokenizer.special_tokens)
                     if chat_template else None)

    def answer(self, prompt: Prompt, output: OutputSpec, layer_plan: Any = None) -> NpcAnswer:
        started_ns = time.perf_counter_ns()
        prepared = prepare(self.loaded.tokenizer, prompt, output, self.chat)
        request = self.executor.start(prepared.prompt_ids, prepared.sampler, layer_plan=layer_plan)
        timings = self.executor.run_to_completion(request)
        answer = read_answer(prepared.sampler, request.generated)
        return NpcAnswer(
            action=answer.action,
            line=answer.line,
            latency_ms=(time.perf_counter_ns() - started_ns) / 1e6,
            compute_ms=sum(t.duration_ns for t in timings) / 1e6,
            prompt_tokens=len(prepared.prompt_ids),
            generated_tokens=len(request.generated),
            subtasks=len(timings),
        )
