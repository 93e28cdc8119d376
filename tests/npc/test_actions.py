"""Constrained action decoding: the answer is always one of the allowed actions."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lego_embed.errors import InvalidActionSetError
from lego_embed.npc.actions import ActionTrie, ConstrainedActionSampler
from lego_embed.tasks.combat.policy import ACTIONS

WORDS = ["heal", "ally", "attack", "heavy", "light", "block", "shoot", "call", "for", "help",
         "retreat", "zzqx", "dodge"]


def decode(sampler: ConstrainedActionSampler, logits_for_step) -> str:
    generated: list[int] = []
    while not sampler.finished(generated):
        generated.append(sampler.next_token(logits_for_step(len(generated)), generated))
    return sampler.action(generated)


def test_prefix_sharing_and_multi_token_actions(npc_tokenizer):
    actions = ["heal", "heal ally", "call for help", "call"]
    trie = ActionTrie(npc_tokenizer, actions, npc_tokenizer.eos_token_id)
    sampler = ConstrainedActionSampler(trie)
    heal_ids = npc_tokenizer.encode(" heal", add_special_tokens=False)
    eos = npc_tokenizer.eos_token_id
    vocab = npc_tokenizer.vocab_size

    def prefer(token):
        logits = torch.zeros(vocab)
        logits[token] = 10.0
        return logits

    # after "heal", EOS ends the action "heal"; otherwise "ally" continues to "heal ally"
    assert trie.action_of(heal_ids) is None
    assert trie.action_of([*heal_ids, eos]) == "heal"
    assert decode(sampler, lambda step: prefer(heal_ids[0] if step == 0 else eos)) == "heal"
    ally = npc_tokenizer.encode(" ally", add_special_tokens=False)[0]
    assert decode(sampler, lambda step: prefer(heal_ids[0] if step == 0 else ally)) == "heal ally"
    longest = max(len(npc_tokenizer.encode(" " + a, add_special_tokens=False)) for a in actions)
    assert sampler.max_new_tokens == 1 + longest


def test_decoding_stops_when_the_action_is_determined(npc_tokenizer):
    sampler = ConstrainedActionSampler(
        ActionTrie(npc_tokenizer, ["heavy attack", "block"], npc_tokenizer.eos_token_id)
    )
    first = npc_tokenizer.encode(" heavy", add_special_tokens=False)[0]
    assert sampler.finished([first]) and sampler.action([first]) == "heavy attack"


@settings(max_examples=150, deadline=None)
@given(
    actions=st.lists(
        st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(" ".join),
        min_size=1, max_size=8, unique=True,
    ),
    seed=st.integers(0, 2**16),
)
def test_never_returns_an_action_outside_the_set(npc_tokenizer, actions, seed):
    try:
        trie = ActionTrie(npc_tokenizer, actions, npc_tokenizer.eos_token_id)
    except InvalidActionSetError as error:
        assert "same to the model" in str(error)
        return
    generator = torch.Generator().manual_seed(seed)
    vocab = npc_tokenizer.vocab_size
    chosen = decode(ConstrainedActionSampler(trie),
                    lambda step: torch.randn(vocab, generator=generator) * 5)
    assert chosen in actions


@pytest.mark.parametrize("bad", [[], "heal", ["heal", "heal"], ["heal", ""], ["heal", 3]])
def test_bad_action_sets_are_rejected(npc_tokenizer, bad):
    with pytest.raises(InvalidActionSetError):
        ActionTrie(npc_tokenizer, bad, npc_tokenizer.eos_token_id)


def test_full_combat_action_set_encodes(npc_tokenizer):
    trie = ActionTrie(npc_tokenizer, ACTIONS, npc_tokenizer.eos_token_id)
    assert set(trie.actions) == set(ACTIONS)
