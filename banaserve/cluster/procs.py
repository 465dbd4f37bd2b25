"""Starting and stopping instance processes (`python -m banaserve.cluster.instance`) on this host,
and the directory of the sockets they reach the front-end by."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import msgspec

import banaserve
from banaserve.cluster.messages import InstanceSpec
from banaserve.transfer.shm_kv import process_exists

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(banaserve.__file__)))
IPC_PREFIX = "banaserve-ipc-"


def make_ipc_dir() -> str:
    """A private directory for the front-end's IPC sockets, named after its pid so that one left
    by a killed front-end can be found (sweep_stale_ipc_dirs)."""
    return tempfile.mkdtemp(prefix=f"{IPC_PREFIX}{os.getpid()}-")


def sweep_stale_ipc_dirs() -> list[str]:
    """Remove the IPC directories of front-ends that no longer exist (killed before shutdown)."""
    removed = []
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{IPC_PREFIX}*")):
        m = re.match(rf"^{IPC_PREFIX}(\d+)-", os.path.basename(path))
        if m is not None and not process_exists(int(m.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def spawn_instance(spec: InstanceSpec) -> subprocess.Popen:
    """Start one instance; it runs the same banaserve code as this process (PYTHONPATH pinned)."""
    env = dict(os.environ)
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT, *extra])
    if spec.torch_threads:
        env["OMP_NUM_THREADS"] = str(spec.torch_threads)
    args = [sys.executable, "-m", "banaserve.cluster.instance", msgspec.json.encode(spec).decode()]
    return subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL)


def spawn_store(addr: str, capacity_gb: float) -> subprocess.Popen:
    """Start the local Global KV Cache Store (store/server.py), owned by this process."""
    env = dict(os.environ)
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT, *extra])
    args = [sys.executable, "-m", "banaserve.store.server", "--addr", addr, "--capacity-gb", str(capacity_gb),
            "--owner-pid", str(os.getpid())]
    return subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL)


def stop_processes(procs: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    """Wait for processes asked to exit; SIGTERM, then SIGKILL, the ones that do not. Reaps all."""
    deadline = time.monotonic() + grace_s
    for sig_deadline, action in ((deadline, "terminate"), (deadline + 3.0, "kill")):
        for p in procs:
            while p.poll() is None and time.monotonic() < sig_deadline:
                time.sleep(0.02)
        for p in procs:
            if p.poll() is None:
                getattr(p, action)()
    for p in procs:
        p.wait()
