from banaserve.kv.block_manager import BlockManager


def test_prefix_hit_after_caching_and_last_token_recomputed():
    bm = BlockManager(16, 4, b"root")
    tokens = list(range(12))
    assert bm.allocate("a", 12)
    bm.cache_computed("a", tokens, 12)
    blocks, keys = bm.find_cached_prefix(tokens)
    assert len(blocks) == 2  # 3 full blocks cached, but the last token must be computed
    blocks, _ = bm.find_cached_prefix(tokens + [99])
    assert blocks == bm.block_tables["a"][:3]
    assert bm.allocate("b", 13, blocks, keys[:3] if len(keys) >= 3 else bm.block_hashes["a"][:3])
    assert bm.block_tables["b"][:3] == bm.block_tables["a"][:3]
    assert bm.pool.ref_counts[bm.block_tables["a"][0]] == 2
    bm.free("a")
    bm.free("b")
    assert bm.num_used_blocks == 0 and bm.pool.num_cached_free == 3


def test_allocate_refuses_without_side_effects():
    bm = BlockManager(4, 4)
    assert bm.allocate("a", 12)
    assert not bm.allocate("b", 8)
    assert "b" not in bm.block_tables or not bm.block_tables["b"]
    assert bm.num_free_blocks == 1


def test_reclaiming_cached_free_blocks_counts_against_free():
    bm = BlockManager(3, 2, b"r")
    assert bm.allocate("a", 6)
    bm.cache_computed("a", [1, 2, 3, 4, 5, 6], 6)
    bm.free("a")
    blocks, keys = bm.find_cached_prefix([1, 2, 3, 4, 7])
    assert len(blocks) == 2
    # 2 hits are free blocks; taking them leaves 1 free: 5 tokens = 3 blocks fit, 7 do not
    assert bm.can_allocate("b", 5, blocks) and not bm.can_allocate("b", 7, blocks)
