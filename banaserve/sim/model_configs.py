"""The model a simulation serves: presets for common models, or a checkpoint's config.json.

Shapes are the engine's own `ModelConfig` (banaserve/models/config.py), parsed by the same code
from the same config.json keys, so the simulator and the engine cannot disagree on a model.
This module adds only what a shape lacks: the name reported in results and the bytes per value
the model is served in. Parameter counts live on ModelConfig; no weights are read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from banaserve.models.config import ModelConfig


@dataclass(slots=True)
class SimModel:
    """A model's shape and how it is served (the dtype sets weight and KV bytes)."""

    name: str
    config: ModelConfig
    dtype_bytes: int = 2  # bf16 serving

    def __post_init__(self) -> None:
        if self.dtype_bytes <= 0:
            raise ValueError(f"model {self.name!r}: dtype_bytes must be positive, got {self.dtype_bytes}")

    @property
    def max_model_len(self) -> int:
        """Default context limit of a simulated instance (`--max-model-len` overrides it)."""
        return self.config.max_position_embeddings

    def weight_bytes(self) -> int:
        return self.config.num_params() * self.dtype_bytes

    def kv_bytes_per_token(self) -> int:
        """K and V of one token over all layers (the whole model, before any TP split)."""
        return self.config.kv_bytes_per_token(self.dtype_bytes)


def _shape(model_type: str, layers: int, hidden: int, heads: int, kv_heads: int, ffn: int, vocab: int,
           context: int) -> dict:
    """The config.json keys the shape depends on."""
    return {"model_type": model_type, "num_hidden_layers": layers, "hidden_size": hidden,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads, "intermediate_size": ffn,
            "vocab_size": vocab, "max_position_embeddings": context, "torch_dtype": "bfloat16"}


# Shapes from the models' published config.json files, as config.json dicts so that presets go
# through the same parser as a real checkpoint.
PRESETS: dict[str, dict] = {
    "llama2-7b": _shape("llama", 32, 4096, 32, 32, 11008, 32000, 4096),
    "llama2-13b": _shape("llama", 40, 5120, 40, 40, 13824, 32000, 4096),
    "llama3-8b": _shape("llama", 32, 4096, 32, 8, 14336, 128256, 8192),
    "llama3-70b": _shape("llama", 80, 8192, 64, 8, 28672, 128256, 8192),
    "qwen2.5-14b": _shape("qwen2", 48, 5120, 40, 8, 13824, 152064, 32768),
    "qwen2.5-32b": _shape("qwen2", 64, 5120, 40, 8, 27648, 152064, 32768),
    "qwen2.5-72b": _shape("qwen2", 80, 8192, 64, 8, 29568, 152064, 32768),
}

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8": 1, "float8_e4m3fn": 1}


def sim_model_from_hf(cfg: dict, name: str) -> SimModel:
    """A SimModel from a config.json dict, served in the checkpoint's dtype (bf16 if unstated)."""
    try:
        config = ModelConfig.from_dict(cfg)
    except ValueError as e:
        raise ValueError(f"model config {name!r}: {e}") from None
    dtype = cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"  # transformers >= 5 says "dtype"
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"model config {name!r}: unknown dtype {dtype!r}")
    return SimModel(name, config, DTYPE_BYTES[dtype])


def load_sim_model(name_or_path: str) -> SimModel:
    """A preset name, a checkpoint directory (its config.json) or a config.json file."""
    if name_or_path in PRESETS:
        return sim_model_from_hf(PRESETS[name_or_path], name_or_path)
    path = name_or_path
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"unknown model config {name_or_path!r} (presets: {', '.join(PRESETS)}, "
                         "a checkpoint directory or a config.json file)")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read model config {path}: {e}") from None
    # the checkpoint directory's name, as the engine and `banaserve serve` name the model
    return sim_model_from_hf(cfg, os.path.basename(os.path.dirname(os.path.abspath(path))) or path)
