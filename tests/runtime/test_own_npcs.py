"""Your own NPCs on the task-neutral runtime: a shopkeeper with its own fields, prompt and
actions (not the combat task), the static prompt part shared across NPCs, streamed lines from a
chat-template model, each token with its own deadline."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from waiting import wait_for

from lego_embed.model.loading import LoadedModel, load_model
from lego_embed.npc.decider import NpcDecider
from lego_embed.npc.output_spec import Choice, ChoiceThenLine, Line
from lego_embed.npc.prompt_parts import Prompt
from lego_embed.npc.prompt_template import PromptTemplate
from lego_embed.runtime.request import ActionEvent, Request, TokenEvent
from lego_embed.runtime.runtime import Runtime, RuntimeConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_helpers import QWEN2_CHAT_TEMPLATE, save_english_model  # noqa: E402

SHOP_STATIC = ("You are Mara, the shopkeeper of the Rusty Lantern. You sell rope, lamps and "
               "maps. Answer with one action.\n")
SHOP_TEMPLATE = "The player offers {offer} gold for a {item}. The player says: {utterance}\n"
SHOP_ACTIONS = ["sell", "haggle", "refuse", "call the guard"]
SITUATIONS = [
    {"offer": 12, "item": "lamp", "utterance": "can you go lower?"},
    {"offer": 3, "item": "map", "utterance": "hand it over"},
    {"offer": 40, "item": "rope", "utterance": "keep the change"},
]


@pytest.fixture(scope="module")
def english_loaded(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    torch.set_num_threads(1)
    return load_model(save_english_model(tmp_path_factory.mktemp("llama_en"), family="llama"))


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_english_model(tmp_path_factory.mktemp("qwen2_chat"), family="qwen2",
                              chat_template=QWEN2_CHAT_TEMPLATE)


def shop_prompt(fields: dict) -> Prompt:
    return Prompt(SHOP_STATIC, PromptTemplate(SHOP_TEMPLATE).fill(fields).text)


def test_a_shopkeeper_gets_valid_answers_and_shares_its_static_prompt(
    english_loaded: LoadedModel,
) -> None:
    runtime = Runtime(english_loaded, config=RuntimeConfig(warmup=False, prefix_min_tokens=8))
    runtime.start()
    try:
        first = runtime.submit(Request("mara", shop_prompt(SITUATIONS[0]), Choice(SHOP_ACTIONS),
                                       5000.0))
        decisions = wait_for(runtime, 1, 300.0)
        ids = {first: SITUATIONS[0]}
        for npc in ("mara", "mara_twin"):  # another NPC with the same static text
            for fields in SITUATIONS[1:]:  # every answer wanted: none supersedes the other
                ids[runtime.submit(Request(npc, shop_prompt(fields), Choice(SHOP_ACTIONS),
                                           5000.0, supersede=False))] = fields
        decisions += wait_for(runtime, 4, 300.0)
    finally:
        runtime.stop()
    assert sorted(d.request_id for d in decisions) == sorted(ids)
    assert all(d.error is None and d.action in SHOP_ACTIONS for d in decisions)
    stats = runtime.stats()
    assert stats["static_prefills"] == 1  # the static part ran once ...
    assert stats["prefix_hits"] == 4  # ... and every later request, of either NPC, reused it
    reference = NpcDecider(english_loaded)
    for decision in decisions:
        expected = reference.answer(shop_prompt(ids[decision.request_id]), Choice(SHOP_ACTIONS))
        assert decision.action == expected.action


def test_an_action_and_a_line_come_in_one_generation_action_first(
    english_loaded: LoadedModel,
) -> None:
    runtime = Runtime(english_loaded, config=RuntimeConfig(warmup=False))
    actions: list[ActionEvent] = []
    tokens: list[TokenEvent] = []
    runtime.start()
    try:
        request_id = runtime.submit(Request(
            "mara", shop_prompt(SITUATIONS[1]), ChoiceThenLine(SHOP_ACTIONS, max_tokens=5),
            5000.0, on_action=actions.append, on_token=tokens.append,
        ))
        [decision] = wait_for(runtime, 1, 300.0)
    finally:
        runtime.stop()
    assert decision.request_id == request_id and decision.error is None
    assert [a.action for a in actions] == [decision.action] and decision.action in SHOP_ACTIONS
    assert actions[0].t_ns <= tokens[0].t_ns
    assert decision.action_ms <= decision.first_token_ms <= decision.latency_ms
    assert "".join(t.text for t in tokens) == decision.line
    expected = NpcDecider(english_loaded).answer(shop_prompt(SITUATIONS[1]),
                                                 ChoiceThenLine(SHOP_ACTIONS, max_tokens=5))
    assert (decision.action, decision.line) == (expected.action, expected.line)


def test_a_chat_template_model_streams_a_line_token_by_token(chat_folder: Path) -> None:
    loaded = load_model(chat_folder)
    runtime = Runtime(loaded, config=RuntimeConfig(warmup=False))
    assert runtime.chat_template is not None
    tokens: list[TokenEvent] = []
    prompt = Prompt("You are Mara, the shopkeeper.", "The player says: a lamp, please.")
    runtime.start()
    try:
        runtime.submit(Request("mara", prompt, Line(max_tokens=8), 2000.0,
                               pace_tokens_per_s=20.0, on_token=tokens.append))
        [decision] = wait_for(runtime, 1, 300.0)
    finally:
        runtime.stop()
    assert decision.error is None and decision.output == "line"
    assert "".join(t.text for t in tokens) == decision.line
    made = [t for k, t in enumerate(tokens) if k == 0 or t.index > tokens[k - 1].index]
    assert [t.index for t in made] == list(range(1, decision.line_tokens + 1))
    for token in made:  # each token's own deadline: the first at 2000 ms, then every 50 ms
        assert token.deadline_ms == pytest.approx(2000.0 + (token.index - 1) * 50.0)
        assert token.deadline_met == (token.latency_ms <= token.deadline_ms)
    assert [t.t_ns for t in tokens] == sorted(t.t_ns for t in tokens)
    assert decision.first_token_ms == pytest.approx(made[0].latency_ms)
    assert decision.late_tokens == sum(not t.deadline_met for t in made)
    assert decision.line == NpcDecider(loaded).answer(prompt, Line(max_tokens=8)).line


@pytest.mark.parity
def test_the_chat_prompt_and_the_line_match_transformers(chat_folder: Path) -> None:
    """The rendered chat prompt is transformers' apply_chat_template, token for token, and the
    greedy line is generate's (which also never ends before its first token)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lego_embed.npc.answer import make_sampler
    from lego_embed.npc.prompt_parts import encode_prompt

    loaded = load_model(chat_folder)
    decider = NpcDecider(loaded)
    prompt = Prompt("You are Mara, the shopkeeper.", "The player says: a lamp, please.")
    encoded = encode_prompt(loaded.tokenizer, prompt, decider.chat)
    hf_tokenizer = AutoTokenizer.from_pretrained(chat_folder)
    text = hf_tokenizer.apply_chat_template(
        [{"role": "system", "content": prompt.static}, {"role": "user", "content": prompt.dynamic}],
        tokenize=False, add_generation_prompt=True)
    assert list(encoded.ids) == hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    static_text = loaded.tokenizer.decode(encoded.static_ids)
    assert text.startswith(static_text) and static_text.endswith("<|im_start|>user\n")
    sampler = make_sampler(loaded.tokenizer, Line(max_tokens=8))
    state = decider.executor.start(encoded.ids, sampler)
    decider.executor.run_to_completion(state)
    model = AutoModelForCausalLM.from_pretrained(chat_folder)
    generated = model.generate(torch.tensor([encoded.ids]), max_new_tokens=8, min_new_tokens=1,
                               do_sample=False, eos_token_id=loaded.tokenizer.eos_token_id)
    assert state.generated == generated[0, len(encoded.ids):].tolist()
