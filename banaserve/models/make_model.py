"""Write randomly initialised checkpoints in Hugging Face format (config, safetensors, tokenizer).

Weights are scaled so that greedy decoding is well conditioned (logits spread by a few units,
every layer mixing in context), which makes token-identical comparisons meaningful.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile

import torch
from safetensors.torch import save_file

from banaserve.models.tokenizer_builder import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tokenizer

PRESETS: dict[str, dict] = {
    # ~1M params: unit tests
    "tiny": dict(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048),
    # ~20M params: default model, CPU benchmarks
    "small": dict(vocab_size=8192, hidden_size=384, intermediate_size=1024, num_hidden_layers=8,
                  num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=4096),
    # ~120M params: benchmarks
    "base": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                 num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=4096),
}

ARCHS: dict[str, dict] = {
    "llama": dict(architectures=["LlamaForCausalLM"], model_type="llama", rms_norm_eps=1e-5,
                  rope_theta=500000.0, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                  rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                    high_freq_factor=4.0, original_max_position_embeddings=1024)),
    "qwen2": dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", rms_norm_eps=1e-6,
                  rope_theta=1000000.0, tie_word_embeddings=True, use_sliding_window=False,
                  sliding_window=None),
    "qwen3": dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3", rms_norm_eps=1e-6,
                  rope_theta=1000000.0, tie_word_embeddings=True, attention_bias=False,
                  use_sliding_window=False, sliding_window=None),
}


def make_config(arch: str, preset: str) -> dict:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    cfg = {**PRESETS[preset], **ARCHS[arch], "hidden_act": "silu", "torch_dtype": "float32",
           "bos_token_id": None, "eos_token_id": 0, "pad_token_id": 0}
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    # qwen3 decouples head_dim from hidden_size / heads; exercise that path
    cfg["head_dim"] = head_dim * 2 if arch == "qwen3" else head_dim
    return cfg


def random_weights(cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    d, nh, nkv = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]

    def normal(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    def norm_weight(n: int) -> torch.Tensor:
        return 1.0 + 0.1 * (torch.rand(n, generator=g) - 0.5)

    w = {"model.embed_tokens.weight": normal(cfg["vocab_size"], h, std=4.0 / math.sqrt(h)),
         "model.norm.weight": norm_weight(h)}
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = normal(cfg["vocab_size"], h, std=4.0 / math.sqrt(h))
    for i in range(layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm_weight(h)
        w[p + "post_attention_layernorm.weight"] = norm_weight(h)
        for name, rows in (("q_proj", nh * d), ("k_proj", nkv * d), ("v_proj", nkv * d)):
            w[p + f"self_attn.{name}.weight"] = normal(rows, h, std=1.0 / math.sqrt(h))
            if cfg["model_type"] == "qwen2":
                w[p + f"self_attn.{name}.bias"] = normal(rows, std=0.1)
        w[p + "self_attn.o_proj.weight"] = normal(h, nh * d, std=0.5 / math.sqrt(nh * d))
        if cfg["model_type"] == "qwen3":
            w[p + "self_attn.q_norm.weight"] = norm_weight(d)
            w[p + "self_attn.k_norm.weight"] = norm_weight(d)
        w[p + "mlp.gate_proj.weight"] = normal(inter, h, std=1.0 / math.sqrt(h))
        w[p + "mlp.up_proj.weight"] = normal(inter, h, std=1.0 / math.sqrt(h))
        w[p + "mlp.down_proj.weight"] = normal(h, inter, std=0.5 / math.sqrt(inter))
    return w


def save_weights(weights: dict[str, torch.Tensor], out: str, shards: int) -> None:
    if shards <= 1:
        save_file(weights, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
        return
    names = list(weights)
    per = -(-len(names) // shards)
    weight_map, total = {}, 0
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: weights[n] for n in names[s * per:(s + 1) * per]}
        save_file(part, os.path.join(out, file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
        total += sum(t.numel() * t.element_size() for t in part.values())
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def make_model(arch: str, preset: str, seed: int, out: str, shards: int = 1) -> str:
    """Write a complete HF checkpoint directory at `out` (atomically) and return its path."""
    cfg = make_config(arch, preset)
    tokenizer = build_tokenizer(cfg["vocab_size"])
    eos = [tokenizer.token_to_id(t) for t in ("<|endoftext|>", "<|im_end|>")]
    cfg["eos_token_id"], cfg["pad_token_id"] = eos[0], eos[0]
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".make-model-", dir=parent)
    try:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        with open(os.path.join(tmp, "generation_config.json"), "w") as f:
            json.dump({"eos_token_id": eos, "pad_token_id": eos[0], "do_sample": False}, f, indent=2)
        tokenizer.save(os.path.join(tmp, "tokenizer.json"))
        with open(os.path.join(tmp, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": SPECIAL_TOKENS[0],
                       "pad_token": SPECIAL_TOKENS[0], "bos_token": None, "add_bos_token": False,
                       "model_max_length": cfg["max_position_embeddings"], "chat_template": CHAT_TEMPLATE,
                       "clean_up_tokenization_spaces": False}, f, indent=2)
        save_weights(random_weights(cfg, seed), tmp, shards)
        if os.path.isdir(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def banaserve_home() -> str:
    return os.environ.get("BANASERVE_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "banaserve")


def default_model_path() -> str:
    """The small llama checkpoint used when no --model is given; created on first use."""
    path = os.path.join(banaserve_home(), "models", "llama-small-seed0")
    if not os.path.isfile(os.path.join(path, "config.json")):
        make_model("llama", "small", 0, path)
    return path
