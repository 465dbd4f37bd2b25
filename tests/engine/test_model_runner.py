"""KV cache allocation of the model runner: zeroed pages, resident at startup when asked."""

from __future__ import annotations

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
    cfg = parse_args(["--kv-cache-gb", "0.5", "--no-prefault-kv-cache"]).engine_config()
    assert cfg.kv_cache_gb == 0.5 and cfg.prefault_kv_cache is False
    assert parse_args([]).engine_config().prefault_kv_cache is True
    with pytest.raises(ValueError, match="kv_cache_gb"):
        parse_args(["--kv-cache-gb", "0"]).validate()
