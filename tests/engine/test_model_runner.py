"""The model runner: the final layer computes only the sampled rows; a step keeps every tensor on the
model's device; host memory (KV cache pages zeroed and resident at startup when asked, freed
activation memory kept for the next step)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from banaserve import LLM, SamplingParams
from banaserve.engine.model_runner import ModelRunner, allocate_kv_caches
from banaserve.engine.request import Request
from banaserve.engine.sampler import choose_tokens
from banaserve.engine.scheduler import ScheduledBatch
from banaserve.models.loader import load_model
from banaserve.serve.cli import parse_args


def run_step(runner, batch: ScheduledBatch, tables: dict[str, list[int]], only_sampled: bool):
    """Logits of the step's sampled rows and their request ids, computing the final layer for the
    sampled rows alone (the engine's way) or for every row."""
    ids, pos, meta, reqs = runner.prepare(batch, tables)
    rows = meta.sampled.rows
    if not only_sampled:
        meta.sampled = None
    hidden = runner.model.forward_layers(runner.model.embed(ids), pos, meta, runner.kv_caches)
    assert hidden.shape[0] == (len(reqs) if only_sampled else len(ids))
    return runner.model.logits(hidden if only_sampled else hidden[rows]), [r.request_id for r in reqs]


@pytest.mark.parametrize("native", [True, False])
def test_final_layer_computes_only_sampled_rows_and_every_rows_kv(tiny_llama, native):
    llm = LLM(tiny_llama, dtype="float32", device="cpu")
    runner = llm.engine.runner
    if not native:  # the PyTorch attention paths (CUDA, or no C compiler)
        runner.native_decode = runner.native_prefill = False
    bs = runner.block_size
    g = torch.Generator().manual_seed(1)
    params = SamplingParams(max_tokens=4)
    reqs = {name: Request(name, torch.randint(3, 1000, (n,), generator=g).tolist(), params)
            for name, n in (("a", bs + 3), ("b", 2 * bs + 5), ("c", 5))}
    tables = {"a": [0, 1], "b": [2, 3, 4], "c": [5]}
    # step 1: a's whole prompt and c's (sampled), b's first chunk (not sampled);
    # step 2: a and c decode, b's last chunk (sampled)
    steps = [(["a", "b", "c"], [bs + 3, bs + 2, 5]), (["b", "a", "c"], [bs + 3, 1, 1])]
    for names, counts in steps:
        batch = ScheduledBatch([reqs[n] for n in names], counts)
        before = [c.clone() for c in runner.kv_caches]
        full, full_ids = run_step(runner, batch, tables, only_sampled=False)
        after_full = [c.clone() for c in runner.kv_caches]
        for c, b in zip(runner.kv_caches, before):
            c.copy_(b)
        part, part_ids = run_step(runner, batch, tables, only_sampled=True)
        assert part_ids == full_ids and sorted(part_ids) == sorted(n for n, k in zip(names, counts)
                                                                   if reqs[n].num_computed_tokens + k
                                                                   == reqs[n].num_tokens)
        torch.testing.assert_close(part, full, rtol=1e-5, atol=1e-5)
        for c, f in zip(runner.kv_caches, after_full):  # the final layer's K/V too, for every row
            assert torch.equal(c, f)
        for n, k in zip(names, counts):
            reqs[n].num_computed_tokens += k
            if reqs[n].num_computed_tokens == reqs[n].num_tokens:
                reqs[n].all_token_ids.append(int(part[part_ids.index(n)].argmax()))


class HostTensorsInDeviceOps(TorchDispatchMode):
    """Records every op that mixes host tensors with device tensors. Copies between them are
    allowed, and so are 0-dim host scalars (CUDA takes those too)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        kinds = {t.device.type for t in tensors if t.dim() > 0 or t.device.type != "cpu"}
        if len(kinds) > 1 and func not in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            self.ops.append(str(func))
        return func(*args, **kwargs)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_step_keeps_every_tensor_on_the_models_device(make_checkpoint, arch, dtype):
    """No GPU here, so the meta device stands in for CUDA: it holds no data, but PyTorch places and
    checks its tensors like any other device's. A step (prefill chunks, mixed, pure decode, the
    sampler up to its one copy to the host) must not feed a host tensor into a device op: on CUDA
    that is an error or a hidden synchronous copy. Values are checked on CPU by the other tests."""
    dev = torch.device("meta")
    model, cfg = load_model(make_checkpoint(arch), dtype, dev)
    bs = 16
    runner = ModelRunner(model, allocate_kv_caches(cfg.num_layers, 8, bs, cfg.num_kv_heads, cfg.head_dim,
                                                   dtype, dev), bs, dev)
    assert not runner.native_decode and not runner.native_prefill  # the PyTorch paths CUDA takes
    mixed = [SamplingParams(max_tokens=4, temperature=0.8, top_k=5, top_p=0.9), SamplingParams(max_tokens=4)]
    reqs = {name: Request(name, list(range(3, 3 + n)), mixed[i % 2])
            for i, (name, n) in enumerate((("a", bs + 3), ("b", 2 * bs + 5), ("c", 5)))}
    tables = {"a": [0, 1], "b": [2, 3, 4], "c": [5]}
    steps = [(["a", "b", "c"], [bs + 3, bs + 2, 5]), (["b", "a", "c"], [bs + 3, 1, 1]), (["a", "b", "c"], [1, 1, 1])]
    with HostTensorsInDeviceOps() as check:
        for names, counts in steps:
            ids, pos, meta, to_sample = runner.prepare(ScheduledBatch([reqs[n] for n in names], counts), tables)
            hidden = model.forward_layers(model.embed(ids), pos, meta, runner.kv_caches)
            tokens = choose_tokens(model.logits(hidden).float(), to_sample)
            assert tokens.device == dev and tokens.shape == (len(to_sample),)
            for n, k in zip(names, counts):
                reqs[n].num_computed_tokens += k
                if reqs[n].num_computed_tokens == reqs[n].num_tokens:
                    reqs[n].all_token_ids.append(7)
        logits = runner.prompt_logits(list(range(3, 40)), [6, 7, 0])
        assert logits.device == dev and logits.shape == (37, cfg.vocab_size)
    assert check.ops == []


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("prefault", [True, False])
def test_kv_caches_are_zeroed_writable_and_shaped(dtype, prefault):
    caches = allocate_kv_caches(3, 10, 4, 2, 8, dtype, torch.device("cpu"), prefault)
    assert len(caches) == 3
    for c in caches:
        assert c.shape == (2, 10, 4, 2, 8) and c.dtype == dtype and c.is_contiguous()
        assert not c.any()
    caches[1][0, 3] = 1.5  # layers are separate memory
    assert caches[1].sum().item() == 1.5 * 4 * 2 * 8 and not caches[0].any() and not caches[2].any()


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_prefault_makes_pages_resident_and_lazy_does_not():
    size_mb = 64
    blocks = size_mb * (1 << 20) // (2 * 16 * 2 * 64 * 4)
    before = rss_bytes()
    lazy = allocate_kv_caches(1, blocks, 16, 2, 64, torch.float32, torch.device("cpu"), prefault=False)
    after_lazy = rss_bytes()
    eager = allocate_kv_caches(1, blocks, 16, 2, 64, torch.float32, torch.device("cpu"), prefault=True)
    after_eager = rss_bytes()
    assert after_lazy - before < 8 << 20
    assert after_eager - after_lazy > (size_mb - 4) << 20
    assert lazy[0].numel() == eager[0].numel()


def test_serve_cli_kv_cache_flags_reach_the_engine_config():
    cfg = parse_args(["--kv-cache-gb", "0.5", "--no-prefault-kv-cache", "--no-retain-freed-memory"]).engine_config()
    assert cfg.kv_cache_gb == 0.5 and cfg.prefault_kv_cache is False and cfg.retain_freed_memory is False
    assert parse_args([]).engine_config().prefault_kv_cache is True
    assert parse_args([]).engine_config().retain_freed_memory is True
    with pytest.raises(ValueError, match="kv_cache_gb"):
        parse_args(["--kv-cache-gb", "0"]).validate()


# A fresh interpreter per case: mallopt is process-wide. 64 MiB is above the largest size glibc's
# own threshold ever reaches (32 MiB), so by default such a block is unmapped when freed.
FREE_AND_REALLOCATE = """
import resource, sys, torch
from banaserve.engine.model_runner import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS:")).split()[1]) * 1024
x = torch.ones(16 << 20)  # 64 MiB, every page touched
held = rss()
del x
freed = rss()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
# a little smaller, as activations vary: torch's aligned allocation asks glibc for some bytes more
# than it asked for x, so x's block does not fit a tensor of exactly x's size when a small chunk
# has landed between that block and the heap top (seen in 1 run of 5)
y = torch.ones(15 << 20)
print(held - freed, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not __import__("os").path.exists("/proc/self/status"),
                    reason="glibc's mallopt and Linux /proc")
def test_retain_freed_memory_keeps_freed_activations_for_reuse():
    def run(mode: str) -> tuple[int, int]:
        out = subprocess.run([sys.executable, "-c", FREE_AND_REALLOCATE, mode], capture_output=True, text=True,
                             check=True)
        released, faults = map(int, out.stdout.split())
        return released, faults

    released, _ = run("default")
    assert released > 60 << 20  # glibc unmapped the freed 64 MiB
    released, faults = run("retain")
    assert released < 4 << 20  # kept in the process...
    assert faults < 1024  # ...and the next 60 MiB reuses it: no fault per 4 KiB page (15360 of them)
