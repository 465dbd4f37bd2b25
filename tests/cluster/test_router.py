"""The router state machine alone (fake transport and clock): leases, releases, retries, stale replies."""

import pytest

from banaserve.cluster import messages as m
from banaserve.cluster.config import ClusterConfig
from banaserve.cluster.router import Router
from banaserve.cluster.tracked import Tracked
from banaserve.engine.outputs import TokenOutput
from banaserve.engine.sampling_params import SamplingParams
from banaserve.policies.view import ClusterView, InstanceStats
from banaserve.transfer.layout import KVLayout

LAYOUT = KVLayout("ab", 2, 4, 1, 8, "float32", 64)


class Rig:
    def __init__(self, prefill: int = 1, decode: int = 2, **cfg):
        roles = ["prefill"] * prefill + ["decode"] * decode
        self.view = ClusterView({i: InstanceStats(i, r) for i, r in enumerate(roles)})
        peers = {i: m.Hello(i, r, 100 + i, LAYOUT, f"seg{i}" if r == "decode" else None,
                            f"tcp://h:{i}" if r == "decode" else None, 2048, 1000, [0])
                 for i, r in enumerate(roles)}
        self.now = 0.0
        self.sent: list[tuple[int, object]] = []
        self.router = Router(ClusterConfig(mode="disagg", prefill=prefill, decode=decode, **cfg), self.view,
                             lambda i, msg: self.sent.append((i, msg)), peers, clock=lambda: self.now)
        self.outputs: list = []

    def submit(self, rid: str = "r", max_tokens: int = 5) -> Tracked:
        t = Tracked(rid, [5, 6, 7, 8, 9], SamplingParams(max_tokens=max_tokens, temperature=0.0), self.outputs.append)
        self.router.submit(t)
        return t

    def take(self) -> list[tuple[int, object]]:
        out, self.sent = self.sent, []
        return out

    def prefilling(self) -> tuple[Tracked, m.Reserve, m.Add]:
        """A request reserved on a decode instance and sent to the prefill instance."""
        t = self.submit()
        (d, reserve), = self.take()
        self.router.on_message(d, m.Reserved(reserve.tid, True, [3, 4], 0))
        (p, add), = self.take()
        assert p == 0 and add.push.tid == reserve.tid and add.push.addr == f"seg{d}"
        return t, reserve, add


def out(rid: str, tok: int, finished: bool = False) -> TokenOutput:
    return TokenOutput(rid, [tok], finished, "length" if finished else None)


def test_happy_path_admits_on_decode_and_streams():
    rig = Rig()
    t, reserve, add = rig.prefilling()
    d = t.d_idx
    rig.router.on_message(0, m.PrefillDone(add.rid, reserve.tid, True, "", out(add.rid, 42)))
    (i, admit), = rig.take()
    assert i == d and isinstance(admit, m.Admit) and admit.history == [42]
    rig.router.on_message(d, m.Outputs([out(add.rid, 43, finished=True)]))
    assert [o.new_token_ids for o in rig.outputs] == [[42], [43]] and {o.request_id for o in rig.outputs} == {"r"}
    assert rig.outputs[-1].finished and not rig.router.requests and not rig.router.by_tid
    assert all(s.inflight_requests == 0 and s.inflight_prefill_tokens == 0 for s in rig.view.instances.values())


def test_abort_while_prefilling_releases_only_after_the_writer_stopped():
    rig = Rig()
    t, reserve, add = rig.prefilling()
    rig.router.abort("r")
    assert rig.take() == [(0, m.Abort(add.rid, ack=True))]  # no Release yet: P may still be writing
    rig.router.on_message(0, m.PrefillDone(add.rid, reserve.tid, True, "", out(add.rid, 1)))  # stale
    assert rig.take() == [] and rig.outputs == []
    rig.router.on_message(0, m.Aborted(add.rid))
    assert rig.take() == [(t.d_idx, m.Release(reserve.tid))]
    assert not rig.router.cancelling and not rig.router.by_tid


def test_lease_timeout_cancels_then_prefills_on_decode():
    rig = Rig(lease_timeout_s=1.0)
    t, reserve, add = rig.prefilling()
    rig.now = 2.0
    rig.router.tick()
    assert rig.take() == [(0, m.Abort(add.rid, ack=True))]
    rig.router.on_message(0, m.Aborted(add.rid))
    (i, release), (j, again) = rig.take()
    assert release == m.Release(reserve.tid) and j == i == t.d_idx
    assert isinstance(again, m.Add) and again.push is None and again.rid == "r#2"
    assert rig.router.counters.lease_timeouts == 1


def test_prefill_instance_death_releases_and_retries():
    rig = Rig(prefill=2, decode=1)
    t, reserve, add = rig.prefilling()
    rig.router.on_instance_dead(0)
    sent = rig.take()
    assert sent[0] == (2, m.Release(reserve.tid))  # the writer is dead: release at once
    assert isinstance(sent[1][1], m.Reserve) and sent[1][1].rid == "r#2"
    rig.router.on_message(0, m.PrefillDone(add.rid, reserve.tid, True, "", out(add.rid, 1)))
    assert rig.outputs == []  # a late message from the dead attempt is ignored


def test_decode_instance_death_mid_stream_resumes_with_history():
    rig = Rig()
    t, reserve, add = rig.prefilling()
    rig.router.on_message(0, m.PrefillDone(add.rid, reserve.tid, True, "", out(add.rid, 42)))
    rig.router.on_message(t.d_idx, m.Outputs([out(add.rid, 43)]))
    dead = t.d_idx
    rig.take()
    rig.router.on_instance_dead(dead)
    (d2, reserve2), = rig.take()
    assert d2 != dead and reserve2.token_ids == [5, 6, 7, 8, 9, 42, 43]
    rig.router.on_message(d2, m.Reserved(reserve2.tid, True, [1, 2], 0))
    (_, add2), = rig.take()
    assert add2.history == [42, 43] and add2.rid == "r#2"


def test_no_room_waits_and_asks_again():
    rig = Rig(reserve_retry_s=0.5)
    rig.submit()
    (d, reserve), = rig.take()
    rig.router.on_message(d, m.Reserved(reserve.tid, False))
    rig.router.tick()
    assert rig.take() == []
    rig.now = 1.0
    rig.router.tick()
    (_, again), = rig.take()
    assert isinstance(again, m.Reserve) and again.tid != reserve.tid


def test_first_token_that_ends_the_request_releases_the_reservation():
    rig = Rig()
    t, reserve, add = rig.prefilling()
    rig.router.on_message(0, m.PrefillDone(add.rid, reserve.tid, True, "", out(add.rid, 7, finished=True)))
    assert rig.take() == [(t.d_idx, m.Release(reserve.tid))]
    assert rig.outputs[-1].finished


def test_failure_with_nothing_left_is_a_clear_error():
    rig = Rig(prefill=1, decode=1, max_attempts=3)
    rig.router.on_instance_dead(0)
    rig.router.on_instance_dead(1)
    rig.submit()
    assert isinstance(rig.outputs[-1], RuntimeError) and "no live instance" in str(rig.outputs[-1])
    assert not rig.router.requests


def test_duplicate_request_id_is_refused():
    rig = Rig()
    rig.submit("x")
    with pytest.raises(ValueError, match="in use"):
        rig.submit("x")


def test_refused_handshake_falls_back_to_prefill_on_decode():
    rig = Rig()
    t, reserve, add = rig.prefilling()
    d = t.d_idx
    rig.router.on_message(0, m.PrefillDone(add.rid, reserve.tid, False, "TransferRefused: layout"))
    (i, release), (j, again) = rig.take()
    assert (i, release) == (d, m.Release(reserve.tid))
    assert j == d and isinstance(again, m.Add) and again.push is None and again.history == []
    assert rig.router.counters.transfers_failed == 1
