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
    """JSON content type plus the bearer token when there is one."""
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


async def _on_chunk_sent(session: aiohttp.ClientSession, ctx, params) -> None:
    if not ctx.trace_request_ctx:
        ctx.trace_request_ctx.append(time.perf_counter())


def send_time_trace() -> aiohttp.TraceConfig:
    """Timestamps the moment a request's body is written to the socket.

    That is when the request really leaves the client: on a busy event loop (a burst of sends)
    aiohttp writes the body in a separate task that can run milliseconds after `post()` was
    called, and that client-side wait must not be charged to the server's TTFT.
    """
    trace = aiohttp.TraceConfig()
    trace.on_request_chunk_sent.append(_on_chunk_sent)
    return trace


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
    sent: list[float] = []  # filled by the on_request_chunk_sent hook when the body hits the socket
    record.send_s = clock() - t0
    error: str | None = None
    try:
        post = session.post(url, data=body, headers=hdrs, timeout=timeout, trace_request_ctx=sent)
        async with post as resp:
            if resp.status != 200:
                text = (await resp.text(errors="replace"))[:200].replace("\n", " ")
                error = f"HTTP {resp.status}: {text}"
            else:
                async for data in resp.content.iter_any():
                    reads.append((clock(), data))
    except TimeoutError:
        error = f"timeout after {timeout.total:g}s"
    except aiohttp.ClientPayloadError as e:
        error = f"stream dropped ({type(e).__name__})"
    except aiohttp.ClientError as e:
        error = f"connection error ({type(e).__name__})"
    except OSError as e:
        error = f"connection error ({type(e).__name__}: {e.strerror})"
    except Exception as e:  # anything else still counts as a failed request, never a lost one
        error = f"client error ({type(e).__name__}: {str(e)[:100]})"
    if sent:
        record.send_s = sent[0] - t0
    return _finish(record, reads, t0, error)


def _finish(
    record: RequestRecord, reads: list[tuple[float, bytes]], t0: float, error: str | None
) -> RequestRecord:
    """Parse the stream into the record; a complete stream ends at its last read."""
    record.end_s = (reads[-1][0] if error is None and reads else time.perf_counter()) - t0
    parsed = parse_stream([(t - t0, data) for t, data in reads])
    record.token_times_s = parsed.token_times
    record.first_token_s = parsed.token_times[0] if parsed.token_times else None
    record.prompt_tokens = parsed.prompt_tokens
    record.output_tokens = (
        parsed.completion_tokens if parsed.completion_tokens is not None else len(parsed.token_times)
    )
    if error is None and parsed.error:
        error = parsed.error
    elif error is None and not parsed.done:
        error = "stream ended without [DONE]"
    elif error is None and not parsed.token_times:
        error = "no tokens in stream"
    if error is not None:
        record.status, record.error = FAILED, error
    return record
