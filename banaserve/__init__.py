"""banaserve: LLM serving for prefill/decode disaggregated clusters that rebalances itself.

The engine names below are loaded on first use (PEP 562) so that `import banaserve.<light
module>` (policies, bench, sim, configs) does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from banaserve.engine.config import EngineConfig
    from banaserve.engine.llm import LLM
    from banaserve.engine.llm_engine import LLMEngine
    from banaserve.engine.outputs import RequestOutput
    from banaserve.engine.sampling_params import SamplingParams

# Public name -> module that defines it.
_LAZY_NAMES = {
    "EngineConfig": "banaserve.engine.config",
    "LLM": "banaserve.engine.llm",
    "LLMEngine": "banaserve.engine.llm_engine",
    "RequestOutput": "banaserve.engine.outputs",
    "SamplingParams": "banaserve.engine.sampling_params",
}

__all__ = ["LLM", "LLMEngine", "EngineConfig", "RequestOutput", "SamplingParams"]


def __getattr__(name: str) -> Any:
    module_name = _LAZY_NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'banaserve' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
