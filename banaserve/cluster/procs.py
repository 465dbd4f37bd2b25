"""Starting and stopping instance processes (`python -m banaserve.cluster.instance`) on this host."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import msgspec

import banaserve
from banaserve.cluster.messages import InstanceSpec

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(banaserve.__file__)))


def spawn_instance(spec: InstanceSpec) -> subprocess.Popen:
    """Start one instance; it runs the same banaserve code as this process (PYTHONPATH pinned)."""
    env = dict(os.environ)
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT, *extra])
    if spec.torch_threads:
        env["OMP_NUM_THREADS"] = str(spec.torch_threads)
    args = [sys.executable, "-m", "banaserve.cluster.instance", msgspec.json.encode(spec).decode()]
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
