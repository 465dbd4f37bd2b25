"""The KV layout both ends of a transfer must agree on, and the handshake check over it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:  # the control plane (router, simulator) reads layouts without torch
    import torch

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class TransferRefused(RuntimeError):
    """The peer's model or KV layout differs from ours (or the peer cannot be reached)."""


class KVLayout(msgspec.Struct, frozen=True):
    """Shape of one instance's paged KV cache: per layer [2, num_blocks, block_size, kv_heads, head_dim].

    `fingerprint` (hex) identifies the model weights, dtype and block size; `num_blocks` is the
    size of this particular cache and is not part of compatibility.
    """

    fingerprint: str
    num_layers: int
    block_size: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    num_blocks: int

    @classmethod
    def of(cls, fingerprint: bytes, kv_caches: list[torch.Tensor]) -> KVLayout:
        _, nb, bs, h, d = kv_caches[0].shape
        dtype = str(kv_caches[0].dtype).removeprefix("torch.")
        return cls(fingerprint.hex(), len(kv_caches), bs, h, d, dtype, nb)

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch
        return getattr(torch, self.dtype)

    @property
    def block_bytes(self) -> int:
        """Bytes of one block of one layer, keys and values together."""
        return 2 * self.block_size * self.num_kv_heads * self.head_dim * DTYPE_BYTES[self.dtype]

    @property
    def layer_bytes(self) -> int:
        return self.block_bytes * self.num_blocks

    def layer_shape(self) -> tuple[int, int, int, int, int]:
        return (2, self.num_blocks, self.block_size, self.num_kv_heads, self.head_dim)

    def mismatch(self, other: KVLayout) -> str | None:
        """Why KV written in `other`'s layout cannot be read in this one, or None if it can."""
        for name in ("fingerprint", "num_layers", "block_size", "num_kv_heads", "head_dim", "dtype"):
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                return f"{name} differs: {a!r} here, {b!r} at the peer"
        return None

    def check(self, other: KVLayout) -> None:
        """Raise TransferRefused unless `other` is compatible."""
        why = self.mismatch(other)
        if why is not None:
            raise TransferRefused(f"KV layout mismatch: {why}")

    def validate(self) -> None:
        """Reject layouts read from the wire whose sizes make no sense."""
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"unknown KV dtype {self.dtype!r}")
        for name in ("num_layers", "block_size", "num_kv_heads", "head_dim", "num_blocks"):
            v = getattr(self, name)
            if not 0 < v <= (1 << 24):
                raise ValueError(f"KV layout field {name}={v} out of range")


def block_runs(src: list[int], dst: list[int]) -> list[tuple[int, int, int]]:
    """(src_start, dst_start, length) runs where both block lists go up by one together.

    Freshly allocated blocks are mostly consecutive, so a layer's copy becomes a few large slice
    copies instead of one small copy per block.
    """
    runs: list[tuple[int, int, int]] = []
    for s, d in zip(src, dst, strict=True):
        if runs and runs[-1][0] + runs[-1][2] == s and runs[-1][1] + runs[-1][2] == d:
            s0, d0, n = runs[-1]
            runs[-1] = (s0, d0, n + 1)
        else:
            runs.append((s, d, 1))
    return runs
