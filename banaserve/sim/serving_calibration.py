"""Serving overheads for a profile: what a live `banaserve serve` adds to the engine's own steps.

`banaserve profile` times `LLMEngine.step()` alone. Served, every step also pays the instance loop
(messages in and out, stats, streaming: partly per output token) and every request pays the path
around the engine once (HTTP, tokenizer, router, the prefill/decode hand-off, the stream back).
Both are measured here on a real server of the mode to be simulated, each request against the
same request run alone on an in-process engine right before or after it, alternately: a shared
host's speed drifts by 10-20% over seconds, and only a difference taken at the same moment is
free of it. The fit, with excess = live - alone:

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
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from statistics import fmean, median

from banaserve.sim.profile_table import ProfileTable


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


def stream_times(url: str, model: str, prompt: list[int], max_tokens: int) -> tuple[float, float]:
    """(TTFT, mean inter-token time) in seconds of one greedy streamed completion of `max_tokens`."""
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                       "stream": True, "ignore_eos": True}).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first = last = None
    with urllib.request.urlopen(req, timeout=120) as resp:
        for line in resp:
            if line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
                last = time.perf_counter() - t0
                first = last if first is None else first
    if first is None or last is None:
        raise RuntimeError("the server streamed no tokens")
    # chunks whose text is an incomplete UTF-8 character may be held back: time the last token
    # (the finish chunk) against the first rather than counting chunks
    return first, (last - first) / (max_tokens - 1)


def stream_many(url: str, model: str, prompts: list[list[int]], max_tokens: int) -> list[tuple[float, float]]:
    """stream_times of concurrent streams, one thread each."""
    out: list[tuple[float, float] | BaseException | None] = [None] * len(prompts)

    def one(i: int) -> None:
        try:
            out[i] = stream_times(url, model, prompts[i], max_tokens)
        except BaseException as e:  # noqa: BLE001 - re-raised below in the caller's thread
            out[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in out:
        if not isinstance(r, tuple):
            raise RuntimeError(f"calibration stream failed: {r}")
    return out  # type: ignore[return-value]


def run_alone(engine, prompts: list[list[int]], max_tokens: int) -> list[tuple[float, float]]:
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
    return [(first[i], (last[i] - first[i]) / (max_tokens - 1)) for i in ids]


def _decoding_everything(url: str, streams: int) -> bool:
    """The disagg server's decode instance holds `streams` requests and no prefill is in flight."""
    inst = _get(url + "/v1/cluster")["instances"]
    held = {i["role"]: i["inflight_requests"] for i in inst}
    return held.get("decode", 0) >= streams and held.get("prefill", 0) == 0


def measure_neighbor_slowdown(engine, url: str, cal: Calibration, vocab: int,
                              log: Callable[[str], None] | None = None) -> float:
    """How much `engine`'s prefill steps stretch while the disagg server's decode instance decodes
    a batch on the same host: prefills timed while `banaserve bench` (a separate process, as in a
    live run) streams `cal.concurrency` long requests, against the same prefills with the server
    idle, alternating the order. Returns the median ratio - 1, at least 0."""
    from banaserve.engine.sampling_params import SamplingParams

    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)

    def prefills(salt: int) -> float:
        times = []
        for i in range(3):
            engine.add_request(prompt_token_ids=[3 + (11 * k + 101 * salt + i) % (vocab - 3)
                                                 for k in range(cal.neighbor_prompt_len)], params=params)
            t0 = time.perf_counter()
            while engine.has_unfinished_requests():
                engine.step()
            times.append(time.perf_counter() - t0)
        return fmean(times)

    def beside_decodes(salt: int) -> float | None:
        trace = f"synthetic:input=fixed:{cal.batch_prompt_len},output=fixed:{cal.neighbor_max_tokens}"
        bench = subprocess.Popen([sys.executable, "-m", "banaserve", "bench", "--endpoint", url, "--trace", trace,
                                  "--num-requests", str(cal.concurrency), "--rate", "inf", "--no-progress"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


def measure_overheads(engine, url: str, model: str, cal: Calibration, vocab: int,
                      log: Callable[[str], None] | None = None) -> dict[str, float]:
    """Run the calibration requests against a running server and `engine` (the same model, idle,
    in this process); returns the table's `serving` dict."""
    def prompt(n: int, salt: int) -> list[int]:
        return [3 + (7 * i + 13 * salt + n) % (vocab - 3) for i in range(n)]

    def paired(prompts: list[list[int]], max_tokens: int, live_first: bool) -> list[tuple[float, float]]:
        """(excess TTFT, excess inter-token time) of each prompt: live minus alone."""
        live_fn = (lambda: stream_many(url, model, prompts, max_tokens))
        alone_fn = (lambda: run_alone(engine, prompts, max_tokens))
        if live_first:
            live, alone = live_fn(), alone_fn()
        else:
            alone, live = alone_fn(), live_fn()
        return [(lt - at, li - ai) for (lt, li), (at, ai) in zip(live, alone, strict=True)]

    run_alone(engine, [prompt(16, -1)], 4)  # warm-up: first-request costs on both sides
    stream_times(url, model, prompt(16, -1), 4)
    single, batched = [], []
    for r in range(cal.repeats):
        for n in cal.prompt_lens:
            ((ttft, itl),) = paired([prompt(n, r)], cal.max_tokens, live_first=(r + n) % 2 == 0)
            single.append((ttft, itl))
            if log:
                log(f"1 stream, prompt {n}: TTFT +{1e3 * ttft:.1f} ms, inter-token +{1e3 * itl:.2f} ms over alone")
        if cal.concurrency > 1:
            prompts = [prompt(cal.batch_prompt_len, 1000 * (r + 1) + i) for i in range(cal.concurrency)]
            itl = fmean(e for _, e in paired(prompts, cal.batch_max_tokens, live_first=r % 2 == 1))
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
            model = wait_ready(url, server, cal.start_timeout_s)
        except RuntimeError as e:
            errors.seek(0)
            raise RuntimeError(f"{e}: {errors.read()[-800:].decode(errors='replace')}") from None
        return measure_overheads(engine, url, model, cal, engine.model_config.vocab_size, log)
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
