"""Next-token choice from logits: greedy, temperature, top-k, top-p, per-request seeds."""

from __future__ import annotations

import torch

from banaserve.engine.request import Request


def sample(logits: torch.Tensor, requests: list[Request]) -> list[int]:
    """One token per row of `logits` [N, V] (fp32), row i belonging to `requests[i]`."""
    return choose_tokens(logits, requests).tolist()


def choose_tokens(logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
    """The tokens of `sample` as an int64 tensor [N] on the logits' device (one copy to the host).

    Random rows use the exponential-race trick (argmax p / E, E ~ Exp(1)), drawing E from the
    request's own generator when it has a seed, so its tokens do not depend on the batch.
    """
    greedy = torch.tensor([r.params.greedy for r in requests])
    if bool(greedy.all()):
        return logits.argmax(dim=-1)
    device = logits.device
    temps = torch.tensor([r.params.temperature or 1.0 for r in requests], device=device)
    logits = logits / temps[:, None]
    logits = _apply_top_k_top_p(logits, requests)
    probs = torch.softmax(logits, dim=-1)
    noise = torch.empty_like(probs)
    for i, r in enumerate(requests):
        noise[i].exponential_(generator=r.generator)
    sampled = (probs / noise).argmax(dim=-1)
    return torch.where(greedy.to(device), logits.argmax(dim=-1), sampled)


def _apply_top_k_top_p(logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
    vocab = logits.shape[-1]
    ks = [r.params.top_k if r.params.top_k > 0 else vocab for r in requests]
    ps = [r.params.top_p for r in requests]
    if all(k >= vocab for k in ks) and all(p >= 1.0 for p in ps):
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    rank = torch.arange(vocab, device=logits.device)[None, :]
    drop = rank >= torch.tensor(ks, device=logits.device)[:, None]
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(sorted_logits, dim=-1)
    # drop a token once the mass before it already reaches top_p (the top token always stays)
    mass_before = probs.cumsum(dim=-1) - probs
    drop = mass_before >= torch.tensor(ps, device=logits.device)[:, None]
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
