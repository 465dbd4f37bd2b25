import pytest

from banaserve.engine.request import Request
from banaserve.engine.sampling_params import SamplingParams
from banaserve.engine.scheduler import Scheduler, SchedulerConfig
from banaserve.kv.block_manager import BlockManager
from banaserve.sim.cost_model import BatchShape, RooflineCostModel, batch_shape
from banaserve.sim.hardware import load_hardware
from banaserve.sim.model_configs import load_sim_model


def prefill_shape(n: int) -> BatchShape:
    return BatchShape(prefill_tokens=n, prefill_seqs=1, prefill_pairs=n * (n + 1) // 2, prefill_ctx=n,
                      prefill_max_tokens=n, sampled=1)


def decode_shape(batch: int, ctx: int) -> BatchShape:
    return BatchShape(decode_seqs=batch, decode_ctx=batch * ctx, decode_max_ctx=ctx, sampled=batch)


def test_decode_batch1_is_weight_bandwidth_bound():
    """Physics: llama2-13b on A100, batch 1 decode within 20% of weight bytes / HBM bandwidth."""
    model, hw = load_sim_model("llama2-13b"), load_hardware("a100-80g")
    t = RooflineCostModel(model, hw).step_time(decode_shape(1, 512))
    ideal = model.weight_bytes() / hw.hbm_bandwidth
    assert ideal < t < 1.2 * ideal


def test_prefill_2048_is_compute_bound():
    """Physics: a 2048-token prefill within 20% of FLOPs / (peak * compute efficiency)."""
    model, hw = load_sim_model("llama2-13b"), load_hardware("a100-80g")
    n = 2048
    t = RooflineCostModel(model, hw).step_time(prefill_shape(n))
    # textbook count: 2 FLOPs per weight per token + causal attention (QK^T and PV)
    c = model.config
    dense = c.num_params() - c.embedding_params()
    flops = 2 * n * dense + 4 * c.num_layers * c.hidden_size * n * (n + 1) / 2
    ideal = flops / (hw.peak_flops * hw.compute_efficiency)
    assert 0.8 * ideal < t < 1.2 * ideal


def test_step_time_grows_with_work():
    c = RooflineCostModel(load_sim_model("llama3-8b"), load_hardware("h100"))
    assert c.step_time(decode_shape(1, 128)) < c.step_time(decode_shape(64, 128)) < \
        c.step_time(decode_shape(64, 4096))
    assert c.step_time(prefill_shape(128)) < c.step_time(prefill_shape(1024)) < \
        c.step_time(prefill_shape(4096))
    assert c.step_time(BatchShape()) == 0.0


def test_tensor_parallel_splits_work_and_adds_allreduce():
    model, hw = load_sim_model("llama3-70b"), load_hardware("h100")
    tp2, tp4 = RooflineCostModel(model, hw, tp=2), RooflineCostModel(model, hw, tp=4)
    assert tp4.step_time(prefill_shape(2048)) < tp2.step_time(prefill_shape(2048))
    assert tp4.allreduce_time(2048) > 0 and RooflineCostModel(model, hw, tp=1).allreduce_time(2048) == 0
    # 8 KV heads over 4 GPUs: 2 heads each; more GPUs than KV heads replicate them
    assert tp4.kv_heads_per_gpu == 2 and RooflineCostModel(model, hw, tp=16).kv_heads_per_gpu == 1


def test_kv_capacity_and_weights_that_do_not_fit():
    model, hw = load_sim_model("llama3-8b"), load_hardware("h100")
    tokens = RooflineCostModel(model, hw).kv_capacity_tokens()
    expected = (hw.memory_bytes * hw.memory_utilization - model.weight_bytes()) / model.kv_bytes_per_token()
    assert tokens == int(expected)
    with pytest.raises(ValueError, match="raise --tp"):
        RooflineCostModel(load_sim_model("llama3-70b"), hw).kv_capacity_tokens()
    with pytest.raises(ValueError, match="does not divide"):
        RooflineCostModel(model, hw, tp=3)


def test_batch_shape_of_a_real_scheduled_batch():
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=100), BlockManager(64, 16, b"t", False))
    a = Request("a", list(range(3, 43)), SamplingParams(max_tokens=5))  # 40-token prompt
    b = Request("b", list(range(3, 153)), SamplingParams(max_tokens=5))  # 150 tokens: chunked
    sched.add(a)
    sched.add(b)
    batch = sched.schedule()
    s = batch_shape(batch)
    assert (s.prefill_tokens, s.prefill_seqs, s.sampled) == (100, 2, 1)  # b's chunk is 60, not sampled
    assert s.prefill_pairs == 40 * 41 // 2 + 60 * 61 // 2
    assert (s.fresh_pairs, s.chunk_entries, s.chunk_ctx) == (40 * 41 // 2 + 60 * 61 // 2, 0, 0)  # both from 0
    sched.commit(batch)
    a.all_token_ids.append(7)
    s = batch_shape(sched.schedule())  # a decodes at context 41, b's last 90 tokens start at 60
    assert (s.decode_seqs, s.decode_ctx, s.prefill_tokens, s.sampled) == (1, 41, 90, 2)
    assert s.prefill_pairs == 90 * 60 + 90 * 91 // 2
    assert (s.fresh_pairs, s.chunk_entries, s.chunk_ctx) == (0, 90 * 150, 150)  # b's later chunk, masked
