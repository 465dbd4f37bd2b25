"""A whole paged KV cache in one named shared-memory file, so another process can write into it.

Channel design (ours): the decode instance's KV cache itself lives in the segment. A prefill
instance on the same host maps it and copies each layer's blocks straight into the blocks the
decode instance reserved: one copy, no staging ring, no receiver thread. Safety comes from
ownership, not locks: reserved blocks belong to exactly one transfer until the router (after the
writer has stopped or died) releases them.

File layout: a 4 KiB header (magic, header length, msgpack KVLayout), then the layers back to
back, each [2, num_blocks, block_size, kv_heads, head_dim]. The creator unlinks it on exit; the
router unlinks it too when the creator dies, and `sweep_stale` removes segments of dead routers.
"""

from __future__ import annotations

import glob
import mmap
import os
import re
from typing import TYPE_CHECKING

import msgspec

from banaserve.transfer.layout import KVLayout

if TYPE_CHECKING:
    import torch

SHM_DIR = "/dev/shm"
PREFIX = "banaserve-"
MAGIC = b"BNSVKV01"
HEADER_BYTES = 4096
_NAME_RE = re.compile(r"^banaserve-[A-Za-z0-9_.-]{1,100}$")


def _path(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ValueError(f"bad shared-memory segment name {name!r}")
    return os.path.join(SHM_DIR, name)


class ShmKVSegment:
    """A mapped segment; `tensors` are the per-layer KV caches viewing it."""

    def __init__(self, name: str, fd: int, mm: mmap.mmap, layout: KVLayout, owner: bool):
        self.name = name
        self.layout = layout
        self.owner = owner
        self._fd = fd
        self._mm: mmap.mmap | None = mm
        import torch  # here, so the store server and the router can name segments without torch

        n = layout.layer_bytes // layout.torch_dtype.itemsize
        self.tensors: list[torch.Tensor] = [
            torch.frombuffer(mm, dtype=layout.torch_dtype, count=n,
                             offset=HEADER_BYTES + i * layout.layer_bytes).view(layout.layer_shape())
            for i in range(layout.num_layers)
        ]

    @classmethod
    def create(cls, name: str, layout: KVLayout) -> ShmKVSegment:
        """Create (exclusively) and zero a segment for `layout`, and map it."""
        create_file(name, layout)
        try:
            seg = cls.attach(name)
        except BaseException:
            unlink(name)
            raise
        seg.owner = True
        return seg

    @classmethod
    def attach(cls, name: str) -> ShmKVSegment:
        """Map an existing segment; its layout is read (and bounds-checked) from the header."""
        fd = os.open(_path(name), os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_BYTES:
                raise ValueError(f"segment {name} is too small to be a KV cache")
            mm = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        try:
            n = int.from_bytes(mm[8:12], "little")
            if mm[:8] != MAGIC or not 0 < n <= HEADER_BYTES - 12:
                raise ValueError(f"segment {name} has no banaserve KV header")
            layout = msgspec.msgpack.decode(mm[12:12 + n], type=KVLayout)
            layout.validate()
            if size != HEADER_BYTES + layout.num_layers * layout.layer_bytes:
                raise ValueError(f"segment {name} size does not match its header")
            return cls(name, fd, mm, layout, owner=False)
        except BaseException:
            mm.close()
            os.close(fd)
            raise

    def close(self) -> None:
        """Drop the mapping (best effort: tensors still referenced elsewhere keep it alive)."""
        self.tensors = []
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass  # a tensor view is still alive somewhere; the mapping goes with the process
            self._mm = None
            os.close(self._fd)

    def unlink(self) -> None:
        unlink(self.name)


def create_file(name: str, layout: KVLayout) -> None:
    """Create (exclusively) a zeroed segment file for `layout` with its header, without mapping
    its data (the store server owns its arena this way and never touches the blocks)."""
    path = _path(name)
    header = msgspec.msgpack.encode(layout)
    if len(header) + 12 > HEADER_BYTES:
        raise ValueError("KV layout header too large")
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, HEADER_BYTES + layout.num_layers * layout.layer_bytes)
        os.pwrite(fd, MAGIC + len(header).to_bytes(4, "little") + header, 0)
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)


def unlink(name: str) -> bool:
    """Remove a segment by name; False if it was already gone."""
    try:
        os.unlink(_path(name))
        return True
    except FileNotFoundError:
        return False


def segment_name(owner_pid: int, tag: str) -> str:
    """Segments are named after the router's pid so leftovers of a dead router can be found."""
    return f"{PREFIX}{owner_pid}-{tag}"


def list_segments(owner_pid: int | None = None) -> list[str]:
    pattern = f"{PREFIX}{owner_pid}-*" if owner_pid is not None else f"{PREFIX}*"
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(SHM_DIR, pattern)))


def sweep_stale() -> list[str]:
    """Unlink segments whose router process no longer exists (it was killed before cleaning up)."""
    removed = []
    for name in list_segments():
        m = re.match(rf"^{PREFIX}(\d+)-", name)
        if m is not None and not process_exists(int(m.group(1))) and unlink(name):
            removed.append(name)
    return removed


def process_exists(pid: int) -> bool:
    """Whether a process with this pid exists, ours or another user's."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
