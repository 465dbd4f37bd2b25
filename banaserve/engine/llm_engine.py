"""One serving instance: requests in, tokens out, one scheduler step at a time."""

from __future__ import annotations

import itertools
import os

import torch

from banaserve.engine.config import EngineConfig
from banaserve.engine.kv_connector import KVConnector
from banaserve.engine.model_runner import ModelRunner, allocate_kv_caches, retain_freed_memory
from banaserve.engine.outputs import RequestOutput
from banaserve.engine.request import Request
from banaserve.engine.sampling_params import SamplingParams
from banaserve.engine.scheduler import Scheduler, SchedulerConfig
from banaserve.engine.tokenizer import IncrementalDetokenizer, TextTokenizer
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
    """add_request / step / abort_request / has_unfinished_requests, for online use."""

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
        self.requests: dict[str, Request] = {}
        self.detokenizers: dict[str, IncrementalDetokenizer] = {}
        self.emitted_text: dict[str, int] = {}
        self._ids = itertools.count()
        self.connector: KVConnector | None = None

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
        self.connector = connector
        self.scheduler.connector = connector

    # ----- requests -----

    def add_request(self, request_id: str | None = None, prompt: str | None = None,
                    params: SamplingParams | None = None, prompt_token_ids: list[int] | None = None,
                    arrival_time: float | None = None) -> str:
        """Queue a request; raise ValueError on anything it could never be served with."""
        params = params or SamplingParams()
        params.validate()
        request_id = str(next(self._ids)) if request_id is None else request_id
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        token_ids = self.tokenize_prompt(prompt, prompt_token_ids)
        self.check_fits(len(token_ids), params.max_tokens)
        gen = self.generator if params.seed is None else torch.Generator(self.device).manual_seed(params.seed)
        req = Request(request_id, token_ids, params, generator=gen)
        if arrival_time is not None:
            req.arrival_time = arrival_time
        self.requests[request_id] = req
        self.detokenizers[request_id] = IncrementalDetokenizer(self.tokenizer)
        self.emitted_text[request_id] = 0
        self.scheduler.add(req)
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
            vocab = self.model_config.vocab_size
            if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab for t in token_ids):
                raise ValueError(f"prompt token ids must be integers in [0, {vocab})")
        if not token_ids:
            raise ValueError("prompt is empty")
        return token_ids

    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> None:
        if num_prompt_tokens >= self.max_model_len:
            raise ValueError(f"prompt has {num_prompt_tokens} tokens but the model's context is "
                             f"{self.max_model_len} tokens (at least one must be left for output)")
        worst = min(num_prompt_tokens + max_tokens, self.max_model_len)
        if self.blocks.blocks_for(worst) > self.num_blocks:
            raise ValueError(f"request needs up to {worst} tokens of KV memory but this engine holds "
                             f"{self.num_blocks * self.block_size}")

    def abort_request(self, request_id: str) -> RequestOutput | None:
        req = self.requests.get(request_id)
        if req is None or req.finished:
            return None
        self.scheduler.finish(req, "abort")
        return self._finish_output(req, [])

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    # ----- stepping -----

    def step(self) -> list[RequestOutput]:
        """Run one scheduler step; return an output for every request that got a token."""
        batch = self.scheduler.schedule()
        if not batch.requests:
            return []
        conn = self.connector
        if conn is None:
            sampled = self.runner.execute(batch, self.blocks.block_tables)
        else:
            conn.start_step(batch, self.blocks.block_tables)
            sampled = self.runner.execute(batch, self.blocks.block_tables, after_layer=conn.after_layer)
            conn.end_step()
        self.scheduler.commit(batch)
        outputs = []
        for req in batch.requests:
            token = sampled.get(req.request_id)
            if token is None:
                continue
            req.all_token_ids.append(token)
            outputs.append(self._advance(req, token))
        return outputs

    def _advance(self, req: Request, token: int) -> RequestOutput:
        p = req.params
        detok = self.detokenizers[req.request_id]
        detok.add([token])
        reason = None
        if not p.ignore_eos and token in self.model_config.eos_token_ids or token in p.stop_token_ids:
            reason = "stop"
        elif p.stop and self._truncate_at_stop(req, detok):
            reason = "stop"
        elif req.num_output_tokens >= p.max_tokens or req.num_tokens >= self.max_model_len:
            reason = "length"
        if reason is not None:
            self.scheduler.finish(req, reason)
            return self._finish_output(req, [token])
        return self._output(req, [token], detok.text)

    def _truncate_at_stop(self, req: Request, detok: IncrementalDetokenizer) -> bool:
        longest = max(len(s) for s in req.params.stop)
        start = max(0, self.emitted_text[req.request_id] - longest)
        hits = [i for i in (detok.text.find(s, start) for s in req.params.stop) if i >= 0]
        if not hits:
            return False
        detok.text = detok.text[:min(hits)]
        return True

    def _finish_output(self, req: Request, new_tokens: list[int]) -> RequestOutput:
        detok = self.detokenizers.pop(req.request_id)
        text = detok.text
        if req.finish_reason != "stop" or not req.params.stop:
            full = self.tokenizer.decode(req.output_token_ids)  # flush characters still incomplete
            text = full if full.startswith(text) else text
        out = self._output(req, new_tokens, text)
        del self.requests[req.request_id], self.emitted_text[req.request_id]
        return out

    def _output(self, req: Request, new_tokens: list[int], text: str) -> RequestOutput:
        sent = self.emitted_text[req.request_id]
        self.emitted_text[req.request_id] = max(sent, len(text))
        return RequestOutput(
            request_id=req.request_id, prompt_token_ids=req.prompt_token_ids,
            token_ids=req.output_token_ids, text=text, new_token_ids=new_tokens,
            new_text=text[sent:], finished=req.finished, finish_reason=req.finish_reason,
            num_cached_tokens=req.num_cached_tokens, num_preemptions=req.num_preemptions,
        )

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
