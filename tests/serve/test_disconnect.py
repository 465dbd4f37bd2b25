"""Clients that go away: their requests are aborted in the engine and no KV block stays held.

Each request asks for ~2000 tokens, far more than it gets to generate before its client leaves,
so a request that was not aborted would still be running (and counted as not aborted) when it
finally ends: `num_aborted` tells the two apart without any timing assumption.
"""

from __future__ import annotations

import json

import httpx

from tests.serve.server_proc import cluster_stats, wait_idle

LONG = {"prompt": "Once upon a time", "max_tokens": 2000, "ignore_eos": True, "temperature": 0.0}


def test_stream_disconnect_aborts_and_frees_kv(server):
    before = wait_idle(server)["num_aborted"]
    body = {**LONG, "model": server.model_name, "stream": True}
    events = []
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", server.base_url + "/v1/completions", json=body) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                if len(events) == 3:
                    break  # leaving the block closes the connection mid-stream
    assert all(e["choices"][0]["finish_reason"] is None for e in events)
    stats = wait_idle(server)
    assert stats["num_aborted"] == before + 1
    assert stats["kv_blocks_used"] == 0  # prefix-cache blocks are free (kv_blocks_cached_free)


def test_non_stream_disconnect_aborts(server):
    before = wait_idle(server)["num_aborted"]
    body = {**LONG, "model": server.model_name}
    try:
        # the client gives up long before 2000 tokens are ready and closes the connection
        httpx.post(server.base_url + "/v1/completions", json=body, timeout=1.0)
    except httpx.TimeoutException:
        pass
    else:
        raise AssertionError("the request finished before the client gave up")
    stats = wait_idle(server)
    assert stats["num_aborted"] == before + 1
    assert stats["kv_blocks_used"] == 0


def test_many_disconnects_leave_nothing_behind(server):
    before = wait_idle(server)["num_aborted"]
    body = {**LONG, "model": server.model_name, "stream": True}
    with httpx.Client(timeout=60) as http:
        for i in range(8):
            with http.stream("POST", server.base_url + "/v1/completions",
                             json={**body, "prompt": f"{LONG['prompt']} {i}"}) as r:
                assert r.status_code == 200
                next(line for line in r.iter_lines() if line.startswith("data: "))
    stats = wait_idle(server)
    assert stats["num_aborted"] == before + 8
    assert stats["kv_blocks_used"] == 0
    # and the server still answers
    r = httpx.post(server.base_url + "/v1/completions", timeout=60,
                   json={"model": server.model_name, "prompt": "Hi", "max_tokens": 3})
    assert r.status_code == 200
    metrics = httpx.get(server.base_url + "/metrics", timeout=10).text
    assert 'banaserve_requests_finished_total{finish_reason="abort"}' in metrics
    assert cluster_stats(server)["kv_blocks_used"] == 0
