import pytest

from banaserve.engine.config import EngineConfig
from banaserve.engine.llm_engine import LLMEngine
from banaserve.sim.profile_table import ProfileCostModel
from banaserve.sim.profiler import ProfileGrid, profile_engine

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
