"""The decoder's elementwise work as single native passes on CPU fp32 (native/csrc/fused_ops.c),
and its linear layers (native/csrc/small_gemm.c at decode batch sizes, packed_gemm.c above them).

PyTorch runs RMSNorm as six ops, SiLU-and-multiply as two and rotary embedding as six, each a
full read and write of the activation; on a 2-core CPU those passes cost about a tenth of a
prefill. Every function here falls back to the same math in PyTorch where the native library
is missing or the tensors are not contiguous CPU fp32, so results never depend on which ran.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from banaserve.native.build import load_library


def _native(*tensors: torch.Tensor) -> bool:
    # a plain loop over cheap properties: this runs several times per layer per step (a generator
    # over t.device came to a few microseconds a call)
    for t in tensors:
        if not (t.is_cpu and t.dtype == torch.float32 and t.is_contiguous()):
            return False
    return load_library() is not None


SMALL_GEMM_ROWS = (2, 128)  # rows where small_gemm beats MKL on the decoder overall (benchmarks/decode_linear.py)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T + bias: by the native small-M kernel for a few rows (decode), by the native
    packed GEMM for more (prefill), by F.linear for one row or where the native kernels do not apply."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    # a shape mismatch goes to F.linear, which raises: the C code trusts the shapes it is given
    fits = weight.dim() == 2 and weight.shape[1] == x.shape[-1] and (bias is None or bias.shape == weight.shape[:1])
    operands = (x, weight) if bias is None else (x, weight, bias)
    if rows >= SMALL_GEMM_ROWS[0] and weight.numel() and fits and _native(*operands):
        lib = load_library()
        gemm = lib.small_gemm_f32 if rows <= SMALL_GEMM_ROWS[1] else lib.packed_gemm_f32
        out = x.new_empty((*x.shape[:-1], weight.shape[0]))
        bias_ptr = None if bias is None else bias.data_ptr()
        status = gemm(x.data_ptr(), weight.data_ptr(), bias_ptr, out.data_ptr(), rows, weight.shape[0], x.shape[-1],
                      torch.get_num_threads())
        if status != 0:
            raise MemoryError("the native GEMM could not allocate its scratch")
        return out
    return F.linear(x, weight, bias)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * x / sqrt(mean(x^2) + eps) over the last dim, in fp32 like HF."""
    if weight.shape == x.shape[-1:] and _native(x, weight):
        out = torch.empty_like(x)
        load_library().rms_norm_f32(x.data_ptr(), None, None, weight.data_ptr(), out.data_ptr(),
                                   x.numel() // x.shape[-1], x.shape[-1], eps, torch.get_num_threads())
        return out
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(residual + x), residual + x): a sublayer's residual add and the next norm in one pass."""
    if weight.shape == x.shape[-1:] and x.shape == residual.shape and _native(x, residual, weight):
        total, out = torch.empty_like(x), torch.empty_like(x)
        load_library().rms_norm_f32(x.data_ptr(), residual.data_ptr(), total.data_ptr(), weight.data_ptr(),
                                   out.data_ptr(), x.numel() // x.shape[-1], x.shape[-1], eps,
                                   torch.get_num_threads())
        return out, total
    total = residual + x
    return rms_norm(total, weight, eps), total


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up = [gate | up] on the last dim."""
    inter = gate_up.shape[-1] // 2
    if _native(gate_up) and inter % 8 == 0:
        out = gate_up.new_empty((*gate_up.shape[:-1], inter))
        load_library().silu_mul_f32(gate_up.data_ptr(), out.data_ptr(), gate_up.numel() // gate_up.shape[-1],
                                   inter, torch.get_num_threads())
        return out
    gate, up = gate_up.split(inter, dim=-1)
    return F.silu(gate).mul_(up)


def rope_qk(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            num_heads: int, num_kv_heads: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Rotated q [T, Hq, D] and k [T, Hkv, D], contiguous, straight from the fused qkv rows [T, *];
    None where the native pass does not apply (the caller rotates in PyTorch). cos/sin are
    [max_positions, D/2] fp32 tables; positions must be inside them (the caller checks)."""
    fits = (qkv.dim() == 2 and qkv.shape[1] >= (num_heads + num_kv_heads) * head_dim
            and positions.shape == qkv.shape[:1] and cos.shape[-1] * 2 == head_dim)
    if not (fits and _native(qkv, cos, sin) and positions.dtype == torch.int64 and positions.is_contiguous()):
        return None
    t = qkv.shape[0]
    q = qkv.new_empty((t, num_heads, head_dim))
    k = qkv.new_empty((t, num_kv_heads, head_dim))
    load_library().rope_f32(qkv.data_ptr(), qkv.stride(0), positions.data_ptr(), cos.data_ptr(),
                           sin.data_ptr(), q.data_ptr(), k.data_ptr(), t, num_heads, num_kv_heads, head_dim,
                           torch.get_num_threads())
    return q, k
