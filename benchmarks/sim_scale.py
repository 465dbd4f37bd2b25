"""Scale check: the whole azure-conv trace (19,366 requests) on 16 simulated H100s of llama3-8b.

    python benchmarks/sim_scale.py [--out /tmp/scale.json]

Runs `banaserve simulate` in-process and prints wall and CPU time of the whole command (imports
excluded, result JSON included) and of the event loop alone, and the host's load average (the
machine is shared, so wall time depends on what else runs). Last line: requests simulated per
second.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from banaserve.bench.results import read_result  # noqa: E402
from banaserve.sim import cli  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trace", default="azure-conv")
    p.add_argument("--instances", type=int, default=16)
    p.add_argument("--out", default="/tmp/sim_scale.json")
    a = p.parse_args()
    argv = ["--trace", a.trace, "--model-config", "llama3-8b", "--hardware", "h100",
            "--instances", str(a.instances), "--out", a.out]
    wall, cpu = time.perf_counter(), time.process_time()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli.main(argv)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(buf.getvalue().rstrip())
    if code:
        return code
    sim = read_result(a.out).meta["simulated"]
    n = read_result(a.out).meta["num_requests"]
    print(f"command: {wall:.1f} s wall, {cpu:.1f} s CPU; event loop: {sim['wall_s']:.1f} s wall, "
          f"{sim['cpu_s']:.1f} s CPU, {sim['events']} events; load average {os.getloadavg()}")
    print(f"scale: {n} requests on {a.instances} simulated H100s in {wall:.1f} s "
          f"({n / wall:.0f} requests simulated per second; {n / sim['cpu_s']:.0f} per CPU-second "
          "of the event loop)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
