"""The store's control protocol: msgspec structs, msgpack over ZeroMQ (DEALER -> ROUTER).

Blocks never cross this socket: they are copied in place through the shared-memory arena.
Every request carries a client-chosen id echoed by its reply, so a late reply to a timed-out
call is recognised and dropped. Sizes are bounded: MAX_KEYS keys of exactly KEY_BYTES each.
"""

from __future__ import annotations

import msgspec

from banaserve.transfer.layout import KVLayout

KEY_BYTES = 16  # blake2b-128 chained block hashes (kv/block_hash.py)
MAX_KEYS = 1 << 16
MAX_MESSAGE_BYTES = MAX_KEYS * (KEY_BYTES + 8) + 4096


class Attach(msgspec.Struct, tag="attach"):
    """A client's KV layout; the first one sizes the arena, later ones must match it."""

    req: int
    layout: KVLayout


class Lookup(msgspec.Struct, tag="lookup"):
    req: int
    keys: list[bytes]


class Get(msgspec.Struct, tag="get"):
    """Lease the stored prefix of `keys` for reading."""

    req: int
    keys: list[bytes]


class Release(msgspec.Struct, tag="release"):
    req: int
    lease: int


class Put(msgspec.Struct, tag="put"):
    """Reserve slots for the keys the store lacks (phase one of a put)."""

    req: int
    keys: list[bytes]


class Commit(msgspec.Struct, tag="commit"):
    req: int
    put: int
    ok: bool = True  # False: abort (the writer could not fill the slots)


class GetStats(msgspec.Struct, tag="get_stats"):
    req: int


Request = Attach | Lookup | Get | Release | Put | Commit | GetStats


class Attached(msgspec.Struct, tag="attached"):
    req: int
    ok: bool
    arena: str = ""  # shared-memory segment name
    error: str = ""


class Found(msgspec.Struct, tag="found"):
    req: int
    n: int


class Slots(msgspec.Struct, tag="slots"):
    """A lease (Get) or a reservation (Put) and its slots (-1: nothing to write there)."""

    req: int
    id: int
    slots: list[int]


class Done(msgspec.Struct, tag="done"):
    req: int


class StoreStats(msgspec.Struct, tag="store_stats"):
    req: int
    num_slots: int
    used_slots: int
    hits: int
    misses: int
    puts: int
    evictions: int
    refused: int
    block_bytes: int


Reply = Attached | Found | Slots | Done | StoreStats


def check_keys(keys: list[bytes]) -> None:
    if len(keys) > MAX_KEYS or any(len(k) != KEY_BYTES for k in keys):
        raise ValueError(f"at most {MAX_KEYS} keys of {KEY_BYTES} bytes each")
