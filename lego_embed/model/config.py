"""ModelArgs: the decoder's shape, read from a Hugging Face folder's config.json.

Only what our decoder needs is read, and every value is checked. Families differ in a few
defaults and in where the biases are (Qwen2: query/key/value biases; Llama: `attention_bias`
on all four projections); everything else is one architecture. Two spellings of the rotary
settings are accepted: the current `rope_parameters` dict and the older `rope_theta` plus
`rope_scaling` pair.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lego_embed.errors import ModelConfigError, UnsupportedArchitectureError

SUPPORTED_FAMILIES = ("llama", "qwen2", "mistral")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
REFUSED_ROPE_TYPES = {
    "dynamic": "its frequencies change with the sequence length, so keys cached at an earlier "
    "length would be rotated differently from new ones",
    "longrope": "it is Phi-3's scaling and switches frequency sets with the sequence length",
}
REQUIRED_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
)
# Defaults of the fields a config.json may omit, as each family's Hugging Face config class has
# them (max_position_embeddings, rms_norm_eps, sliding_window).
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "sliding_window": None},
    "qwen2": {"max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "sliding_window": 4096},
    "mistral": {"max_position_embeddings": 4096 * 32, "rms_norm_eps": 1e-6,
                "sliding_window": 4096},
}
QWEN2_DEFAULT_MAX_WINDOW_LAYERS = 28


@dataclass(frozen=True)
class RopeArgs:
    """Rotary position embedding settings.

    rope_type: default | linear | llama3 | yarn. theta: base wavelength. factor: context
    scaling factor (linear, llama3, yarn). low_freq_factor / high_freq_factor: llama3's band
    edges. original_context_tokens: the pre-training context (llama3, yarn), tokens.
    beta_fast / beta_slow / truncate: yarn's frequency ramp. attention_factor: the scale of
    cos and sin (1 except for yarn).
    """

    rope_type: str = "default"
    theta: float = 10000.0
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_context_tokens: int = 0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float = 1.0
    truncate: bool = True


@dataclass(frozen=True)
class ModelArgs:
    """The shape of a Llama / Qwen2 / Mistral decoder.

    Sizes are element counts; head_dim per attention head; max_context_tokens the longest
    sequence the model supports (tokens); sliding_windows one entry per layer: the attention
    window in tokens, or None for full causal attention. qkv_bias / out_bias / mlp_bias: which
    projections carry a bias. eos_token_ids: every id that ends generation.
    """

    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_context_tokens: int
    tie_word_embeddings: bool
    qkv_bias: bool
    out_bias: bool
    mlp_bias: bool
    rope: RopeArgs
    sliding_windows: tuple[int | None, ...]
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    @classmethod
    def from_folder(cls, path: Path) -> ModelArgs:
        """Reads `path / config.json` (raises ModelConfigError / UnsupportedArchitectureError)."""
        config_file = path / "config.json"
        try:
            raw = json.loads(config_file.read_text())
        except json.JSONDecodeError as error:
            raise ModelConfigError(
                f"{config_file} is not valid JSON ({error}); save the model's config again "
                "with config.save_pretrained"
            ) from error
        if not isinstance(raw, dict):
            raise ModelConfigError(
                f"{config_file} must hold a JSON object, got {type(raw).__name__}"
            )
        return cls.from_dict(raw, source=str(config_file))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> ModelArgs:
        """Builds and validates the args from a parsed config.json."""
        family = raw.get("model_type")
        if family not in SUPPORTED_FAMILIES:
            raise UnsupportedArchitectureError(
                f"{source}: model_type {family!r} is not supported; the decoder runs "
                f"{', '.join(SUPPORTED_FAMILIES)} models"
            )
        if raw.get("quantization_config"):
            method = raw["quantization_config"].get("quant_method", "unknown")
            raise UnsupportedArchitectureError(
                f"{source}: the weights are quantized ({method}); use the unquantized "
                "float16/bfloat16/float32 model folder"
            )
        missing = [name for name in REQUIRED_FIELDS if name not in raw]
        if missing:
            raise ModelConfigError(
                f"{source} lacks {', '.join(missing)}; a {family} config.json needs "
                f"{', '.join(REQUIRED_FIELDS)}"
            )
        defaults = FAMILY_DEFAULTS[family]
        reader = _FieldReader(raw, source)
        hidden_act = raw.get("hidden_act", "silu")
        if hidden_act != "silu":
            raise UnsupportedArchitectureError(
                f"{source}: hidden_act {hidden_act!r} is not supported; the decoder's MLP is "
                "SwiGLU ('silu')"
            )
        num_heads = reader.positive_int("num_attention_heads")
        hidden_size = reader.positive_int("hidden_size")
        num_kv_heads = reader.positive_int("num_key_value_heads", num_heads)
        if num_heads % num_kv_heads:
            raise ModelConfigError(
                f"{source}: num_attention_heads {num_heads} is not a multiple of "
                f"num_key_value_heads {num_kv_heads}"
            )
        head_dim = reader.positive_int("head_dim", hidden_size // num_heads)
        if head_dim % 2:
            raise ModelConfigError(
                f"{source}: head_dim {head_dim} must be even for rotary embeddings"
            )
        num_layers = reader.positive_int("num_hidden_layers")
        max_context = reader.positive_int(
            "max_position_embeddings", defaults["max_position_embeddings"]
        )
        attention_bias = bool(raw.get("attention_bias", False))
        return cls(
            family=family,
            vocab_size=reader.positive_int("vocab_size"),
            hidden_size=hidden_size,
            intermediate_size=reader.positive_int("intermediate_size"),
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            rms_norm_eps=reader.positive_float("rms_norm_eps", defaults["rms_norm_eps"]),
            max_context_tokens=max_context,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=family == "qwen2" or (family == "llama" and attention_bias),
            out_bias=family == "llama" and attention_bias,
            mlp_bias=family == "llama" and bool(raw.get("mlp_bias", False)),
            rope=_rope_args(raw, max_context, source),
            sliding_windows=_sliding_windows(raw, family, num_layers, reader),
            bos_token_id=reader.optional_id("bos_token_id"),
            eos_token_ids=reader.id_list("eos_token_id"),
            pad_token_id=reader.optional_id("pad_token_id"),
        )

    @property
    def eos_token_id(self) -> int | None:
        """The first end-of-sequence id (None when the config names none)."""
        return self.eos_token_ids[0] if self.eos_token_ids else None


class _FieldReader:
    """Typed access to config.json fields with errors that name the field."""

    def __init__(self, raw: dict[str, Any], source: str) -> None:
        self.raw, self.source = raw, source

    def _error(self, name: str, expected: str) -> ModelConfigError:
        return ModelConfigError(
            f"{self.source}: {name} is {self.raw.get(name)!r}; expected {expected}"
        )

    def positive_int(self, name: str, default: int | None = None) -> int:
        value = self.raw.get(name)
        if value is None:
            if default is None:
                raise self._error(name, "a positive integer")
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self._error(name, "a positive integer")
        return value

    def positive_float(self, name: str, default: float) -> float:
        value = self.raw.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value > 0
        ):
            raise self._error(name, "a positive number")
        return float(value)

    def optional_id(self, name: str) -> int | None:
        value = self.raw.get(name)
        if isinstance(value, list):  # some configs list several; the first is the main one
            value = value[0] if value else None
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self._error(name, "a token id (integer >= 0) or null")
        return value

    def id_list(self, name: str) -> tuple[int, ...]:
        value = self.raw.get(name)
        values = value if isinstance(value, list) else [] if value is None else [value]
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
            raise self._error(name, "a token id or a list of token ids")
        return tuple(values)


def _rope_args(raw: dict[str, Any], max_context: int, source: str) -> RopeArgs:
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise ModelConfigError(f"{source}: rope_parameters must be an object, got {params!r}")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type in REFUSED_ROPE_TYPES:
        raise UnsupportedArchitectureError(
            f"{source}: rope type {rope_type!r} is not supported "
            f"({REFUSED_ROPE_TYPES[rope_type]}); supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedArchitectureError(
            f"{source}: rope type {rope_type!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    partial = params.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        raise UnsupportedArchitectureError(
            f"{source}: partial_rotary_factor {partial} is not supported; Llama, Qwen2 and "
            "Mistral rotate the whole head"
        )
    reader = _FieldReader(params, f"{source} rope parameters")
    theta = reader.positive_float("rope_theta", raw.get("rope_theta", 10000.0))
    if rope_type == "default":
        return RopeArgs(theta=theta)
    if "factor" not in params:
        raise ModelConfigError(f"{source}: rope type {rope_type!r} needs a 'factor'")
    # as Hugging Face standardises it: a top-level value wins, else the rope dict's, else the
    # model's own context
    original = int(raw.get("original_max_position_embeddings")
                   or params.get("original_max_position_embeddings") or max_context)
    if rope_type == "yarn" and params["factor"] is None:
        factor = max_context / original
    else:
        factor = reader.positive_float("factor", 1.0)
    args = RopeArgs(rope_type=rope_type, theta=theta, factor=factor,
                    original_context_tokens=original)
    if rope_type == "llama3":
        missing = [k for k in ("low_freq_factor", "high_freq_factor") if k not in params]
        if missing:
            raise ModelConfigError(f"{source}: rope type 'llama3' needs {', '.join(missing)}")
        low = reader.positive_float("low_freq_factor", 1.0)
        high = reader.positive_float("high_freq_factor", 4.0)
        if high <= low:
            raise ModelConfigError(
                f"{source}: llama3 rope high_freq_factor {high} must exceed low_freq_factor {low}"
            )
        return replace(args, low_freq_factor=low, high_freq_factor=high)
    if rope_type == "yarn":
        return replace(
            args,
            beta_fast=float(params.get("beta_fast") or 32.0),
            beta_slow=float(params.get("beta_slow") or 1.0),
            attention_factor=_yarn_attention_factor(params, factor),
            truncate=bool(params.get("truncate", True)),
        )
    return args


def _yarn_attention_factor(params: dict[str, Any], factor: float) -> float:
    """YaRN's cos/sin scale: given, or 0.1 ln(factor) + 1 (with DeepSeek's mscale ratio)."""
    if params.get("attention_factor") is not None:
        return float(params["attention_factor"])

    def mscale(scale: float, weight: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * weight * math.log(scale) + 1.0

    weight, weight_all = params.get("mscale"), params.get("mscale_all_dim")
    if weight and weight_all:
        return mscale(factor, weight) / mscale(factor, weight_all)
    return mscale(factor)


def _sliding_windows(
    raw: dict[str, Any], family: str, num_layers: int, reader: _FieldReader
) -> tuple[int | None, ...]:
    """Per-layer attention window (tokens), as each family's Hugging Face code applies it."""
    if family == "llama":
        return (None,) * num_layers
    if "sliding_window" in raw and raw["sliding_window"] is None:
        return (None,) * num_layers
    window = reader.positive_int("sliding_window", FAMILY_DEFAULTS[family]["sliding_window"])
    if family == "mistral":
        return (window,) * num_layers
    if not raw.get("use_sliding_window", False):
        return (None,) * num_layers
    layer_types = raw.get("layer_types")
    if layer_types is None:
        first = raw.get("max_window_layers", QWEN2_DEFAULT_MAX_WINDOW_LAYERS)
        layer_types = ["sliding_attention" if i >= first else "full_attention"
                       for i in range(num_layers)]
    if len(layer_types) != num_layers or not set(layer_types) <= {
        "sliding_attention", "full_attention"
    }:
        raise ModelConfigError(
            f"{reader.source}: layer_types must list 'full_attention' or 'sliding_attention' "
            f"for each of the {num_layers} layers"
        )
    return tuple(window if kind == "sliding_attention" else None for kind in layer_types)
