"""The fused elementwise passes against HF transformers' own RMSNorm, SiLU and rotary code."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

from banaserve.models import fused_ops
from banaserve.models.rope import RotaryEmbedding
from banaserve.native.build import load_library

pytestmark = pytest.mark.skipif(load_library() is None, reason="no C compiler for the CPU kernels")

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}


def hf_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    norm = LlamaRMSNorm(x.shape[-1], eps)
    norm.weight.data.copy_(weight)
    return norm(x)


@pytest.mark.parametrize("rows,dim", [(1, 64), (7, 384), (300, 768), (2048, 96)])
@pytest.mark.parametrize("seed", [0, 1])
def test_rms_norm_and_residual_add_match_hf(rows, dim, seed):
    g = torch.Generator().manual_seed(seed)
    x, res = torch.randn(rows, dim, generator=g) * 3, torch.randn(rows, dim, generator=g)
    weight, eps = torch.rand(dim, generator=g) + 0.5, 1e-6
    assert torch.allclose(fused_ops.rms_norm(x, weight, eps), hf_rms_norm(x, weight, eps), rtol=1e-5, atol=1e-6)
    res_before = res.clone()
    normed, total = fused_ops.add_rms_norm(x, res, weight, eps)
    assert torch.equal(total, res_before + x)  # the residual stream itself is exact
    assert torch.equal(res, res_before)  # inputs are left alone
    assert torch.allclose(normed, hf_rms_norm(res_before + x, weight, eps), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows,inter", [(1, 8), (5, 1024), (1000, 344)])
def test_silu_mul_matches_torch_over_the_whole_range(rows, inter):
    g = torch.Generator().manual_seed(rows)
    gate_up = torch.randn(rows, 2 * inter, generator=g) * 4
    gate_up[0, :4] = torch.tensor([-200.0, -88.5, 90.0, 300.0])  # past exp's clamps both ways
    gate, up = gate_up.split(inter, dim=-1)
    ref = F.silu(gate) * up
    out = fused_ops.silu_mul(gate_up)
    assert torch.allclose(out, ref, rtol=2e-6, atol=1e-6)
    assert torch.isfinite(out).all()


def test_non_native_inputs_take_the_pytorch_path():
    """bf16, or a strided view, gives the plain PyTorch result (no native call can see them)."""
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    w = torch.ones(32, dtype=torch.bfloat16)
    assert torch.equal(fused_ops.rms_norm(x, w, 1e-5), hf_rms_norm(x, w, 1e-5))
    gate_up = torch.randn(6, 64)[:, :32]
    assert torch.equal(fused_ops.silu_mul(gate_up), F.silu(gate_up[:, :16]) * gate_up[:, 16:])


@pytest.mark.parametrize("heads,kv_heads,head_dim,scaling", [(6, 2, 64, LLAMA3), (4, 4, 128, None), (8, 1, 32, None)])
def test_rope_from_qkv_rows_matches_hf(heads, kv_heads, head_dim, scaling):
    g = torch.Generator().manual_seed(head_dim)
    rope = RotaryEmbedding(head_dim, 4096, 500000.0, scaling)
    t = 37
    qkv = torch.randn(t, (heads + 2 * kv_heads) * head_dim, generator=g)
    positions = torch.randint(0, 4096, (t,), generator=g)
    q, k = rope.rotate_qkv(positions, qkv, heads, kv_heads)
    assert q.is_contiguous() and k.is_contiguous()
    hq = qkv[:, :heads * head_dim].view(t, heads, head_dim).transpose(0, 1)[None]  # HF's [B, H, T, D]
    hk = qkv[:, heads * head_dim:(heads + kv_heads) * head_dim].view(t, kv_heads, head_dim).transpose(0, 1)[None]
    cos, sin = (torch.cat([t[positions], t[positions]], -1)[None] for t in (rope.cos, rope.sin))  # HF's tables
    ref_q, ref_k = apply_rotary_pos_emb(hq, hk, cos, sin)
    assert torch.allclose(q, ref_q[0].transpose(0, 1), rtol=1e-5, atol=1e-6)
    assert torch.allclose(k, ref_k[0].transpose(0, 1), rtol=1e-5, atol=1e-6)


def test_rope_rejects_positions_outside_its_tables():
    rope = RotaryEmbedding(64, 128, 10000.0, None)
    qkv = torch.randn(2, 10 * 64)
    with pytest.raises(ValueError, match="position"):
        rope.rotate_qkv(torch.tensor([0, 128]), qkv, 6, 2)
    with pytest.raises(ValueError, match="position"):
        rope.rotate_qkv(torch.tensor([-1, 3]), qkv, 6, 2)


# 2-128 rows: small_gemm (decode); more: packed_gemm, with row blocks of 120, tiles of 6 x 16 and
# K slices of 384, so the shapes below have partial tiles, partial blocks and several K slices
@pytest.mark.parametrize("rows", [2, 7, 16, 17, 48, 128, 129, 250, 1001])
@pytest.mark.parametrize("in_features,out_features", [(384, 8192), (1024, 384), (64, 37), (803, 100)])
def test_linear_matches_torch(rows, in_features, out_features):
    g = torch.Generator().manual_seed(rows * out_features)
    x = torch.randn(rows, in_features, generator=g)
    w = torch.randn(out_features, in_features, generator=g) * in_features ** -0.5
    b = torch.randn(out_features, generator=g)
    assert torch.allclose(fused_ops.linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)
    assert torch.allclose(fused_ops.linear(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    x3 = x.view(1, rows, in_features)  # leading dims are flattened into rows
    assert torch.allclose(fused_ops.linear(x3, w), F.linear(x3, w), rtol=1e-5, atol=1e-5)


def test_linear_of_one_row_or_none_is_torch_exactly():
    w = torch.randn(64, 32)
    for rows in (0, 1):
        x = torch.randn(rows, 32)
        assert torch.equal(fused_ops.linear(x, w), F.linear(x, w))


def test_packed_gemm_rows_do_not_depend_on_the_rest_of_the_batch():
    """A row's result is the same bits alone or among others: per-request seeds rely on that."""
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(700, 384, generator=g), torch.randn(640, 384, generator=g)
    full = fused_ops.linear(x, w)
    for lo, hi in ((0, 129), (5, 300), (571, 700)):
        assert torch.equal(fused_ops.linear(x[lo:hi].contiguous(), w), full[lo:hi])


def test_mismatched_shapes_raise_from_torch_not_read_out_of_bounds():
    """The C code trusts its shapes; a mismatch must take the PyTorch path, which raises."""
    for rows in (4, 300):  # small_gemm's rows, packed_gemm's
        with pytest.raises(RuntimeError):
            fused_ops.linear(torch.randn(rows, 32), torch.randn(64, 48))
    with pytest.raises(RuntimeError):
        fused_ops.rms_norm(torch.randn(4, 32), torch.ones(48), 1e-5)
    with pytest.raises(RuntimeError):
        fused_ops.add_rms_norm(torch.randn(4, 32), torch.randn(5, 32), torch.ones(32), 1e-5)
