"""Real servers for the HTTP tests: `python -m banaserve serve` subprocesses on free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# a small KV pool: allocation is quicker and 2048 blocks still hold every test's requests at once
NUM_KV_BLOCKS = 2048
MODEL_NAME = "tiny-llama"  # --served-model-name of every test server
STARTUP_TIMEOUT_S = 180.0  # a cold torch import on a loaded 2-core machine can take a while


@dataclass(slots=True)
class ServerProcess:
    proc: subprocess.Popen
    port: int
    log_path: str
    model_name: str

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-4000:]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not go; never leaves the process behind."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, log_dir: str, *extra: str, name: str = MODEL_NAME) -> ServerProcess:
    """Start a server and wait until /health answers 200; raise with its log if it does not."""
    port = free_port()
    log_path = os.path.join(log_dir, f"server-{port}.log")
    cmd = [sys.executable, "-m", "banaserve", "serve", "--model", model, "--port", str(port),
           "--served-model-name", name, "--num-kv-blocks", str(NUM_KV_BLOCKS), "--log-level", "warning",
           *extra]
    # one intra-op thread: the tiny model gains nothing from more, and spinning OpenMP threads
    # fighting the test process for 2 cores slow everything down
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    env.pop("BANASERVE_API_KEY", None)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = ServerProcess(proc, port, log_path, name)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.base_url + "/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"server did not become healthy:\n{server.log()}")
        time.sleep(0.2)


def cluster_stats(server: ServerProcess) -> dict:
    state = httpx.get(server.base_url + "/v1/cluster", timeout=10).json()
    return state["instances"][0]["stats"]


def wait_idle(server: ServerProcess, timeout_s: float = 60.0) -> dict:
    """Stats once no request is waiting or running (polls; the deadline only guards against hangs)."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = cluster_stats(server)
        if stats["num_running"] == 0 and stats["num_waiting"] == 0:
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"server still busy: {stats}")
        time.sleep(0.1)


def children_of(pid: int) -> list[int]:
    """Direct child processes of `pid` (Linux /proc)."""
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


def is_alive(pid: int) -> bool:
    """True for a running process; a zombie waiting for init to reap it counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
