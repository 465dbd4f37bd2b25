"""Cluster settings: combinations that cannot work are refused before any process starts."""

from __future__ import annotations

import pytest

from banaserve.cluster.config import ClusterConfig
from banaserve.engine.config import EngineConfig


def test_shm_transfer_needs_host_kv_memory():
    with pytest.raises(ValueError, match="transfer shm .* needs device cpu"):
        ClusterConfig(EngineConfig(model="m", device="cuda"), mode="disagg", transfer="shm").validate()
    ClusterConfig(EngineConfig(model="m", device="cuda"), mode="disagg", transfer="tcp").validate()
    ClusterConfig(EngineConfig(model="m", device="cuda"), mode="colocated").validate()  # no KV transfer
    ClusterConfig(EngineConfig(model="m", device="cpu"), mode="disagg", transfer="shm").validate()


@pytest.mark.parametrize("bad", [{"mode": "pd"}, {"transfer": "rdma"}, {"routing": "random"}, {"instances": 0},
                                 {"mode": "disagg", "prefill": 0}, {"max_attempts": 0}])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        ClusterConfig(EngineConfig(model="m"), **bad).validate()
