"""`banaserve generate`: one prompt through one offline engine, completion to stdout."""

from __future__ import annotations

import argparse
import sys

from banaserve.engine.llm import LLM
from banaserve.engine.sampling_params import SamplingParams


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="banaserve generate", description=__doc__)
    ap.add_argument("--model", default=None, help="HF checkpoint dir (default: the small llama preset)")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    ap.add_argument("--ignore-eos", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args(argv)
    try:
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                                top_k=args.top_k, seed=args.seed, stop=args.stop, ignore_eos=args.ignore_eos)
        llm = LLM(args.model, device=args.device, dtype=args.dtype)
        out = llm.generate([args.prompt], params)[0]
    except ValueError as exc:
        print(f"banaserve generate: error: {exc}", file=sys.stderr)
        return 2
    print(out.text)
    return 0
