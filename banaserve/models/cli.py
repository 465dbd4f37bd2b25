"""`banaserve make-model`: write a random HF-format checkpoint."""

from __future__ import annotations

import argparse

from banaserve.models.make_model import ARCHS, PRESETS, make_model


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="banaserve make-model", description=__doc__)
    ap.add_argument("--arch", choices=sorted(ARCHS), default="llama")
    ap.add_argument("--preset", choices=list(PRESETS), default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shards", type=int, default=1, help="split weights over N files with an index")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.shards < 1:
        ap.error("--shards must be >= 1")
    path = make_model(args.arch, args.preset, args.seed, args.out, args.shards)
    print(path)
    return 0
