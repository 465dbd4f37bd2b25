"""banaserve: LLM serving for prefill/decode disaggregated clusters that rebalances itself."""

from banaserve.engine.config import EngineConfig
from banaserve.engine.llm import LLM
from banaserve.engine.llm_engine import LLMEngine
from banaserve.engine.outputs import RequestOutput
from banaserve.engine.sampling_params import SamplingParams

__all__ = ["LLM", "LLMEngine", "EngineConfig", "RequestOutput", "SamplingParams"]
