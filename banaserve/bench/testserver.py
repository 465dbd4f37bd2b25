"""A tiny OpenAI-compatible streaming completions server that emits tokens at a known pace.

Used to check the load generator's timing and failure handling:

    python -m banaserve.bench.testserver --port 0 --ttft-ms 50 --itl-ms 20

Token k (0-based) of a request is written at t_request + ttft + k * itl, against absolute
deadlines so delays never accumulate. A raw asyncio HTTP/1.1 server keeps its own overhead (and
so the jitter on that known pace) to a minimum. Failure knobs count completions requests from 1:
every K-th one fails with HTTP 500, drops its connection mid-stream, or stalls after its first
token until the client gives up.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from dataclasses import dataclass

import msgspec


@dataclass(slots=True)
class ServerConfig:
    """Pace and failure knobs of the test server (0 disables a failure knob)."""

    ttft_ms: float = 20.0
    itl_ms: float = 10.0
    model: str = "test-model"
    api_key: str | None = None
    usage: bool = True  # honor stream_options.include_usage
    http_error_every: int = 0
    drop_every: int = 0
    stall_every: int = 0
    log_path: str | None = None  # JSON line per request: receipt and token write times (perf_counter)


class BadRequest(Exception):
    pass


def _response(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(obj: object) -> bytes:
    return _chunk(b"data: " + msgspec.json.encode(obj) + b"\n\n")


def _error(status: str, message: str) -> bytes:
    return _response(status, msgspec.json.encode({"error": {"message": message, "type": "test"}}))


class TestServer:
    """Serves GET /v1/models and POST /v1/completions (streaming or not)."""

    def __init__(self, cfg: ServerConfig):
        self.cfg = cfg
        self.count = 0
        self.log = open(cfg.log_path, "a") if cfg.log_path else None  # open while the server lives

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = (lines[0].split(" ") + ["", ""])[:3]
                headers = {
                    k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                keep = await self.route(method, path.split("?")[0], headers, body, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def route(
        self, method: str, path: str, headers: dict, body: bytes, w: asyncio.StreamWriter
    ) -> bool:
        if self.cfg.api_key and headers.get("authorization") != f"Bearer {self.cfg.api_key}":
            w.write(_error("401 Unauthorized", "bad api key"))
            return True
        if method == "GET" and path == "/v1/models":
            models = {
                "object": "list",
                "data": [{"id": self.cfg.model, "object": "model", "owned_by": "test"}],
            }
            w.write(_response("200 OK", msgspec.json.encode(models)))
            return True
        if method == "POST" and path == "/v1/completions":
            try:
                return await self.complete(msgspec.json.decode(body), w)
            except (BadRequest, msgspec.DecodeError) as e:
                w.write(_error("400 Bad Request", str(e)))
                return True
        w.write(_error("404 Not Found", f"no route {method} {path}"))
        return True

    async def complete(self, req: dict, w: asyncio.StreamWriter) -> bool:
        loop = asyncio.get_running_loop()
        start = loop.time()
        received = time.perf_counter()
        written: list[float] = []
        self.count += 1
        n = self.count
        prompt = req.get("prompt")
        if isinstance(prompt, list) and all(isinstance(x, int) for x in prompt):
            prompt_tokens = len(prompt)
        elif isinstance(prompt, str):
            prompt_tokens = len(prompt.split())
        else:
            raise BadRequest("prompt must be a string or a list of token ids")
        max_tokens = int(req.get("max_tokens") or 16)
        if self.cfg.http_error_every and n % self.cfg.http_error_every == 0:
            w.write(_error("500 Internal Server Error", "injected failure"))
            return True
        ttft, itl = self.cfg.ttft_ms / 1000.0, self.cfg.itl_ms / 1000.0
        base = {
            "id": f"cmpl-{n}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.cfg.model,
        }
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": max_tokens,
            "total_tokens": prompt_tokens + max_tokens,
        }
        if not req.get("stream"):
            await asyncio.sleep(max(0.0, start + ttft + (max_tokens - 1) * itl - loop.time()))
            choice = {"index": 0, "text": " tok" * max_tokens, "logprobs": None, "finish_reason": "length"}
            w.write(_response("200 OK", msgspec.json.encode({**base, "choices": [choice], "usage": usage})))
            return True
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        drop_at = max_tokens // 2 if self.cfg.drop_every and n % self.cfg.drop_every == 0 else -1
        stall = bool(self.cfg.stall_every and n % self.cfg.stall_every == 0)
        for k in range(max_tokens):
            delay = start + ttft + k * itl - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if k == drop_at:
                w.transport.abort()
                return False
            last = k == max_tokens - 1
            choice = {
                "index": 0,
                "text": " tok",
                "logprobs": None,
                "finish_reason": "length" if last else None,
            }
            w.write(_event({**base, "choices": [choice]}))
            written.append(time.perf_counter())
            if stall:
                await w.drain()
                await asyncio.sleep(3600)  # until the client times out and hangs up
        if self.cfg.usage and (req.get("stream_options") or {}).get("include_usage"):
            w.write(_event({**base, "choices": [], "usage": usage}))
        w.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        if self.log is not None:
            head = prompt[:8] if isinstance(prompt, list) else prompt[:80]
            entry = {"n": n, "prompt_head": head, "received": received, "token_writes": written}
            self.log.write(msgspec.json.encode(entry).decode() + "\n")
            self.log.flush()
        await w.drain()
        return True


async def serve(cfg: ServerConfig, host: str, port: int) -> None:
    server = TestServer(cfg)
    srv = await asyncio.start_server(server.handle, host, port, backlog=1024)
    actual = srv.sockets[0].getsockname()[1]
    # Startup garbage is frozen so collections during the run stay short.
    gc.collect()
    gc.freeze()
    print(f"listening on http://{host}:{actual}", flush=True)
    async with srv:
        await srv.serve_forever()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m banaserve.bench.testserver", description=__doc__.split("\n")[0]
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed on stdout)")
    p.add_argument("--ttft-ms", type=float, default=20.0)
    p.add_argument("--itl-ms", type=float, default=10.0)
    p.add_argument("--model", default="test-model")
    p.add_argument("--api-key", default=None, help="require this bearer token")
    p.add_argument("--no-usage", action="store_true", help="never send a usage chunk")
    p.add_argument(
        "--http-error-every", type=int, default=0, metavar="K", help="every K-th request: HTTP 500"
    )
    p.add_argument(
        "--drop-every", type=int, default=0, metavar="K", help="every K-th: drop the stream midway"
    )
    p.add_argument("--stall-every", type=int, default=0, metavar="K", help="every K-th: stall after 1 token")
    p.add_argument("--log", default=None, help="append each completed stream's true timings (JSON lines)")
    a = p.parse_args(argv)
    cfg = ServerConfig(
        ttft_ms=a.ttft_ms,
        itl_ms=a.itl_ms,
        model=a.model,
        api_key=a.api_key,
        usage=not a.no_usage,
        http_error_every=a.http_error_every,
        drop_every=a.drop_every,
        stall_every=a.stall_every,
        log_path=a.log,
    )
    try:
        asyncio.run(serve(cfg, a.host, a.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
