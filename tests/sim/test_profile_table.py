import json

import pytest

from banaserve.sim.cost_model import BatchShape
from banaserve.sim.model_configs import load_sim_model
from banaserve.sim.profile_table import (
    ProfileCostModel,
    ProfileTable,
    load_profile,
    model_fields,
    profile_from_json,
)

# The "model" object of a profile written before the simulator used ModelConfig (its ModelSpec
# fields, as `banaserve profile` wrote them for a tiny fp32 qwen2 checkpoint).
LEGACY_MODEL = {"name": "qwen2-tiny", "num_layers": 2, "hidden_size": 64, "num_heads": 4, "num_kv_heads": 2,
                "intermediate_size": 128, "vocab_size": 512, "head_dim": 16, "tie_word_embeddings": True,
                "attention_bias": True, "dtype_bytes": 4, "max_model_len": 1024}


def table() -> ProfileTable:
    """t = 1 + P/100 + B*(1 + C/1000) ms-ish units: multilinear, so interpolation is exact."""
    P, B, C = [0, 100, 400], [0, 1, 4], [100, 1000]
    times = [[[1 + p / 100 + b * (1 + c / 1000) for c in C] for b in B] for p in P]
    return ProfileTable(P, B, C, times, model=model_fields(load_sim_model("llama2-7b")),
                        engine={"num_kv_blocks": 100}, meta={"device": "cpu"})


def expected(p, b, c):
    return 1 + p / 100 + b * (1 + c / 1000)


@pytest.mark.parametrize("p, b, c", [(0, 1, 100), (100, 4, 1000), (50, 2, 550), (250, 3, 100),
                                      (800, 8, 2000), (10, 0, 100)])
def test_interpolation_and_extrapolation_of_a_multilinear_table(p, b, c):
    assert ProfileCostModel(table()).lookup(p, b, c) == pytest.approx(expected(p, b, c))


def test_step_time_uses_prefill_tokens_decodes_and_mean_context():
    cost = ProfileCostModel(table())
    shape = BatchShape(prefill_tokens=100, prefill_seqs=1, decode_seqs=2, decode_ctx=600, decode_max_ctx=500,
                       sampled=3)
    assert cost.step_time(shape) == pytest.approx(expected(100, 2, 300))
    assert cost.step_time(BatchShape()) == 0.0


def test_chunk_cost_replaces_the_grids_fresh_chunk_attention(tmp_path):
    t = table()
    t.chunk_cost = {"pair_s": 1e-4, "entry_s": 1e-5, "ctx_s": 1e-3}
    cost = ProfileCostModel(t)
    one = BatchShape(prefill_tokens=100, prefill_seqs=1, fresh_pairs=100 * 101 // 2, sampled=1)
    assert cost.step_time(one) == pytest.approx(expected(100, 0, 100))  # the grid's own shape: unchanged
    # two fresh chunks of 50: fewer causal pairs than one of 100
    two = BatchShape(prefill_tokens=100, prefill_seqs=2, fresh_pairs=2 * 50 * 51 // 2, sampled=2)
    assert cost.step_time(two) == pytest.approx(expected(100, 0, 100) - 1e-4 * (100 * 101 // 2 - 50 * 51))
    # a 100-token chunk after 300 earlier tokens: no causal pairs, masked entries and gathered context
    later = BatchShape(prefill_tokens=100, prefill_seqs=1, chunk_entries=100 * 400, chunk_ctx=400, sampled=1)
    assert cost.step_time(later) == pytest.approx(
        expected(100, 0, 100) - 1e-4 * (100 * 101 // 2) + 1e-5 * 100 * 400 + 1e-3 * 400)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(t.to_json()))
    assert load_profile(str(path)).chunk_cost == t.chunk_cost
    t.chunk_cost = {"pair_s": 1.0}
    with pytest.raises(ValueError, match="chunk_cost"):
        t.validate()


def test_json_round_trip(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(table().to_json()))
    back = load_profile(str(path))
    assert back.step_time_s == table().step_time_s and back.sim_model() == load_sim_model("llama2-7b")


def test_profiles_written_with_model_spec_fields_still_read():
    doc = table().to_json()
    doc["model"] = dict(LEGACY_MODEL)
    model = profile_from_json(doc).sim_model()
    c = model.config
    assert (model.name, model.dtype_bytes, model.max_model_len) == ("qwen2-tiny", 4, 1024)
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim) == (2, 64, 4, 2, 16)
    assert c.attention_bias and c.tie_word_embeddings
    assert model_fields(model) == LEGACY_MODEL  # and written back unchanged
    # ModelSpec's defaults held for fields a hand-written profile left out
    short = {k: v for k, v in LEGACY_MODEL.items() if k not in ("head_dim", "dtype_bytes", "max_model_len")}
    doc["model"] = short
    model = profile_from_json(doc).sim_model()
    assert (model.config.head_dim, model.dtype_bytes, model.max_model_len) == (16, 2, 4096)


@pytest.mark.parametrize("change, match", [
    (lambda d: d["axes"].update(prefill_tokens=[0, 400, 100]), "increasing"),
    (lambda d: d["axes"].update(decode_batch=[1, 2, 4]), "start at 0"),
    (lambda d: d["step_time_s"].pop(), "does not match"),
    (lambda d: d.pop("model"), "model"),
    (lambda d: d["model"].update(num_layers=0), "num_layers must be positive"),
    (lambda d: d["model"].update(num_experts=8), "unknown model fields num_experts"),
    (lambda d: d["model"].pop("hidden_size"), "lacks 'hidden_size'"),
    (lambda d: d["step_time_s"][0][0].__setitem__(0, -1.0), ">= 0"),
])
def test_bad_profiles(change, match):
    doc = table().to_json()
    change(doc)
    with pytest.raises(ValueError, match=match):
        profile_from_json(doc)


def test_not_a_profile(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match="not a profile"):
        load_profile(str(path))


def test_serving_overheads_add_per_step_and_per_row_and_round_trip(tmp_path):
    t = table()
    t.serving = {"step_overhead_s": 0.25, "row_overhead_s": 0.01, "request_overhead_s": 3.0,
                 "neighbor_slowdown": 0.2}
    cost = ProfileCostModel(t)
    assert cost.neighbor_slowdown == 0.2  # applied by the simulator (tests/sim/test_pd.py)
    shape = BatchShape(prefill_tokens=100, prefill_seqs=1, decode_seqs=2, decode_ctx=600, decode_max_ctx=500,
                       sampled=3)
    assert cost.step_time(shape) == pytest.approx(expected(100, 2, 300) + 0.25 + 3 * 0.01)
    assert cost.lookup(100, 2, 300) == pytest.approx(expected(100, 2, 300))  # lookup: the engine alone
    assert cost.step_time(BatchShape()) == 0.0 and cost.request_overhead_s == 3.0
    path = tmp_path / "p.json"
    path.write_text(json.dumps(t.to_json()))
    assert load_profile(str(path)).serving == t.serving
    assert "serving" not in table().to_json() and ProfileCostModel(table()).request_overhead_s == 0.0
    t.serving = {"step_overhead_s": 0.25, "request_overhead_s": 3.0}  # profiles from before the row term
    assert ProfileCostModel(t).step_time(shape) == pytest.approx(expected(100, 2, 300) + 0.25)


@pytest.mark.parametrize("serving", [{"step_overhead_s": -1.0}, {"bogus_s": 1.0}])
def test_bad_serving_overheads(serving):
    doc = table().to_json()
    doc["serving"] = serving
    with pytest.raises(ValueError, match="serving"):
        profile_from_json(doc)
