"""Request specs from traces and synthetic specs."""

from __future__ import annotations

import json

import pytest

from banaserve.bench.spec import BenchError
from banaserve.bench.workload import WorkloadConfig, build_specs


@pytest.fixture
def azure(tmp_path):
    path = tmp_path / "a.csv"
    rows = [f"2023-11-16 18:17:{4 * i:02d},{100 * (i + 1)},{10 * (i + 1)}" for i in range(10)]  # every 4 s
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")
    return str(path)


@pytest.fixture
def mooncake(tmp_path):
    path = tmp_path / "m.jsonl"
    rows = [
        {"timestamp": 0, "input_length": 1100, "output_length": 5, "hash_ids": [0, 1, 2]},
        {"timestamp": 1000, "input_length": 700, "output_length": 9, "hash_ids": [0, 3]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_synthetic_defaults_all_at_once():
    specs = build_specs(WorkloadConfig(trace="synthetic:input=fixed:16,output=fixed:8", num_requests=7))
    assert len(specs) == 7
    assert {(s.arrival_s, s.input_len, s.output_len) for s in specs} == {(0.0, 16, 8)}
    assert [s.index for s in specs] == list(range(7))


def test_synthetic_rate_and_duration():
    cfg = WorkloadConfig(trace="synthetic:input=fixed:4,output=fixed:4", rate=5.0, duration_s=10.0)
    specs = build_specs(cfg)
    assert len(specs) == 50
    assert specs[-1].arrival_s == pytest.approx(49 / 5.0)
    assert build_specs(cfg) == specs  # seeded: the simulator can replay the same specs


def test_recorded_arrivals_time_scale_duration_num(azure):
    specs = build_specs(WorkloadConfig(trace=azure, time_scale=0.5))
    assert [s.arrival_s for s in specs] == [2.0 * i for i in range(10)]
    assert len(build_specs(WorkloadConfig(trace=azure, duration_s=10.0))) == 3  # arrivals 0, 4, 8
    assert len(build_specs(WorkloadConfig(trace=azure, duration_s=10.0, num_requests=2))) == 2


def test_generated_arrivals_keep_trace_lengths_in_order_and_wrap(azure):
    specs = build_specs(WorkloadConfig(trace=azure, rate=100.0, num_requests=12))
    assert [s.input_len for s in specs] == [100 * (i % 10 + 1) for i in range(12)]
    assert specs[-1].arrival_s == pytest.approx(11 / 100.0)


def test_scale_and_clip(azure):
    specs = build_specs(WorkloadConfig(trace=azure, length_scale=0.5, max_input=300, max_output=20))
    assert [s.input_len for s in specs][:4] == [50, 100, 150, 200]
    assert max(s.input_len for s in specs) == 300
    assert [s.output_len for s in specs][:3] == [5, 10, 15]
    assert max(s.output_len for s in specs) == 20


def test_mooncake_block_tokens_scale_inputs(mooncake):
    specs = build_specs(WorkloadConfig(trace=mooncake, block_tokens=16))
    # 1100 tokens span 3 blocks of 512 -> 1100 * 16/512 = 34.375 -> 34 tokens over 3 blocks of 16
    assert [s.input_len for s in specs] == [34, 22]
    assert [s.hash_ids for s in specs] == [(0, 1, 2), (0, 3)]
    assert {s.block_tokens for s in specs} == {16}
    assert [s.output_len for s in specs] == [5, 9]  # outputs are not block-scaled


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_requests": 0},
        {"duration_s": -1.0},
        {"length_scale": 0.0},
        {"max_input": 0},
        {"block_tokens": 0},
        {"rate": -2.0},
        {"duration_s": 5.0},  # synthetic at rate inf has no duration
        {"burstiness": -1.0},
        {"rate": 2.0, "time_scale": 0.5},
    ],
)
def test_bad_configs(kwargs):
    with pytest.raises(BenchError):
        build_specs(WorkloadConfig(trace="synthetic:input=fixed:1,output=fixed:1", **kwargs))
