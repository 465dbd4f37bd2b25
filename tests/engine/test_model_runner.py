"""Host memory of the model runner: KV cache pages zeroed and resident at startup when asked,
freed activation memory kept for the next step."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch

from banaserve.engine.model_runner import allocate_kv_caches
from banaserve.serve.cli import parse_args


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
y = torch.ones(16 << 20)
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
    assert faults < 1024  # ...and the next 64 MiB reuses it: no fault per 4 KiB page (16384 of them)
