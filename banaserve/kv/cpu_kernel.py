"""The native CPU attention kernels (csrc/paged_decode.c, csrc/paged_prefill.c): built once
with the system C compiler into one cached library, loaded with ctypes.

Plain PyTorch cannot attend over pages without first gathering them into a padded copy, and on
CPU that copy plus SDPA's single-query path cost several times the memory traffic of reading
the KV once; for prefill, PyTorch's CPU flash attention reaches 30-70 GFLOP/s on prompt-sized
inputs where a matmul reaches 130, and a chunk after earlier context needs a gather and a mask.
The kernels read each sequence's pages in place. They have no Python or torch headers, so they
build in about a second; with no compiler (or BANASERVE_CPU_KERNEL=0) the engine keeps the plain
PyTorch path, which gives the same tokens.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCES = [Path(__file__).with_name("csrc") / name for name in ("paged_decode.c", "paged_prefill.c", "fused_ops.c")]
# -ffast-math lets GCC vectorise expf and the dot-product reductions. It is given to the compile
# step only: linking a shared object with it would set flush-to-zero for the whole process.
COMPILE_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fPIC", "-std=c11"]
LINK_FLAGS = ["-shared", "-lm"]
# -fopenmp threads the kernel on torch's own OpenMP pool (see the source); a compiler without
# OpenMP gets a single-threaded build that still vectorises (-fopenmp-simd needs no runtime).
THREADING = (["-fopenmp"], ["-fopenmp-simd"])

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


def _cache_dir() -> Path:
    home = os.environ.get("BANASERVE_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "banaserve")
    return Path(home) / "kernels"


def _cpu_signature() -> str:
    """-march=native code must not be reused on another CPU: key the cache on the CPU's flags."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build(compiler: str) -> Path:
    """The cached library, built with the first THREADING choice the compiler accepts."""
    for threading_flags in THREADING[:-1]:
        try:
            return _build_with(compiler, threading_flags)
        except subprocess.CalledProcessError:
            pass
    return _build_with(compiler, THREADING[-1])


def _build_with(compiler: str, threading_flags: list[str]) -> Path:
    flags = [*COMPILE_FLAGS, *threading_flags]
    key = hashlib.sha256(b"".join(src.read_bytes() for src in SOURCES) + " ".join(flags).encode()
                         + _cpu_signature().encode())
    target = _cache_dir() / f"paged_attention-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        objs = [os.path.join(tmp, f"{src.stem}.o") for src in SOURCES]
        for src, obj in zip(SOURCES, objs):
            subprocess.run([compiler, *flags, "-c", str(src), "-o", obj], check=True, capture_output=True)
        lib = os.path.join(tmp, "k.so")
        subprocess.run([compiler, *objs, "-o", lib, *LINK_FLAGS, *threading_flags], check=True, capture_output=True)
        os.replace(lib, target)  # atomic: instances starting together may all build; one wins
    return target


def open_kernel(path: Path) -> ctypes.CDLL:
    """Load a built kernel library and declare its entry points' C signatures (the same for both)."""
    lib = ctypes.CDLL(str(path))
    for fn in (lib.paged_decode_attention_f32, lib.paged_prefill_attention_f32):
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 6 + [ctypes.c_float, ctypes.c_int64]
    ptr, i64, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    lib.rms_norm_f32.argtypes = [ptr] * 5 + [i64, i64, f32, i64]
    lib.silu_mul_f32.argtypes = [ptr, ptr, i64, i64, i64]
    lib.rope_f32.argtypes = [ptr, i64, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64]
    for fn in (lib.rms_norm_f32, lib.silu_mul_f32, lib.rope_f32):
        fn.restype = None
    return lib


def load_kernel() -> ctypes.CDLL | None:
    """The loaded kernel library, or None where it cannot be built (the caller falls back)."""
    global _lib, _tried
    with _lock:
        if _tried:
            return _lib
        _tried = True
        if os.environ.get("BANASERVE_CPU_KERNEL", "1") == "0" or platform.system() != "Linux":
            return None
        compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
        if compiler is None:
            log.info("no C compiler: CPU attention uses the plain PyTorch path")
            return None
        try:
            lib = open_kernel(_build(compiler))
        except (OSError, subprocess.CalledProcessError) as e:
            detail = e.stderr.decode(errors="replace")[-500:] if isinstance(e, subprocess.CalledProcessError) else e
            log.warning("CPU attention kernels unavailable, using the PyTorch path: %s", detail)
            return None
        _lib = lib
        return _lib


def kernel_supports(kv_cache: torch.Tensor) -> bool:
    """Whether decode attention over this cache can use the native kernel."""
    return kv_cache.device.type == "cpu" and kv_cache.dtype == torch.float32 and load_kernel() is not None


def paged_decode_attention(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                           ctx_lens: torch.Tensor, check: bool = True) -> torch.Tensor:
    """Attention of single-token queries q [B, Hq, D] over their pages; returns [B, Hq, D].

    block_tables [B, W] int64 (rows may be padded past each sequence's blocks), ctx_lens [B] int64.
    Every index is bounds-checked here (the C code trusts them); `check=False` skips that for
    tables already checked against a cache of the same shape (the other layers of a step).
    """
    lib = load_kernel()
    assert lib is not None, "call kernel_supports() first"
    _, nb, bs, hkv, d = kv_cache.shape
    b, hq, _ = q.shape
    if not kv_cache.is_contiguous():
        raise ValueError("paged decode kernel needs a contiguous KV cache")
    if check and b and (int(ctx_lens.max()) > block_tables.shape[1] * bs or int(ctx_lens.min()) < 1):
        raise ValueError("context length outside the block table")
    if check and block_tables.numel() and (int(block_tables.min()) < 0 or int(block_tables.max()) >= nb):
        raise ValueError("block id outside the KV cache")
    q = q.contiguous()
    tables = block_tables.contiguous().to(torch.int64)
    lens = ctx_lens.contiguous().to(torch.int64)
    out = torch.empty_like(q)
    threads = max(1, min(torch.get_num_threads(), b))
    status = lib.paged_decode_attention_f32(
        q.data_ptr(), kv_cache[0].data_ptr(), kv_cache[1].data_ptr(), tables.data_ptr(), lens.data_ptr(),
        out.data_ptr(), b, tables.shape[1], bs, hq, hkv, d, d ** -0.5, threads)
    if status != 0:
        raise MemoryError("paged decode kernel could not allocate its score buffer")
    return out


def prefill_kernel_supports(kv_cache: torch.Tensor) -> bool:
    """Whether prefill attention over this cache can use the native kernel (head sizes in 16s)."""
    return kv_cache.shape[-1] % 16 == 0 and kernel_supports(kv_cache)


def paged_prefill_attention(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                            spans: torch.Tensor, out: torch.Tensor, check: bool = True) -> None:
    """Causal attention of prefill chunks over their pages, written into `out` [T, Hq, D].

    q [T, Hq, D] holds the step's tokens; chunk c's are rows spans[c, 0] : spans[c, 0] + spans[c, 1],
    at positions spans[c, 2] - spans[c, 1] onwards of a context spans[c, 2] long whose keys and values
    (the chunk's own included) are already in the pages of block_tables[c]. `check` as in
    paged_decode_attention.
    """
    lib = load_kernel()
    assert lib is not None, "call prefill_kernel_supports() first"
    _, nb, bs, hkv, d = kv_cache.shape
    t, hq, _ = q.shape
    if not (kv_cache.is_contiguous() and q.is_contiguous() and out.is_contiguous() and out.shape == q.shape):
        raise ValueError("paged prefill kernel needs contiguous q, out and KV cache of matching shapes")
    if spans.shape != (block_tables.shape[0], 3) or hq % hkv or d % 16:
        raise ValueError("need one span per block table row, query heads a multiple of KV heads, head size in 16s")
    if check and spans.numel():
        start, length, ctx = spans.unbind(1)
        if int(length.min()) < 1 or bool((length > ctx).any()) or int(start.min()) < 0 \
                or int((start + length).max()) > t:
            raise ValueError("prefill span outside the step's tokens or longer than its context")
        if int(ctx.max()) > block_tables.shape[1] * bs:
            raise ValueError("context length outside the block table")
        if int(block_tables.min()) < 0 or int(block_tables.max()) >= nb:
            raise ValueError("block id outside the KV cache")
    tables, spans = block_tables.contiguous().to(torch.int64), spans.contiguous().to(torch.int64)
    status = lib.paged_prefill_attention_f32(
        q.data_ptr(), kv_cache[0].data_ptr(), kv_cache[1].data_ptr(), tables.data_ptr(), spans.data_ptr(),
        out.data_ptr(), spans.shape[0], tables.shape[1], bs, hq, hkv, d, d ** -0.5, torch.get_num_threads())
    if status != 0:
        raise MemoryError("paged prefill kernel could not allocate its scratch")
