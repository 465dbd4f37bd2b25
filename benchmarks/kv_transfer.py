"""KV transfer benchmark: layer-wise push bandwidth per channel vs raw memcpy, and PD TTFT overhead.

    python benchmarks/kv_transfer.py [--quick]

1. Bandwidth: one request's KV (base-preset layout: 12 layers, 4 KV heads x 64, fp32, block 16)
   pushed layer by layer through the real channel code (PushWorker + ShmPushTarget into a
   shared-memory KV cache; TcpPushTarget to a TcpKVReceiver in another process), timed until
   the data is in the destination cache; next to a plain torch copy of the same bytes in this
   run. Best of several repetitions each.
2. TTFT at low load (one request at a time, random prompts: no prefix-cache hits) on the base
   preset: colocated (1 instance) vs disaggregated (1 prefill + 1 decode, shm), both through
   ClusterClient with the same torch threads per instance (both clusters up at once, requests
   alternating between them, so background load on a shared machine hits both alike).
The last line is the headline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from banaserve.transfer.layout import KVLayout  # noqa: E402
from banaserve.transfer.pusher import PushWorker  # noqa: E402
from banaserve.transfer.shm_channel import ShmPushTarget  # noqa: E402
from banaserve.transfer.shm_kv import ShmKVSegment, segment_name  # noqa: E402

LAYERS, HEADS, HEAD_DIM, BLOCK = 12, 4, 64, 16


def layout(num_blocks: int) -> KVLayout:
    return KVLayout("bench", LAYERS, BLOCK, HEADS, HEAD_DIM, "float32", num_blocks)


def block_ids(rng: random.Random, total: int, n: int, run: int = 16) -> list[int]:
    """n block ids in shuffled runs of `run` consecutive blocks (what a busy free list hands out)."""
    starts = list(range(0, total - run + 1, run))
    rng.shuffle(starts)
    ids = [s + i for s in starts for i in range(run)]
    return ids[:n]


def best_of(reps: int, fn) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def raw_copy_gbps(nbytes: int, reps: int) -> float:
    """One contiguous copy per layer of the same bytes, distinct buffers (no cache reuse)."""
    src = [torch.randn(nbytes // 4 // LAYERS) for _ in range(LAYERS)]
    dst = [torch.randn(nbytes // 4 // LAYERS) for _ in range(LAYERS)]
    return nbytes / best_of(reps, lambda: [d.copy_(s) for s, d in zip(src, dst, strict=True)]) / 1e9


def shm_push_gbps(tokens: int, reps: int) -> tuple[float, int]:
    total = 4 * (-(-tokens // BLOCK))
    lay = layout(total)
    src = [torch.randn(lay.layer_shape()) for _ in range(LAYERS)]
    name = segment_name(os.getpid(), "bench-kv")
    seg = ShmKVSegment.create(name, lay)
    try:
        target = ShmPushTarget(name, lay)
        worker = PushWorker()
        rng = random.Random(0)
        n = -(-tokens // BLOCK)
        sb, db = block_ids(rng, total, n), block_ids(rng, total, n)

        def push():
            for layer in range(LAYERS):
                worker.submit(1, target.push_layer, 1, layer, src[layer], sb, db, 0)
            assert worker.flush() == {}

        seconds = best_of(reps, push)
        for layer in (0, LAYERS - 1):  # the bytes really landed
            assert torch.equal(seg.tensors[layer][:, db[5]], src[layer][:, sb[5]])
        worker.close()
        target.close()
    finally:
        seg.close()
        seg.unlink()
    nbytes = n * lay.block_bytes * LAYERS
    return nbytes / seconds / 1e9, nbytes


def receiver_main(total: int) -> None:
    """Child process: a TcpKVReceiver; stdin 'expect <tid> <blocks...>', answers 'done <tid>'."""
    from banaserve.transfer.tcp_channel import TcpKVReceiver
    lay = layout(total)
    caches = [torch.zeros(lay.layer_shape()) for _ in range(LAYERS)]
    recv = TcpKVReceiver(lay, caches, total)
    print(recv.addr, flush=True)
    for line in sys.stdin:
        words = line.split()
        tid, blocks = int(words[1]), [int(w) for w in words[2:]]
        recv.expect(tid, blocks, 0)
        print("ready", flush=True)
        while True:
            complete, error = recv.status(tid)
            if complete or error:
                break
            time.sleep(0.0002)
        recv.forget(tid)
        print(f"done {tid} {error or 'ok'}", flush=True)
    recv.close()


def tcp_push_gbps(tokens: int, reps: int) -> float:
    import zmq

    from banaserve.transfer.tcp_channel import TcpPushTarget
    n = -(-tokens // BLOCK)
    total = 4 * n
    lay = layout(total)
    src = [torch.randn(lay.layer_shape()) for _ in range(LAYERS)]
    child = subprocess.Popen([sys.executable, __file__, "--receiver", str(total)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    ctx = zmq.Context()
    worker = PushWorker()
    try:
        addr = child.stdout.readline().strip()
        target = worker.call(TcpPushTarget, ctx, addr, lay)
        rng = random.Random(1)
        times = []
        for tid in range(1, reps + 1):
            sb, db = block_ids(rng, total, n), block_ids(rng, total, n)
            child.stdin.write(f"expect {tid} {' '.join(map(str, db))}\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "ready"
            t0 = time.perf_counter()
            for layer in range(LAYERS):
                worker.submit(tid, target.push_layer, tid, layer, src[layer], sb, db, 0)
            worker.submit(tid, target.finish, tid, LAYERS)
            assert worker.flush() == {}
            assert child.stdout.readline().split() == ["done", str(tid), "ok"]
            times.append(time.perf_counter() - t0)
        worker.call(target.close)
    finally:
        worker.close()
        ctx.term()
        child.stdin.close()
        child.wait(timeout=30)
    return n * lay.block_bytes * LAYERS / min(times) / 1e9


async def ttft_ms(client, rid: str, prompt: list[int]) -> float:
    from banaserve.engine.sampling_params import SamplingParams
    t0 = time.perf_counter()
    agen = client.generate(rid, prompt, SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True))
    async for _ in agen:
        break
    elapsed = (time.perf_counter() - t0) * 1000
    await agen.aclose()
    return elapsed


def ttft_ratio(prompt_len: int, n: int, threads: int) -> tuple[float, float]:
    """Both clusters up at once, requests alternating between them, so background load hits both alike."""
    from banaserve.cluster.client import ClusterClient
    from banaserve.cluster.config import ClusterConfig
    from banaserve.engine.config import EngineConfig
    from banaserve.models.make_model import banaserve_home, make_model
    path = os.path.join(banaserve_home(), "models", "llama-base-seed0")
    if not os.path.isfile(os.path.join(path, "config.json")):
        make_model("llama", "base", 0, path)
    rng = random.Random(2)
    engine = EngineConfig(model=path, dtype="float32", device="cpu", num_kv_blocks=512, block_size=BLOCK)

    async def run() -> dict[str, list[float]]:
        clients = {mode: ClusterClient(ClusterConfig(engine=engine, mode=mode, torch_threads=threads))
                   for mode in ("colocated", "disagg")}
        times: dict[str, list[float]] = {mode: [] for mode in clients}
        try:
            for c in clients.values():
                await c.start()
            for i in range(n + 1):
                for mode, c in clients.items():
                    prompt = [rng.randrange(3, 30000) for _ in range(prompt_len)]  # never a prefix hit
                    times[mode].append(await ttft_ms(c, f"{mode}{i}", prompt))
        finally:
            for c in clients.values():
                await c.shutdown()
        return {mode: t[1:] for mode, t in times.items()}  # the first request of each warms up

    times = asyncio.run(run())
    for mode, t in times.items():
        print(f"TTFT {mode:9s}: median {statistics.median(t):7.1f} ms over {len(t)} requests "
              f"(prompt {prompt_len} tokens, min {min(t):.1f}, max {max(t):.1f})")
    return statistics.median(times["colocated"]), statistics.median(times["disagg"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and shorter prompts")
    ap.add_argument("--tokens", type=int, default=None, help="tokens of KV per pushed request")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (copies and instances)")
    ap.add_argument("--receiver", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.receiver is not None:
        return receiver_main(args.receiver)
    torch.set_num_threads(args.threads)
    tokens = args.tokens or (1024 if args.quick else 4096)
    reps = 10 if args.quick else 30
    shm, nbytes = shm_push_gbps(tokens, reps)
    raw = raw_copy_gbps(nbytes, reps)
    tcp = tcp_push_gbps(tokens, reps)
    print(f"KV of one {tokens}-token request: {nbytes / 1e6:.1f} MB in {LAYERS} layer pushes")
    print(f"raw copy : {raw:6.2f} GB/s")
    print(f"shm push : {shm:6.2f} GB/s  ({shm / raw:.0%} of raw copy)")
    print(f"tcp push : {tcp:6.2f} GB/s  ({tcp / raw:.0%} of raw copy)")
    colo, dis = ttft_ratio(256 if args.quick else 1024, 4 if args.quick else 10, args.threads)
    print(f"headline: shm {shm:.2f} GB/s = {shm / raw:.0%} of memcpy ({raw:.2f} GB/s), tcp {tcp:.2f} GB/s "
          f"= {tcp / raw:.0%}; TTFT disagg/colocated = {dis / colo:.3f} ({(dis / colo - 1):+.1%})")


if __name__ == "__main__":
    main()
