import pytest

from banaserve.engine.config import EngineConfig
from banaserve.engine.llm_engine import LLMEngine
from banaserve.sim.profile_table import ProfileCostModel, ProfileTable
from banaserve.sim.profiler import ProfileGrid, fit_chunk_cost, profile_engine

GRID = ProfileGrid([0, 16, 64], [0, 1, 2, 4], [32, 96], repeats=1, warmup=1)


@pytest.fixture(scope="module")
def engine(tiny_model):
    return LLMEngine(EngineConfig(model=tiny_model, device="cpu", num_kv_blocks=128,
                                  max_num_batched_tokens=256))


def test_profile_covers_the_grid_and_leaves_the_engine_idle(engine):
    table = profile_engine(engine, GRID, threads=1)
    assert len(table.step_time_s) == 3 and all(len(row) == 4 for row in table.step_time_s)
    measured = [t for i, row in enumerate(table.step_time_s) for j, col in enumerate(row) for t in col
                if (i, j) != (0, 0)]
    assert all(t > 0 for t in measured)
    assert table.engine["num_kv_blocks"] == 128 and table.model["num_layers"] == 4
    assert table.model["dtype_bytes"] == 4
    assert not engine.has_unfinished_requests() and engine.blocks.num_used_blocks == 0
    ProfileCostModel(table)  # a valid table


@pytest.mark.parametrize("grid, match", [
    (ProfileGrid([0, 255], [0, 1, 2], [32, 64]), "max_num_batched_tokens"),
    (ProfileGrid([0, 16], [0, 1, 2], [32, 2046]), "contexts"),
    (ProfileGrid([0, 16], [0, 1, 64], [32, 1000]), "KV blocks"),
    (ProfileGrid([0, 16], [0, 1], [32, 64]), "two sizes"),
    (ProfileGrid([5, 16], [0, 1, 2], [32, 64]), "start at 0"),
])
def test_grid_checks(engine, grid, match):
    with pytest.raises(ValueError, match=match):
        grid.check(engine.block_size, engine.num_blocks, 256, engine.max_model_len)


def test_later_chunks_are_timed_and_fitted(engine):
    """Chunks after earlier context run a masked attention over gathered pages, which the grid's
    fresh prompts never do: the profile times some and fits their cost."""
    table = profile_engine(engine, ProfileGrid([0, 16, 32, 64], [0, 1, 2], [32, 96], repeats=1, warmup=1),
                           threads=1)
    timed = table.meta["chunk_step_time_s"]
    assert {(n, start) for n, start, _ in timed} == {(32, 32), (32, 96), (64, 32), (64, 96)}
    assert all(t > 0 for _, _, t in timed)
    assert set(table.chunk_cost) == {"pair_s", "entry_s", "ctx_s"} and min(table.chunk_cost.values()) >= 0
    assert not engine.has_unfinished_requests() and engine.blocks.num_used_blocks == 0


def test_chunk_cost_fit_recovers_known_coefficients():
    """Synthetic timings built from known costs come back out of the fit."""
    P, C = [0, 100, 200, 400], [50, 500]
    table = ProfileTable(P, [0, 1, 2], C, [[[0.01 + 1e-4 * p + 2e-7 * p * (p + 1) / 2 + b * 1e-3 for _ in C]
                                             for b in range(3)] for p in P])
    fresh = {p: 0.01 + 1e-4 * p + 2e-7 * p * (p + 1) / 2 for p in P}
    chunks = {(n, s): fresh[n] - 2e-7 * n * (n + 1) / 2 + 3e-7 * n * (s + n) + 5e-5 * (s + n)
              for n in (100, 200) for s in (50, 500)}
    fit = fit_chunk_cost(table, chunks)
    assert fit["pair_s"] == pytest.approx(2e-7, rel=1e-6)
    assert fit["entry_s"] == pytest.approx(3e-7, rel=1e-6) and fit["ctx_s"] == pytest.approx(5e-5, rel=1e-6)
