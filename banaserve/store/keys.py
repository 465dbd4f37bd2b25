"""Each request's chained block keys, extended as its tokens grow instead of rehashed per step.

A waiting request is looked up every step it waits, and a long prompt prefilled in chunks saves
blocks every step: hashing from the root each time would be quadratic in the prompt. Tokens only
ever get appended (a recompute keeps them), so keys once made stay valid until `forget`.
"""

from __future__ import annotations

from banaserve.engine.request import Request
from banaserve.kv.block_hash import BlockHash, hash_blocks


class RequestKeys:
    def __init__(self, root: BlockHash, block_size: int):
        self.root = root
        self.block_size = block_size
        self.keys: dict[str, list[BlockHash]] = {}

    def upto(self, req: Request, num_blocks: int) -> list[BlockHash]:
        """Keys of the request's first `num_blocks` full blocks."""
        keys = self.keys.setdefault(req.request_id, [])
        if len(keys) < num_blocks:
            bs = self.block_size
            keys += hash_blocks(self.root, req.all_token_ids[:num_blocks * bs], bs, len(keys),
                                keys[-1] if keys else None)
        return keys[:num_blocks]

    def loadable(self, req: Request) -> list[BlockHash]:
        """Keys of the blocks a load may cover: whole blocks, never the last token (its logits)."""
        return self.upto(req, (req.num_tokens - 1) // self.block_size)

    def forget(self, request_id: str) -> None:
        self.keys.pop(request_id, None)
