"""Per-request block tables on top of the BlockPool: prefix hits, slot allocation, caching, freeing."""

from __future__ import annotations

from collections.abc import Sequence

from banaserve.kv.block_hash import BlockHash, hash_block
from banaserve.kv.block_pool import BlockPool


class BlockManager:
    """Owns which blocks each request holds. Token counts in, block ids out."""

    def __init__(self, num_blocks: int, block_size: int, root_hash: BlockHash = b"",
                 enable_prefix_caching: bool = True):
        self.pool = BlockPool(num_blocks, enable_prefix_caching)
        self.block_size = block_size
        self.root_hash = root_hash
        self.block_tables: dict[str, list[int]] = {}
        self.block_hashes: dict[str, list[BlockHash]] = {}  # keys of the request's computed full blocks

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def find_cached_prefix(self, token_ids: Sequence[int]) -> tuple[list[int], list[BlockHash]]:
        """Longest run of cached full blocks at the start of `token_ids` (no references taken).

        At least the last token is always left to compute: its logits are needed.
        """
        if not self.pool.enable_prefix_caching:
            return [], []
        bs = self.block_size
        max_blocks = (len(token_ids) - 1) // bs
        blocks: list[int] = []
        keys: list[BlockHash] = []
        parent = self.root_hash
        for i in range(max_blocks):
            chunk = token_ids[i * bs:(i + 1) * bs]
            key = hash_block(parent, chunk)
            b = self.pool.lookup(key, chunk)
            if b is None:
                break
            blocks.append(b)
            keys.append(key)
            parent = key
        return blocks, keys

    def can_allocate(self, request_id: str, num_tokens: int, cached_blocks: Sequence[int] = ()) -> bool:
        have = len(self.block_tables.get(request_id, ())) + len(cached_blocks)
        need = self.blocks_for(num_tokens) - have
        reclaimed = sum(1 for b in cached_blocks if self.pool.ref_counts[b] == 0)
        return need <= self.pool.num_free - reclaimed

    def allocate(self, request_id: str, num_tokens: int, cached_blocks: Sequence[int] = (),
                 cached_keys: Sequence[BlockHash] = ()) -> bool:
        """Make the request's table cover `num_tokens` tokens; False (nothing changed) if short of blocks."""
        if not self.can_allocate(request_id, num_tokens, cached_blocks):
            return False
        table = self.block_tables.setdefault(request_id, [])
        hashes = self.block_hashes.setdefault(request_id, [])
        if cached_blocks:
            assert not table, "prefix hits are only taken on a request's first allocation"
            self.pool.touch(cached_blocks)
            table.extend(cached_blocks)
            hashes.extend(cached_keys)
        need = self.blocks_for(num_tokens) - len(table)
        if need > 0:
            table.extend(self.pool.allocate(need))
        return True

    def cache_computed(self, request_id: str, token_ids: Sequence[int], num_computed: int) -> None:
        """Register the request's blocks that became full and computed, for later prefix hits."""
        if not self.pool.enable_prefix_caching:
            return
        table, hashes = self.block_tables[request_id], self.block_hashes[request_id]
        bs = self.block_size
        for i in range(len(hashes), num_computed // bs):
            chunk = token_ids[i * bs:(i + 1) * bs]
            key = hash_block(hashes[-1] if hashes else self.root_hash, chunk)
            self.pool.register(table[i], key, chunk)
            hashes.append(key)

    def free(self, request_id: str) -> None:
        table = self.block_tables.pop(request_id, None)
        self.block_hashes.pop(request_id, None)
        if table:
            self.pool.free(table)

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free

    @property
    def num_used_blocks(self) -> int:
        return self.pool.num_used
