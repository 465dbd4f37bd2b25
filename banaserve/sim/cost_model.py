"""Step time of one engine step from the shape of its batch: a roofline model, layer by layer.

Every layer is the same, so one layer's time is computed and multiplied by the layer count.
Each operator group takes max(FLOPs / achieved FLOP/s, bytes / achieved bandwidth):
  - linear layers (q/k/v/o, gate/up/down): weights read once per step, 2 FLOPs per weight per token;
  - attention of prefill chunks: causal pairs, K/V of the chunk's whole context read;
  - attention of decodes: one query per sequence over its context (reads all its K/V);
  - K/V writes of the step's new tokens;
  - TP: two all-reduces of the hidden states per layer over the interconnect.
Then the LM head for the rows that sample, plus a fixed per-step overhead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from banaserve.engine.scheduler import ScheduledBatch
from banaserve.sim.hardware import HardwareSpec
from banaserve.sim.model_configs import SimModel


@dataclass(slots=True)
class BatchShape:
    """Aggregates of one step's batch: all a cost model needs (no per-token data)."""

    prefill_tokens: int = 0  # tokens of multi-token chunks
    prefill_seqs: int = 0
    prefill_pairs: int = 0  # causal (query, key) pairs of the chunks, summed
    prefill_ctx: int = 0  # context length at each chunk's end, summed (K/V read)
    prefill_max_tokens: int = 0  # longest chunk
    decode_seqs: int = 0  # single-token rows
    decode_ctx: int = 0  # their context lengths, summed
    decode_max_ctx: int = 0
    sampled: int = 0  # rows whose logits are computed (the last token of a sequence)
    # prefill attention split by how the engine runs it: a chunk starting at token 0 attends
    # causally within itself; a chunk after earlier context (a later chunk, a prefix hit) gathers
    # that context from its pages and attends under an explicit mask
    fresh_pairs: int = 0  # causal (query, key) pairs of chunks starting at 0
    chunk_entries: int = 0  # query x context-length entries of chunks after earlier context
    chunk_ctx: int = 0  # context tokens gathered for those chunks

    @property
    def num_tokens(self) -> int:
        return self.prefill_tokens + self.decode_seqs


def batch_shape(batch: ScheduledBatch) -> BatchShape:
    """Aggregate a scheduled batch before it is committed (num_computed_tokens is the chunk start)."""
    # locals and len() instead of properties: this runs once per simulated step
    p_tokens = p_seqs = p_pairs = p_ctx = p_max = d_seqs = d_ctx = d_max = sampled = 0
    fresh = entries = gathered = 0
    for req, n in zip(batch.requests, batch.num_tokens, strict=True):
        start = req.num_computed_tokens
        end = start + n
        if n > 1:
            p_tokens += n
            p_seqs += 1
            p_pairs += n * start + n * (n + 1) // 2  # query i of the chunk sees start + i + 1 keys
            p_ctx += end
            if n > p_max:
                p_max = n
            if start:
                entries += n * end
                gathered += end
            else:
                fresh += n * (n + 1) // 2
        else:
            d_seqs += 1
            d_ctx += end
            if end > d_max:
                d_max = end
        if end == len(req.all_token_ids):
            sampled += 1
    return BatchShape(p_tokens, p_seqs, p_pairs, p_ctx, p_max, d_seqs, d_ctx, d_max, sampled,
                      fresh, entries, gathered)


class CostModel(Protocol):
    """Seconds one step of a batch of this shape takes on one instance."""

    # latency a request spends in the serving front end (HTTP, tokenizer, router) before it
    # reaches an instance; the simulator delays its routing by this much
    request_overhead_s: float
    # fraction by which a step stretches while another instance of the cluster is mid-step: the
    # instances share one host's cores, caches and memory bandwidth (CPU profiles; 0 elsewhere)
    neighbor_slowdown: float

    def step_time(self, shape: BatchShape) -> float: ...


class RooflineCostModel:
    """Roofline step time of `model` on a TP group of `tp` accelerators `hw`."""

    request_overhead_s = 0.0  # a datacenter front end runs on its own cores: no modelled delay
    neighbor_slowdown = 0.0  # one GPU (or TP group) per instance

    def __init__(self, model: SimModel, hw: HardwareSpec, tp: int = 1):
        c = model.config
        if tp < 1:
            raise ValueError(f"--tp must be >= 1, got {tp}")
        if c.num_heads % tp:
            raise ValueError(f"--tp {tp} does not divide the {c.num_heads} attention heads "
                             f"of {model.name}")
        self.model, self.hw, self.tp = model, hw, tp
        b = model.dtype_bytes
        self.flops_rate = hw.peak_flops * hw.compute_efficiency
        self.byte_rate = hw.hbm_bandwidth * hw.memory_efficiency
        # KV heads are split across the TP group; with fewer KV heads than GPUs they are replicated
        self.kv_heads_per_gpu = -(-c.num_kv_heads // tp)
        self.q_heads_per_gpu = c.num_heads // tp
        self.kv_token_layer_bytes = 2 * self.kv_heads_per_gpu * c.head_dim * b  # K+V, one layer
        linear = (c.attn_params() + c.mlp_params()) / tp
        self.linear_weight_bytes = linear * b
        self.linear_flops_per_token = 2 * linear
        h, f = c.hidden_size, c.intermediate_size
        # activations in and out of the matmuls, per token
        self.act_bytes_per_token = b * (4 * h + (2 * c.q_dim + 2 * c.kv_dim + 4 * f) / tp)
        self.attn_flops_per_pair = 4 * self.q_heads_per_gpu * c.head_dim  # QK^T and PV
        self.q_bytes_per_token = 2 * self.q_heads_per_gpu * c.head_dim * b  # q in, out out
        self.lm_head_weight_bytes = c.vocab_size * h * b / tp
        self.lm_head_flops_per_row = 2 * c.vocab_size * h / tp
        self.hidden_bytes_per_token = h * b
        self.L = c.num_layers
        self._base: dict[tuple[int, int], float] = {}  # (tokens, sampled) -> base_time

    def _roof(self, flops: float, nbytes: float) -> float:
        return max(flops / self.flops_rate, nbytes / self.byte_rate)

    def allreduce_time(self, num_tokens: int) -> float:
        """One ring all-reduce of the hidden states of `num_tokens` tokens over the TP group."""
        if self.tp == 1:
            return 0.0
        hw = self.hw
        moved = 2 * (self.tp - 1) / self.tp * num_tokens * self.hidden_bytes_per_token
        return hw.allreduce_latency_s + moved / (hw.interconnect_bandwidth * hw.interconnect_efficiency)

    def dense_layer_time(self, num_tokens: int) -> float:
        """The parts of one layer that depend only on the token count: matmuls, KV writes, TP."""
        t = num_tokens
        linear = self._roof(t * self.linear_flops_per_token,
                            self.linear_weight_bytes + t * self.act_bytes_per_token)
        kv_write = t * self.kv_token_layer_bytes / self.byte_rate
        return linear + kv_write + 2 * self.allreduce_time(t)

    def attention_layer_time(self, s: BatchShape) -> float:
        """Attention of one layer: prefill chunks (causal pairs) and decodes (one query each)."""
        t = 0.0
        if s.prefill_seqs:
            kv_read = s.prefill_ctx * self.kv_token_layer_bytes
            t += self._roof(s.prefill_pairs * self.attn_flops_per_pair,
                            kv_read + s.prefill_tokens * self.q_bytes_per_token)
        if s.decode_seqs:
            kv_read = s.decode_ctx * self.kv_token_layer_bytes
            t += self._roof(s.decode_ctx * self.attn_flops_per_pair,
                            kv_read + s.decode_seqs * self.q_bytes_per_token)
        return t

    def base_time(self, num_tokens: int, sampled: int) -> float:
        """Everything but attention: all layers' dense parts, the LM head and the step overhead."""
        lm_head = 0.0
        if sampled:
            lm_head = self._roof(sampled * self.lm_head_flops_per_row, self.lm_head_weight_bytes)
        return self.L * self.dense_layer_time(num_tokens) + lm_head + self.hw.step_overhead_s

    def step_time(self, s: BatchShape) -> float:
        t = s.prefill_tokens + s.decode_seqs
        if t == 0:
            return 0.0
        key = (t, s.sampled)
        base = self._base.get(key)
        if base is None:  # a step's shape repeats a lot: memoize the part that needs no context
            base = self._base[key] = self.base_time(t, s.sampled)
        return base + self.L * self.attention_layer_time(s)

    def kv_capacity_tokens(self) -> int:
        """Tokens of KV one instance holds: memory left on each GPU after its share of the weights."""
        hw, model = self.hw, self.model
        free = hw.memory_bytes * hw.memory_utilization - model.weight_bytes() / self.tp
        if free <= 0:
            need = model.weight_bytes() / 1e9
            raise ValueError(f"{model.name} weights ({need:.1f} GB) do not fit in {self.tp} x {hw.name} "
                             f"({hw.memory_bytes * hw.memory_utilization / 1e9:.1f} GB usable each); "
                             "raise --tp")
        return int(free // (self.L * self.kv_token_layer_bytes))

    def kv_transfer_bytes(self, num_tokens: int) -> int:
        """Bytes of KV that `num_tokens` tokens of one request occupy (whole model, all layers)."""
        return num_tokens * self.model.kv_bytes_per_token()
