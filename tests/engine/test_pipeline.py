"""A model split by layers: stages holding layers [a, b) only, chained by hidden states, give the
full model's greedy tokens (and HF transformers') under a real scheduler with chunked prefill."""

from __future__ import annotations

import random

import pytest
import torch

from banaserve.engine.model_runner import ModelRunner, allocate_stage_kv_caches
from banaserve.engine.request import Request
from banaserve.engine.sampling_params import SamplingParams
from banaserve.engine.scheduler import ScheduledBatch, Scheduler, SchedulerConfig
from banaserve.kv.block_manager import BlockManager
from banaserve.models import loader
from banaserve.models.loader import load_model
from tests.engine.hf_reference import hf_greedy, load_hf

ARCHS = ["llama", "qwen2", "qwen3"]  # qwen2/qwen3 tie the LM head to the embedding
MAX_NEW = 8
BLOCK_SIZE = 8
NUM_BLOCKS = 64
BUDGET = 24  # tokens a step: long prompts prefill in chunks, mixed with other requests' decodes
CPU = torch.device("cpu")
GREEDY = SamplingParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True)


def make_prompts(vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    prompts = [[rng.randrange(vocab) for _ in range(n)] for n in (1, 5, 17, 30, 47, 70)]
    prompts.append(prompts[-1][:40] + [rng.randrange(vocab) for _ in range(9)])  # a prefix-cache hit
    return prompts


def load_stage(path: str, layer_range: tuple[int, int]) -> ModelRunner:
    model, cfg = load_model(path, torch.float32, CPU, layer_range=layer_range)
    kv = allocate_stage_kv_caches(cfg, layer_range, NUM_BLOCKS, BLOCK_SIZE, torch.float32, CPU)
    return ModelRunner(model, kv, BLOCK_SIZE, CPU)


def load_stages(path: str, cuts: tuple[int, ...], num_layers: int) -> list[ModelRunner]:
    """One runner per stage [cuts[i], cuts[i+1]); the same block ids index each stage's own KV."""
    bounds = [0, *cuts, num_layers]
    return [load_stage(path, (a, b)) for a, b in zip(bounds, bounds[1:])]


def generate(stages: list[ModelRunner], prompts: list[list[int]]) -> list[list[int]]:
    """Greedy tokens of every prompt, run concurrently: each step goes through the stages in turn."""
    blocks = BlockManager(NUM_BLOCKS, BLOCK_SIZE)
    scheduler = Scheduler(SchedulerConfig(max_num_batched_tokens=BUDGET), blocks)
    reqs = [Request(str(i), p, GREEDY) for i, p in enumerate(prompts)]
    for r in reqs:
        scheduler.add(r)
    while scheduler.has_unfinished():
        batch = scheduler.schedule()
        out = None
        for runner in stages:
            out = runner.execute(batch, blocks.block_tables, hidden_in=out)
        assert isinstance(out, dict)
        scheduler.commit(batch)
        for req in batch.requests:
            if req.request_id in out:
                req.all_token_ids.append(out[req.request_id])
                if req.num_output_tokens == MAX_NEW:
                    scheduler.finish(req, "length")
    assert blocks.num_used_blocks == 0
    return [r.output_token_ids for r in reqs]


@pytest.fixture(scope="module", params=ARCHS)
def case(request, make_checkpoint):
    """Checkpoint path, prompts, HF transformers' greedy tokens and the full model's."""
    path = make_checkpoint(request.param)
    hf = load_hf(path)
    prompts = make_prompts(hf.config.vocab_size, seed=ARCHS.index(request.param))
    refs = [hf_greedy(hf, p, MAX_NEW) for p in prompts]
    num_layers = hf.config.num_hidden_layers
    full = generate(load_stages(path, (), num_layers), prompts)
    assert full == refs
    return path, num_layers, prompts, refs


@pytest.mark.parametrize("cuts", [(1,), (2,), (3,), (1, 3)], ids=lambda c: "-".join(map(str, c)))
def test_stages_match_full_model_and_hf(case, cuts):
    """Cut after the first layer, in the middle, before the last (tiny: 4 layers), and three stages
    where the middle one has neither embedding nor LM head."""
    path, num_layers, prompts, refs = case
    assert num_layers == 4  # the cuts above are k = 1, L // 2, L - 1
    assert generate(load_stages(path, cuts, num_layers), prompts) == refs


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layer_range", [(0, 2), (1, 3), (2, 4)])
def test_a_stage_reads_and_holds_only_its_layers_weights(make_checkpoint, monkeypatch, arch, layer_range):
    path = make_checkpoint(arch, shards=3)
    read: list[str] = []
    real_open = loader.safe_open

    class RecordingOpen:
        def __init__(self, *args, **kwargs):
            self.f = real_open(*args, **kwargs)

        def keys(self):
            return self.f.keys()

        def get_tensor(self, name: str) -> torch.Tensor:
            read.append(name)
            return self.f.get_tensor(name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    monkeypatch.setattr(loader, "safe_open", RecordingOpen)
    model, cfg = load_model(path, torch.float32, CPU, layer_range=layer_range)
    a, b = layer_range
    first, last = a == 0, b == cfg.num_layers
    read_layers = {int(n.split(".")[2]) for n in read if n.startswith("model.layers.")}
    assert read_layers == set(range(a, b))
    assert ("model.embed_tokens.weight" in read) == (first or (last and cfg.tie_word_embeddings))
    assert ("model.norm.weight" in read) == last
    assert ("lm_head.weight" in read) == (last and not cfg.tie_word_embeddings)
    assert len(read) == len(set(read))  # each tensor once

    names = set(model.state_dict())
    assert {int(n.split(".")[1]) for n in names if n.startswith("layers.")} == set(range(a, b))
    assert ("embed_tokens.weight" in names) == first and ("lm_head.weight" in names) == last
    assert ("norm.weight" in names) == last
    assert sorted(model.layers.keys()) == [str(i) for i in range(a, b)] and a in model.layers

    full, _ = load_model(path, torch.float32, CPU)
    per_layer = sum(p.numel() for p in full.layers[0].parameters())
    embed = cfg.vocab_size * cfg.hidden_size
    expected = (b - a) * per_layer + (embed if first else 0) + (cfg.hidden_size if last else 0)
    if last and not (first and cfg.tie_word_embeddings):  # a tied full model shares the matrix
        expected += embed
    assert sum(p.numel() for p in model.parameters()) == expected
    assert expected < sum(p.numel() for p in full.parameters())
    for name, p in model.named_parameters():  # the same weights as the full model's
        assert torch.equal(p, full.get_parameter(name)), name


def test_hooks_run_around_each_held_layer_with_absolute_ids(tiny_llama):
    stage = load_stage(tiny_llama, (1, 3))
    req = Request("r", list(range(3, 20)), GREEDY)
    batch = ScheduledBatch([req], [req.num_tokens])
    events: list[tuple[str, int]] = []
    hidden_in = torch.randn(req.num_tokens, stage.model.cfg.hidden_size)
    out = stage.execute(batch, {"r": [0, 1, 2]}, hidden_in=hidden_in,
                        before_layer=lambda i: events.append(("before", i)),
                        after_layer=lambda i: events.append(("after", i)))
    assert events == [("before", 1), ("after", 1), ("before", 2), ("after", 2)]
    assert isinstance(out, torch.Tensor) and out.shape == hidden_in.shape  # every row, not just the last
    assert stage.layer_range == (1, 3) and stage.kv_cache(2) is stage.kv_caches[1]
    assert stage.kv_cache(1)[:, :3].any() and stage.kv_cache(2)[:, :3].any()  # both layers' K/V written
    with pytest.raises(IndexError):
        stage.kv_cache(0)
    with pytest.raises(ValueError, match="hidden_in"):
        stage.execute(batch, {"r": [0, 1, 2]})
    with pytest.raises(ValueError, match="full model"):
        stage.prompt_logits([3, 4], [0])


def test_bad_ranges_are_refused(tiny_llama):
    for bad in [(0, 0), (2, 1), (-1, 2), (0, 5)]:
        with pytest.raises(ValueError, match="layer range"):
            load_model(tiny_llama, torch.float32, CPU, layer_range=bad)
    model, cfg = load_model(tiny_llama, torch.float32, CPU, layer_range=(1, 3))
    with pytest.raises(ValueError, match="KV caches"):
        ModelRunner(model, allocate_stage_kv_caches(cfg, (0, 4), 4, BLOCK_SIZE, torch.float32, CPU), BLOCK_SIZE, CPU)
