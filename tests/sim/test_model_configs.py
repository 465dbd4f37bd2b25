import json

import pytest

from banaserve.sim.model_configs import PRESETS, ModelSpec, from_hf_config, load_model_spec

# Published parameter counts (billions), from the model cards.
PUBLISHED_PARAMS_B = {"llama2-7b": 6.74, "llama2-13b": 13.0, "llama3-8b": 8.03, "llama3-70b": 70.6,
                      "qwen2.5-14b": 14.7, "qwen2.5-32b": 32.8, "qwen2.5-72b": 72.7}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parameter_counts_match_published(name):
    assert load_model_spec(name).num_params() / 1e9 == pytest.approx(PUBLISHED_PARAMS_B[name], rel=0.01)


def test_preset_shapes():
    m = load_model_spec("llama2-13b")
    assert (m.num_layers, m.hidden_size, m.num_heads, m.num_kv_heads, m.intermediate_size, m.vocab_size) == \
        (40, 5120, 40, 40, 13824, 32000)
    m = load_model_spec("llama3-70b")
    assert (m.num_layers, m.hidden_size, m.num_heads, m.num_kv_heads, m.intermediate_size) == \
        (80, 8192, 64, 8, 28672)
    assert load_model_spec("qwen2.5-72b").intermediate_size == 29568


def test_kv_bytes_per_token():
    # llama3-8b: 2 (K, V) * 32 layers * 8 kv heads * 128 dims * 2 bytes
    assert load_model_spec("llama3-8b").kv_bytes_per_token() == 2 * 32 * 8 * 128 * 2


def test_presets_are_copies():
    load_model_spec("llama3-8b").num_layers = 1
    assert PRESETS["llama3-8b"].num_layers == 32


def test_from_hf_config_dir_and_file(tmp_path, tiny_model):
    spec = load_model_spec(tiny_model)
    with open(f"{tiny_model}/config.json") as f:
        cfg = json.load(f)
    assert spec.num_layers == cfg["num_hidden_layers"]
    assert spec.dtype_bytes == 4  # float32 checkpoint
    assert load_model_spec(f"{tiny_model}/config.json").hidden_size == cfg["hidden_size"]


def test_bad_configs(tmp_path):
    with pytest.raises(ValueError, match="unknown model config"):
        load_model_spec("llama9-1t")
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        load_model_spec(str(bad))
    with pytest.raises(ValueError, match="lacks 'hidden_size'"):
        from_hf_config({"num_attention_heads": 4}, "x")
    with pytest.raises(ValueError, match="must be positive"):
        ModelSpec("x", 0, 64, 4, 4, 128, 100)
