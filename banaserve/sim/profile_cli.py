"""`banaserve profile`: measure the real engine's step times for the simulator."""

from __future__ import annotations

import argparse
import json
import os
import sys

from banaserve.sim.profile_table import ProfileTable, load_profile
from banaserve.sim.profiler import DEFAULT_GRID, QUICK_GRID, ProfileGrid


class ArgError(ValueError):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ArgError(message)


def int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> Parser:
    p = Parser(prog="banaserve profile",
               description="Measure step times of the real engine over "
                           "(prefill tokens, decode batch, context).")
    p.add_argument("--model", default=None, help="checkpoint directory (default: the small default model)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on CUDA), float32, ...")
    p.add_argument("--out", required=True, help="profile JSON to write")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's); use the value the live engine runs with")
    p.add_argument("--kv-cache-gb", type=float, default=2.0, help="KV cache size on CPU (as the engine)")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--max-num-seqs", type=int, default=128)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--prefill-tokens", type=int_list, default=None, help="grid axis, e.g. 0,32,128,512")
    p.add_argument("--decode-batch", type=int_list, default=None, help="grid axis, e.g. 0,1,2,4,8")
    p.add_argument("--context", type=int_list, default=None, help="grid axis, e.g. 128,512,2048")
    p.add_argument("--repeats", type=int, default=None, help="passes over the grid, each timing every "
                   "point once in shuffled order (mean kept)")
    p.add_argument("--quick", action="store_true", help="a small grid (minutes on CPU), for smoke tests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no per-point progress lines")
    p.add_argument("--serving", choices=("colocated", "disagg"), default=None,
                   help="also measure what a live `banaserve serve` of this mode adds per step and per "
                        "request (sim/serving_calibration.py); CPU only")
    p.add_argument("--serving-repeats", type=int, default=5,
                   help="with --serving: calibration rounds (each: 2 requests per prompt length, 8 streams)")
    p.add_argument("--profile", default=None,
                   help="with --serving: add the serving overheads to this profile instead of measuring a grid")
    return p


def make_grid(args: argparse.Namespace) -> ProfileGrid:
    base = QUICK_GRID if args.quick else DEFAULT_GRID
    return ProfileGrid(
        prefill_tokens=args.prefill_tokens or list(base.prefill_tokens),
        decode_batch=args.decode_batch or list(base.decode_batch),
        context=args.context or list(base.context),
        repeats=base.repeats if args.repeats is None else args.repeats,
        warmup=base.warmup,
    )


def main(argv: list[str]) -> int:
    """Entry point of `banaserve profile`."""
    try:
        args = build_parser().parse_args(argv)
        grid = make_grid(args)
        if args.threads is not None and args.threads < 1:
            raise ArgError(f"--threads must be >= 1, got {args.threads}")
        out_dir = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(out_dir):
            raise ArgError(f"--out directory {out_dir} does not exist")
        if args.serving_repeats < 1:
            raise ArgError(f"--serving-repeats must be >= 1, got {args.serving_repeats}")
        if args.serving is not None and args.device != "cpu":
            raise ArgError("--serving is measured on cpu only")
        if args.profile is not None:
            if args.serving is None:
                raise ArgError("--profile needs --serving")
            return add_serving(args, load_profile(args.profile))
        import torch  # the engine's imports are slow: only after the arguments are known good

        from banaserve.engine.config import EngineConfig
        from banaserve.engine.llm_engine import LLMEngine
        from banaserve.sim.profiler import profile_engine

        if args.threads is not None:
            torch.set_num_threads(args.threads)
        engine = LLMEngine(EngineConfig(
            model=args.model, device=args.device, dtype=args.dtype, block_size=args.block_size,
            max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs,
            max_model_len=args.max_model_len, kv_cache_gb=args.kv_cache_gb, seed=args.seed))
        grid.check(engine.block_size, engine.num_blocks, args.max_num_batched_tokens, engine.max_model_len)
    except (ArgError, ValueError) as e:
        print(f"banaserve profile: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    table = profile_engine(engine, grid, torch.get_num_threads(), args.seed, log)
    del engine  # free its KV cache before a server is started next to this process
    if args.serving is not None:
        return add_serving(args, table)
    with open(args.out, "w") as f:
        json.dump(table.to_json(), f, indent=1)
    print(f"wrote {args.out} ({len(grid.prefill_tokens) * len(grid.decode_batch) * len(grid.context)} "
          f"grid points, {table.meta['duration_s']} s, {grid.repeats} passes)")
    return 0


def add_serving(args: argparse.Namespace, table: ProfileTable) -> int:
    """Measure the serving overheads of `args.serving` against a live server; write the profile."""
    from banaserve.models.make_model import default_model_path
    from banaserve.sim.serving_calibration import Calibration, calibrate

    threads = args.threads or int(table.meta.get("threads") or 1)
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        table.serving = calibrate(table, args.model or default_model_path(),
                                  Calibration(mode=args.serving, threads=threads, repeats=args.serving_repeats), log)
    except (RuntimeError, OSError) as e:
        print(f"banaserve profile: error: serving calibration failed: {e}", file=sys.stderr)
        return 1
    table.meta = {**table.meta, "serving_mode": args.serving}
    with open(args.out, "w") as f:
        json.dump(table.to_json(), f, indent=1)
    s = table.serving
    neighbor = f", neighbor slowdown {100 * s['neighbor_slowdown']:.1f}%" if "neighbor_slowdown" in s else ""
    print(f"wrote {args.out} (serving {args.serving}: step overhead {1e3 * s['step_overhead_s']:.2f} ms, "
          f"row overhead {1e3 * s['row_overhead_s']:.2f} ms, request overhead {1e3 * s['request_overhead_s']:.1f} ms"
          f"{neighbor})")
    return 0
