"""Fixed pool of KV blocks with reference counts and a prefix cache of full blocks.

Free blocks sit in one LRU queue whether or not they still hold cached content; allocation
takes the least recently freed block and drops its cache entry only then, so cached
prefixes survive as long as memory allows.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from banaserve.kv.block_hash import BlockHash


class BlockPool:
    """Block ids 0..num_blocks-1; `ref_counts[b]` > 0 means some request holds block b."""

    def __init__(self, num_blocks: int, enable_prefix_caching: bool = True):
        if num_blocks <= 0:
            raise ValueError("the KV cache needs at least one block")
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.free_queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.cached: dict[BlockHash, int] = {}  # key -> block holding that content
        self.block_keys: list[BlockHash | None] = [None] * num_blocks
        self.block_tokens: list[tuple[int, ...] | None] = [None] * num_blocks

    @property
    def num_free(self) -> int:
        """Blocks that can be allocated now (free, cached content or not)."""
        return len(self.free_queue)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free_queue)

    @property
    def num_cached_free(self) -> int:
        """Free blocks still holding reusable prefix-cache content."""
        return sum(1 for b in self.free_queue if self.block_keys[b] is not None)

    def allocate(self, n: int) -> list[int]:
        if n > len(self.free_queue):
            raise RuntimeError(f"out of KV blocks: want {n}, have {len(self.free_queue)}")
        out = []
        for _ in range(n):
            b, _ = self.free_queue.popitem(last=False)
            self._forget(b)
            self.ref_counts[b] = 1
            out.append(b)
        return out

    def touch(self, blocks: Sequence[int]) -> None:
        """Take a reference on blocks found in the prefix cache."""
        for b in blocks:
            if self.ref_counts[b] == 0:
                del self.free_queue[b]
            self.ref_counts[b] += 1

    def free(self, blocks: Sequence[int]) -> None:
        """Drop one reference each; the tail of a sequence goes first so prefixes are evicted last."""
        for b in reversed(blocks):
            self.ref_counts[b] -= 1
            if self.ref_counts[b] == 0:
                self.free_queue[b] = None
            elif self.ref_counts[b] < 0:
                raise RuntimeError(f"block {b} freed twice")

    def lookup(self, key: BlockHash, tokens: Sequence[int]) -> int | None:
        """Block holding exactly `tokens` under `key`, or None (a hash hit is verified by tokens)."""
        b = self.cached.get(key)
        if b is None or self.block_tokens[b] != tuple(tokens):
            return None
        return b

    def register(self, block: int, key: BlockHash, tokens: Sequence[int]) -> None:
        """Publish a full, computed block under `key` for later prefix hits."""
        if not self.enable_prefix_caching or self.block_keys[block] is not None:
            return
        if key in self.cached:  # same content computed twice concurrently: keep the first
            return
        self.cached[key] = block
        self.block_keys[block] = key
        self.block_tokens[block] = tuple(tokens)

    def reset_prefix_cache(self) -> None:
        for b in range(self.num_blocks):
            self._forget(b)

    def _forget(self, b: int) -> None:
        key = self.block_keys[b]
        if key is not None:
            if self.cached.get(key) == b:
                del self.cached[key]
            self.block_keys[b] = None
            self.block_tokens[b] = None
