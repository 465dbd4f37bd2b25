"""Synthesized prompts: exact lengths, seeded, Mooncake prefix sharing preserved."""

from __future__ import annotations

import numpy as np

from banaserve.bench.prompts import FIRST_ID, PromptBuilder, PromptConfig
from banaserve.bench.spec import RequestSpec


def spec(index, n, hash_ids=None, block=8) -> RequestSpec:
    return RequestSpec(
        index=index, arrival_s=0.0, input_len=n, output_len=1, hash_ids=hash_ids, block_tokens=block
    )


def test_exact_length_range_and_seed():
    b = PromptBuilder(PromptConfig(vocab_size=50, seed=3))
    ids = b.token_ids(spec(0, 1000))
    assert len(ids) == 1000 and ids.min() >= FIRST_ID and ids.max() < 50
    assert np.array_equal(ids, PromptBuilder(PromptConfig(vocab_size=50, seed=3)).token_ids(spec(0, 1000)))
    assert not np.array_equal(ids, b.token_ids(spec(1, 1000)))  # other requests differ


def test_equal_hash_ids_give_equal_blocks():
    b = PromptBuilder(PromptConfig())
    a = b.token_ids(spec(0, 20, (7, 8, 9)))  # blocks of 8: 8 + 8 + 4
    c = PromptBuilder(PromptConfig()).token_ids(spec(5, 24, (7, 8, 10)))
    assert len(a) == 20 and len(c) == 24
    assert np.array_equal(a[:16], c[:16])  # shared prefix of two blocks
    assert not np.array_equal(a[16:20], c[16:20])
    d = b.token_ids(spec(6, 8, (8,)))
    assert np.array_equal(d, a[8:16])  # a block is the same wherever it appears


def test_lengths_beyond_the_hash_ids_are_filled():
    b = PromptBuilder(PromptConfig())
    ids = b.token_ids(spec(0, 30, (1, 2)))
    assert len(ids) == 30
    assert np.array_equal(ids[:16], np.concatenate([b.block(1, 8), b.block(2, 8)]))


def test_text_prompt_one_word_per_token():
    b = PromptBuilder(PromptConfig(text=True))
    text = b.text(spec(0, 37))
    assert len(text.split()) == 37
    t1, t2 = b.text(spec(1, 16, (4, 5))), b.text(spec(2, 16, (4, 6)))
    assert t1.split()[:8] == t2.split()[:8]
