"""One decoder-only transformer covering the Llama, Mistral, Qwen2 and Qwen3 families.

The forward runs any contiguous layer range [start, end) with hidden states in and out, so a
full forward is embed -> layers[0:L] -> norm -> lm_head and a pipeline stage is any slice. A
model may also hold only a slice [a, b) of the layers (weights for those alone): the seam for
pipeline stages and layer migration.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from banaserve.kv.paged_attention import AttentionMetadata, paged_attention
from banaserve.models.config import ModelConfig
from banaserve.models.fused_ops import add_rms_norm, linear, rms_norm, silu_mul
from banaserve.models.rope import RotaryEmbedding


class Linear(nn.Linear):
    """nn.Linear whose forward takes the native small-M kernel at decode batch sizes on CPU fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(residual + x), residual + x)."""
        return add_rms_norm(x, residual, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, rope: RotaryEmbedding):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_size = cfg.num_heads * cfg.head_dim
        self.kv_size = cfg.num_kv_heads * cfg.head_dim
        # q, k and v share one matmul; the loader concatenates HF's separate projections
        self.qkv_proj = Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias)
        self.o_proj = Linear(self.q_size, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.rope = rope

    def forward(self, x: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                kv_cache: torch.Tensor, only_sampled: bool = False) -> torch.Tensor:
        """Attention block output [T, hidden], or with `only_sampled` [S, hidden] for meta.sampled's rows
        (every row's K/V is written either way)."""
        qkv = self.qkv_proj(x)
        v = qkv[:, self.q_size + self.kv_size:].view(-1, self.num_kv_heads, self.head_dim)
        qk = None if self.q_norm is not None else self.rope.rotate_qkv(positions, qkv, self.num_heads,
                                                                       self.num_kv_heads)
        q, k = qk if qk is not None else self._rotated_qk(qkv, positions)
        out = paged_attention(q, k, v, kv_cache, meta, only_sampled)
        return self.o_proj(out.reshape(-1, self.q_size))

    def _rotated_qk(self, qkv: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q [T, Hq, D] and k [T, Hkv, D] through q/k norm (Qwen3) and rotary embedding, in PyTorch."""
        q = qkv[:, :self.q_size].view(-1, self.num_heads, self.head_dim)
        k = qkv[:, self.q_size:self.q_size + self.kv_size].view(-1, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return self.rope(positions, q, k)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.intermediate = cfg.intermediate_size
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, rope: RotaryEmbedding):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx, rope)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, positions, meta, kv_cache, only_sampled: bool = False):
        a = self.self_attn(self.input_layernorm(x), positions, meta, kv_cache, only_sampled)
        if only_sampled:
            x = x[meta.sampled.rows]
        h, x = self.post_attention_layernorm.add_forward(a, x)  # x + a and its norm, in one pass
        return x + self.mlp(h)


class HeldLayers(nn.ModuleDict):
    """The decoder layers an instance holds, keyed by absolute layer index.

    Keys stay the absolute index so state-dict names stay `layers.{i}.…` (what the checkpoint
    calls them) whichever slice is held; `layers[i]` takes the absolute index as an int.
    """

    def __getitem__(self, i: int | str) -> nn.Module:
        return super().__getitem__(str(i))

    def __contains__(self, i: int | str) -> bool:
        return super().__contains__(str(i))


class DecoderModel(nn.Module):
    """Embedding, decoder layers, final norm and LM head of a causal LM, or a slice of it.

    `layer_range=(a, b)` holds layers [a, b) only: the embedding only where a == 0 (the first stage
    turns ids into hidden states), the final norm and LM head only where b == num_layers (the last
    stage samples). With tied embeddings the last stage's LM head holds the embedding matrix itself.
    """

    def __init__(self, cfg: ModelConfig, layer_range: tuple[int, int] | None = None):
        super().__init__()
        self.cfg = cfg
        start, end = layer_range if layer_range is not None else (0, cfg.num_layers)
        if not 0 <= start < end <= cfg.num_layers:
            raise ValueError(f"layer range [{start}, {end}) is not a non-empty slice of {cfg.num_layers} layers")
        self.layer_range = (start, end)
        rope = RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling)
        self.rope = rope
        self.embed_tokens: nn.Embedding | None = None
        if self.is_first:
            self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = HeldLayers({str(i): DecoderLayer(cfg, i, rope) for i in range(start, end)})
        self.norm: RMSNorm | None = None
        self.lm_head: Linear | None = None
        if self.is_last:
            self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
            self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
            if cfg.tie_word_embeddings and self.embed_tokens is not None:
                self.lm_head.weight = self.embed_tokens.weight

    @property
    def is_first(self) -> bool:
        return self.layer_range[0] == 0

    @property
    def is_last(self) -> bool:
        return self.layer_range[1] == self.cfg.num_layers

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.embed_tokens is None:
            raise RuntimeError(f"layers {self.layer_range} hold no embedding: only the first stage embeds")
        return self.embed_tokens(input_ids)

    def forward_layers(self, hidden: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                       kv_caches: list[torch.Tensor], start: int | None = None, end: int | None = None,
                       before_layer: Callable[[int], None] | None = None,
                       after_layer: Callable[[int], None] | None = None) -> torch.Tensor:
        """Run layers [start, end) (absolute indices, default: every held layer) over flat hidden
        states [T, hidden]. `kv_caches` holds the held layers' caches, layer i's at i - layer_range[0].
        `before_layer(i)` runs just before layer i (e.g. wait for its loaded KV), `after_layer(i)` just
        after (its KV is ready to save or send).

        Where `meta.sampled` is set and the range ends at the final layer, only the sampled rows of
        its output are ever read: that layer writes every row's K/V, computes the rest for those
        rows alone, and the result is [S, hidden] in `meta.sampled.rows` order. At 2048 prompt
        tokens a step, most rows are not the last of their prompt, so this skips about 1/L of a
        prefill's attention and MLP work. A range short of the final layer returns every row, in order.
        """
        held_start, held_end = self.layer_range
        start = held_start if start is None else start
        end = held_end if end is None else end
        if not held_start <= start <= end <= held_end:
            raise ValueError(f"layers [{start}, {end}) are not within the held layers {self.layer_range}")
        last = self.cfg.num_layers - 1
        for i in range(start, end):
            if before_layer is not None:
                before_layer(i)
            only_sampled = i == last and meta.sampled is not None
            hidden = self.layers[i](hidden, positions, meta, kv_caches[i - held_start], only_sampled)
            if after_layer is not None:
                after_layer(i)
        return hidden

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lm_head is None:
            raise RuntimeError(f"layers {self.layer_range} hold no LM head: only the last stage samples")
        return self.lm_head(self.norm(hidden))
