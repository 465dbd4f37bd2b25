"""One serving instance: requests in, tokens out, one scheduler step at a time."""

from __future__ import annotations

import itertools
import os

import torch

from banaserve.engine.config import EngineConfig
from banaserve.engine.core import EngineCore
from banaserve.engine.kv_connector import KVConnector
from banaserve.engine.model_runner import ModelRunner, allocate_kv_caches, retain_freed_memory
from banaserve.engine.output_processor import OutputProcessor
from banaserve.engine.outputs import RequestOutput
from banaserve.engine.request import Request
from banaserve.engine.sampling_params import SamplingParams
from banaserve.engine.scheduler import Scheduler, SchedulerConfig
from banaserve.engine.tokenizer import TextTokenizer
from banaserve.kv.block_manager import BlockManager
from banaserve.models.loader import load_model, model_fingerprint, parse_dtype
from banaserve.models.make_model import default_model_path


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but no CUDA device is available")
    return dev


class LLMEngine:
    """add_request / step / abort_request / has_unfinished_requests, for online use: the engine
    core (token ids, core.py) behind an output processor (text, stop strings)."""

    def __init__(self, config: EngineConfig):
        config.validate()
        self.config = config
        path = config.model or default_model_path()
        if not os.path.isdir(path):
            raise ValueError(f"model path {path!r} does not exist")
        self.model_path = path
        self.device = resolve_device(config.device)
        dtype_name = config.dtype if config.dtype != "auto" else (
            "bfloat16" if self.device.type == "cuda" else "float32")
        self.dtype = parse_dtype(dtype_name)
        if self.device.type == "cpu" and config.retain_freed_memory:
            retain_freed_memory()
        model, self.model_config = load_model(path, self.dtype, self.device)
        self.tokenizer = TextTokenizer(path)
        mc = self.model_config
        self.max_model_len = min(config.max_model_len or mc.max_position_embeddings, mc.max_position_embeddings)
        self.block_size = config.block_size
        self.num_blocks = config.num_kv_blocks or self._auto_num_blocks()
        kv = allocate_kv_caches(mc.num_layers, self.num_blocks, self.block_size, mc.num_kv_heads,
                                mc.head_dim, self.dtype, self.device, config.prefault_kv_cache)
        self.fingerprint = model_fingerprint(path, self.dtype, self.block_size)
        self.blocks = BlockManager(self.num_blocks, self.block_size, self.fingerprint,
                                   config.enable_prefix_caching)
        self.scheduler = Scheduler(SchedulerConfig(
            max_num_batched_tokens=config.max_num_batched_tokens, max_num_seqs=config.max_num_seqs,
            max_model_len=self.max_model_len, enable_chunked_prefill=config.enable_chunked_prefill,
        ), self.blocks)
        self.runner = ModelRunner(model, kv, self.block_size, self.device)
        self.generator = torch.Generator(self.device).manual_seed(config.seed)
        self.core = EngineCore(self.scheduler, self.blocks, self.runner, self.max_model_len,
                               mc.eos_token_ids, mc.vocab_size)
        self.core.make_request = self._make_request
        self.outputs = OutputProcessor(self.tokenizer)
        self._ids = itertools.count()

    def _auto_num_blocks(self) -> int:
        mc, cfg = self.model_config, self.config
        per_block = mc.kv_bytes_per_token(self.dtype.itemsize) * self.block_size
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            budget = free - (1 - cfg.gpu_memory_utilization) * total
        else:
            budget = cfg.kv_cache_gb * (1 << 30)
        needed = -(-cfg.max_num_seqs * self.max_model_len // self.block_size) + 1
        return max(1, min(int(budget // per_block), needed))

    def set_kv_connector(self, connector: KVConnector | None) -> None:
        """Attach the KV mover (see kv_connector.py) to the step loop and the scheduler."""
        self.core.set_kv_connector(connector)

    @property
    def connector(self) -> KVConnector | None:
        return self.core.connector

    @property
    def requests(self) -> dict[str, Request]:
        return self.core.requests

    def _make_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> Request:
        gen = self.generator if params.seed is None else torch.Generator(self.device).manual_seed(params.seed)
        return Request(request_id, prompt_token_ids, params, generator=gen)

    # ----- requests -----

    def add_request(self, request_id: str | None = None, prompt: str | None = None,
                    params: SamplingParams | None = None, prompt_token_ids: list[int] | None = None,
                    arrival_time: float | None = None) -> str:
        """Queue a request; raise ValueError on anything it could never be served with."""
        params = params or SamplingParams()
        params.validate()
        request_id = str(next(self._ids)) if request_id is None else request_id
        token_ids = self.tokenize_prompt(prompt, prompt_token_ids)
        req = self.core.add(request_id, token_ids, params)
        if arrival_time is not None:
            req.arrival_time = arrival_time
        self.outputs.add(request_id, token_ids, params)
        return request_id

    def tokenize_prompt(self, prompt: str | None, prompt_token_ids: list[int] | None) -> list[int]:
        if (prompt is None) == (prompt_token_ids is None):
            raise ValueError("give exactly one of prompt or prompt_token_ids")
        if prompt is not None:
            if not isinstance(prompt, str):
                raise ValueError("prompt must be a string")
            token_ids = self.tokenizer.encode(prompt)
        else:
            token_ids = list(prompt_token_ids)
            self.core.check_token_ids(token_ids)
        if not token_ids:
            raise ValueError("prompt is empty")
        return token_ids

    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> None:
        self.core.check_fits(num_prompt_tokens, max_tokens)

    def abort_request(self, request_id: str) -> RequestOutput | None:
        if self.core.abort(request_id) is None:
            return None
        return self.outputs.abort(request_id)

    def has_unfinished_requests(self) -> bool:
        return self.core.has_unfinished_requests()

    # ----- stepping -----

    def step(self) -> list[RequestOutput]:
        """Run one scheduler step; return an output for every request that got a token."""
        results = []
        for token_out in self.core.step():
            out, stopped = self.outputs.process(token_out)
            if stopped:  # a stop string ended it: the core still runs it
                self.core.abort(token_out.request_id)
            if out is not None:
                results.append(out)
        return results

    # ----- introspection -----

    @torch.inference_mode()
    def prompt_logits(self, prompt_token_ids: list[int]) -> torch.Tensor:
        """Logits [T, V] of one prompt (uses free KV blocks as scratch; the engine must be idle)."""
        if self.has_unfinished_requests():
            raise RuntimeError("prompt_logits needs an idle engine")
        self.tokenize_prompt(None, prompt_token_ids)
        blocks = self.blocks.pool.allocate(self.blocks.blocks_for(len(prompt_token_ids)))
        try:
            return self.runner.prompt_logits(prompt_token_ids, blocks)
        finally:
            self.blocks.pool.free(blocks)

    def stats(self) -> dict:
        return {
            "num_waiting": len(self.scheduler.waiting),
            "num_running": len(self.scheduler.running),
            "kv_blocks_total": self.num_blocks,
            "kv_blocks_used": self.blocks.num_used_blocks,
            "kv_blocks_cached_free": self.blocks.pool.num_cached_free,
            "num_preemptions": self.scheduler.num_preemptions,
        }
