"""One streaming request against an OpenAI-compatible /v1/completions endpoint.

While the stream runs, the only work per network read is a perf_counter() call and a list append;
everything else (SSE parsing, counting) happens after the stream ends, so measurement is not
distorted by the client's own processing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import aiohttp
import msgspec

from banaserve.bench.prompts import PromptBuilder
from banaserve.bench.results import FAILED, RequestRecord
from banaserve.bench.spec import BenchError, RequestSpec
from banaserve.bench.sse import parse_stream


@dataclass(slots=True)
class ClientConfig:
    """How requests are sent. `ignore_eos` is a common extension (vLLM, SGLang, banaserve accept it)."""

    endpoint: str
    model: str | None = None
    api_key: str | None = None
    timeout_s: float = 600.0
    ignore_eos: bool = True
    prompt_text: bool = False
    extra_body: dict = field(default_factory=dict)


def base_url(endpoint: str) -> str:
    """Accept both http://host:port and the OpenAI-style http://host:port/v1."""
    url = endpoint.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise BenchError(f"--endpoint must start with http:// or https://, got {endpoint!r}")
    return url.removesuffix("/v1")


def headers(cfg: ClientConfig) -> dict[str, str]:
    out = {"Content-Type": "application/json"}
    if cfg.api_key:
        out["Authorization"] = f"Bearer {cfg.api_key}"
    return out


async def fetch_model(session: aiohttp.ClientSession, cfg: ClientConfig) -> str:
    """The first model the server lists at GET /v1/models."""
    url = base_url(cfg.endpoint) + "/v1/models"
    try:
        async with session.get(url, headers=headers(cfg), timeout=aiohttp.ClientTimeout(total=30)) as resp:
            if resp.status != 200:
                raise BenchError(f"GET {url}: HTTP {resp.status}; pass --model")
            data = (await resp.json(content_type=None)).get("data") or []
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        raise BenchError(f"cannot list models at {url} ({type(e).__name__}: {e}); pass --model") from None
    if not data or "id" not in data[0]:
        raise BenchError(f"GET {url} listed no models; pass --model")
    return str(data[0]["id"])


def encode_body(spec: RequestSpec, cfg: ClientConfig, model: str, prompts: PromptBuilder) -> bytes:
    """The JSON request body: the prompt as token ids (exact length) or as synthesized text."""
    prompt: list[int] | str = prompts.text(spec) if cfg.prompt_text else prompts.token_ids(spec).tolist()
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": spec.output_len,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if cfg.ignore_eos:
        body["ignore_eos"] = True
    body.update(cfg.extra_body)
    return msgspec.json.encode(body)


def _fail(record: RequestRecord, reason: str) -> RequestRecord:
    record.status, record.error = FAILED, reason
    return record


async def send_one(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    hdrs: dict[str, str],
    record: RequestRecord,
    t0: float,
    timeout: aiohttp.ClientTimeout,
) -> RequestRecord:
    """Send one request and fill `record` in; failures are recorded with a reason, never raised."""
    reads: list[tuple[float, bytes]] = []
    clock = time.perf_counter
    send = clock()
    record.send_s = send - t0
    try:
        async with session.post(url, data=body, headers=hdrs, timeout=timeout) as resp:
            if resp.status != 200:
                text = (await resp.text(errors="replace"))[:200].replace("\n", " ")
                record.end_s = clock() - t0
                return _fail(record, f"HTTP {resp.status}: {text}")
            async for data in resp.content.iter_any():
                reads.append((clock(), data))
    except TimeoutError:
        return _fail(_finish(record, reads, t0), f"timeout after {timeout.total:g}s")
    except aiohttp.ClientPayloadError as e:
        return _fail(_finish(record, reads, t0), f"stream dropped ({type(e).__name__})")
    except aiohttp.ClientError as e:
        return _fail(_finish(record, reads, t0), f"connection error ({type(e).__name__})")
    except OSError as e:
        return _fail(_finish(record, reads, t0), f"connection error ({type(e).__name__}: {e.strerror})")
    return _finish(record, reads, t0, complete=True)


def _finish(
    record: RequestRecord, reads: list[tuple[float, bytes]], t0: float, complete: bool = False
) -> RequestRecord:
    record.end_s = (reads[-1][0] if complete and reads else time.perf_counter()) - t0
    parsed = parse_stream([(t - t0, data) for t, data in reads])
    record.token_times_s = parsed.token_times
    record.first_token_s = parsed.token_times[0] if parsed.token_times else None
    record.prompt_tokens = parsed.prompt_tokens
    record.output_tokens = (
        parsed.completion_tokens if parsed.completion_tokens is not None else len(parsed.token_times)
    )
    if not complete:
        return record
    if parsed.error:
        return _fail(record, parsed.error)
    if not parsed.done:
        return _fail(record, "stream ended without [DONE]")
    if not parsed.token_times:
        return _fail(record, "no tokens in stream")
    return record
