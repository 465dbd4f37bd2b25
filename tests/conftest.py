"""Shared fixtures: real HF-format checkpoints written once per test session."""

from __future__ import annotations

import os

import pytest
import torch

from banaserve.models.make_model import make_model

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory):
    """make_checkpoint(arch, preset="tiny", seed=0, shards=1) -> path, cached per session."""
    cache: dict[tuple, str] = {}

    def make(arch: str = "llama", preset: str = "tiny", seed: int = 0, shards: int = 1) -> str:
        key = (arch, preset, seed, shards)
        if key not in cache:
            out = tmp_path_factory.mktemp("ckpt") / f"{arch}-{preset}-{seed}-{shards}"
            cache[key] = make_model(arch, preset, seed, str(out), shards)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_llama(make_checkpoint) -> str:
    return make_checkpoint("llama")


def cuda_devices() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
