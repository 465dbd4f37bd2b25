"""Offline throughput: banaserve vs HF transformers `generate` on the same requests, same run.

Requests take their prompt/output lengths from the Azure LLM 2023 conversation trace (clipped),
prompts are random token ids, decoding is greedy with EOS ignored so both systems produce
exactly the requested number of tokens. HF runs batched with left padding (requests sorted by
length to limit padding, which favours the baseline). Prints output tokens/s for both and the
ratio; the last line is the headline ratio.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from banaserve import LLM, SamplingParams  # noqa: E402
from banaserve.bench.traces import load_trace  # noqa: E402
from banaserve.models.config import ModelConfig  # noqa: E402
from banaserve.models.make_model import make_model  # noqa: E402


def trace_lengths(trace_file: str | None, n: int, max_in: int, max_out: int, seed: int) -> list[tuple[int, int]]:
    trace = load_trace("azure-conv", trace_file)
    rows = list(zip(trace.input_len.tolist(), trace.output_len.tolist()))
    rng = random.Random(seed)
    return [(max(1, min(i, max_in)), max(1, min(o, max_out))) for i, o in rng.sample(rows, n)]


def run_banaserve(path, prompts, outs, device, dtype) -> tuple[float, list[list[int]]]:
    llm = LLM(path, device=device, dtype=dtype, max_num_seqs=len(prompts), max_num_batched_tokens=2048)
    params = [SamplingParams(max_tokens=o, temperature=0.0, ignore_eos=True) for o in outs]
    llm.generate(prompt_token_ids=[prompts[0][:8]], sampling_params=SamplingParams(max_tokens=2))  # warm up
    t = time.perf_counter()
    results = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    return time.perf_counter() - t, [r.token_ids for r in results]


@torch.inference_mode()
def run_hf(path, prompts, outs, device, dtype, batch_size) -> tuple[float, list[list[int]]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
    model.generation_config.eos_token_id = None  # ignore EOS, like banaserve's ignore_eos
    pad = 0
    warm = torch.tensor([prompts[0][:8]], device=device)  # as banaserve's: CUDA/cuBLAS set-up is not timed
    model.generate(input_ids=warm, attention_mask=torch.ones_like(warm), max_new_tokens=2, do_sample=False,
                   pad_token_id=pad)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[list[int]] = [[] for _ in prompts]
    t = time.perf_counter()
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in idx], device=device)
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in idx], device=device)
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(outs[i] for i in idx),
                             do_sample=False, pad_token_id=pad)
        for row, i in enumerate(idx):
            results[i] = gen[row, width:width + outs[i]].tolist()
    return time.perf_counter() - t, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="small", choices=["tiny", "small", "base"])
    ap.add_argument("--num-requests", type=int, default=128)
    ap.add_argument("--max-input", type=int, default=1024)
    ap.add_argument("--max-output", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="default: float32 on cpu, bfloat16 on cuda")
    ap.add_argument("--hf-batch-size", type=int, default=16)
    ap.add_argument("--trace-file", default=None, help="default: azure-conv from ../shared/traces")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="32 requests clipped to 256 in / 64 out")
    ap.add_argument("--phases", action="store_true",
                    help="also time both with one output token each: prompt (prefill) time vs the rest")
    args = ap.parse_args()
    if args.quick:
        args.num_requests, args.max_input, args.max_output = 32, 256, 64
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    lengths = trace_lengths(args.trace_file, args.num_requests, args.max_input, args.max_output, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = make_model("llama", args.preset, 0, os.path.join(tmp, "model"))
        vocab = ModelConfig.from_pretrained(path).vocab_size
        rng = random.Random(args.seed)
        prompts = [[rng.randrange(3, vocab) for _ in range(i)] for i, _ in lengths]
        outs = [o for _, o in lengths]
        total_out = sum(outs)
        print(f"{len(prompts)} requests, {sum(len(p) for p in prompts)} prompt tokens, {total_out} output tokens, "
              f"preset {args.preset}, {args.device} {dtype}, torch threads {torch.get_num_threads()}")
        t_hf, hf_tokens = run_hf(path, prompts, outs, args.device, dtype, args.hf_batch_size)
        t_bs, bs_tokens = run_banaserve(path, prompts, outs, args.device, dtype)
        if args.phases:
            ones = [1] * len(outs)
            p_hf = run_hf(path, prompts, ones, args.device, dtype, args.hf_batch_size)[0]
            p_bs = run_banaserve(path, prompts, ones, args.device, dtype)[0]
            for name, full, pre in (("transformers", t_hf, p_hf), ("banaserve", t_bs, p_bs)):
                print(f"{name:<12} prompts with 1 output token: {pre:.1f} s; the other tokens: {full - pre:.1f} s")
    same = sum(a == b for a, b in zip(hf_tokens, bs_tokens))
    print(f"transformers generate (batch {args.hf_batch_size}): {t_hf:.1f} s, {total_out / t_hf:.1f} output tok/s")
    print(f"banaserve LLM.generate:                 {t_bs:.1f} s, {total_out / t_bs:.1f} output tok/s")
    print(f"identical greedy outputs: {same}/{len(prompts)}")
    print(f"throughput ratio banaserve / transformers: {t_hf / t_bs:.2f}x")


if __name__ == "__main__":
    main()
