"""GET /metrics and /v1/cluster: what a request leaves behind, and the scrape-time instance gauges."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from banaserve.serve.metrics import ServerMetrics
from tests.serve.server_proc import wait_idle


def scrape(server) -> dict[tuple[str, tuple], float]:
    text = httpx.get(server.base_url + "/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_request_counts_latencies_and_instance_gauges(server):
    wait_idle(server)
    before = scrape(server)
    ok = httpx.post(server.base_url + "/v1/completions", timeout=60,
                    json={"model": server.model_name, "prompt": "Hello", "max_tokens": 5, "ignore_eos": True})
    assert ok.status_code == 200
    bad = httpx.post(server.base_url + "/v1/completions", timeout=60, json={"model": server.model_name})
    assert bad.status_code == 400
    after = scrape(server)

    def delta(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("banaserve_requests_total", endpoint="/v1/completions", status="200") == 1
    assert delta("banaserve_requests_total", endpoint="/v1/completions", status="400") == 1
    assert delta("banaserve_requests_finished_total", finish_reason="length") == 1
    assert delta("banaserve_generation_tokens_total") == 5
    for hist in ("banaserve_time_to_first_token_seconds", "banaserve_time_per_output_token_seconds",
                 "banaserve_e2e_request_latency_seconds"):
        assert delta(hist + "_count") == 1
    assert value(after, "banaserve_requests_in_flight") == 0
    inst = {"instance": "0", "role": "unified"}
    assert value(after, "banaserve_instance_kv_blocks_total", **inst) == 2048
    for gauge in ("num_waiting", "num_running", "kv_blocks_used"):
        assert ("banaserve_instance_" + gauge, tuple(sorted(inst.items()))) in after


def test_cluster_endpoint(server):
    state = httpx.get(server.base_url + "/v1/cluster", timeout=10).json()
    (inst,) = state["instances"]
    assert inst["role"] == "unified"
    assert {"num_waiting", "num_running", "kv_blocks_used", "kv_blocks_total"} <= set(inst["stats"])


class FakeClient:
    def __init__(self, state):
        self.state = state

    def cluster_state(self):
        if isinstance(self.state, Exception):
            raise self.state
        return self.state


def test_collector_exports_nested_numeric_stats():
    state = {"mode": "disagg",
             "instances": [{"id": 0, "role": "prefill", "pid": 11, "stats": {"num_running": 2, "alive": True}},
                           {"id": 1, "role": "decode", "pid": 12, "stats": {"num_running": 1, "seq": 9},
                            "transfer": {"bytes_received": 4096}}],
             "transfers": {"bytes_pushed": 4096, "in_flight": 1}}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in ServerMetrics(FakeClient(state)).registry.collect() for s in fam.samples}
    assert samples[("banaserve_instance_num_running", (("instance", "0"), ("role", "prefill")))] == 2
    assert samples[("banaserve_instance_alive", (("instance", "0"), ("role", "prefill")))] == 1
    assert samples[("banaserve_instance_transfer_bytes_received", (("instance", "1"), ("role", "decode")))] == 4096
    assert samples[("banaserve_cluster_transfers_bytes_pushed", ())] == 4096
    names = {name for name, _ in samples}
    assert "banaserve_instance_seq" not in names and "banaserve_instance_pid" not in names


def test_collector_survives_a_failing_cluster_state():
    metrics = ServerMetrics(FakeClient(RuntimeError("instance gone")))
    text = metrics.render().decode()
    assert "banaserve_requests_in_flight" in text
    assert "banaserve_instance_" not in text
