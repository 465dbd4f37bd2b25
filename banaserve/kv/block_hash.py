"""Chained hashes of full KV blocks: the prefix-cache key shared by the engine, router and store."""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence

BlockHash = bytes


def hash_block(parent: BlockHash, token_ids: Sequence[int]) -> BlockHash:
    """Key of a block whose tokens are `token_ids` and whose prefix's key is `parent`.

    The first block's parent is the model fingerprint, so different models or KV layouts
    never share keys. Stable across processes and hosts (unlike Python's `hash`).
    """
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(array("q", token_ids).tobytes())
    return h.digest()


def hash_blocks(root: BlockHash, token_ids: Sequence[int], block_size: int,
                start_block: int = 0, parent: BlockHash | None = None) -> list[BlockHash]:
    """Keys of the full blocks of `token_ids` from `start_block` on (`parent` = key before it)."""
    keys: list[BlockHash] = []
    prev = root if parent is None else parent
    for b in range(start_block, len(token_ids) // block_size):
        prev = hash_block(prev, token_ids[b * block_size:(b + 1) * block_size])
        keys.append(prev)
    return keys
