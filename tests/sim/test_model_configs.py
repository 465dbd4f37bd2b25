import json

import pytest

from banaserve.models.config import ModelConfig
from banaserve.sim.model_configs import PRESETS, SimModel, load_sim_model, sim_model_from_hf

# Published parameter counts (billions), from the model cards.
PUBLISHED_PARAMS_B = {"llama2-7b": 6.74, "llama2-13b": 13.0, "llama3-8b": 8.03, "llama3-70b": 70.6,
                      "qwen2.5-14b": 14.7, "qwen2.5-32b": 32.8, "qwen2.5-72b": 72.7}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parameter_counts_match_published(name):
    params = load_sim_model(name).config.num_params()
    assert params / 1e9 == pytest.approx(PUBLISHED_PARAMS_B[name], rel=0.01)


def test_preset_shapes():
    m = load_sim_model("llama2-13b").config
    assert (m.num_layers, m.hidden_size, m.num_heads, m.num_kv_heads, m.intermediate_size, m.vocab_size) == \
        (40, 5120, 40, 40, 13824, 32000)
    m = load_sim_model("llama3-70b").config
    assert (m.num_layers, m.hidden_size, m.num_heads, m.num_kv_heads, m.intermediate_size) == \
        (80, 8192, 64, 8, 28672)
    qwen = load_sim_model("qwen2.5-72b")
    assert qwen.config.intermediate_size == 29568 and qwen.config.attention_bias
    assert qwen.max_model_len == 32768 and qwen.dtype_bytes == 2


def test_kv_bytes_per_token():
    # llama3-8b: 2 (K, V) * 32 layers * 8 kv heads * 128 dims * 2 bytes
    assert load_sim_model("llama3-8b").kv_bytes_per_token() == 2 * 32 * 8 * 128 * 2


def test_presets_are_copies():
    load_sim_model("llama3-8b").config.num_layers = 1
    assert load_sim_model("llama3-8b").config.num_layers == 32


def test_checkpoint_dir_and_file_parse_like_the_engine(tiny_model):
    model = load_sim_model(tiny_model)
    assert model.config == ModelConfig.from_dict(json.loads(open(f"{tiny_model}/config.json").read()))
    assert model.name == "llama-tiny"
    assert model.dtype_bytes == 4  # float32 checkpoint
    assert load_sim_model(f"{tiny_model}/config.json").config == model.config


def test_bias_and_qk_norm_count_as_parameters():
    base = dict(PRESETS["llama3-8b"])
    llama = sim_model_from_hf(base, "a").config
    qwen2 = sim_model_from_hf({**base, "model_type": "qwen2"}, "b").config
    qwen3 = sim_model_from_hf({**base, "model_type": "qwen3"}, "c").config
    assert qwen2.num_params() - llama.num_params() == 32 * (4096 + 2 * 1024)  # q, k, v biases
    assert qwen3.num_params() - llama.num_params() == 32 * 2 * 128  # q and k norms


def test_bad_configs(tmp_path):
    with pytest.raises(ValueError, match="unknown model config"):
        load_sim_model("llama9-1t")
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        load_sim_model(str(bad))
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        load_sim_model(str(bad))
    with pytest.raises(ValueError, match="lacks 'hidden_size'"):
        sim_model_from_hf({"model_type": "llama", "num_attention_heads": 4}, "x")
    with pytest.raises(ValueError, match="num_layers must be positive"):
        sim_model_from_hf({**PRESETS["llama2-7b"], "num_hidden_layers": 0}, "x")
    with pytest.raises(ValueError, match="unknown dtype"):
        sim_model_from_hf({**PRESETS["llama2-7b"], "torch_dtype": "int3"}, "x")
    with pytest.raises(ValueError, match="unsupported model_type"):
        sim_model_from_hf({**PRESETS["llama2-7b"], "model_type": "gpt2"}, "x")
    with pytest.raises(ValueError, match="dtype_bytes must be positive"):
        SimModel("x", load_sim_model("llama2-7b").config, 0)
