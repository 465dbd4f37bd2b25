"""Load HF safetensors checkpoints (single file or sharded with an index) into a DecoderModel."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from banaserve.models.config import ModelConfig
from banaserve.models.decoder import DecoderModel

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}

# HF projections that banaserve fuses into one matmul: fused name -> parts, in concat order
FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose from {', '.join(DTYPES)}")
    return DTYPES[name]


def weight_files(path: str) -> dict[str, str]:
    """HF tensor name -> file holding it."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            return {k: os.path.join(path, v) for k, v in json.load(f)["weight_map"].items()}
    single = os.path.join(path, "model.safetensors")
    if not os.path.isfile(single):
        raise ValueError(f"no safetensors weights in {path!r}")
    with safe_open(single, "pt") as f:
        return dict.fromkeys(f.keys(), single)


@contextmanager
def skip_weight_init():
    """Build modules without random init: every weight is overwritten from the checkpoint anyway.

    (The meta device would avoid even the allocation, but costs seconds of one-time imports.)
    """
    saved = nn.Linear.reset_parameters, nn.Embedding.reset_parameters
    nn.Linear.reset_parameters = nn.Embedding.reset_parameters = lambda self: None
    try:
        yield
    finally:
        nn.Linear.reset_parameters, nn.Embedding.reset_parameters = saved


def load_model(path: str, dtype: torch.dtype, device: torch.device,
               layer_range: tuple[int, int] | None = None) -> tuple[DecoderModel, ModelConfig]:
    """Build the model (or the slice of it holding layers [a, b), see DecoderModel) without
    initialising it, then fill every parameter from the checkpoint. Only the held parts' tensors
    are read, and only the shards holding them are opened."""
    cfg = ModelConfig.from_pretrained(path)
    with skip_weight_init():
        model = DecoderModel(cfg, layer_range)
    files = weight_files(path)
    handles: dict[str, Any] = {}  # shard -> open file, opened on first read

    def read(hf_name: str) -> torch.Tensor:
        if hf_name not in files:
            raise ValueError(f"checkpoint {path!r} lacks tensor {hf_name}")
        file = files[hf_name]
        if file not in handles:
            handles[file] = safe_open(file, "pt", device="cpu")
        return handles[file].get_tensor(hf_name)

    tied = cfg.tie_word_embeddings
    for name, param in list(model.named_parameters()):
        if tied and name == "lm_head.weight" and model.embed_tokens is not None:
            continue  # shares embed_tokens' tensor, re-tied below
        tensor = _read_param(name, read, tied)
        if tensor.shape != param.shape:
            raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)} != expected {tuple(param.shape)}")
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        setattr(module, attr, nn.Parameter(tensor.to(device=device, dtype=dtype), requires_grad=False))
    if tied and model.lm_head is not None and model.embed_tokens is not None:
        model.lm_head.weight = model.embed_tokens.weight
    model.rope.build(device)
    return model.train(False), cfg  # inference mode for every module


def _read_param(name: str, read: Callable[[str], torch.Tensor], tied: bool) -> torch.Tensor:
    if name == "lm_head.weight" and tied:
        # a last stage without the embedding: tied checkpoints store the matrix under its name only
        return read("model.embed_tokens.weight")
    hf = name if name.startswith("lm_head") else "model." + name
    for fused, parts in FUSED.items():
        if f".{fused}." in hf:
            return torch.cat([read(hf.replace(fused, part)) for part in parts], dim=0)
    return read(hf)


def model_fingerprint(path: str, dtype: torch.dtype, block_size: int) -> bytes:
    """Identity of (architecture, weights, dtype, KV layout): the root of every prefix-cache key.

    Hashing every weight byte would take seconds for large models, so the weights are
    identified by each file's header and size plus a sample of its bytes.
    """
    h = hashlib.blake2b(digest_size=16)
    with open(os.path.join(path, "config.json"), "rb") as f:
        h.update(f.read())
    for file in sorted(set(weight_files(path).values())):
        size = os.path.getsize(file)
        with open(file, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            h.update(f.read(min(header_len, 1 << 24)))
            for offset in (0.25, 0.5, 0.75, 1.0):
                f.seek(max(0, int(size * offset) - 65536))
                h.update(f.read(65536))
        h.update(str(size).encode())
    h.update(f"{dtype}|{block_size}".encode())
    return h.digest()
