"""What a vLLM version accepts, for the versions a calibration can target: the allowed
`--max-lora-rank` values, the container image, and the runtime LoRA endpoints.

vLLM 0.8.5 (the engine of the calibration runs): `LoRAConfig.__post_init__` in `vllm/config.py`
accepts `max_lora_rank` in (8, 16, 32, 64, 128, 256, 320, 512), `max_loras >= 1` and
`max_cpu_loras >= max_loras`; an adapter whose rank exceeds `max_lora_rank` is refused when it
loads. Runtime loading (`POST /v1/load_lora_adapter` with `lora_name` and `lora_path`,
`POST /v1/unload_lora_adapter` with `lora_name`) is enabled by the environment variable
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`.
"""

from __future__ import annotations

from dataclasses import dataclass

from lego_embed.errors import WorkloadSpecError


@dataclass(frozen=True)
class VllmRules:
    """The rules of one vLLM version: allowed max_lora_rank values (ranks), its OpenAI server
    image, and the runtime LoRA endpoints (paths) with the variable that enables them."""

    version: str
    max_lora_ranks: tuple[int, ...]
    image: str
    load_endpoint: str = "/v1/load_lora_adapter"
    unload_endpoint: str = "/v1/unload_lora_adapter"
    runtime_lora_env: str = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"

    @property
    def max_rank(self) -> int:
        return max(self.max_lora_ranks)

    def max_lora_rank_for(self, rank: int) -> int:
        """The smallest allowed --max-lora-rank that serves an adapter of this rank."""
        for allowed in sorted(self.max_lora_ranks):
            if rank <= allowed:
                return allowed
        raise WorkloadSpecError(f"rank {rank}: vLLM {self.version} serves LoRA ranks up to "
                                f"{self.max_rank} (--max-lora-rank one of "
                                f"{self.max_lora_ranks}); retrain the adapter at a lower rank")


VLLM_RULES = {
    "0.8.5": VllmRules(version="0.8.5", max_lora_ranks=(8, 16, 32, 64, 128, 256, 320, 512),
                       image="vllm/vllm-openai:v0.8.5"),
}


def rules_for(version: str) -> VllmRules:
    """The rules of `version`; a version whose rules were not looked up is an error."""
    if version not in VLLM_RULES:
        raise WorkloadSpecError(f"vLLM {version}: no rules known for this version (known: "
                                f"{', '.join(VLLM_RULES)}); the twin models the version its "
                                "calibration was measured on")
    return VLLM_RULES[version]
