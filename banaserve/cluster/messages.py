"""Messages between the router and instance processes: msgspec structs, msgpack on the wire.

Nothing crossing a socket is pickled. Decoding is typed (a malformed message raises instead of
producing odd objects), socket reads are capped by MAX_CONTROL_BYTES (zmq MAXMSGSIZE) and the
handlers check lengths against the engine's limits.
"""

from __future__ import annotations

import msgspec

from banaserve.engine.config import EngineConfig
from banaserve.engine.outputs import TokenOutput
from banaserve.engine.sampling_params import SamplingParams
from banaserve.policies.view import InstanceStats
from banaserve.transfer.layout import KVLayout

MAX_CONTROL_BYTES = 64 << 20
MAX_STATS_BYTES = 1 << 16


class PushSpec(msgspec.Struct):
    """Where a prefill instance pushes a request's KV: the decode side's reservation."""

    tid: int
    kind: str  # shm | tcp
    addr: str  # shm segment name or tcp://host:port
    dst_blocks: list[int]
    skip_tokens: int  # leading tokens the decode side already holds (its prefix cache)


# ----- router -> instance -----

class Add(msgspec.Struct, tag="add"):
    """Run a request; with `push`, only prefill it (one new token) and push its KV there."""

    rid: str
    prompt: list[int]
    params: SamplingParams
    history: list[int] = []
    push: PushSpec | None = None


class Reserve(msgspec.Struct, tag="reserve"):
    """Decode side: hold blocks for the KV of `token_ids`, to arrive over `kind` as transfer `tid`."""

    tid: int
    rid: str
    token_ids: list[int]
    kind: str = "shm"  # shm | tcp


class Admit(msgspec.Struct, tag="admit"):
    """Decode side: transfer `tid` was pushed; run the request from its reserved KV."""

    tid: int
    rid: str
    prompt: list[int]
    params: SamplingParams
    history: list[int]


class Release(msgspec.Struct, tag="release"):
    tid: int


class Abort(msgspec.Struct, tag="abort"):
    """Drop a request; with ack, answer Aborted once nothing of it can run or be written any more."""

    rid: str
    ack: bool = False


class GetStats(msgspec.Struct, tag="get_stats"):
    pass


class DropPeer(msgspec.Struct, tag="drop_peer"):
    """A decode instance is gone: close the channel to its address."""

    addr: str


class Shutdown(msgspec.Struct, tag="shutdown"):
    pass


ToInstance = Add | Reserve | Admit | Release | Abort | GetStats | DropPeer | Shutdown


# ----- instance -> router -----

class Hello(msgspec.Struct, tag="hello"):
    instance_id: int
    role: str
    pid: int
    layout: KVLayout
    shm_addr: str | None  # segment name peers on this host push into (decode instances)
    tcp_addr: str | None  # tcp://host:port of the KV receiver (decode instances)
    max_model_len: int
    vocab_size: int
    eos_token_ids: list[int]


class Outputs(msgspec.Struct, tag="outputs"):
    """One step's token outputs (token ids only: the front end makes the text)."""

    items: list[TokenOutput]


class PrefillDone(msgspec.Struct, tag="prefill_done"):
    """A prefill-only request ran: `out` is its first new token (None if it never ran)."""

    rid: str
    tid: int
    ok: bool
    error: str = ""
    out: TokenOutput | None = None


class Reserved(msgspec.Struct, tag="reserved"):
    tid: int
    ok: bool
    blocks: list[int] = []
    skip_tokens: int = 0


class AdmitFailed(msgspec.Struct, tag="admit_failed"):
    tid: int
    rid: str
    reason: str


class Aborted(msgspec.Struct, tag="aborted"):
    rid: str


class Failed(msgspec.Struct, tag="failed"):
    """The instance rejected a request (it can never be served as asked)."""

    rid: str
    error: str


class Stats(msgspec.Struct, tag="stats"):
    stats: InstanceStats


FromInstance = Hello | Outputs | PrefillDone | Reserved | AdmitFailed | Aborted | Failed | Stats


class InstanceSpec(msgspec.Struct):
    """Everything an instance process needs, passed as JSON on its command line."""

    instance_id: int
    role: str
    engine: EngineConfig
    control_addr: str
    stats_addr: str
    parent_pid: int
    transfer: str
    shm_name: str | None
    transfer_host: str
    stats_interval_s: float
    admit_wait_s: float
    torch_threads: int | None
    kv_store_addr: str | None = None  # the local Global KV Cache Store's control socket


def encoder() -> msgspec.msgpack.Encoder:
    return msgspec.msgpack.Encoder()


def to_instance_decoder() -> msgspec.msgpack.Decoder:
    return msgspec.msgpack.Decoder(ToInstance)


def from_instance_decoder() -> msgspec.msgpack.Decoder:
    return msgspec.msgpack.Decoder(FromInstance)
