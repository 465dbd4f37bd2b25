"""A server with an API key, room for 2 requests and no shutdown grace: 401, 429, SIGTERM.

The SIGTERM test stops this module's server, so it comes last in the file.
"""

from __future__ import annotations

import json
import signal
import subprocess

import httpx
import openai
import pytest

from tests.serve.server_proc import children_of, is_alive, start_server

KEY = "sk-test-4d7f1c"
AUTH = {"Authorization": f"Bearer {KEY}"}
LONG = {"prompt": "Once upon a time", "max_tokens": 2000, "ignore_eos": True, "stream": True}


@pytest.fixture(scope="module")
def locked(tiny_model, tmp_path_factory):
    srv = start_server(tiny_model, str(tmp_path_factory.mktemp("logs-locked")), "--api-key", KEY,
                       "--max-pending", "2", "--graceful-shutdown-s", "0")
    try:
        yield srv
    finally:
        srv.stop()


def post(srv, body: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.post(srv.base_url + "/v1/completions", json={"model": srv.model_name, **body},
                      headers=headers, timeout=60)


def test_missing_or_wrong_key_is_401(locked):
    for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                    {"Authorization": f"Basic {KEY}"}):
        r = post(locked, {"prompt": "Hi", "max_tokens": 2}, headers)
        assert r.status_code == 401, headers
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert KEY not in r.text
    r = httpx.get(locked.base_url + "/v1/models", headers={"Authorization": "Bearer wrong"}, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.get(locked.base_url + "/v1/cluster", timeout=10)
    assert r.status_code == 401


def test_right_key_is_200_and_health_metrics_stay_open(locked):
    assert post(locked, {"prompt": "Hi", "max_tokens": 2}, AUTH).status_code == 200
    client = openai.OpenAI(base_url=locked.base_url + "/v1", api_key=KEY, max_retries=0)
    r = client.completions.create(model=locked.model_name, prompt="Hi", max_tokens=3)
    assert r.usage.completion_tokens <= 3
    bad = openai.OpenAI(base_url=locked.base_url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model=locked.model_name, prompt="Hi", max_tokens=3)
    assert httpx.get(locked.base_url + "/health", timeout=10).status_code == 200
    assert httpx.get(locked.base_url + "/metrics", timeout=10).status_code == 200


def test_over_max_pending_is_429(locked):
    with httpx.Client(timeout=60, headers=AUTH) as http:
        url = locked.base_url + "/v1/completions"
        body = {"model": locked.model_name, **LONG}
        with http.stream("POST", url, json=body) as s1, http.stream("POST", url, json=body) as s2:
            # hold on to the line iterators: a dropped httpx iterator closes its response
            lines = [s1.iter_lines(), s2.iter_lines()]
            for s, it in zip((s1, s2), lines, strict=True):  # both are generating: both hold a slot
                assert s.status_code == 200
                next(line for line in it if line.startswith("data: "))
            r = http.post(url, json={"model": locked.model_name, "prompt": "Hi", "max_tokens": 2})
            assert r.status_code == 429
            assert r.json()["error"]["code"] == "rate_limit_exceeded"
        # the streams are closed; their slots come back once the server has seen the disconnects
        for _ in range(200):
            r = http.post(url, json={"model": locked.model_name, "prompt": "Hi", "max_tokens": 2})
            if r.status_code != 429:
                break
        assert r.status_code == 200, r.text


def test_sigterm_ends_streams_and_exits_cleanly(locked):
    """SIGTERM with a stream open: it ends with finish_reason "abort" and [DONE], the process exits 0."""
    children = children_of(locked.proc.pid)
    with httpx.Client(timeout=60, headers=AUTH) as http:
        with http.stream("POST", locked.base_url + "/v1/completions",
                         json={"model": locked.model_name, **LONG}) as r:
            lines = r.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            locked.proc.send_signal(signal.SIGTERM)
            rest = [line[6:] for line in lines if line.startswith("data: ")]
    assert rest[-1] == "[DONE]"
    assert json.loads(rest[-2])["choices"][0]["finish_reason"] == "abort"
    try:
        code = locked.proc.wait(timeout=60)  # a hang guard, not a timing assertion
    except subprocess.TimeoutExpired:
        locked.proc.kill()
        raise AssertionError(f"server did not exit after SIGTERM:\n{locked.log()}") from None
    assert code == 0, locked.log()
    assert not [c for c in children if is_alive(c)]
    assert "Traceback" not in locked.log()
