"""The router's guess of what each instance's prefix cache holds, for cache-aware routing.

As SGLang's router does with its approximate radix tree, the router remembers the block keys
of the prompts it sent to each instance (not what the instance really kept), bounded per
instance by LRU so that it forgets roughly as fast as the instance's cache evicts. Keys are the
chained block hashes (kv/block_hash.py), so a prompt's match is the length of the run of its
keys, from the first, that an instance has seen.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class PrefixIndex:
    capacity_blocks: int  # per instance
    seen: dict[int, OrderedDict[bytes, None]] = field(default_factory=dict)

    def match(self, instance_id: int, keys: list[bytes]) -> int:
        """Blocks of `keys`, from the first, that `instance_id` was sent."""
        seen = self.seen.get(instance_id)
        n = 0
        for k in keys if seen else ():
            if k not in seen:
                break
            n += 1
        return n

    def matches(self, instance_ids: list[int], keys: list[bytes]) -> dict[int, int]:
        return {i: self.match(i, keys) for i in instance_ids}

    def record(self, instance_id: int, keys: list[bytes]) -> None:
        seen = self.seen.setdefault(instance_id, OrderedDict())
        for k in keys:
            seen[k] = None
            seen.move_to_end(k)
        while len(seen) > self.capacity_blocks:
            seen.popitem(last=False)

    def forget(self, instance_id: int) -> None:
        """The instance died (its cache is gone)."""
        self.seen.pop(instance_id, None)
