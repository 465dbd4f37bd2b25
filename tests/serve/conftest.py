"""Fixtures of the HTTP tests: a tiny checkpoint, a shared server, the offline reference engine."""

from __future__ import annotations

import pytest

from tests.serve.server_proc import NUM_KV_BLOCKS, start_server


@pytest.fixture(scope="session")
def tiny_model(tiny_llama) -> str:
    """The tiny llama checkpoint of tests/conftest.py (made once per session)."""
    return tiny_llama


@pytest.fixture(scope="session")
def server(tiny_model, tmp_path_factory):
    """The shared server: defaults except a smaller KV pool."""
    srv = start_server(tiny_model, str(tmp_path_factory.mktemp("logs")))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def offline_llm(tiny_model):
    """The reference: the same checkpoint through the offline LLM API in this process."""
    from banaserve import LLM

    return LLM(tiny_model, num_kv_blocks=NUM_KV_BLOCKS)
