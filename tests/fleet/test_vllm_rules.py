"""Ranks follow vLLM 0.8.5's LoRAConfig rule; unknown versions are refused."""

from __future__ import annotations

import pytest

from lego_embed.errors import WorkloadSpecError
from lego_embed.fleet.vllm_rules import rules_for


def test_max_lora_rank_is_the_smallest_allowed_value_that_fits() -> None:
    rules = rules_for("0.8.5")
    assert [rules.max_lora_rank_for(r) for r in (1, 8, 9, 12, 16, 48, 100, 300, 320, 512)] == \
        [8, 8, 16, 16, 16, 64, 128, 320, 320, 512]
    with pytest.raises(WorkloadSpecError, match="up to 512"):
        rules.max_lora_rank_for(513)
    assert rules.image == "vllm/vllm-openai:v0.8.5"


def test_unknown_versions_are_refused() -> None:
    with pytest.raises(WorkloadSpecError, match=r"vLLM 0\.4\.0: no rules"):
        rules_for("0.4.0")
