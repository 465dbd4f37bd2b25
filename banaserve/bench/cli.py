"""`banaserve bench [run|sweep|plot]`: replay traces against an OpenAI-compatible endpoint."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from banaserve.bench.client import ClientConfig
from banaserve.bench.lengths import DIST_HELP
from banaserve.bench.metrics import SLO
from banaserve.bench.prompts import PromptConfig
from banaserve.bench.results import read_result, write_result
from banaserve.bench.runner import RunConfig, format_rate_check, format_summary, run_bench
from banaserve.bench.spec import BenchError
from banaserve.bench.sweep import capacity_line, format_table, parse_rates, run_sweep
from banaserve.bench.traces import KNOWN_TRACES, default_slo_ms
from banaserve.bench.workload import WorkloadConfig

TRACE_HELP = f"{', '.join(KNOWN_TRACES)}, a trace file, or synthetic:input=DIST,output=DIST ({DIST_HELP})"


class Parser(argparse.ArgumentParser):
    """Reports bad arguments as a one-line BenchError instead of usage text and exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise BenchError(message)


def add_run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("endpoint")
    g.add_argument("--endpoint", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    g.add_argument("--model", default=None, help="model name (default: first of GET /v1/models)")
    g.add_argument(
        "--api-key", default=os.environ.get("OPENAI_API_KEY"), help="bearer token [$OPENAI_API_KEY]"
    )
    g.add_argument("--timeout", type=float, default=600.0, help="per-request timeout, seconds")
    g.add_argument(
        "--ignore-eos",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send ignore_eos (an extension vLLM/SGLang/banaserve accept; turn off for strict servers)",
    )
    g.add_argument("--prompt-text", action="store_true", help="send synthesized text instead of token ids")
    g = p.add_argument_group("workload")
    g.add_argument("--trace", default=None, help=TRACE_HELP)
    g.add_argument("--trace-file", default=None, help="read the trace from this file")
    g.add_argument(
        "--rate",
        type=float,
        default=None,
        help="req/s of generated arrivals, inf for all at once (default: as recorded)",
    )
    g.add_argument("--burstiness", type=float, default=1.0, help="CV of gamma gaps: 1 Poisson, >1 bursty")
    g.add_argument(
        "--time-scale", type=float, default=1.0, help="multiply recorded times (0.5: twice as fast)"
    )
    g.add_argument("--duration", type=float, default=None, help="seconds of arrivals to send")
    g.add_argument("--num-requests", type=int, default=None, help="number of requests to send")
    g.add_argument("--max-concurrency", type=int, default=None, help="most requests in flight at once")
    g.add_argument("--max-input", type=int, default=None, help="clip prompt lengths (model context)")
    g.add_argument("--max-output", type=int, default=None, help="clip output lengths")
    g.add_argument("--length-scale", type=float, default=1.0, help="multiply all lengths")
    g.add_argument("--block-tokens", type=int, default=512, help="tokens per Mooncake hash id block")
    g.add_argument("--vocab-size", type=int, default=1000, help="synthesized token ids are in [3, N)")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("metrics")
    g.add_argument("--slo-ttft", type=float, default=None, help="TTFT SLO in ms (default: per trace)")
    g.add_argument("--slo-tpot", type=float, default=None, help="TPOT SLO in ms (default: per trace)")
    g.add_argument(
        "--label", default=None, help="name of this system/mode in plots (default: endpoint+trace)"
    )
    g.add_argument("--no-progress", action="store_true", help="no live progress line")


def _slo(args: argparse.Namespace, trace_name: str) -> SLO:
    default_ttft, default_tpot = default_slo_ms(trace_name)
    out = []
    for flag, value, default in (
        ("--slo-ttft", args.slo_ttft, default_ttft),
        ("--slo-tpot", args.slo_tpot, default_tpot),
    ):
        value = default if value is None else value
        if math.isnan(value) or value <= 0:
            raise BenchError(f"{flag} must be > 0 ms (inf for no limit), got {value}")
        out.append(None if math.isinf(value) else value)
    return SLO(ttft_ms=out[0], tpot_ms=out[1])


def make_config(args: argparse.Namespace) -> RunConfig:
    if args.trace is None and args.trace_file is None:
        raise BenchError("--trace (or --trace-file) is required")
    trace = args.trace or args.trace_file
    workload = WorkloadConfig(
        trace=trace,
        trace_file=args.trace_file,
        rate=args.rate,
        burstiness=args.burstiness,
        time_scale=args.time_scale,
        duration_s=args.duration,
        num_requests=args.num_requests,
        max_input=args.max_input,
        max_output=args.max_output,
        length_scale=args.length_scale,
        block_tokens=args.block_tokens,
        seed=args.seed,
    )
    client = ClientConfig(
        endpoint=args.endpoint,
        model=args.model,
        api_key=args.api_key,
        timeout_s=args.timeout,
        ignore_eos=args.ignore_eos,
        prompt_text=args.prompt_text,
    )
    prompt = PromptConfig(vocab_size=args.vocab_size, seed=args.seed, text=args.prompt_text)
    progress = not args.no_progress and sys.stderr.isatty()
    trace_name = Path(trace).stem if trace not in KNOWN_TRACES else trace
    return RunConfig(
        workload, client, prompt, _slo(args, trace_name), args.max_concurrency, progress, args.label
    )


def cmd_run(argv: list[str]) -> int:
    p = Parser(
        prog="banaserve bench",
        description="Replay a trace against an OpenAI-compatible endpoint.",
        epilog="Also: `banaserve bench sweep --rates 1,2,4 ...` and `banaserve bench plot RESULT.json ...`. "
        "Metric definitions and the result schema: docs/bench.md.",
    )
    add_run_args(p)
    p.add_argument("--out", default=None, help="write the result JSON here")
    args = p.parse_args(argv)
    records, summary, meta = run_bench(make_config(args), ["bench", *argv])
    if args.out:
        write_result(args.out, records, summary, meta)
    print(format_summary(summary))
    print(format_rate_check(meta["rate_check"]))
    if args.out:
        print(f"wrote {args.out}")
    if summary.completed == 0:
        print("error: every request failed", file=sys.stderr)
        return 1
    return 0


def cmd_sweep(argv: list[str]) -> int:
    p = Parser(prog="banaserve bench sweep", description="One run per rate and the serving capacity.")
    add_run_args(p)
    p.add_argument("--rates", required=True, help="comma-separated req/s, e.g. 1,2,4,8")
    p.add_argument("--out-dir", default="results/sweep", help="where rate-R.json and sweep.json go")
    args = p.parse_args(argv)
    rates = parse_rates(args.rates)
    if args.rate is not None:
        raise BenchError("use --rates with sweep, not --rate")
    cfg = make_config(args)
    points = run_sweep(cfg, rates, Path(args.out_dir), ["bench", "sweep", *argv])
    print(format_table(points))
    print(f"wrote {len(points)} results and sweep.json to {args.out_dir}")
    print(capacity_line([pt.rate for pt in points], [pt.slo_attainment for pt in points]))
    return 0


def cmd_plot(argv: list[str]) -> int:
    p = Parser(prog="banaserve bench plot", description="Plot one or more result files.")
    p.add_argument("results", nargs="+", help="result JSON files")
    p.add_argument("--out", default="bench.png", help="image to write")
    args = p.parse_args(argv)
    results = [read_result(path) for path in args.results]
    from banaserve.bench.plot import plot_results  # matplotlib is slow to import: only here

    plot_results(results, args.out)
    print(f"wrote {args.out}")
    return 0


COMMANDS = {"run": cmd_run, "sweep": cmd_sweep, "plot": cmd_plot}


def main(argv: list[str]) -> int:
    """Entry point of `banaserve bench`: `run` (default), `sweep` or `plot`."""
    argv = list(argv)
    cmd = COMMANDS.get(argv[0]) if argv else None
    if cmd is not None:
        argv = argv[1:]
    else:
        cmd = cmd_run
    try:
        return cmd(argv)
    except BenchError as e:
        print(f"banaserve bench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nbanaserve bench: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # --help
        return int(e.code or 0)
