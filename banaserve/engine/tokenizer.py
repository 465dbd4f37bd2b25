"""Tokenizer loading (tokenizer.json via `tokenizers`) and incremental detokenization."""

from __future__ import annotations

import json
import os

from tokenizers import Tokenizer


class TextTokenizer:
    """Encode/decode with the checkpoint's tokenizer.json; knows the chat template and EOS tokens."""

    def __init__(self, path: str):
        file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(file):
            raise ValueError(f"no tokenizer.json in {path!r}")
        self.tokenizer = Tokenizer.from_file(file)
        cfg_file = os.path.join(path, "tokenizer_config.json")
        self.config: dict = {}
        if os.path.isfile(cfg_file):
            with open(cfg_file) as f:
                self.config = json.load(f)
        self.chat_template: str | None = self.config.get("chat_template")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=True).ids

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)


class IncrementalDetokenizer:
    """Text of a growing token list, emitted as deltas that never split a UTF-8 character.

    Decoding a short window (`prefix_offset` to the end) instead of the whole output keeps it
    O(1) per token; the window's own prefix is decoded too so that only new text is emitted.
    """

    def __init__(self, tokenizer: TextTokenizer):
        self.tokenizer = tokenizer
        self.token_ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""

    def add(self, token_ids: list[int]) -> str:
        self.token_ids.extend(token_ids)
        window = self.token_ids[self.prefix_offset:]
        prefix_text = self.tokenizer.decode(self.token_ids[self.prefix_offset:self.read_offset])
        new_text = self.tokenizer.decode(window)
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return ""  # an incomplete character: wait for more tokens
        delta = new_text[len(prefix_text):]
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.token_ids)
        self.text += delta
        return delta
