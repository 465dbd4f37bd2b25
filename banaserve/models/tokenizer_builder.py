"""A real byte-level BPE tokenizer, trained deterministically on generated text.

Random-weight checkpoints still need a tokenizer that round-trips every UTF-8 string and
whose vocabulary matches the model's, so we train one on a synthetic corpus: English-like
words built from syllables with Zipf-like frequencies, plus some fixed prose and code.
"""

from __future__ import annotations

import random

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_SYLLABLES = [c + v for c in "bcdfghjklmnprstvwyz" for v in ("a", "e", "i", "o", "u", "ai", "ou")] + [
    "th", "sh", "ch", "ing", "ed", "er", "ly", "tion", "ment", "able", "st", "nd",
]
_FIXED_TEXT = """The quick brown fox jumps over the lazy dog. A serving system batches requests,
pages the key-value cache and streams tokens back to the client as soon as they are ready.
def forward(self, x):\n    return self.layers(x) + 1\nfor i in range(10):\n    print(i, i * i)
Prefill computes the prompt; decode produces one token per step. 0123456789 +-*/=<>()[]{}
Ünïcödé façade naïve café — 東京 北京 서울 Москва 🙂 ∑ ∞ ≤ ≥ λ"""


def synthetic_corpus(num_words: int = 400_000, lexicon_size: int = 60_000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lexicon = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(lexicon_size)]
    weights = [1.0 / (rank + 1) for rank in range(len(lexicon))]
    words = rng.choices(lexicon, weights=weights, k=num_words)
    lines = [" ".join(words[i:i + 16]) + rng.choice([".", ",", "!", "?", ";"])
             for i in range(0, num_words, 16)]
    return lines + _FIXED_TEXT.splitlines() * 50


def build_tokenizer(vocab_size: int, seed: int = 0) -> Tokenizer:
    """Train a byte-level BPE with exactly `vocab_size` entries (special tokens included)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(synthetic_corpus(seed=seed), trainer=trainer)
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"tokenizer training reached {tok.get_vocab_size()} tokens, wanted {vocab_size}")
    return tok


CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
