"""Session fixture: the fixed workload with its offline (LLM.generate) reference on the tiny llama."""

import pytest

from banaserve.engine.llm import LLM
from tests.cluster.cluster_harness import ENGINE, Workload, make_workload


@pytest.fixture(scope="session")
def workload(tiny_llama) -> Workload:
    prompts, params = make_workload()
    llm = LLM(tiny_llama, **ENGINE)
    return Workload(prompts, params, llm.generate(prompt_token_ids=prompts, sampling_params=params))
