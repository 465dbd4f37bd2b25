"""Measured step times (from `banaserve profile`) as a cost model: interpolation over a grid.

The grid's axes are prefill tokens in the step (one fresh prompt chunk), decode batch size and
decode context length. A step's time is interpolated multilinearly between grid points and
extrapolated linearly past the last ones. A batch's decode context is its mean: the engine runs
decode attention in groups of similar length (padding <= ~25%), so its cost follows the summed
context, which the profile's uniform batches of B x C reproduce at C = mean.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from typing import Any

from banaserve.sim.cost_model import BatchShape
from banaserve.sim.model_configs import SimModel, sim_model_from_hf

SCHEMA = "banaserve-profile/1"
SERVING_KEYS = ("step_overhead_s", "row_overhead_s", "request_overhead_s", "neighbor_slowdown")
CHUNK_KEYS = ("pair_s", "entry_s", "ctx_s")


@dataclass(slots=True)
class ProfileTable:
    """step_time_s[i][j][k] = seconds of a step with prefill_tokens[i], decode_batch[j], context[k]."""

    prefill_tokens: list[int]
    decode_batch: list[int]
    context: list[int]
    step_time_s: list[list[list[float]]]
    model: dict[str, Any] = field(default_factory=dict)  # the profiled model (model_fields)
    engine: dict[str, Any] = field(default_factory=dict)  # engine settings it ran with
    meta: dict[str, Any] = field(default_factory=dict)  # device, threads, date, ...
    # what a live `banaserve serve` adds (sim/serving_calibration.py): step_overhead_s on every
    # step (instance loop, messaging), row_overhead_s per output token of a step (its message,
    # detokenizing, the SSE chunk), request_overhead_s once per request (HTTP, tokenizer,
    # router) and neighbor_slowdown, the fraction a step stretches while another instance on the
    # host is mid-step (disagg); empty when not measured
    serving: dict[str, float] = field(default_factory=dict)
    # prefill attention beyond the grid's single fresh chunk (profiler.fit_chunk_cost): pair_s per
    # causal pair of a fresh chunk, entry_s per query x context entry and ctx_s per gathered
    # context token of a chunk after earlier context; empty: every step looked up as one fresh chunk
    chunk_cost: dict[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        axes = (("prefill_tokens", self.prefill_tokens), ("decode_batch", self.decode_batch),
                ("context", self.context))
        for name, axis in axes:
            if len(axis) < 2 or any(b <= a for a, b in zip(axis[:-1], axis[1:], strict=True)) or axis[0] < 0:
                raise ValueError(f"profile axis {name} must hold >= 2 increasing values >= 0")
        if self.prefill_tokens[0] != 0 or self.decode_batch[0] != 0:
            raise ValueError("profile axes prefill_tokens and decode_batch must start at 0")
        t = self.step_time_s
        shape_ok = len(t) == len(self.prefill_tokens) and all(
            len(row) == len(self.decode_batch) and all(len(c) == len(self.context) for c in row) for row in t)
        if not shape_ok:
            raise ValueError("profile step_time_s does not match its axes")
        if any(not (v >= 0) for row in t for col in row for v in col):
            raise ValueError("profile step times must be numbers >= 0")
        if set(self.serving) - set(SERVING_KEYS) or any(not (v >= 0) for v in self.serving.values()):
            raise ValueError(f"profile serving overheads must be {', '.join(SERVING_KEYS)} >= 0")
        if self.chunk_cost and (set(self.chunk_cost) != set(CHUNK_KEYS)
                                or any(not (v >= 0) for v in self.chunk_cost.values())):
            raise ValueError(f"profile chunk_cost must hold {', '.join(CHUNK_KEYS)} >= 0")

    def sim_model(self) -> SimModel:
        return model_from_fields(self.model)

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "meta": self.meta, "model": self.model, "engine": self.engine,
                "axes": {"prefill_tokens": self.prefill_tokens, "decode_batch": self.decode_batch,
                         "context": self.context},
                "step_time_s": self.step_time_s, **({"serving": self.serving} if self.serving else {}),
                **({"chunk_cost": self.chunk_cost} if self.chunk_cost else {})}


# A profile's "model" object: flat shape fields (the schema's own names) -> config.json keys. The
# names are those of the simulator's old ModelSpec, kept so that profiles written before and after
# ModelConfig took over read the same, by either version.
_FIELD_TO_HF = {"num_layers": "num_hidden_layers", "hidden_size": "hidden_size",
                "num_heads": "num_attention_heads", "num_kv_heads": "num_key_value_heads",
                "intermediate_size": "intermediate_size", "vocab_size": "vocab_size", "head_dim": "head_dim",
                "tie_word_embeddings": "tie_word_embeddings", "attention_bias": "attention_bias",
                "max_model_len": "max_position_embeddings"}
_FIELD_DEFAULTS = {"head_dim": 0, "tie_word_embeddings": False, "attention_bias": False, "dtype_bytes": 2,
                   "max_model_len": 4096}


def model_fields(model: SimModel) -> dict[str, Any]:
    """The "model" object a profile stores for `model`."""
    c = model.config
    return {"name": model.name, "num_layers": c.num_layers, "hidden_size": c.hidden_size,
            "num_heads": c.num_heads, "num_kv_heads": c.num_kv_heads, "intermediate_size": c.intermediate_size,
            "vocab_size": c.vocab_size, "head_dim": c.head_dim, "tie_word_embeddings": c.tie_word_embeddings,
            "attention_bias": c.attention_bias, "dtype_bytes": model.dtype_bytes,
            "max_model_len": c.max_position_embeddings}


def model_from_fields(fields: dict[str, Any]) -> SimModel:
    """The SimModel of a profile's "model" object (parsed by ModelConfig.from_dict, as config.json is)."""
    unknown = set(fields) - set(_FIELD_TO_HF) - {"name", "dtype_bytes"}
    if unknown:
        raise ValueError(f"unknown model fields {', '.join(sorted(unknown))}")
    if "name" not in fields:
        raise ValueError("model lacks 'name'")
    fields = {**_FIELD_DEFAULTS, **fields}
    cfg: dict[str, Any] = {hf: fields[f] for f, hf in _FIELD_TO_HF.items() if f in fields}
    # the fields do not name the architecture; the shape is all the cost model uses, and these two
    # archs differ in it only by the attention bias the fields do record
    cfg["model_type"] = "qwen2" if fields["attention_bias"] else "llama"
    name = str(fields["name"])
    return SimModel(name, sim_model_from_hf(cfg, name).config, int(fields["dtype_bytes"]))


def is_profile(doc: object) -> bool:
    return isinstance(doc, dict) and doc.get("schema") == SCHEMA


def profile_from_json(doc: dict, where: str = "profile") -> ProfileTable:
    try:
        axes = doc["axes"]
        table = ProfileTable(
            prefill_tokens=[int(x) for x in axes["prefill_tokens"]],
            decode_batch=[int(x) for x in axes["decode_batch"]],
            context=[int(x) for x in axes["context"]],
            step_time_s=[[[float(v) for v in col] for col in row] for row in doc["step_time_s"]],
            model=dict(doc["model"]), engine=dict(doc.get("engine") or {}), meta=dict(doc.get("meta") or {}),
            serving={str(k): float(v) for k, v in (doc.get("serving") or {}).items()},
            chunk_cost={str(k): float(v) for k, v in (doc.get("chunk_cost") or {}).items()},
        )
        table.validate()
        table.sim_model()
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: bad profile: {e}") from None
    return table


def load_profile(path: str) -> ProfileTable:
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read profile {path}: {e}") from None
    if not is_profile(doc):
        raise ValueError(f"{path} is not a profile from `banaserve profile` (schema {SCHEMA})")
    return profile_from_json(doc, path)


def _segment(axis: list[int], x: float) -> tuple[int, float]:
    """(i, w): x = (1 - w) * axis[i] + w * axis[i + 1]; w < 0 or > 1 past the ends (extrapolation)."""
    i = bisect.bisect_right(axis, x) - 1
    i = min(max(i, 0), len(axis) - 2)
    return i, (x - axis[i]) / (axis[i + 1] - axis[i])


class ProfileCostModel:
    """Step time interpolated from a ProfileTable."""

    def __init__(self, table: ProfileTable):
        table.validate()
        self.table = table
        self.step_overhead_s = table.serving.get("step_overhead_s", 0.0)
        self.row_overhead_s = table.serving.get("row_overhead_s", 0.0)
        chunk = table.chunk_cost
        self.chunked = bool(chunk)
        self.pair_s, self.entry_s, self.ctx_s = (chunk.get(k, 0.0) for k in CHUNK_KEYS)
        self.request_overhead_s = table.serving.get("request_overhead_s", 0.0)
        self.neighbor_slowdown = table.serving.get("neighbor_slowdown", 0.0)

    def lookup(self, prefill_tokens: float, decode_batch: float, context: float) -> float:
        t = self.table
        i, wi = _segment(t.prefill_tokens, prefill_tokens)
        j, wj = _segment(t.decode_batch, decode_batch)
        k, wk = _segment(t.context, context)
        v = t.step_time_s
        total = 0.0
        for di, fi in ((0, 1.0 - wi), (1, wi)):
            for dj, fj in ((0, 1.0 - wj), (1, wj)):
                row = v[i + di][j + dj]
                total += fi * fj * ((1.0 - wk) * row[k] + wk * row[k + 1])
        return max(total, 0.0)

    def step_time(self, shape: BatchShape) -> float:
        if shape.num_tokens == 0:
            return 0.0
        context = shape.decode_ctx / shape.decode_seqs if shape.decode_seqs else self.table.context[0]
        overhead = self.step_overhead_s + self.row_overhead_s * shape.sampled
        t = self.lookup(shape.prefill_tokens, shape.decode_seqs, context)
        p = shape.prefill_tokens
        if p and self.chunked:
            # the grid's P is one fresh chunk: swap its causal attention for the step's real chunks
            t += (self.pair_s * (shape.fresh_pairs - p * (p + 1) // 2)
                  + self.entry_s * shape.chunk_entries + self.ctx_s * shape.chunk_ctx)
        return max(t, 0.0) + overhead
