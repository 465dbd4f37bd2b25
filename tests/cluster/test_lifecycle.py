"""Process hygiene: instances never outlive their router, shared memory and socket directories
never outlive their owner."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from banaserve.cluster.procs import IPC_PREFIX, make_ipc_dir, sweep_stale_ipc_dirs
from banaserve.transfer.shm_kv import list_segments
from tests.cluster.cluster_harness import WAIT_S, running

ROUTER_SCRIPT = """
import asyncio, json, sys, time
from banaserve.cluster.launch import build_engine_client
from banaserve.engine.config import EngineConfig

async def main():
    client = build_engine_client(EngineConfig(model=sys.argv[1], dtype="float32", device="cpu",
                                              num_kv_blocks=64), mode="disagg", torch_threads=1)
    await client.start()
    print(json.dumps({"pids": [p.pid for p in client.procs.values()],
                      "segments": list(client.shm_names.values())}), flush=True)
    while True:
        await asyncio.sleep(1)

asyncio.run(main())
"""


def test_instances_exit_and_unlink_when_the_router_is_killed(tiny_llama):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    router = subprocess.Popen([sys.executable, "-c", ROUTER_SCRIPT, tiny_llama], stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": root}, text=True)
    try:
        info = json.loads(router.stdout.readline())
        assert len(info["pids"]) == 2 and all(running(p) for p in info["pids"])
        assert set(info["segments"]) <= set(list_segments(router.pid))
        router.send_signal(signal.SIGKILL)  # no chance to clean up: the instances must notice alone
        router.wait()
        deadline = time.monotonic() + WAIT_S
        while any(running(p) for p in info["pids"]) or list_segments(router.pid):
            assert time.monotonic() < deadline, "orphaned instance process or shared memory"
            time.sleep(0.05)
        # the killed router could not remove its socket directory; the next front-end's start sweeps it
        leftover = glob.glob(os.path.join(tempfile.gettempdir(), f"{IPC_PREFIX}{router.pid}-*"))
        assert leftover and set(leftover) <= set(sweep_stale_ipc_dirs())
        assert not any(os.path.exists(d) for d in leftover)
    finally:
        if router.poll() is None:
            router.kill()
            router.wait()


def test_sweep_keeps_the_socket_directories_of_live_front_ends():
    mine = make_ipc_dir()
    try:
        assert mine not in sweep_stale_ipc_dirs() and os.path.isdir(mine)
    finally:
        shutil.rmtree(mine)
