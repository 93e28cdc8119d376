"""Our own Llama / Qwen2 / Mistral decoder: plain PyTorch modules, in the spirit of gpt-fast.

Each decoder layer exposes its two halves, `attention_block` and `ffn_block`, with the KV of
the past passed in and the new KV returned, so the executor can run a layer's halves as separate
subtasks and keep the KV per layer itself. `Transformer.forward` is the plain whole-sequence
pass (no cache) over a `LayerPlan`, used for distillation, the similarity map and evaluation.

Projections are fused where the checkpoint's separate matrices can be stacked: query, key and
value into one `wqkv`, the MLP's gate and up projections into one `w13`. Attention runs on
`torch.nn.functional.scaled_dot_product_attention` with a boolean mask (True: may attend) or,
where plain causal attention is exact, none.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lego_embed.model.config import ModelArgs
from lego_embed.model.layer_plan import AdaptorStep, LayerPlan, as_layer_plan
from lego_embed.model.rope import RotaryEmbedding, apply_rotary


class Linear(nn.Linear):
    """nn.Linear whose weights are left uninitialised at construction: a checkpoint fills them
    (or `Transformer.init_weights` draws random ones), so building a large model costs only
    its allocation."""

    def reset_parameters(self) -> None:
        """Leaves the weights as allocated (see the class docstring)."""


class Embedding(nn.Embedding):
    """nn.Embedding left uninitialised at construction, like `Linear`."""

    def reset_parameters(self) -> None:
        """Leaves the table as allocated (see the class docstring)."""


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale (no bias); eps is unitless. The normalisation
    is computed in float32 whatever the model's dtype and cast back before the scale, as
    Llama's reference implementation (and every checkpoint trained with it) does."""

    def __init__(self, dim: int, eps: float, **factory) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, **factory))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # one fused kernel, same result
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.to(x.dtype)


class Attention(nn.Module):
    """Grouped-query self-attention: `num_heads` query heads share `num_kv_heads` key/value
    heads of `head_dim` elements each."""

    def __init__(self, args: ModelArgs, **factory) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (
            args.num_heads, args.num_kv_heads, args.head_dim
        )
        q_size, kv_size = args.num_heads * args.head_dim, args.num_kv_heads * args.head_dim
        self.wqkv = Linear(args.hidden_size, q_size + 2 * kv_size, bias=args.qkv_bias, **factory)
        self.wo = Linear(q_size, args.hidden_size, bias=args.out_bias, **factory)

    def project(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (batch, tokens, hidden) -> rotated queries, rotated keys, values, each
        (batch, heads, tokens, head_dim). One projection for all three, one rotation for
        queries and keys together."""
        batch, tokens, _ = x.shape
        heads = self.num_heads + self.num_kv_heads
        qkv = self.wqkv(x).view(batch, tokens, heads + self.num_kv_heads, self.head_dim)
        qk = apply_rotary(qkv[:, :, :heads], cos, sin).transpose(1, 2)
        return qk[:, : self.num_heads], qk[:, self.num_heads :], qkv[:, :, heads:].transpose(1, 2)

    def attend(
        self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
        mask: torch.Tensor | None, causal: bool,
    ) -> torch.Tensor:
        """Queries over all keys/values (past + new) -> output projection (batch, tokens,
        hidden). `mask` (batch, 1, tokens, keys) boolean, or None with `causal` saying whether
        plain causal attention applies."""
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, is_causal=mask is None and causal,
            enable_gqa=self.num_kv_heads != self.num_heads,
        )
        batch, _, tokens, _ = q.shape
        return self.wo(out.transpose(1, 2).reshape(batch, tokens, -1))


class FeedForward(nn.Module):
    """SwiGLU MLP: w2(silu(gate(x)) * up(x)), gate and up fused in `w13`."""

    def __init__(self, args: ModelArgs, **factory) -> None:
        super().__init__()
        self.w13 = Linear(args.hidden_size, 2 * args.intermediate_size, bias=args.mlp_bias,
                          **factory)
        self.w2 = Linear(args.intermediate_size, args.hidden_size, bias=args.mlp_bias, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)

    def partial(self, x: torch.Tensor, start: int, end: int, with_bias: bool) -> torch.Tensor:
        """The share of `forward(x)` computed by intermediate units start..end-1: summing the
        shares of slices that cover 0..intermediate_size once (and adding w2's bias once,
        `with_bias`) gives `forward(x)` up to summation order."""
        inter = self.w2.in_features
        weight, bias = self.w13.weight, self.w13.bias
        gate = F.linear(x, weight[start:end], None if bias is None else bias[start:end])
        up = F.linear(x, weight[inter + start:inter + end],
                      None if bias is None else bias[inter + start:inter + end])
        out_bias = self.w2.bias if with_bias else None
        return F.linear(F.silu(gate) * up, self.w2.weight[:, start:end], out_bias)


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer; `window` is its sliding attention window in tokens (None: full)."""

    def __init__(self, args: ModelArgs, window: int | None, **factory) -> None:
        super().__init__()
        self.window = window
        self.attention_norm = RMSNorm(args.hidden_size, args.rms_norm_eps, **factory)
        self.attention = Attention(args, **factory)
        self.ffn_norm = RMSNorm(args.hidden_size, args.rms_norm_eps, **factory)
        self.feed_forward = FeedForward(args, **factory)

    def attention_block(
        self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
        past_keys: torch.Tensor | None, past_values: torch.Tensor | None,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h + attention(norm(h)) over the past KV and the new tokens; returns the new hidden
        state and the new tokens' keys and values (batch, kv_heads, tokens, head_dim)."""
        q, k, v = self.attention.project(self.attention_norm(h), cos, sin)
        keys = k if past_keys is None else torch.cat([past_keys, k], dim=2)
        values = v if past_values is None else torch.cat([past_values, v], dim=2)
        causal = past_keys is None and h.shape[1] > 1
        return h + self.attention.attend(q, keys, values, mask, causal), k, v

    def ffn_block(self, h: torch.Tensor) -> torch.Tensor:
        """h + mlp(norm(h))."""
        return h + self.feed_forward(self.ffn_norm(h))


def attention_mask(
    query_pos: torch.Tensor, key_pos: torch.Tensor, key_valid: torch.Tensor, window: int | None
) -> torch.Tensor:
    """Which keys each query may attend to: (batch, 1, queries, keys), True = attend. Causal by
    absolute position, inside the sliding window, and not padding. query_pos (batch, queries),
    key_pos and key_valid (batch, keys)."""
    allowed = key_valid[:, None, :] & (key_pos[:, None, :] <= query_pos[:, :, None])
    if window is not None:
        allowed &= key_pos[:, None, :] > query_pos[:, :, None] - window
    return allowed[:, None]


@dataclass
class ForwardOutput:
    """A whole-sequence pass: logits (batch, tokens, vocab) and the captured hidden states
    (state i: entering decoder layer i; state num_layers: entering the final norm)."""

    logits: torch.Tensor
    states: dict[int, torch.Tensor] = field(default_factory=dict)


class Transformer(nn.Module):
    """The whole decoder: embedding, layers, final norm, output head (tied to the embedding when
    the checkpoint says so) and the rotary tables. Built on `device` in `dtype` with its weights
    uninitialised: load a checkpoint (`weights.load_weights`) or call `init_weights`."""

    def __init__(
        self, args: ModelArgs, device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.args = args
        self.embed = Embedding(args.vocab_size, args.hidden_size, **factory)
        self.layers = nn.ModuleList(DecoderLayer(args, w, **factory) for w in args.sliding_windows)
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps, **factory)
        self.output = Linear(args.hidden_size, args.vocab_size, bias=False, **factory)
        if args.tie_word_embeddings:
            self.output.weight = self.embed.weight
        self.rotary = RotaryEmbedding(args.rope, args.head_dim, device)

    @torch.no_grad()
    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None) -> None:
        """Random weights (normal, `std`), zero biases, unit norm scales: a model with the
        architecture's costs for timing and tests, not a trained one."""
        for module in self.modules():
            if isinstance(module, Linear | Embedding):
                module.weight.normal_(0.0, std, generator=generator)
            if isinstance(module, Linear) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, RMSNorm):
                module.weight.fill_(1.0)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and output projection: hidden (..., hidden) -> logits (..., vocab)."""
        return self.output(self.norm(h))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask_2d: torch.Tensor | None = None,
        plan: LayerPlan | None = None,
        capture: Collection[int] = (),
    ) -> ForwardOutput:
        """Whole-sequence logits of `input_ids` (batch, tokens) with no cache. Positions are
        0..tokens-1; `attention_mask_2d` (batch, tokens), 1 for real tokens and 0 for
        padding, hides padded keys. `plan` (None: every layer) may replace spans by adaptors;
        `capture` names the hidden states to keep (see ForwardOutput)."""
        plan = as_layer_plan(plan, self.args.num_layers)
        batch, tokens = input_ids.shape
        positions = torch.arange(tokens, device=input_ids.device).expand(batch, tokens)
        valid = (
            torch.ones_like(positions, dtype=torch.bool)
            if attention_mask_2d is None else attention_mask_2d.bool()
        )
        h = self.embed(input_ids)
        cos, sin = self.rotary(positions, h.dtype)
        masks: dict[int | None, torch.Tensor | None] = {}
        states: dict[int, torch.Tensor] = {}
        for step in plan.steps:
            first = step.first_layer if isinstance(step, AdaptorStep) else step
            if first in capture:
                states[first] = h
            if isinstance(step, AdaptorStep):
                h = step.module(h)
                continue
            layer = self.layers[step]
            window = layer.window if layer.window is not None and tokens > layer.window else None
            if window not in masks:
                needs_mask = attention_mask_2d is not None or window is not None
                masks[window] = (
                    attention_mask(positions, positions, valid, window) if needs_mask else None
                )
            h, _, _ = layer.attention_block(h, cos, sin, None, None, masks[window])
            h = layer.ffn_block(h)
        if self.args.num_layers in capture:
            states[self.args.num_layers] = h
        return ForwardOutput(self.head(h), states)
