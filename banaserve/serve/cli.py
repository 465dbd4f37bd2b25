"""`banaserve serve`: start the engine backend, then the OpenAI-compatible HTTP server in front of it.

Shutdown order on Ctrl-C / SIGTERM: uvicorn stops accepting, open requests get
`--graceful-shutdown-s` to finish (the rest are aborted in the engine and answered with
finish_reason "abort"), and only then is the engine client shut down (in the cluster: every
instance process stopped).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import uvicorn

from banaserve.cluster.engine_client import EngineClient
from banaserve.cluster.launch import build_engine_client
from banaserve.serve.api_server import build_app
from banaserve.serve.args import MODES, TRANSFERS, ServeArgs
from banaserve.serve.state import ServerState

logger = logging.getLogger("banaserve.serve")


def build_client(args: ServeArgs) -> EngineClient:
    """The engine backend for `args` (not started yet).

    One colocated instance runs in this process (no IPC, quickest start); anything else is the
    multi-process cluster: a router here, instance processes beside it.
    """
    return build_engine_client(args)


def parse_args(argv: list[str]) -> ServeArgs:
    d = ServeArgs()
    ap = argparse.ArgumentParser(prog="banaserve serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    m = ap.add_argument_group("model")
    m.add_argument("--model", default=None, help="HF-format checkpoint directory (default: the small "
                                                 "generated llama, created on first use)")
    m.add_argument("--served-model-name", default=None, help="name clients use (default: directory name)")
    h = ap.add_argument_group("HTTP server")
    h.add_argument("--host", default=d.host, help="address to bind (default loopback only)")
    h.add_argument("--port", type=int, default=d.port)
    h.add_argument("--api-key", default=os.environ.get("BANASERVE_API_KEY") or None,
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: env BANASERVE_API_KEY)")
    h.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="larger bodies get 413")
    h.add_argument("--max-pending", type=int, default=d.max_pending,
                   help="generation requests held at once; beyond it 429")
    h.add_argument("--graceful-shutdown-s", type=float, default=d.graceful_shutdown_s,
                   help="on shutdown, how long open requests may take before they are aborted")
    h.add_argument("--log-level", default=d.log_level, choices=["debug", "info", "warning", "error"])
    c = ap.add_argument_group("cluster")
    c.add_argument("--mode", choices=MODES, default=d.mode)
    c.add_argument("--instances", type=int, default=d.instances, help="unified instances (colocated)")
    c.add_argument("--prefill", type=int, default=d.prefill, help="prefill instances (disagg)")
    c.add_argument("--decode", type=int, default=d.decode, help="decode instances (disagg)")
    c.add_argument("--transfer", choices=TRANSFERS, default=d.transfer, help="KV transfer between instances")
    c.add_argument("--routing", default=d.routing,
                   help="load-aware (least loaded; BanaServe's rule, default) | cache-aware (longest local prefix "
                        "match unless out of balance, as SGLang's router) | round-robin (colocated)")
    c.add_argument("--kv-store", default=d.kv_store, help="local: a Global KV Cache Store on this host that every "
                   "instance loads cached prefixes from and saves new blocks to (default: none)")
    c.add_argument("--kv-store-gb", type=float, default=d.kv_store_gb, help="capacity of the local KV store")
    e = ap.add_argument_group("engine (each instance)")
    e.add_argument("--dtype", default=d.dtype, help="auto | float32 | bfloat16 | float16")
    e.add_argument("--device", default=d.device, help="auto | cpu | cuda[:N]")
    e.add_argument("--block-size", type=int, default=d.block_size)
    e.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs)
    e.add_argument("--max-num-batched-tokens", type=int, default=d.max_num_batched_tokens)
    e.add_argument("--num-kv-blocks", type=int, default=d.num_kv_blocks)
    e.add_argument("--kv-cache-gb", type=float, default=d.kv_cache_gb, help="KV cache size on CPU")
    e.add_argument("--prefault-kv-cache", action=argparse.BooleanOptionalAction, default=d.prefault_kv_cache,
                   help="CPU: make the KV cache's pages resident at startup (slower start, no page faults "
                        "while serving)")
    e.add_argument("--retain-freed-memory", action=argparse.BooleanOptionalAction, default=d.retain_freed_memory,
                   help="CPU: keep memory the forward pass frees for the next step instead of returning it to "
                        "the OS (no page faults per step; the process keeps its peak size)")
    e.add_argument("--max-model-len", type=int, default=d.max_model_len)
    e.add_argument("--seed", type=int, default=d.seed)
    ns = ap.parse_args(argv)
    return ServeArgs(**vars(ns))


class _Server(uvicorn.Server):
    """uvicorn, plus a drain of open requests on shutdown (see ServerState.drain).

    uvicorn's own graceful timeout stays as a backstop: a request the drain could not end is
    cancelled by uvicorn, which closes its stream and so aborts it too.
    """

    def __init__(self, config: uvicorn.Config, state: ServerState):
        super().__init__(config)
        self.state = state

    async def shutdown(self, sockets=None) -> None:
        drain = asyncio.ensure_future(self.state.drain(self.state.args.graceful_shutdown_s))
        try:
            await super().shutdown(sockets)
        finally:
            drain.cancel()


async def start_client(client: EngineClient) -> bool:
    """Start the backend (in the cluster: spawn instances, wait for their models to load).

    SIGINT/SIGTERM during the start cancel it, so the instances already spawned are stopped
    rather than orphaned. False if it did not start.
    """
    loop = asyncio.get_running_loop()
    starting = asyncio.ensure_future(client.start())
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, starting.cancel)
    try:
        await starting
        return True
    except asyncio.CancelledError:
        logger.info("interrupted while starting the engine backend")
    except (RuntimeError, TimeoutError, OSError, ValueError) as exc:
        logger.error("the engine backend failed to start: %s", exc)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    await client.shutdown()
    return False


async def serve(args: ServeArgs, client: EngineClient) -> int:
    """Run until SIGINT/SIGTERM, then stop the HTTP server and the engine client, in that order."""
    if not await start_client(client):
        return 1
    state = None
    try:
        state = ServerState.create(client, args)
        config = uvicorn.Config(build_app(state), host=args.host, port=args.port, log_level=args.log_level,
                                timeout_graceful_shutdown=args.graceful_shutdown_s + 2.0, lifespan="off")
        server = _Server(config, state)
        # uvicorn re-raises the signal that stopped it once it is done; with a no-op handler in
        # place that lands here, instead of killing the process before the client is shut down
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: None)
        await server.serve()
    finally:
        if state is not None:
            state.shutting_down = True
        logger.info("shutting down the engine client")
        await client.shutdown()
        logger.info("engine client stopped")
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.validate()
        client = build_client(args)
    except ValueError as exc:  # bad flags or a model that cannot be loaded: a message, not a traceback
        print(f"banaserve serve: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve(args, client))
