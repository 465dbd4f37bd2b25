"""Serving overheads for a profile: what a live `banaserve serve` adds to the engine's own steps.

`banaserve profile` times `LLMEngine.step()` alone. Served, every step also pays the instance loop
(messages in and out, stats, streaming) and every request pays the path around the engine once
(HTTP, tokenizer, router, the prefill/decode hand-off, the stream back). Both are measured here
on a real server of the mode to be simulated, one request at a time so nothing else shares a step:

    step_overhead_s    = median over requests of (mean inter-token time - profiled decode step)
    request_overhead_s = median over requests of (TTFT - profiled prefill step - step_overhead_s)

Negative values (noise) are stored as 0. The prompts are synthetic token ids, not the workload to
be simulated, so the simulator is not fitted to the run it is checked against.
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
from statistics import median

from banaserve.sim.profile_table import ProfileCostModel, ProfileTable


@dataclass(slots=True)
class Calibration:
    mode: str = "colocated"  # colocated (1 instance) or disagg (1 prefill + 1 decode)
    prompt_lens: tuple[int, ...] = (64, 256, 512)
    max_tokens: int = 24
    repeats: int = 3
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


def measure_overheads(cost: ProfileCostModel, url: str, model: str, cal: Calibration,
                      log: Callable[[str], None] | None = None) -> dict[str, float]:
    """Run the calibration requests against a running server; returns the table's `serving` dict."""
    vocab_hi = int(cost.table.model.get("vocab_size", 1000))
    ctx0 = cost.table.context[0]
    runs = []
    stream_times(url, model, list(range(3, 3 + 16)), 4)  # warm-up: first-request costs
    for r in range(cal.repeats):
        for n in cal.prompt_lens:
            prompt = [3 + (7 * i + 13 * r + n) % (vocab_hi - 3) for i in range(n)]
            ttft, itl = stream_times(url, model, prompt, cal.max_tokens)
            decode = sum(cost.lookup(0, 1, n + k) for k in range(1, cal.max_tokens)) / (cal.max_tokens - 1)
            runs.append((ttft, cost.lookup(n, 0, ctx0), itl, decode))
            if log:
                log(f"prompt {n}: TTFT {1e3 * ttft:.1f} ms (profile {1e3 * runs[-1][1]:.1f}), "
                    f"inter-token {1e3 * itl:.2f} ms (profile {1e3 * decode:.2f})")
    step = max(0.0, median(itl - decode for _, _, itl, decode in runs))
    request = max(0.0, median(ttft - prefill - step for ttft, prefill, _, _ in runs))
    return {"step_overhead_s": step, "request_overhead_s": request}


def calibrate(table: ProfileTable, model_dir: str, cal: Calibration,
              log: Callable[[str], None] | None = None) -> dict[str, float]:
    """Start `banaserve serve` (cal.mode) on a free local port, measure, stop it."""
    if cal.mode not in ("colocated", "disagg"):
        raise ValueError(f"serving calibration mode must be colocated or disagg, got {cal.mode!r}")
    if cal.max_tokens < 2 or cal.repeats < 1 or not cal.prompt_lens:
        raise ValueError("calibration needs max_tokens >= 2, repeats >= 1 and prompt lengths")
    cost = ProfileCostModel(table)  # lookup() is the engine's step alone, without overheads
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
        return measure_overheads(cost, url, model, cal, log)
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
