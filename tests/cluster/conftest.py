"""Session fixtures: a tiny checkpoint and the fixed workload with its offline (LLM.generate) reference."""

import pytest
from cluster_harness import ENGINE, Workload, make_workload

from banaserve.engine.llm import LLM
from banaserve.models.make_model import make_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return make_model("llama", "tiny", 0, str(tmp_path_factory.mktemp("ckpt") / "tiny-llama"))


@pytest.fixture(scope="session")
def workload(tiny_model) -> Workload:
    prompts, params = make_workload()
    llm = LLM(tiny_model, **ENGINE)
    return Workload(prompts, params, llm.generate(prompt_token_ids=prompts, sampling_params=params))
