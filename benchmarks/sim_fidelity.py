"""Fidelity of the simulator against the real engine on this machine.

profile (banaserve profile) -> live replay of a trace slice -> simulate the same slice with the
profile -> errors of mean TTFT, mean TPOT and throughput, colocated (1 instance) and disagg (1P+1D).

Step times on a shared host drift by 10-20% over minutes, so by default the profile is measured
before and after the live runs and the simulator uses their cellwise mean (errors with each of
the two alone are printed too). Each live step is also checked against the profile directly.

The live side is `banaserve serve` (1 instance, or 1 prefill + 1 decode instance) measured by
`banaserve bench` (--live serve, the default), or an in-process replay (--live inprocess,
benchmarks/live_replay.py): the same engines driven by the slice's arrival times in one process,
which also times every step against the profile.

    python benchmarks/sim_fidelity.py --out-dir results/fidelity            # ~15 min on 2 CPU cores
    python benchmarks/sim_fidelity.py --quick --out-dir /tmp/fid             # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from banaserve.bench.metrics import SLO, summarize  # noqa: E402
from banaserve.bench.prompts import PromptBuilder, PromptConfig  # noqa: E402
from banaserve.bench.results import read_result, write_result  # noqa: E402
from banaserve.bench.traces import default_slo_ms  # noqa: E402
from banaserve.bench.workload import WorkloadConfig, build_specs, describe  # noqa: E402
from banaserve.sim.serving_calibration import free_port, stop_server, wait_ready  # noqa: E402


def workload_args(a: argparse.Namespace) -> list[str]:
    arrivals = ["--rate", str(a.rate)] if a.rate is not None else ["--time-scale", str(a.time_scale)]
    out = ["--trace", a.trace, "--num-requests", str(a.num_requests), *arrivals,
           "--length-scale", str(a.length_scale), "--seed", str(a.seed)]
    for flag, value in (("--max-input", a.max_input), ("--max-output", a.max_output)):
        if value is not None:
            out += [flag, str(value)]
    return out


def banaserve(*argv: str, stdout=None) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "banaserve", *argv], check=True, env=env, cwd=ROOT, stdout=stdout)


def engine(a: argparse.Namespace):
    from banaserve.engine.config import EngineConfig
    from banaserve.engine.llm_engine import LLMEngine

    return LLMEngine(EngineConfig(model=a.model, device="cpu", seed=a.seed))


def step_error(steps, profile: str) -> str:
    """How well the profile predicts the live steps, for steps with a prefill chunk and decode-only
    steps: the error of the predicted total time and the mean absolute error per step."""
    from banaserve.sim.profile_table import ProfileCostModel, load_profile

    cost = ProfileCostModel(load_profile(profile))
    parts = []
    for name, prefill in (("with prefill", True), ("decode-only", False)):
        chosen = [(cost.step_time(shape), t) for shape, t in steps if (shape.prefill_tokens > 0) == prefill]
        if not chosen:
            continue
        bias = sum(p for p, _ in chosen) / sum(t for _, t in chosen) - 1
        mae = sum(abs(p - t) / t for p, t in chosen) / len(chosen)
        parts.append(f"{name}: {len(chosen)} steps, total {100 * bias:+.1f}%, mean |err| {100 * mae:.1f}%")
    return "; ".join(parts) or "no steps"


def live_serve(a: argparse.Namespace, mode: str, out: Path) -> tuple[float | None, dict[str, list]]:
    """Start `banaserve serve` in `mode`, replay the slice with `banaserve bench`, stop the server."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    shape = ["--instances", "1"] if mode == "colocated" else ["--prefill", "1", "--decode", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(a.threads)}
    log = open(out.with_suffix(".serve.log"), "w")  # closed below
    cmd = [sys.executable, "-m", "banaserve", "serve", "--model", a.model, "--device", "cpu",
           "--port", str(port), "--mode", mode, *shape, "--log-level", "warning"]
    server = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, server, 300)
        # warm up (first requests pay one-off costs: allocator, shared-memory mapping, channels)
        banaserve("bench", "--endpoint", url, "--trace", "synthetic:input=fixed:64,output=fixed:4",
                  "--num-requests", "4", "--no-progress", stdout=log)
        banaserve("bench", "--endpoint", url, *workload_args(a), "--label", f"live serve {mode}",
                  "--no-progress", "--out", str(out), stdout=log)
    finally:
        stop_server(server)
        log.close()
    print(f"live serve {mode} done, load average {os.getloadavg()}", flush=True)
    return None, {}


def live_inprocess(a: argparse.Namespace, mode: str, out: Path) -> tuple[float | None, dict[str, list]]:
    """Run the live replay; returns the measured KV copy bandwidth in Gbit/s (disagg) and the step
    logs (shape, seconds) of each engine."""
    import torch
    from live_replay import DisaggReplay, StepLog, replay_colocated

    torch.set_num_threads(a.threads)
    wl = WorkloadConfig(trace=a.trace, num_requests=a.num_requests, rate=a.rate,
                        time_scale=a.time_scale if a.rate is None else 1.0,
                        length_scale=a.length_scale, max_input=a.max_input, max_output=a.max_output,
                        seed=a.seed)
    specs = build_specs(wl)
    prompts = PromptBuilder(PromptConfig(seed=a.seed))
    gbps = None
    if mode == "colocated":
        eng = engine(a)
        log = StepLog(eng)
        records = replay_colocated(eng, specs, prompts, log)
        steps = {"colocated": log.steps}
    else:
        sys.setswitchinterval(a.switch_interval)  # two engine threads: hand the GIL over quickly
        replay = DisaggReplay(engine(a), engine(a), prompts)
        records = replay.run(specs)
        gbps = replay.copy_bytes * 8 / replay.copy_s / 1e9 if replay.copy_s else None
        steps = {"prefill": replay.p_log.steps, "decode": replay.d_log.steps}
    slo = SLO(*default_slo_ms(a.trace))
    meta = {"label": f"live in-process {mode}", "loadavg": os.getloadavg(), "trace": a.trace,
            "arrival": describe(wl), "rate": None, "num_requests": len(specs), "threads": a.threads,
            "kv_copy_gbps": gbps,
            "rate_check": {"scheduled_rate": (len(specs) - 1) / specs[-1].arrival_s if specs[-1].arrival_s else None}}
    write_result(out, records, summarize(records, slo), meta)
    print(f"live {mode} done, load average {os.getloadavg()}", flush=True)
    return gbps, steps


def mean_profile(paths: list[str], out: str) -> None:
    """Cellwise mean of profiles measured with the same grid (before and after the live runs)."""
    docs = [json.loads(Path(p).read_text()) for p in paths]
    merged = docs[0]
    cells = [d["step_time_s"] for d in docs]
    merged["step_time_s"] = [[[sum(c[i][j][k] for c in cells) / len(cells) for k in range(len(row[j]))]
                              for j in range(len(row))] for i, row in enumerate(cells[0])]
    for block in ("serving", "chunk_cost"):
        if all(block in d for d in docs):
            merged[block] = {k: sum(d[block][k] for d in docs) / len(docs) for k in docs[0][block]}
    merged["meta"] = {**merged["meta"], "mean_of": paths}
    Path(out).write_text(json.dumps(merged, indent=1))


def error(sim: float | None, ref: float | None) -> str:
    if not sim or not ref:
        return "-"
    return f"{100 * (sim - ref) / ref:+.1f}%"


METRICS = (("mean TTFT ms", lambda s: s["ttft_ms"]["mean"]),
           ("mean TPOT ms", lambda s: s["tpot_ms"]["mean"]),
           ("median TTFT ms", lambda s: s["ttft_ms"]["median"]),
           ("median TPOT ms", lambda s: s["tpot_ms"]["median"]),
           ("output tok/s", lambda s: s["output_throughput"]),
           ("requests/s", lambda s: s["request_throughput"]))


def headline(ref: dict, sim: dict) -> str:
    return (f"TTFT {error(sim['ttft_ms']['mean'], ref['ttft_ms']['mean'])} "
            f"TPOT {error(sim['tpot_ms']['mean'], ref['tpot_ms']['mean'])} "
            f"tput {error(sim['output_throughput'], ref['output_throughput'])}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default="results/fidelity")
    p.add_argument("--model", default=None, help="checkpoint (default: the small default model)")
    p.add_argument("--profile", default=None, help="reuse this profile instead of measuring")
    p.add_argument("--no-bracket", action="store_true",
                   help="profile only before the live runs (default: before and after, sim uses the mean)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of every engine")
    p.add_argument("--trace", default="azure-conv")
    p.add_argument("--num-requests", type=int, default=60)
    p.add_argument("--time-scale", type=float, default=5.0, help="stretch recorded arrivals")
    p.add_argument("--rate", type=float, default=None,
                   help="generated arrivals instead of recorded ones (inf: all at once, saturating)")
    p.add_argument("--length-scale", type=float, default=0.5)
    p.add_argument("--max-input", type=int, default=1536)
    p.add_argument("--max-output", type=int, default=256)
    p.add_argument("--modes", default="colocated,disagg")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--switch-interval", type=float, default=0.0005, help="sys.setswitchinterval, disagg")
    p.add_argument("--live", choices=("serve", "inprocess"), default="serve")
    p.add_argument("--link-gbps", type=float, default=43.0,
                   help="sim link for serve's shm push (docs/cluster.md measured 5.4 GB/s on this VM)")
    p.add_argument("--quick", action="store_true", help="small profile grid and 12 requests")
    p.add_argument("--no-serving", action="store_true",
                   help="simulate with the engine's step times alone (no measured serving overheads)")
    a = p.parse_args()
    if a.quick:
        a.num_requests = min(a.num_requests, 12)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if a.model is None:
        from banaserve.models.make_model import default_model_path

        a.model = default_model_path()

    modes = a.modes.split(",")

    def measure_profile(path: str) -> dict[str, str]:
        """The engine grid, then per mode a copy with that mode's serving overheads measured live
        (banaserve profile --serving; synthetic requests, not the slice). In-process replays have
        no server, so they use the grid alone."""
        banaserve("profile", "--model", a.model, "--threads", str(a.threads), "--out", path, "--quiet",
                  *(["--quick"] if a.quick else []))
        if a.live != "serve" or a.no_serving:
            return {mode: path for mode in modes}
        out_paths = {}
        for mode in modes:
            out_paths[mode] = path.replace(".json", f"_{mode}.json")
            banaserve("profile", "--model", a.model, "--threads", str(a.threads), "--profile", path,
                      "--serving", mode, "--out", out_paths[mode], "--quiet",
                      *(["--serving-repeats", "1"] if a.quick else []))
        return out_paths

    if a.profile:
        profiles = {"given": {mode: a.profile for mode in modes}}
    else:
        profiles = {"before": measure_profile(str(out / "profile_before.json"))}
    live = live_serve if a.live == "serve" else live_inprocess
    lives = {mode: live(a, mode, out / f"live_{mode}.json") for mode in modes}
    if not a.profile and not a.no_bracket:
        profiles["after"] = measure_profile(str(out / "profile_after.json"))
        profiles["mean"] = {}
        for mode in modes:
            profiles["mean"][mode] = str(out / f"profile_{mode}.json")
            mean_profile([profiles["before"][mode], profiles["after"][mode]], profiles["mean"][mode])
    main_profile = list(profiles)[-1]
    results = {}
    for mode in modes:
        gbps, steps = lives[mode]
        for role, log in steps.items():
            print(f"live {role} steps vs {main_profile} profile: {step_error(log, profiles[main_profile][mode])}")
        shape = ["--instances", "1"] if mode == "colocated" else ["--prefill", "1", "--decode", "1"]
        link = ["--link-gbps", f"{gbps or a.link_gbps:.3f}", "--link-latency-us", "0"]
        for name, prof in profiles.items():
            sim_path = out / f"sim_{mode}_{name}.json"
            with open(out / "simulate.log", "a") as log_file:
                banaserve("simulate", *workload_args(a), "--hardware", prof[mode], "--mode", mode, *shape, *link,
                          "--label", f"sim {mode}", "--out", str(sim_path), stdout=log_file)
            results[mode, name] = read_result(sim_path).summary
    print(f"\n{'mode':<10} {'metric':<16} {'live':>10} {'sim':>10} {'error':>8}"
          f"   (sim with the {main_profile} profile)")
    lines = []
    for mode in modes:
        ref, sim = read_result(out / f"live_{mode}.json").summary, results[mode, main_profile]
        for name, get in METRICS:
            print(f"{mode:<10} {name:<16} {get(ref):>10.2f} {get(sim):>10.2f} {error(get(sim), get(ref)):>8}")
        for name in profiles:
            print(f"  {mode} with the {name} profile: {headline(ref, results[mode, name])}")
        lines.append(f"{mode} {headline(ref, sim)}")
    print(f"fidelity (sim with the {main_profile} profile vs live): " + "; ".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
