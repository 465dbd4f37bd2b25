"""`banaserve bench` end to end: runs, sweeps, plots, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from banaserve.bench.cli import main
from banaserve.bench.results import read_result
from banaserve.bench.traces import KNOWN_TRACES, traces_dir

from .conftest import REPO

SYN = "synthetic:input=fixed:16,output=fixed:8"


def assert_one_line_error(rc: int, err: str, match: str) -> None:
    assert rc == 2
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("banaserve bench: error:"), err
    assert match in err


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--endpoint", "http://h", "--trace", "azure-cod"], "unknown trace"),
        (["--endpoint", "http://h", "--trace", "synthetic:input=gauss:3,output=fixed:1"], "unknown length"),
        (["--endpoint", "http://h", "--trace", "synthetic:input=fixed:1"], "needs both"),
        (["--endpoint", "http://h", "--trace", SYN, "--rate", "-3"], "--rate must be > 0"),
        (["--endpoint", "http://h", "--trace", SYN, "--rate", "fast"], "invalid float value"),
        (["--endpoint", "http://h", "--trace", "/no/such/trace.csv"], "not found"),
        (["--endpoint", "http://h", "--trace-file", "/no/such/trace.jsonl"], "not found"),
        (["--endpoint", "http://h", "--trace", SYN, "--slo-ttft", "-1"], "--slo-ttft"),
        (["--endpoint", "http://h", "--trace", SYN, "--num-requests", "0"], "--num-requests"),
        (["--endpoint", "http://h", "--trace", SYN, "--max-concurrency", "0"], "--max-concurrency"),
        (["--endpoint", "h:80", "--trace", SYN], "http://"),
        (["--trace", SYN], "--endpoint"),
        (["--endpoint", "http://h"], "--trace"),
        (["--endpoint", "http://127.0.0.1:9", "--trace", SYN], "cannot list models"),
        (["sweep", "--endpoint", "http://h", "--trace", SYN, "--rates", "1,-2"], "--rates"),
        (["sweep", "--endpoint", "http://h", "--trace", SYN], "--rates"),
        (["plot", "/no/such/result.json"], "not found"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, match, capsys):
    rc = main(argv)
    assert_one_line_error(rc, capsys.readouterr().err, match)


def test_bad_input_through_the_banaserve_command():
    cmd = [sys.executable, "-m", "banaserve", "bench", "--endpoint", "http://h", "--trace", "nope"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert_one_line_error(p.returncode, p.stderr, "unknown trace")


def test_smoke_end_to_end(server_factory, tmp_path):
    server = server_factory("--ttft-ms", "5", "--itl-ms", "2")
    out = tmp_path / "x.json"
    cmd = [sys.executable, "-m", "banaserve", "bench", "--endpoint", server.url, "--trace", SYN]
    cmd += ["--num-requests", "50", "--out", str(out)]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "requests: 50 (50 completed, 0 failed)" in p.stdout
    res = read_result(out)
    assert res.meta["model"] == "test-model" and res.meta["num_requests"] == 50
    assert res.summary["completed"] == 50 and res.summary["total_output_tokens"] == 400
    assert all(r.ok and len(r.token_times_s) == 8 and r.prompt_tokens == 16 for r in res.records)


def test_mooncake_replay_with_small_blocks(server_factory, tmp_path, capsys):
    trace = tmp_path / "m.jsonl"
    rows = [
        {"timestamp": 10 * i, "input_length": 1024 + 100 * i, "output_length": 3, "hash_ids": [0, i + 1, 99]}
        for i in range(6)
    ]
    trace.write_text("".join(json.dumps(r) + "\n" for r in rows))
    server = server_factory("--ttft-ms", "2", "--itl-ms", "1")
    out = tmp_path / "m.json"
    argv = ["--endpoint", server.url, "--trace-file", str(trace), "--block-tokens", "16", "--out", str(out)]
    assert main(argv + ["--no-progress"]) == 0
    res = read_result(out)
    # (1024 + 100 i) * 16 / 512 tokens, sent as token ids: the server counts exactly that many
    assert [r.prompt_tokens for r in res.records] == [round((1024 + 100 * i) / 32) for i in range(6)]
    assert res.meta["arrival"] == "recorded x1"
    assert [r.arrival_s for r in res.records] == pytest.approx([0.01 * i for i in range(6)])


@pytest.mark.skipif(not (traces_dir() / KNOWN_TRACES["azure-conv"]).is_file(), reason="shared traces missing")
def test_named_trace_replay(server_factory, tmp_path, capsys):
    server = server_factory("--ttft-ms", "2", "--itl-ms", "1")
    out = tmp_path / "a.json"
    argv = ["--endpoint", server.url, "--trace", "azure-conv", "--num-requests", "20", "--time-scale", "0.01"]
    argv += ["--max-input", "256", "--max-output", "4", "--out", str(out)]
    assert main(argv) == 0
    res = read_result(out)
    assert res.summary["completed"] == 20
    assert max(r.input_len for r in res.records) <= 256 and max(r.output_len for r in res.records) <= 4
    assert res.meta["slo"] == {"ttft_ms": 2000.0, "tpot_ms": 100.0}  # azure-conv defaults


def test_sweep_and_plot(server_factory, tmp_path, capsys):
    server = server_factory("--ttft-ms", "2", "--itl-ms", "1")
    out_dir = tmp_path / "sweep"
    argv = ["sweep", "--endpoint", server.url, "--trace", SYN, "--rates", "100,50", "--num-requests", "30"]
    argv += ["--slo-ttft", "1000", "--slo-tpot", "1000", "--label", "test", "--out-dir", str(out_dir)]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("capacity: >= 100 req/s")
    sweep = json.loads((out_dir / "sweep.json").read_text())
    assert [p["rate"] for p in sweep["points"]] == [50.0, 100.0] and sweep["capacity"] == 100.0
    runs = [str(out_dir / "rate-50.json"), str(out_dir / "rate-100.json")]
    assert [read_result(r).meta["rate"] for r in runs] == [50.0, 100.0]
    fig = tmp_path / "fig.png"
    assert main(["plot", *runs, "--out", str(fig)]) == 0
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
