"""KV push over TCP (ZeroMQ), for decode instances on another host.

Each message is one layer slice of one transfer: [b"data", msgpack FrameHeader, raw bytes of
[2, n, block_size, kv_heads, head_dim]], the payload sent and received zero-copy. The first
message of a connection is a handshake carrying the sender's KVLayout; the receiver refuses a
mismatch and ignores data from peers that have not shaken hands. A transfer ends with
[b"end", EndHeader] stating how many data frames were sent; it is complete once all arrived.
Every size read from the wire is bounded: zmq MAXMSGSIZE, then the header against the
reservation (layer, block range, exact payload length).
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass

import msgspec
import torch
import zmq

from banaserve.transfer.layout import KVLayout, TransferRefused, block_runs

HANDSHAKE_TIMEOUT_S = 10.0
warnings.filterwarnings("ignore", message="The given buffer is not writable")


class FrameHeader(msgspec.Struct, array_like=True):
    tid: int
    layer: int
    first_index: int  # position of the first block in the request's block list
    num_blocks: int


class EndHeader(msgspec.Struct, array_like=True):
    tid: int
    num_frames: int


class TcpPushTarget:
    """Sender side: one DEALER connection to a decode instance's receiver. Use from one thread."""

    kind = "tcp"

    def __init__(self, ctx: zmq.Context, addr: str, local: KVLayout):
        self.addr = addr
        self.block_bytes = local.block_bytes
        self.bytes_pushed = 0
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)  # never drop or block on a burst of layers
        self.sock.setsockopt(zmq.MAXMSGSIZE, 1 << 16)  # only small replies come back
        self.sock.connect(addr)
        self.sock.send_multipart([b"hello", msgspec.msgpack.encode(local)])
        if not self.sock.poll(int(HANDSHAKE_TIMEOUT_S * 1000)):
            self.sock.close()
            raise TransferRefused(f"no handshake answer from {addr}")
        reply = self.sock.recv_multipart()
        if reply[0] != b"ok":
            self.sock.close()
            raise TransferRefused(f"{addr} refused: {reply[-1].decode(errors='replace')}")
        self.num_blocks = msgspec.msgpack.decode(reply[1], type=KVLayout).num_blocks

    def push_layer(self, tid: int, layer: int, src: torch.Tensor, src_blocks: list[int],
                   dst_blocks: list[int], first_index: int) -> int:
        """Gather the blocks into one contiguous buffer and send it without another copy."""
        if len(src_blocks) == 1 or src_blocks == list(range(src_blocks[0], src_blocks[0] + len(src_blocks))):
            buf = src[:, src_blocks[0]:src_blocks[0] + len(src_blocks)].contiguous()
        else:
            buf = src.index_select(1, torch.tensor(src_blocks, dtype=torch.int64, device=src.device))
        header = msgspec.msgpack.encode(FrameHeader(tid, layer, first_index, len(src_blocks)))
        # .cpu() is a no-op for a host cache; the array keeps its buffer alive until zmq sent it
        payload = buf.view(-1).view(torch.uint8).cpu().numpy()
        self.sock.send_multipart([b"data", header, payload], copy=False)
        nbytes = len(src_blocks) * self.block_bytes
        self.bytes_pushed += nbytes
        return nbytes

    def finish(self, tid: int, num_frames: int) -> None:
        self.sock.send_multipart([b"end", msgspec.msgpack.encode(EndHeader(tid, num_frames))])

    def close(self) -> None:
        self.sock.close(linger=0)


@dataclass(slots=True)
class Incoming:
    """One expected transfer: where its blocks go and how much of it arrived."""

    blocks: list[int]
    skip_blocks: int  # leading blocks the receiver already had (prefix cache): never written
    frames: int = 0
    expected_frames: int | None = None
    error: str | None = None


class TcpKVReceiver:
    """Receiver side: a thread owning a ROUTER socket that writes arriving layers into `kv_caches`.

    Only blocks registered with `expect` are ever written; `forget` takes the same lock as the
    writer, so once it returns no late frame can touch those blocks again.
    """

    def __init__(self, layout: KVLayout, kv_caches: list[torch.Tensor], max_blocks_per_transfer: int,
                 host: str = "127.0.0.1"):
        self.layout = layout
        self.kv_caches = kv_caches
        self.max_blocks = max_blocks_per_transfer
        self.bytes_received = 0
        self.frames_rejected = 0
        self._lock = threading.Lock()
        self._incoming: dict[int, Incoming] = {}
        self._peers: set[bytes] = set()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, max_blocks_per_transfer * layout.block_bytes + (1 << 16))
        port = self._sock.bind_to_random_port(f"tcp://{host}")
        self.addr = f"tcp://{host}:{port}"
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="kv-recv", daemon=True)
        self._thread.start()

    def expect(self, tid: int, blocks: list[int], skip_blocks: int) -> None:
        with self._lock:
            self._incoming[tid] = Incoming(list(blocks), skip_blocks)

    def forget(self, tid: int) -> None:
        with self._lock:
            self._incoming.pop(tid, None)

    def status(self, tid: int) -> tuple[bool, str | None]:
        """(complete, error) of an expected transfer; an unknown tid reads as an error."""
        with self._lock:
            inc = self._incoming.get(tid)
            if inc is None:
                return False, "unknown transfer"
            return inc.expected_frames is not None and inc.frames == inc.expected_frames, inc.error

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        self._sock.close(linger=0)
        self._ctx.term()

    def _run(self) -> None:
        with torch.inference_mode():
            while not self._stop:
                if not self._sock.poll(50):
                    continue
                frames = self._sock.recv_multipart(copy=False)
                try:
                    self._handle(frames)
                except (ValueError, msgspec.ValidationError, msgspec.DecodeError, IndexError):
                    self.frames_rejected += 1

    def _handle(self, frames: list[zmq.Frame]) -> None:
        peer, kind = frames[0].bytes, frames[1].bytes if len(frames) > 1 else b""
        if kind == b"hello" and len(frames) == 3:
            other = msgspec.msgpack.decode(frames[2].bytes, type=KVLayout)
            why = self.layout.mismatch(other)
            if why is None:
                self._peers.add(peer)
                self._sock.send_multipart([peer, b"ok", msgspec.msgpack.encode(self.layout)])
            else:
                self._sock.send_multipart([peer, b"refused", why.encode()])
            return
        if peer not in self._peers:
            raise ValueError("data from a peer without handshake")
        if kind == b"data" and len(frames) == 4:
            self._write(msgspec.msgpack.decode(frames[2].bytes, type=FrameHeader), frames[3])
        elif kind == b"end" and len(frames) == 3:
            end = msgspec.msgpack.decode(frames[2].bytes, type=EndHeader)
            with self._lock:
                inc = self._incoming.get(end.tid)
                if inc is not None:
                    inc.expected_frames = end.num_frames
                    if inc.frames != end.num_frames:
                        inc.error = f"got {inc.frames} of {end.num_frames} frames"
        else:
            raise ValueError("malformed message")

    def _write(self, h: FrameHeader, payload: zmq.Frame) -> None:
        lay = self.layout
        with self._lock:
            inc = self._incoming.get(h.tid)
            if inc is None:
                raise ValueError("frame of an unknown or released transfer")
            if (not 0 <= h.layer < lay.num_layers or h.num_blocks <= 0 or h.first_index < inc.skip_blocks
                    or h.first_index + h.num_blocks > len(inc.blocks)
                    or len(payload.buffer) != h.num_blocks * lay.block_bytes):
                inc.error = "frame outside the reservation"
                raise ValueError(inc.error)
            data = torch.frombuffer(payload.buffer, dtype=lay.torch_dtype).view(
                2, h.num_blocks, lay.block_size, lay.num_kv_heads, lay.head_dim)
            dst = self.kv_caches[h.layer]
            targets = inc.blocks[h.first_index:h.first_index + h.num_blocks]
            for s, d, n in block_runs(list(range(h.num_blocks)), targets):
                dst[:, d:d + n].copy_(data[:, s:s + n])
            inc.frames += 1
            self.bytes_received += len(payload.buffer)
