"""Prometheus metrics: request counts and latencies measured here, instance gauges read at scrape time.

Latencies follow the project's one definition (docs/serve.md): TTFT from the request's arrival
at the server to its first token, TPOT = (E2E - TTFT) / (output tokens - 1), E2E to the last.
Per-instance numbers (queue, running, KV blocks, transfer bytes, ...) are not copied into
gauges as they change: `ClusterCollector` reads `cluster_state()` when Prometheus scrapes, so
whatever numeric stats an instance publishes appear as `banaserve_instance_<name>`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from banaserve.cluster.engine_client import EngineClient

logger = logging.getLogger("banaserve.serve")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)

_HELP = {
    "num_waiting": "requests queued on the instance",
    "num_running": "requests running on the instance",
    "kv_blocks_used": "KV blocks held by requests",
    "kv_blocks_total": "KV blocks of the instance",
    "kv_blocks_cached_free": "free KV blocks still holding prefix-cache content",
}


# identities and bookkeeping, not measurements: kept out of /metrics
_SKIP = frozenset({"id", "instance_id", "pid", "seq", "updated_at"})


class ServerMetrics:
    """All metrics of one server, in their own registry (so several servers can live in a process)."""

    def __init__(self, client: EngineClient):
        disable_created_metrics()  # the *_created series only double what Prometheus already knows
        r = self.registry = CollectorRegistry()
        self.requests = Counter("banaserve_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.finished = Counter("banaserve_requests_finished", "generation requests by finish reason",
                                ["finish_reason"], registry=r)
        self.prompt_tokens = Counter("banaserve_prompt_tokens", "prompt tokens of finished requests",
                                     registry=r)
        self.generation_tokens = Counter("banaserve_generation_tokens", "tokens generated", registry=r)
        self.in_flight = Gauge("banaserve_requests_in_flight", "generation requests the server holds",
                               registry=r)
        self.ttft = Histogram("banaserve_time_to_first_token_seconds", "time to first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("banaserve_time_per_output_token_seconds", "decode time per output token",
                              buckets=TOKEN_LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("banaserve_e2e_request_latency_seconds", "arrival to last token",
                             buckets=LATENCY_BUCKETS, registry=r)
        r.register(ClusterCollector(client))

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(slots=True)
class RequestTimer:
    """Timestamps of one generation request, turned into histogram samples when it ends."""

    metrics: ServerMetrics
    arrival: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    done: bool = False

    def on_tokens(self, num_new: int, total: int) -> None:
        if num_new and self.first_token is None:
            self.first_token = time.perf_counter()
            self.metrics.ttft.observe(self.first_token - self.arrival)
        self.metrics.generation_tokens.inc(max(0, total - self.num_output_tokens))
        self.num_output_tokens = total

    def finish(self, reason: str) -> None:
        """Record the request once; later calls (cleanup after a normal end) do nothing."""
        if self.done:
            return
        self.done = True
        m = self.metrics
        m.finished.labels(reason).inc()
        m.prompt_tokens.inc(self.num_prompt_tokens)
        if reason == "abort" or self.first_token is None:
            return  # latency of a request nobody waited for to the end is not a latency sample
        end = time.perf_counter()
        m.e2e.observe(end - self.arrival)
        if self.num_output_tokens > 1:
            m.tpot.observe((end - self.first_token) / (self.num_output_tokens - 1))


class ClusterCollector(Collector):
    """Numeric fields of `cluster_state()` as gauges, labelled by instance id and role."""

    def __init__(self, client: EngineClient):
        self.client = client

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            state = self.client.cluster_state()
        except Exception:  # a failed scrape must not take /metrics down with it
            logger.exception("cluster_state() failed during a metrics scrape")
            return
        families: dict[str, GaugeMetricFamily] = {}

        def put(prefix: str, name: str, labels: dict[str, str], value: float) -> None:
            full = f"banaserve_{prefix}_{name}"
            fam = families.get(full)
            if fam is None:
                fam = families[full] = GaugeMetricFamily(full, _HELP.get(name, name.replace("_", " ")),
                                                         labels=list(labels))
            fam.add_metric(list(labels.values()), value)

        for inst in state.get("instances", []):
            labels = {"instance": str(inst.get("id", "")), "role": str(inst.get("role", ""))}
            for name, value in _numeric_leaves(inst.get("stats", {})):
                put("instance", name, labels, value)
            for key, sub in inst.items():
                if key != "stats" and isinstance(sub, dict):
                    for name, value in _numeric_leaves(sub, key):
                        put("instance", name, labels, value)
        for key, sub in state.items():
            if key == "instances":
                continue
            leaves = _numeric_leaves(sub, key) if isinstance(sub, dict) else _numeric_leaves({key: sub})
            for name, value in leaves:
                put("cluster", name, {}, value)
        yield from families.values()
        store = state.get("kv_store")
        if isinstance(store, dict):  # totals that only grow: counters, as dashboards rate() them
            for name, help_text in (("hit_tokens", "prompt tokens loaded from the KV store"),
                                    ("loaded_bytes", "KV bytes loaded from the KV store"),
                                    ("saved_bytes", "KV bytes saved to the KV store")):
                yield CounterMetricFamily(f"banaserve_kv_store_{name}", help_text, value=store.get(name, 0))


def _numeric_leaves(d: dict, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, float]]:
    for key, value in d.items():
        if key in _SKIP:
            continue
        name = re.sub(r"[^a-zA-Z0-9_]", "_", f"{prefix}_{key}" if prefix else str(key))
        if isinstance(value, bool):
            yield name, float(value)
        elif isinstance(value, (int, float)):
            yield name, float(value)
        elif isinstance(value, dict) and depth < 2:
            yield from _numeric_leaves(value, name, depth + 1)
