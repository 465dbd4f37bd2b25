"""Serving overheads for a profile: what a live `banaserve serve` adds to the engine's own steps.

`banaserve profile` times `LLMEngine.step()` alone. Served, every step also pays the instance loop
(messages in and out, stats, streaming: partly per output token) and every request pays the path
around the engine once (HTTP, tokenizer, router, the prefill/decode hand-off, the stream back).
Both are measured here on a real server of the mode to be simulated, with `banaserve bench` as
the client (the one the live measurements use), each request against prompts of the same length
run alone on an in-process engine right before or after it, alternately: a shared host's speed
drifts by 10-20% over seconds, and only a difference taken at the same moment is free of it.
The fit, with excess = live - alone:

    excess inter-token time, 1 stream   = step + row
    excess inter-token time, K streams  = step + K x row        (K concurrent streams)
    excess TTFT, 1 stream               = request + step + row

    step_overhead_s    per engine step (the instance loop)
    row_overhead_s     per sampled row of a step (each output token's message, detokenizing, SSE)
    request_overhead_s once per request, before it reaches an instance

Medians over repeats; negative values (noise) are stored as 0. The prompts are synthetic token
ids, not the workload to be simulated, so the simulator is not fitted to the run it is checked
against.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from statistics import fmean, median
from typing import TYPE_CHECKING

from banaserve.sim.profile_table import ProfileTable

if TYPE_CHECKING:  # the engine pulls in torch: imported where a calibration runs, not at import
    from banaserve.engine.llm_engine import LLMEngine


@dataclass(slots=True)
class Calibration:
    mode: str = "colocated"  # colocated (1 instance) or disagg (1 prefill + 1 decode)
    prompt_lens: tuple[int, ...] = (64, 256, 512)
    max_tokens: int = 24
    repeats: int = 5
    concurrency: int = 8  # streams of the batched phase (the per-row overhead)
    batch_prompt_len: int = 128
    batch_max_tokens: int = 48
    neighbor_prompt_len: int = 512  # disagg: prefills timed beside the decode instance's batch
    neighbor_max_tokens: int = 200
    threads: int = 1
    start_timeout_s: float = 300.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float) -> str:
    """Wait for /health; return the served model's name."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"banaserve serve exited with {proc.returncode}")
        try:
            _get(url + "/health")
            return _get(url + "/v1/models")["data"][0]["id"]
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"banaserve serve not ready after {timeout_s:.0f} s")


def _bench_cmd(url: str, prompt_len: int, max_tokens: int, num: int, seed: int) -> list[str]:
    """`banaserve bench` sending `num` synthetic prompts at once (fresh prompts per seed: no
    prefix-cache hits on the server)."""
    return [sys.executable, "-m", "banaserve", "bench", "--endpoint", url, "--trace",
            f"synthetic:input=fixed:{prompt_len},output=fixed:{max_tokens}", "--num-requests", str(num),
            "--rate", "inf", "--seed", str(seed), "--no-progress"]


def _prompt(n: int, salt: int, vocab: int) -> list[int]:
    """A synthetic `n`-token prompt, different for every salt."""
    return [3 + (7 * i + 13 * salt + n) % (vocab - 3) for i in range(n)]


def bench_times(url: str, prompt_len: int, max_tokens: int, num: int, seed: int,
                concurrent: bool) -> list[tuple[float, float]]:
    """(TTFT, mean inter-token time) in seconds of `num` greedy streams of synthetic `prompt_len`-token
    prompts, sent by `banaserve bench` all at once or one after another. The client is the one the
    live measurements use, in its own process: a client in this process, next to the reference
    engine, measured 8-11 ms less TTFT and 1.3-2 ms less inter-token time on this VM."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.json")
        cmd = [*_bench_cmd(url, prompt_len, max_tokens, num, seed), "--out", out,
               *([] if concurrent else ["--max-concurrency", "1"])]
        run = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
        if run.returncode != 0:
            raise RuntimeError(f"banaserve bench failed: {run.stderr.decode(errors='replace')[-400:]}")
        with open(out) as f:
            records = json.load(f)["requests"]
    bad = [r for r in records if r["status"] != "ok" or r["output_tokens"] != max_tokens]
    if bad:
        raise RuntimeError(f"calibration request failed: {bad[0].get('error') or bad[0]['status']}")
    return [(r["first_token_s"] - r["send_s"], (r["end_s"] - r["first_token_s"]) / (max_tokens - 1))
            for r in records]


def run_alone(engine: LLMEngine, prompts: list[list[int]], max_tokens: int) -> list[tuple[float, float]]:
    """(TTFT, mean inter-token time) of each prompt, all added at once to an idle in-process engine."""
    from banaserve.engine.sampling_params import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    t0 = time.perf_counter()
    ids = [engine.add_request(prompt_token_ids=p, params=params) for p in prompts]
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    while engine.has_unfinished_requests():
        outs = engine.step()
        now = time.perf_counter() - t0
        for o in outs:
            if o.new_token_ids:
                first.setdefault(o.request_id, now)
                last[o.request_id] = now
    return [(first[i], (last[i] - first[i]) / max(1, max_tokens - 1)) for i in ids]


def _decoding_everything(url: str, streams: int) -> bool:
    """The disagg server's decode instance holds `streams` requests and no prefill is in flight."""
    inst = _get(url + "/v1/cluster")["instances"]
    held = {i["role"]: i["inflight_requests"] for i in inst}
    return held.get("decode", 0) >= streams and held.get("prefill", 0) == 0


def measure_neighbor_slowdown(engine: LLMEngine, url: str, cal: Calibration, vocab: int,
                              log: Callable[[str], None] | None = None) -> float:
    """How much `engine`'s prefill steps stretch while the disagg server's decode instance decodes
    a batch on the same host: prefills timed while `banaserve bench` (a separate process, as in a
    live run) streams `cal.concurrency` long requests, against the same prefills with the server
    idle, alternating the order. Returns the median ratio - 1, at least 0."""
    def prefills(salt: int) -> float:
        # salts apart from measure_overheads' seeds: a repeated prompt would hit the prefix cache
        return fmean(run_alone(engine, [_prompt(cal.neighbor_prompt_len, 10**6 + 3 * salt + i, vocab)], 1)[0][0]
                     for i in range(3))

    def beside_decodes(salt: int) -> float | None:
        cmd = _bench_cmd(url, cal.batch_prompt_len, cal.neighbor_max_tokens, cal.concurrency, 1000 + salt)
        bench = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not _decoding_everything(url, cal.concurrency):
                if bench.poll() is not None or time.monotonic() > deadline:
                    return None
                time.sleep(0.05)
            t = prefills(salt)
            still = _decoding_everything(url, cal.concurrency)  # the neighbour was busy throughout
            return t if still else None
        finally:
            bench.wait(120)

    ratios = []
    for r in range(cal.repeats):
        if r % 2:
            busy, alone = beside_decodes(r), prefills(1000 + r)
        else:
            alone, busy = prefills(1000 + r), beside_decodes(r)
        if busy is not None:
            ratios.append(busy / alone)
            if log:
                log(f"prefill {cal.neighbor_prompt_len}: {1e3 * alone:.1f} ms alone, {1e3 * busy:.1f} ms "
                    f"beside {cal.concurrency} decodes")
    return max(0.0, median(ratios) - 1.0) if ratios else 0.0


def measure_overheads(engine: LLMEngine, url: str, cal: Calibration, vocab: int,
                      log: Callable[[str], None] | None = None) -> dict[str, float]:
    """Run the calibration requests against a running server and `engine` (the same model, idle,
    in this process); returns the table's `serving` dict."""
    seeds = iter(range(1, 1_000_000))  # a fresh prompt every time: no prefix-cache hits on the server

    def paired(n: int, count: int, max_tokens: int, concurrent: bool, live_first: bool) -> list[tuple[float, float]]:
        """(excess TTFT, excess inter-token time), live minus alone, of `count` prompts of `n` tokens."""
        def live() -> list[tuple[float, float]]:
            return bench_times(url, n, max_tokens, count, next(seeds), concurrent)

        def alone() -> list[tuple[float, float]]:
            prompts = [_prompt(n, next(seeds), vocab) for _ in range(count)]
            if concurrent:
                return run_alone(engine, prompts, max_tokens)
            return [run_alone(engine, [p], max_tokens)[0] for p in prompts]

        if live_first:
            lv = live()
            al = alone()
        else:
            al = alone()
            lv = live()
        return [(lt - at, li - ai) for (lt, li), (at, ai) in zip(lv, al, strict=True)]

    run_alone(engine, [_prompt(16, 0, vocab)], 4)  # warm-up: first-request costs on both sides
    bench_times(url, 16, 4, 1, 0, False)
    single, batched = [], []
    for r in range(cal.repeats):
        for n in cal.prompt_lens:
            pairs = paired(n, 2, cal.max_tokens, False, live_first=(r + n) % 2 == 0)
            single.extend(pairs)
            if log:
                for ttft, itl in pairs:
                    log(f"1 stream, prompt {n}: TTFT +{1e3 * ttft:.1f} ms, inter-token +{1e3 * itl:.2f} ms over alone")
        if cal.concurrency > 1:
            pairs = paired(cal.batch_prompt_len, cal.concurrency, cal.batch_max_tokens, True, live_first=r % 2 == 1)
            itl = fmean(e for _, e in pairs)
            batched.append(itl)
            if log:
                log(f"{cal.concurrency} streams: inter-token +{1e3 * itl:.2f} ms over alone")
    one = median(itl for _, itl in single)
    row = max(0.0, (median(batched) - one) / (cal.concurrency - 1)) if batched else 0.0
    step = max(0.0, one - row)
    request = max(0.0, median(ttft for ttft, _ in single) - step - row)
    out = {"step_overhead_s": step, "row_overhead_s": row, "request_overhead_s": request}
    if cal.mode == "disagg":
        out["neighbor_slowdown"] = measure_neighbor_slowdown(engine, url, cal, vocab, log)
    return out


def calibrate(table: ProfileTable, model_dir: str, cal: Calibration,
              log: Callable[[str], None] | None = None) -> dict[str, float]:
    """Start `banaserve serve` (cal.mode) on a free local port, measure, stop it."""
    if cal.mode not in ("colocated", "disagg"):
        raise ValueError(f"serving calibration mode must be colocated or disagg, got {cal.mode!r}")
    if cal.max_tokens < 2 or cal.batch_max_tokens < 2 or cal.repeats < 1 or not cal.prompt_lens:
        raise ValueError("calibration needs max_tokens >= 2, repeats >= 1 and prompt lengths")
    import torch

    from banaserve.engine.config import EngineConfig
    from banaserve.engine.llm_engine import LLMEngine

    torch.set_num_threads(cal.threads)
    settings = table.engine
    engine = LLMEngine(EngineConfig(  # the reference: the same engine, alone, in this process
        model=model_dir, device="cpu", kv_cache_gb=0.25, block_size=settings.get("block_size", 16),
        max_num_batched_tokens=settings.get("max_num_batched_tokens", 2048)))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    shape = ["--instances", "1"] if cal.mode == "colocated" else ["--prefill", "1", "--decode", "1"]
    cmd = [sys.executable, "-m", "banaserve", "serve", "--model", model_dir, "--device", "cpu",
           "--port", str(port), "--mode", cal.mode, *shape, "--log-level", "warning"]
    env = {**os.environ, "OMP_NUM_THREADS": str(cal.threads)}
    errors = tempfile.TemporaryFile()
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=errors)
    try:
        try:
            wait_ready(url, server, cal.start_timeout_s)
        except RuntimeError as e:
            errors.seek(0)
            raise RuntimeError(f"{e}: {errors.read()[-800:].decode(errors='replace')}") from None
        return measure_overheads(engine, url, cal, engine.model_config.vocab_size, log)
    finally:
        errors.close()
        stop_server(server)


def stop_server(proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """SIGTERM (a clean shutdown of instances and shared memory), then SIGKILL if it hangs."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
