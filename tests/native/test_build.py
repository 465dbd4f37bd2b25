"""Building, caching and loading the native CPU kernel library."""

from __future__ import annotations

import pytest

from banaserve.kv import cpu_kernel
from banaserve.native import build
from tests.kv.test_cpu_kernel import random_case, reference

pytestmark = pytest.mark.skipif(build.load_library() is None, reason="no C compiler for the CPU kernels")


def test_kernel_build_is_cached(tmp_path, monkeypatch):
    """A fresh cache dir builds once; the same source and CPU reuse the file."""
    monkeypatch.setenv("BANASERVE_HOME", str(tmp_path))
    compiler = build.shutil.which("cc") or build.shutil.which("gcc")
    first = build._build(compiler)
    mtime = first.stat().st_mtime_ns
    assert first.parent == tmp_path / "kernels" and first.suffix == ".so"
    assert build._build(compiler) == first and first.stat().st_mtime_ns == mtime


def test_build_falls_back_when_the_compiler_rejects_openmp(tmp_path, monkeypatch):
    """A compiler without OpenMP support still yields a working (single-threaded) kernel."""
    monkeypatch.setenv("BANASERVE_HOME", str(tmp_path))
    monkeypatch.setattr(build, "THREADING", (["-fno-such-openmp-flag"], ["-fopenmp-simd"]))
    compiler = build.shutil.which("cc") or build.shutil.which("gcc")
    path = build._build(compiler)  # the -fno-such-openmp-flag build fails; the fallback is kept
    assert path.parent == tmp_path / "kernels" and len(list(path.parent.glob("*.so"))) == 1
    monkeypatch.setattr(build, "_lib", build.open_library(path))
    q, cache, tables, lens = random_case(3, 5, 6, 2, 64, 16, max_ctx=100)
    out = cpu_kernel.paged_decode_attention(q, cache, tables, lens)
    assert (out - reference(q, cache, tables, lens)).abs().max().item() < 1e-5
