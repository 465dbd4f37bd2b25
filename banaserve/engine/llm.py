"""Offline batch generation: `LLM(model=...).generate(prompts, SamplingParams(...))`."""

from __future__ import annotations

from collections.abc import Sequence

from banaserve.engine.config import EngineConfig
from banaserve.engine.llm_engine import LLMEngine
from banaserve.engine.outputs import RequestOutput
from banaserve.engine.sampling_params import SamplingParams


class LLM:
    """Keyword arguments are EngineConfig fields (dtype, device, block_size, num_kv_blocks, ...)."""

    def __init__(self, model: str | None = None, **kwargs):
        self.engine = LLMEngine(EngineConfig(model=model, **kwargs))
        self.tokenizer = self.engine.tokenizer

    def generate(self, prompts: str | Sequence[str] | None = None,
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 prompt_token_ids: Sequence[Sequence[int]] | None = None) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in input order."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if (prompts is None) == (prompt_token_ids is None):
            raise ValueError("give exactly one of prompts or prompt_token_ids")
        inputs = list(prompts) if prompts is not None else list(prompt_token_ids)
        if isinstance(sampling_params, SamplingParams) or sampling_params is None:
            params = [sampling_params or SamplingParams()] * len(inputs)
        else:
            params = list(sampling_params)
            if len(params) != len(inputs):
                raise ValueError("need one SamplingParams per prompt")
        engine = self.engine
        ids = []
        try:  # validate everything before running anything
            for item, p in zip(inputs, params):
                text, toks = (item, None) if prompts is not None else (None, list(item))
                ids.append(engine.add_request(prompt=text, prompt_token_ids=toks, params=p))
        except ValueError:
            for rid in ids:
                engine.abort_request(rid)
            raise
        done: dict[str, RequestOutput] = {}
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    done[out.request_id] = out
        return [done[rid] for rid in ids]
