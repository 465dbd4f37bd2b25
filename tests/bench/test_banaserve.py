"""The load generator against a real `banaserve serve` (subprocess) in each mode the checkout has.

Skipped where the server is not part of the checkout. Only the HTTP endpoint is used: the bench
package never imports the engine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest

from banaserve.bench.cli import main
from banaserve.bench.results import read_result

from .conftest import REPO, free_port

HAVE_SERVE = (REPO / "banaserve" / "serve" / "cli.py").is_file() and (
    REPO / "banaserve" / "models" / "cli.py"
).is_file()
HAVE_CLUSTER = (REPO / "banaserve" / "cluster" / "launch.py").is_file()
STARTUP_TIMEOUT_S = 180.0  # cold torch imports on a loaded 2-core machine

MODES = [
    pytest.param([], id="colocated"),
    pytest.param(
        ["--mode", "disagg", "--prefill", "1", "--decode", "1"],
        id="disagg",
        marks=pytest.mark.skipif(not HAVE_CLUSTER, reason="no banaserve.cluster in this checkout"),
    ),
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not HAVE_SERVE, reason="no banaserve serve in this checkout"),
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("ckpt") / "tiny-llama"
    cmd = [sys.executable, "-m", "banaserve", "make-model", "--preset", "tiny", "--out", str(out)]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=300)
    return str(out)


def wait_ready(url: str, proc: subprocess.Popen, log) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"banaserve serve exited with {proc.returncode}: {open(log).read()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"banaserve serve did not come up: {open(log).read()[-3000:]}")


@pytest.mark.parametrize("mode_args", MODES)
def test_bench_against_banaserve(mode_args, tiny_model, tmp_path, capsys):
    port = free_port()
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "banaserve", "serve", "--model", tiny_model, "--port", str(port)]
    cmd += ["--num-kv-blocks", "2048", "--log-level", "warning", *mode_args]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc, log)
        # Mooncake-style prefix sharing with small blocks: requests share their first block
        trace = tmp_path / "m.jsonl"
        rows = [
            {
                "timestamp": 50 * i,
                "input_length": 1024 + 256 * (i % 3),
                "output_length": 6,
                "hash_ids": [0, i + 1, i + 2],
            }
            for i in range(12)
        ]
        trace.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out = tmp_path / "r.json"
        argv = ["--endpoint", url, "--trace-file", str(trace), "--block-tokens", "32", "--out", str(out)]
        assert main(argv + ["--no-progress", "--slo-ttft", "inf", "--slo-tpot", "inf"]) == 0
        res = read_result(out)
        assert res.summary["failed"] == 0, res.summary["failures"]
        # token-id prompts arrive with exact lengths; ignore_eos gives exactly max_tokens
        assert all(r.prompt_tokens == r.input_len for r in res.records)
        assert all(r.output_tokens == 6 and len(r.token_times_s) >= 1 for r in res.records)
        assert res.summary["slo_attainment"] == 1.0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
