"""A real store server process for tests (python -m banaserve.store.server on an ipc socket)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

from banaserve.store import messages as sm
from banaserve.store.client import StoreClient, StoreUnavailable
from banaserve.transfer.layout import KVLayout

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class StoreProcess:
    def __init__(self, tmp_dir: str, capacity_gb: float = 0.25, timeout_s: float = 30.0, **watermarks):
        self.addr = f"ipc://{tmp_dir}/store-{uuid.uuid4().hex[:8]}"
        cmd = [sys.executable, "-m", "banaserve.store.server", "--addr", self.addr, "--capacity-gb", str(capacity_gb),
               "--owner-pid", str(os.getpid()), "--timeout-s", str(timeout_s)]
        for name, value in watermarks.items():
            cmd += [f"--{name.replace('_', '-')}", str(value)]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})

    def client(self, layout: KVLayout, timeout_s: float = 5.0) -> StoreClient:
        """A client once the server answers (it may still be starting)."""
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, "store server exited"
            try:
                return StoreClient(self.addr, layout, timeout_s=timeout_s)
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def stats(client: StoreClient) -> sm.StoreStats:
    s = client.stats()
    assert s is not None
    return s
