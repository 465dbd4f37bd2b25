import torch

from banaserve.engine.request import Request
from banaserve.engine.sampler import sample
from banaserve.engine.sampling_params import SamplingParams


def reqs(*params: SamplingParams) -> list[Request]:
    out = []
    for i, p in enumerate(params):
        r = Request(str(i), [1], p)
        r.generator = torch.Generator().manual_seed(p.seed if p.seed is not None else 1234 + i)
        out.append(r)
    return out


def test_greedy_is_argmax():
    logits = torch.randn(3, 50)
    assert sample(logits, reqs(*[SamplingParams(temperature=0)] * 3)) == logits.argmax(-1).tolist()


def test_top_k_one_equals_greedy_and_top_p_tiny_too():
    logits = torch.randn(2, 50)
    got = sample(logits, reqs(SamplingParams(temperature=1.0, top_k=1), SamplingParams(temperature=1.0, top_p=1e-6)))
    assert got == logits.argmax(-1).tolist()


def test_samples_stay_inside_top_k_and_follow_distribution():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    counts = torch.zeros(5)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2000):
        r = Request("x", [1], SamplingParams(temperature=1.0, top_k=3))
        r.generator = gen
        counts[sample(logits, [r])[0]] += 1
    assert counts[3:].sum() == 0
    expected = torch.softmax(logits[0, :3], -1) * 2000
    assert torch.allclose(counts[:3], expected, rtol=0.15)


def test_seed_gives_same_tokens_whatever_the_batch():
    logits = torch.randn(1, 100)
    p = SamplingParams(temperature=1.0, seed=42)
    alone = [sample(logits, reqs(p))[0] for _ in range(1)]
    others = torch.randn(3, 100)
    batched = sample(torch.cat([others, logits]), reqs(SamplingParams(temperature=0.7),
                                                        SamplingParams(temperature=0),
                                                        SamplingParams(temperature=1.3, top_p=0.5), p))
    assert batched[-1] == alone[0]
