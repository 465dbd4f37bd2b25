"""Model shapes for the cost model: presets for common models, or read from a config.json.

Only the shapes matter here (no weights): they give weight bytes, KV bytes per token and the
FLOPs of every layer.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass


@dataclass(slots=True)
class ModelSpec:
    """A dense decoder-only transformer (Llama/Qwen family: GQA attention, SwiGLU MLP)."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    head_dim: int = 0  # 0: hidden_size // num_heads
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    dtype_bytes: int = 2  # bf16 serving
    max_model_len: int = 4096

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            self.head_dim = self.hidden_size // self.num_heads
        for field in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "intermediate_size",
                      "vocab_size", "head_dim", "dtype_bytes", "max_model_len"):
            if getattr(self, field) <= 0:
                raise ValueError(f"model {self.name!r}: {field} must be positive")

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def attn_params(self) -> int:
        """q, k, v and o projections of one layer (plus q/k/v biases when the model has them)."""
        h = self.hidden_size
        bias = self.q_dim + 2 * self.kv_dim if self.attention_bias else 0
        return h * (self.q_dim + 2 * self.kv_dim) + self.q_dim * h + bias

    def mlp_params(self) -> int:
        return 3 * self.hidden_size * self.intermediate_size  # gate, up, down

    def layer_params(self) -> int:
        return self.attn_params() + self.mlp_params() + 2 * self.hidden_size  # + two RMSNorms

    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    def num_params(self) -> int:
        return self.num_layers * self.layer_params() + self.embedding_params() + self.hidden_size

    def weight_bytes(self) -> int:
        return self.num_params() * self.dtype_bytes

    def kv_bytes_per_token(self) -> int:
        """K and V of one token over all layers (the whole model, before any TP split)."""
        return 2 * self.num_layers * self.kv_dim * self.dtype_bytes


# Shapes from the models' published config.json files.
PRESETS: dict[str, ModelSpec] = {
    "llama2-7b": ModelSpec("llama2-7b", 32, 4096, 32, 32, 11008, 32000, max_model_len=4096),
    "llama2-13b": ModelSpec("llama2-13b", 40, 5120, 40, 40, 13824, 32000, max_model_len=4096),
    "llama3-8b": ModelSpec("llama3-8b", 32, 4096, 32, 8, 14336, 128256, max_model_len=8192),
    "llama3-70b": ModelSpec("llama3-70b", 80, 8192, 64, 8, 28672, 128256, max_model_len=8192),
    "qwen2.5-14b": ModelSpec("qwen2.5-14b", 48, 5120, 40, 8, 13824, 152064, attention_bias=True,
                             max_model_len=32768),
    "qwen2.5-32b": ModelSpec("qwen2.5-32b", 64, 5120, 40, 8, 27648, 152064, attention_bias=True,
                             max_model_len=32768),
    "qwen2.5-72b": ModelSpec("qwen2.5-72b", 80, 8192, 64, 8, 29568, 152064, attention_bias=True,
                             max_model_len=32768),
}

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8": 1, "float8_e4m3fn": 1}


def from_hf_config(cfg: dict, name: str) -> ModelSpec:
    """A ModelSpec from a Hugging Face config.json dict (missing keys raise ValueError)."""
    try:
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        dtype = cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"unknown dtype {dtype!r}")
        return ModelSpec(
            name=name,
            num_layers=int(cfg["num_hidden_layers"]),
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            intermediate_size=int(cfg["intermediate_size"]),
            vocab_size=int(cfg["vocab_size"]),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2")),
            dtype_bytes=DTYPE_BYTES[dtype],
            max_model_len=int(cfg.get("max_position_embeddings", 4096)),
        )
    except KeyError as e:
        raise ValueError(f"model config {name!r} lacks {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise ValueError(f"model config {name!r}: {e}") from None


def load_model_spec(name_or_path: str) -> ModelSpec:
    """A preset name, a checkpoint directory (its config.json) or a config.json file."""
    if name_or_path in PRESETS:
        return dataclasses.replace(PRESETS[name_or_path])
    path = name_or_path
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"unknown model config {name_or_path!r} (presets: {', '.join(PRESETS)}, "
                         "a checkpoint directory or a config.json file)")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read model config {path}: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"model config {path} is not a JSON object")
    return from_hf_config(cfg, os.path.basename(os.path.dirname(os.path.abspath(path))) or path)
