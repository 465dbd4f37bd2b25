"""Synthesized prompts: seeded token ids of exact length, with Mooncake hash ids mapped to shared blocks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from banaserve.bench.spec import BenchError, RequestSpec

FIRST_ID = 3  # ids 0-2 are often special (pad, bos, eos) in real vocabularies

# Common English words: most tokenizers encode " word" as a single token, so --prompt-text
# lengths come out close to the requested ones (the server's usage reports the exact count).
WORDS = (
    "the of and to in is for on that with as was at by from be this have are or an it not but "
    "all can one has more new will were which their time about other been into some may only over "
    "after also many most such first two made well year like just where when what then than them "
    "these there could would should each both much very still long high part place world work life "
    "day way back down under while last great little state home water light small large found"
).split()

MAX_CACHED_BLOCKS = 65536  # ~128 MiB of int32 blocks at 512 tokens each


@dataclass(slots=True)
class PromptConfig:
    """How prompts are synthesized. Token ids are drawn from [3, vocab_size)."""

    vocab_size: int = 1000
    seed: int = 0
    text: bool = False


class PromptBuilder:
    """Builds each request's prompt deterministically from (seed, request index or hash id)."""

    def __init__(self, cfg: PromptConfig):
        if cfg.vocab_size <= FIRST_ID:
            raise BenchError(f"--vocab-size must be > {FIRST_ID}, got {cfg.vocab_size}")
        self.cfg = cfg
        self._blocks: dict[tuple[int, int], np.ndarray] = {}

    def _random(self, key: list[int], n: int) -> np.ndarray:
        rng = np.random.default_rng([self.cfg.seed, *key])
        return rng.integers(FIRST_ID, self.cfg.vocab_size, size=n, dtype=np.int32)

    def block(self, hash_id: int, block_tokens: int) -> np.ndarray:
        """The `block_tokens` ids that hash id `hash_id` always maps to."""
        key = (hash_id, block_tokens)
        ids = self._blocks.get(key)
        if ids is None:
            if len(self._blocks) >= MAX_CACHED_BLOCKS:
                self._blocks.clear()
            ids = self._blocks[key] = self._random([1, hash_id], block_tokens)
        return ids

    def token_ids(self, spec: RequestSpec) -> np.ndarray:
        """Exactly `spec.input_len` token ids."""
        n = spec.input_len
        if spec.hash_ids is None:
            return self._random([0, spec.index], n)
        need = -(-n // spec.block_tokens)
        parts = [self.block(h, spec.block_tokens) for h in spec.hash_ids[:need]]
        have = len(parts) * spec.block_tokens
        if have < n:  # lengths scaled up past the hash ids: fill with tokens unique to this request
            parts.append(self._random([0, spec.index], n - have))
        return np.concatenate(parts)[:n]

    def text(self, spec: RequestSpec) -> str:
        """The prompt as words, one word per synthesized token id."""
        ids = self.token_ids(spec)
        return " ".join(WORDS[i % len(WORDS)] for i in ids.tolist())
