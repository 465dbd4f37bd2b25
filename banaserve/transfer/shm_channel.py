"""Shared-memory push: copy a layer's blocks straight into the decode instance's mapped KV cache."""

from __future__ import annotations

import torch

from banaserve.transfer.layout import KVLayout, block_runs
from banaserve.transfer.shm_kv import ShmKVSegment


class ShmPushTarget:
    """Writer side of one decode instance's segment (same host). Not thread-safe: one pusher thread."""

    kind = "shm"

    def __init__(self, addr: str, local: KVLayout):
        self.addr = addr
        self.segment = ShmKVSegment.attach(addr)
        try:
            local.check(self.segment.layout)
        except Exception:
            self.segment.close()
            raise
        self.num_blocks = self.segment.layout.num_blocks
        self.block_bytes = local.block_bytes
        self.bytes_pushed = 0

    def push_layer(self, tid: int, layer: int, src: torch.Tensor, src_blocks: list[int],
                   dst_blocks: list[int], first_index: int) -> int:
        """Copy blocks `src_blocks` of local layer cache `src` into the peer's `dst_blocks`."""
        dst = self.segment.tensors[layer]
        for s, d, n in block_runs(src_blocks, dst_blocks):
            dst[:, d:d + n].copy_(src[:, s:s + n])
        nbytes = len(src_blocks) * self.block_bytes
        self.bytes_pushed += nbytes
        return nbytes

    def finish(self, tid: int, num_frames: int) -> None:
        """Nothing to flush: every copy above completed before it returned."""

    def close(self) -> None:
        self.segment.close()
