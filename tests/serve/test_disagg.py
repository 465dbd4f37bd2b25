"""The same HTTP API in front of a disaggregated cluster (1 prefill + 1 decode instance process).

Checks what the server adds on top of the cluster: identical greedy outputs, per-instance and
transfer metrics, disconnects freeing KV on both instances, and SIGTERM stopping every process.
The SIGTERM test stops this module's server, so it comes last in the file.
"""

from __future__ import annotations

import glob
import json
import signal
import subprocess
import time

import httpx
import openai
import pytest

from banaserve import SamplingParams
from tests.serve.server_proc import children_of, is_alive, start_server


@pytest.fixture(scope="module")
def disagg(tiny_model, tmp_path_factory):
    srv = start_server(tiny_model, str(tmp_path_factory.mktemp("logs-disagg")), "--mode", "disagg",
                       "--prefill", "1", "--decode", "1", "--graceful-shutdown-s", "0")
    try:
        yield srv
    finally:
        srv.stop()


def instances(srv) -> list[dict]:
    return httpx.get(srv.base_url + "/v1/cluster", timeout=10).json()["instances"]


def test_greedy_matches_offline_through_pd(disagg, offline_llm):
    prompts = ["Hello world", "Prefill computes the prompt; decode produces one token per step."]
    expected = offline_llm.generate(prompts, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))
    client = openai.OpenAI(base_url=disagg.base_url + "/v1", api_key="unused", max_retries=0)
    for prompt, ref in zip(prompts, expected, strict=True):
        r = client.completions.create(model=disagg.model_name, prompt=prompt, max_tokens=12, temperature=0.0,
                                      extra_body={"ignore_eos": True})
        assert r.choices[0].text == ref.text
        stream = client.completions.create(model=disagg.model_name, prompt=prompt, max_tokens=12,
                                           temperature=0.0, stream=True, extra_body={"ignore_eos": True})
        assert "".join(c.choices[0].text for c in stream) == ref.text
    assert sorted(i["role"] for i in instances(disagg)) == ["decode", "prefill"]
    metrics = httpx.get(disagg.base_url + "/metrics", timeout=10).text
    assert 'banaserve_instance_kv_blocks_used{instance="1",role="decode"}' in metrics
    assert "banaserve_cluster_transfers_bytes_pushed" in metrics


def test_disconnect_frees_kv_on_every_instance(disagg):
    body = {"model": disagg.model_name, "max_tokens": 2000, "ignore_eos": True, "stream": True}
    for i in range(5):  # disconnects land at different points: prefill, transfer, decode
        with httpx.Client(timeout=60) as http:
            with http.stream("POST", disagg.base_url + "/v1/completions",
                             json={**body, "prompt": f"Once upon a time {i}"}) as r:
                assert r.status_code == 200
                lines = r.iter_lines()
                next(line for line in lines if line.startswith("data: "))
        # quiet: no request queued, running, or holding a decode-side reservation for its transfer
        deadline = time.monotonic() + 120  # a hang guard while the abort reaches the instances
        while True:
            state = instances(disagg)
            if all(s["stats"][k] == 0 for s in state for k in ("num_running", "num_waiting", "num_reserved")):
                break
            assert time.monotonic() < deadline, state
            time.sleep(0.05)
        assert [s["kv_blocks_used"] for s in state] == [0, 0], state


def test_sigterm_stops_every_instance_process(disagg):
    pids = children_of(disagg.proc.pid)
    assert len(pids) == 2
    with httpx.Client(timeout=60) as http:
        body = {"model": disagg.model_name, "prompt": "Hi", "max_tokens": 2000, "ignore_eos": True, "stream": True}
        with http.stream("POST", disagg.base_url + "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            disagg.proc.send_signal(signal.SIGTERM)
            rest = [line[6:] for line in lines if line.startswith("data: ")]
    assert rest[-1] == "[DONE]"
    assert json.loads(rest[-2])["choices"][0]["finish_reason"] == "abort"
    try:
        code = disagg.proc.wait(timeout=60)  # a hang guard, not a timing assertion
    except subprocess.TimeoutExpired:
        disagg.proc.kill()
        raise AssertionError(f"server did not exit after SIGTERM:\n{disagg.log()}") from None
    assert code == 0, disagg.log()
    assert not [p for p in pids if is_alive(p)]
    assert not glob.glob(f"/dev/shm/banaserve-{disagg.proc.pid}-*")  # decode-side KV segments unlinked
    assert "Traceback" not in disagg.log()
