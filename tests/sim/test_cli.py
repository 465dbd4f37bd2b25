import json

import pytest

from banaserve.bench.results import read_result
from banaserve.sim import cli, profile_cli

SMALL = ["--trace", "synthetic:input=uniform:50:400,output=uniform:1:40", "--num-requests", "40",
         "--rate", "20"]


def run_cli(main, argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_simulate_writes_a_bench_result(tmp_path, capsys):
    out = tmp_path / "r.json"
    code, stdout, _ = run_cli(cli.main, [*SMALL, "--model-config", "llama3-8b", "--hardware", "h100",
                                         "--instances", "2", "--out", str(out)], capsys)
    assert code == 0 and "TTFT" in stdout
    res = read_result(out)  # what `banaserve bench plot` reads
    assert len(res.records) == 40 and res.summary["completed"] == 40
    assert res.meta["simulated"]["cost_model"] == "roofline" and res.meta["rate"] == 20
    assert res.meta["label"] == "sim colocated 2xh100 llama3-8b"


def test_simulate_disagg_with_tp(tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = [*SMALL, "--model-config", "llama3-70b", "--hardware", "h200", "--mode", "disagg",
            "--prefill", "1", "--decode", "2", "--tp", "2", "--out", str(out)]
    code, _, _ = run_cli(cli.main, argv, capsys)
    res = read_result(out)
    assert code == 0 and res.summary["completed"] == 40
    assert [i["role"] for i in res.meta["simulated"]["instances"]] == ["prefill", "decode", "decode"]
    assert res.meta["simulated"]["instances"][0]["kv_bytes_sent"] > 0


@pytest.mark.parametrize("argv, match", [
    (["--hardware", "h100", "--model-config", "llama3-8b"], "--trace"),
    ([*SMALL, "--hardware", "h100"], "--model-config is required"),
    ([*SMALL, "--hardware", "tpu", "--model-config", "llama3-8b"], "unknown hardware"),
    ([*SMALL, "--hardware", "h100", "--model-config", "gpt-5"], "unknown model config"),
    ([*SMALL, "--hardware", "h100", "--model-config", "llama3-70b"], "raise --tp"),
    ([*SMALL, "--hardware", "h100", "--model-config", "llama3-8b", "--tp", "3"], "does not divide"),
    ([*SMALL, "--hardware", "h100", "--model-config", "llama3-8b", "--prefill", "2"], "disagg"),
    ([*SMALL, "--hardware", "h100", "--model-config", "llama3-8b", "--mode", "disagg", "--instances", "2"],
     "--instances"),
    ([*SMALL, "--hardware", "h100", "--model-config", "llama3-8b", "--instances", "0"], "at least one"),
    ([*SMALL, "--hardware", "h100", "--model-config", "llama3-8b", "--link-gbps", "0"], "--link-gbps"),
    ([*SMALL, "--hardware", "h100", "--model-config", "llama3-8b", "--mode", "mixed"], "invalid choice"),
    ([*SMALL, "--hardware", "h100", "--model-config", "llama3-8b", "--rate", "-1"], "--rate"),
    (["--trace", "nope", "--hardware", "h100", "--model-config", "llama3-8b"], "unknown trace"),
    ([*SMALL, "--hardware", "h100", "--model-config", "llama3-8b", "--out", "/no/such/dir/r.json"],
     "does not exist"),
])
def test_simulate_bad_input_is_one_line_and_exit_2(argv, match, capsys):
    code, _, err = run_cli(cli.main, argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and match in err and "Traceback" not in err


def test_profile_then_simulate_with_it(tmp_path, tiny_model, capsys):
    prof = tmp_path / "profile.json"
    code, stdout, _ = run_cli(profile_cli.main, [
        "--model", tiny_model, "--out", str(prof), "--threads", "1", "--prefill-tokens", "0,16,64",
        "--decode-batch", "0,1,2,4", "--context", "32,128", "--repeats", "1", "--quiet"], capsys)
    assert code == 0 and "wrote" in stdout
    doc = json.loads(prof.read_text())
    assert doc["schema"] == "banaserve-profile/1" and doc["meta"]["threads"] == 1
    out = tmp_path / "r.json"
    code, _, _ = run_cli(cli.main, ["--trace", "synthetic:input=uniform:8:100,output=uniform:1:20",
                                    "--num-requests", "20", "--rate", "5", "--hardware", str(prof),
                                    "--out", str(out)], capsys)
    res = read_result(out)
    assert code == 0 and res.summary["completed"] == 20
    assert res.meta["simulated"]["cost_model"] == "profile"
    assert res.meta["simulated"]["instance"]["num_blocks"] == doc["engine"]["num_kv_blocks"]
    code, _, err = run_cli(cli.main, ["--trace", "azure-code", "--hardware", str(prof), "--tp", "2"], capsys)
    assert code == 2 and "--tp" in err


@pytest.mark.parametrize("argv, match", [
    ([], "--out"),
    (["--out", "/no/such/dir/p.json"], "does not exist"),
    (["--out", "p.json", "--threads", "0"], "--threads"),
    (["--out", "p.json", "--context", "a,b"], "comma-separated"),
    (["--out", "p.json", "--model", "/no/model"], "does not exist"),
])
def test_profile_bad_input_is_one_line_and_exit_2(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(profile_cli.main, argv, capsys)
    assert code == 2 and err.count("\n") == 1 and match in err


@pytest.mark.parametrize("mode", ["colocated", "disagg"])
def test_profile_serving_overheads_from_a_live_server(tmp_path, tiny_model, capsys, mode):
    """--serving starts a real `banaserve serve` of the mode, streams calibration requests over HTTP
    and stores what the server adds; the simulator then charges it."""
    grid = tmp_path / "grid.json"
    code, _, _ = run_cli(profile_cli.main, [
        "--model", tiny_model, "--out", str(grid), "--threads", "1", "--prefill-tokens", "0,64,512",
        "--decode-batch", "0,1,2", "--context", "32,600", "--repeats", "1", "--quiet"], capsys)
    assert code == 0
    prof = tmp_path / "served.json"
    code, stdout, err = run_cli(profile_cli.main, ["--model", tiny_model, "--profile", str(grid), "--serving", mode,
                                                   "--serving-repeats", "2", "--threads", "1", "--out", str(prof)],
                                capsys)
    assert code == 0, err
    doc = json.loads(prof.read_text())
    serving = doc["serving"]
    neighbor = {"neighbor_slowdown"} if mode == "disagg" else set()  # two instances share this host
    assert set(serving) == {"step_overhead_s", "row_overhead_s", "request_overhead_s"} | neighbor
    assert 0 <= serving.get("neighbor_slowdown", 0.0) < 2.0
    # a served request costs something beyond the engine step, and not absurdly much on a tiny model
    assert 0 <= serving["step_overhead_s"] < 0.5 and 0 <= serving["row_overhead_s"] < 0.1
    assert 0 < serving["request_overhead_s"] < 2.0
    assert doc["step_time_s"] == json.loads(grid.read_text())["step_time_s"] and doc["meta"]["serving_mode"] == mode
    # 3 prompt lengths x 2 rounds x 2 requests, each against prompts run alone; 2 batched rounds
    assert err.count("1 stream, prompt") == 12 and err.count("8 streams") == 2


def test_profile_serving_bad_input(tmp_path, capsys):
    code, _, err = run_cli(profile_cli.main, ["--profile", str(tmp_path / "none.json"), "--out", "p.json"], capsys)
    assert code == 2 and "--serving" in err
    code, _, err = run_cli(profile_cli.main, ["--profile", str(tmp_path / "none.json"), "--serving", "colocated",
                                              "--out", str(tmp_path / "p.json")], capsys)
    assert code == 2 and "cannot read profile" in err and err.count("\n") == 1
    code, _, err = run_cli(profile_cli.main, ["--serving", "disagg", "--serving-repeats", "0", "--out", "p.json"],
                           capsys)
    assert code == 2 and "--serving-repeats" in err and err.count("\n") == 1
