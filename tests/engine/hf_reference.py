"""Greedy decoding with HF transformers: the correctness oracle for every engine test."""

from __future__ import annotations

import torch


def load_hf(path: str, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()


@torch.inference_mode()
def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy tokens after `prompt_ids`, ignoring EOS, using HF's own KV cache."""
    device = next(model.parameters()).device
    out = model(torch.tensor([prompt_ids], device=device), use_cache=True)
    past, tokens = out.past_key_values, []
    nxt = int(out.logits[0, -1].argmax())
    for _ in range(max_new_tokens - 1):
        tokens.append(nxt)
        out = model(torch.tensor([[nxt]], device=device), past_key_values=past, use_cache=True)
        past = out.past_key_values
        nxt = int(out.logits[0, -1].argmax())
    tokens.append(nxt)
    return tokens
