"""Fixtures: the local test server as a subprocess on a free port (never sharing the client's loop)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running `banaserve.bench.testserver` process."""

    def __init__(self, proc: subprocess.Popen, url: str, log: Path | None):
        self.proc = proc
        self.url = url
        self.log = log


def start_server(*args: str, log: Path | None = None) -> Server:
    cmd = [sys.executable, "-m", "banaserve.bench.testserver", "--port", "0", *args]
    if log is not None:
        cmd += ["--log", str(log)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # "listening on http://127.0.0.1:PORT"
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"test server did not start: {line!r} {proc.stderr.read()}")
    return Server(proc, line.split()[-1], log)


@pytest.fixture
def server_factory() -> Iterator[Callable[..., Server]]:
    """Start test servers with the given knobs; all of them are killed at teardown."""
    started: list[Server] = []

    def make(*args: str, log: Path | None = None) -> Server:
        server = start_server(*args, log=log)
        started.append(server)
        return server

    yield make
    for server in started:
        server.proc.kill()
        server.proc.wait(timeout=10)
        server.proc.stdout.close()
        server.proc.stderr.close()
