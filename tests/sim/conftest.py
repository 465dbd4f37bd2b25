"""Fixtures for the simulator tests: a tiny real checkpoint and small cost models."""

from __future__ import annotations

import os

import pytest
import torch

from banaserve.models.make_model import make_model

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A tiny llama checkpoint (~1M params) written once per session."""
    return make_model("llama", "tiny", 0, str(tmp_path_factory.mktemp("ckpt") / "llama-tiny"))
