"""Checkpoints from make-model load in HF transformers and in banaserve, sharded or not."""

import json
import os
import subprocess
import sys

import pytest
import torch

from banaserve import LLM, SamplingParams
from banaserve.models.config import ModelConfig


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_hf_loads_model_and_tokenizer(make_checkpoint, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = make_checkpoint(arch)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    cfg = ModelConfig.from_pretrained(path)
    assert model.config.model_type == arch and tok.vocab_size == cfg.vocab_size
    n = sum(p.numel() for p in model.parameters())
    assert 0.3e6 < n < 3e6  # tiny preset: ~1M parameters
    text = "UTF-8 round trip: ñ 東京 🙂"
    assert tok.decode(tok(text)["input_ids"]) == text


def test_sharded_checkpoint_gives_same_outputs(make_checkpoint):
    single, sharded = make_checkpoint("qwen2"), make_checkpoint("qwen2", shards=3)
    assert os.path.isfile(os.path.join(sharded, "model.safetensors.index.json"))
    p = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    a = LLM(single, device="cpu").generate(prompt_token_ids=[[1, 2, 3, 4]], sampling_params=p)[0]
    b = LLM(sharded, device="cpu").generate(prompt_token_ids=[[1, 2, 3, 4]], sampling_params=p)[0]
    assert a.token_ids == b.token_ids


def test_seeds_differ_and_repeat(make_checkpoint):
    from safetensors.torch import load_file

    w0 = load_file(os.path.join(make_checkpoint("llama", seed=0), "model.safetensors"))
    w1 = load_file(os.path.join(make_checkpoint("llama", seed=1), "model.safetensors"))
    assert not torch.equal(w0["model.embed_tokens.weight"], w1["model.embed_tokens.weight"])


def test_cli_writes_checkpoint(tmp_path):
    out = tmp_path / "m"
    proc = subprocess.run([sys.executable, "-m", "banaserve", "make-model", "--arch", "qwen3", "--preset",
                           "tiny", "--seed", "3", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "generation_config.json"):
        assert (out / f).is_file()
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen3"
    bad = subprocess.run([sys.executable, "-m", "banaserve", "make-model", "--arch", "gpt9", "--out", str(out)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2


def test_transformers_v5_rope_parameters_are_read():
    cfg = ModelConfig.from_dict(dict(model_type="llama", vocab_size=10, hidden_size=8, intermediate_size=16,
                                     num_hidden_layers=1, num_attention_heads=2,
                                     rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                      "original_max_position_embeddings": 64}))
    assert cfg.rope_theta == 5e5 and cfg.rope_scaling["rope_type"] == "llama3"
    with pytest.raises(ValueError, match="unsupported"):
        ModelConfig.from_dict(dict(model_type="gpt2"))
