"""Build, cache and load the native CPU kernels (csrc/) as one shared library.

The sources have no Python or torch headers, so they build with the system C compiler in a
couple of seconds, once per source version and CPU, into the banaserve cache directory. With no
compiler, or BANASERVE_CPU_KERNEL=0, load_library() returns None and every caller keeps its
plain PyTorch path, which gives the same tokens.
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

log = logging.getLogger(__name__)

CSRC = Path(__file__).with_name("csrc")
SOURCES = [CSRC / name for name in ("paged_decode.c", "paged_prefill.c", "fused_ops.c", "small_gemm.c",
                                    "packed_gemm.c")]
HEADERS = [CSRC / "vec.h"]
# -ffast-math lets GCC vectorise the dot-product reductions. It is given to the compile
# step only: linking a shared object with it would set flush-to-zero for the whole process.
COMPILE_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fPIC", "-std=c11"]
LINK_FLAGS = ["-shared", "-lm"]
# -fopenmp threads the kernels on torch's own OpenMP pool (see csrc/paged_decode.c); a compiler without
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
    key = hashlib.sha256(b"".join(src.read_bytes() for src in SOURCES + HEADERS) + " ".join(flags).encode()
                         + _cpu_signature().encode())
    target = _cache_dir() / f"banaserve_kernels-{key.hexdigest()[:16]}.so"
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


def open_library(path: Path) -> ctypes.CDLL:
    """Load a built library and declare its entry points' C signatures."""
    lib = ctypes.CDLL(str(path))
    ptr, i64, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    for fn in (lib.paged_decode_attention_f32, lib.paged_prefill_attention_f32):  # the same signature
        fn.restype = ctypes.c_int
        fn.argtypes = [ptr] * 6 + [i64] * 6 + [f32, i64]
    lib.rms_norm_f32.argtypes = [ptr] * 5 + [i64, i64, f32, i64]
    lib.silu_mul_f32.argtypes = [ptr, ptr, i64, i64, i64]
    lib.rope_f32.argtypes = [ptr, i64, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64]
    for fn in (lib.small_gemm_f32, lib.packed_gemm_f32):  # the same signature
        fn.restype = ctypes.c_int
        fn.argtypes = [ptr] * 4 + [i64] * 4
    for fn in (lib.rms_norm_f32, lib.silu_mul_f32, lib.rope_f32):
        fn.restype = None
    return lib


def load_library() -> ctypes.CDLL | None:
    """The loaded library, or None where it cannot be built (callers fall back to PyTorch)."""
    global _lib, _tried
    with _lock:
        if _tried:
            return _lib
        _tried = True
        if os.environ.get("BANASERVE_CPU_KERNEL", "1") == "0" or platform.system() != "Linux":
            return None
        compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
        if compiler is None:
            log.info("no C compiler: the CPU kernels' work runs in plain PyTorch")
            return None
        try:
            lib = open_library(_build(compiler))
        except (OSError, subprocess.CalledProcessError) as e:
            detail = e.stderr.decode(errors="replace")[-500:] if isinstance(e, subprocess.CalledProcessError) else e
            log.warning("native CPU kernels unavailable, using plain PyTorch: %s", detail)
            return None
        _lib = lib
        return _lib


