import pytest

from banaserve.kv.block_hash import hash_block, hash_blocks
from banaserve.kv.block_pool import BlockPool


def test_allocate_free_refcounts():
    pool = BlockPool(4)
    a = pool.allocate(3)
    assert pool.num_free == 1 and pool.num_used == 3
    pool.touch([a[0]])
    pool.free(a)
    assert pool.num_free == 3  # a[0] still held by the second reference
    pool.free([a[0]])
    assert pool.num_free == 4
    with pytest.raises(RuntimeError):
        pool.allocate(5)
    with pytest.raises(RuntimeError):
        pool.free([a[0]])


def test_cached_blocks_survive_until_reused_lru():
    pool = BlockPool(3)
    blocks = pool.allocate(3)
    keys = [hash_block(b"root", [i]) for i in range(3)]
    for b, k, i in zip(blocks, keys, range(3)):
        pool.register(b, k, [i])
    pool.free(blocks)  # freed tail first: blocks[2] is the least recently freed... then 1, then 0
    assert pool.num_cached_free == 3
    assert pool.lookup(keys[0], [0]) == blocks[0]
    (taken,) = pool.allocate(1)
    assert taken == blocks[2]  # the tail of the sequence is evicted first
    assert pool.lookup(keys[2], [2]) is None
    assert pool.lookup(keys[0], [0]) == blocks[0]


def test_lookup_verifies_tokens():
    pool = BlockPool(2)
    (b,) = pool.allocate(1)
    key = hash_block(b"root", [1, 2])
    pool.register(b, key, [1, 2])
    assert pool.lookup(key, [1, 2]) == b
    assert pool.lookup(key, [1, 3]) is None  # a (forced) hash collision is caught


def test_chained_hash_depends_on_prefix_and_root():
    a = hash_blocks(b"m1", list(range(8)), 4)
    b = hash_blocks(b"m1", [0, 0, 0, 0] + list(range(4, 8)), 4)
    c = hash_blocks(b"m2", list(range(8)), 4)
    assert len(a) == 2 and a[0] != b[0] and a[1] != b[1]  # same 2nd block, different prefix
    assert a[0] != c[0]  # another model never shares keys
    assert hash_blocks(b"m1", list(range(9)), 4) == a  # partial blocks are not keyed
