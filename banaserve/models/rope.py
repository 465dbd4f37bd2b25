"""Rotary position embeddings, including Llama 3 and linear frequency scaling."""

from __future__ import annotations

import math

import torch

from banaserve.models.fused_ops import rope_qk


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    """Inverse frequencies [head_dim // 2] in fp32 on CPU, computed the way HF does (so logits match)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    kind = (scaling or {}).get("rope_type") or (scaling or {}).get("type") or "default"
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled)
    raise ValueError(f"unsupported rope scaling type {kind!r}")


class RotaryEmbedding(torch.nn.Module):
    """Precomputed cos/sin tables; `forward` rotates q and k at the given positions."""

    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: dict | None):
        super().__init__()
        self.args = (head_dim, theta, scaling)
        self.max_positions = max_positions
        self._last: tuple | None = None  # (positions, dtype, cos, sin) of the last call
        self.build("cpu")

    def build(self, device: torch.device | str) -> None:
        """(Re)compute the fp32 tables on `device` (models are built on the meta device first)."""
        inv_freq = rope_inv_freq(*self.args)
        freqs = torch.arange(self.max_positions, dtype=torch.float32, device="cpu")[:, None] * inv_freq
        # [max_positions, D/2]: HF's tables are these twice over (cat(freqs, freqs)), so one half serves
        self.register_buffer("cos", freqs.cos().to(device), persistent=False)
        self.register_buffer("sin", freqs.sin().to(device), persistent=False)
        self._last = None
        self._checked: torch.Tensor | None = None  # the last positions tensor found inside the tables

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        # q: [T, Hq, D], k: [T, Hkv, D]; tables are fp32 and cast like HF does
        cos, sin = self._tables(positions, q.dtype)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)

    def rotate_qkv(self, positions: torch.Tensor, qkv: torch.Tensor, num_heads: int, num_kv_heads: int
                   ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Rotated q and k read straight from fused qkv rows in one native pass (None: not applicable)."""
        if qkv.device.type != "cpu":
            return None
        if positions is not self._checked:  # every layer of a step passes the same tensor: check once
            if positions.numel() and not 0 <= int(positions.min()) <= int(positions.max()) < self.max_positions:
                raise ValueError("position outside the rotary tables")
            self._checked = positions
        return rope_qk(qkv, positions, self.cos, self.sin, num_heads, num_kv_heads, self.args[0])

    def _tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Half-width cos/sin [T, 1, D/2] at `positions`, reused while every layer of a step asks
        with the same positions tensor."""
        cached = self._last
        if cached is not None and cached[0] is positions and cached[1] == dtype:
            return cached[2], cached[3]
        cos = self.cos[positions].to(dtype).unsqueeze(1)
        sin = self.sin[positions].to(dtype).unsqueeze(1)
        self._last = (positions, dtype, cos, sin)
        return cos, sin


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, written per half: the same products and sums as HF's form
    ((-b) * s == -(b * s) exactly), without materialising rotate_half."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    out = torch.empty_like(x)
    torch.sub(a * cos, b * sin, out=out[..., :half])
    torch.add(b * cos, a * sin, out=out[..., half:])
    return out
