"""Shared-memory and TCP KV push: bytes land in the reserved blocks, mismatches are refused."""

import os

import msgspec
import pytest
import torch
import zmq

from banaserve.transfer.layout import KVLayout, TransferRefused, block_runs
from banaserve.transfer.pusher import PushWorker
from banaserve.transfer.shm_channel import ShmPushTarget
from banaserve.transfer.shm_kv import SHM_DIR, ShmKVSegment, list_segments, segment_name, sweep_stale
from banaserve.transfer.tcp_channel import FrameHeader, TcpKVReceiver, TcpPushTarget

L, NB, BS, H, D = 3, 12, 4, 2, 8


def layout(fp: str = "ab", block_size: int = BS, num_blocks: int = NB) -> KVLayout:
    return KVLayout(fp, L, block_size, H, D, "float32", num_blocks)


def caches(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, NB, BS, H, D, generator=g) for _ in range(L)]


def test_block_runs_coalesce():
    assert block_runs([3, 4, 5, 9], [0, 1, 2, 3]) == [(3, 0, 3), (9, 3, 1)]
    assert block_runs([1, 2], [5, 7]) == [(1, 5, 1), (2, 7, 1)]


def test_layout_mismatch_names_the_field():
    assert layout().mismatch(layout(num_blocks=99)) is None
    assert "block_size" in layout().mismatch(layout(block_size=8))
    with pytest.raises(TransferRefused, match="fingerprint"):
        layout().check(layout(fp="cd"))


def test_shm_segment_roundtrip_and_unlink():
    name = segment_name(os.getpid(), "test-seg")
    seg = ShmKVSegment.create(name, layout())
    try:
        seg.tensors[1][0, 3] = 7.0
        peer = ShmKVSegment.attach(name)
        assert peer.layout == layout()
        assert torch.all(peer.tensors[1][0, 3] == 7.0)
        peer.close()
        assert name in list_segments(os.getpid())
    finally:
        seg.close()
        seg.unlink()
    assert name not in list_segments(os.getpid())


def test_shm_attach_rejects_garbage():
    name = segment_name(os.getpid(), "garbage")
    with open(os.path.join(SHM_DIR, name), "wb") as f:
        f.write(b"x" * 8192)
    try:
        with pytest.raises(ValueError):
            ShmKVSegment.attach(name)
    finally:
        os.unlink(os.path.join(SHM_DIR, name))
    with pytest.raises(ValueError):
        ShmKVSegment.attach("../etc/passwd")


def test_sweep_removes_segments_of_dead_routers():
    dead_pid = 2 ** 22 + 12345  # above pid_max on default kernels
    name = segment_name(dead_pid, "kv")
    ShmKVSegment.create(name, layout()).close()
    assert name in sweep_stale()
    assert name not in list_segments()


def test_shm_push_writes_only_target_blocks():
    name = segment_name(os.getpid(), "push")
    seg = ShmKVSegment.create(name, layout())
    src = caches()
    try:
        target = ShmPushTarget(name, layout(num_blocks=NB))
        worker = PushWorker()
        for layer in range(L):
            worker.submit(1, target.push_layer, 1, layer, src[layer], [2, 3, 7], [5, 6, 0], 0)
        assert worker.flush() == {}
        for layer in range(L):
            for s, d in ((2, 5), (3, 6), (7, 0)):
                assert torch.equal(seg.tensors[layer][:, d], src[layer][:, s])
            assert torch.all(seg.tensors[layer][:, 1] == 0)
        assert target.bytes_pushed == L * 3 * layout().block_bytes
        worker.close()
        target.close()
        with pytest.raises(TransferRefused):
            ShmPushTarget(name, layout(fp="other"))
    finally:
        seg.close()
        seg.unlink()


def test_tcp_push_and_end_marks_complete():
    dst = [torch.zeros(2, NB, BS, H, D) for _ in range(L)]
    recv = TcpKVReceiver(layout(), dst, max_blocks_per_transfer=NB)
    src = caches(1)
    ctx = zmq.Context()
    worker = PushWorker()
    try:
        target = worker.call(TcpPushTarget, ctx, recv.addr, layout())
        recv.expect(9, [4, 5, 10, 11], skip_blocks=1)
        for layer in range(L):
            worker.submit(9, target.push_layer, 9, layer, src[layer], [0, 1, 6], [5, 10, 11], 1)
        worker.submit(9, target.finish, 9, L)
        assert worker.flush() == {}
        while not recv.status(9)[0]:
            assert recv.status(9)[1] is None
        for layer in range(L):
            for s, d in ((0, 5), (1, 10), (6, 11)):
                assert torch.equal(dst[layer][:, d], src[layer][:, s])
            assert torch.all(dst[layer][:, 4] == 0)  # skipped (prefix-cached) block untouched
        assert recv.bytes_received == L * 3 * layout().block_bytes
        recv.forget(9)
        assert recv.status(9) == (False, "unknown transfer")
        worker.call(target.close)
    finally:
        worker.close()
        recv.close()
        ctx.term()


def test_tcp_refuses_mismatch_and_out_of_bounds_frames():
    dst = [torch.zeros(2, NB, BS, H, D) for _ in range(L)]
    recv = TcpKVReceiver(layout(), dst, max_blocks_per_transfer=NB)
    ctx = zmq.Context()
    try:
        with pytest.raises(TransferRefused, match="head_dim|fingerprint"):
            TcpPushTarget(ctx, recv.addr, layout(fp="zz"))
        target = TcpPushTarget(ctx, recv.addr, layout())
        recv.expect(3, [0, 1], skip_blocks=0)
        # a frame claiming blocks beyond the reservation is rejected and marks the transfer failed
        bad = msgspec.msgpack.encode(FrameHeader(3, 0, 1, 2))
        target.sock.send_multipart([b"data", bad, bytes(2 * layout().block_bytes)])
        target.finish(3, 1)
        while recv.status(3)[1] is None:
            pass
        assert not recv.status(3)[0]
        assert torch.all(dst[0] == 0)
        target.close()
    finally:
        recv.close()
        ctx.term()
