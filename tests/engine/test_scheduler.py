from banaserve.engine.request import Request, RequestStatus
from banaserve.engine.sampling_params import SamplingParams
from banaserve.engine.scheduler import Scheduler, SchedulerConfig
from banaserve.kv.block_manager import BlockManager


def make(num_blocks=64, block_size=4, budget=16, max_seqs=8, chunked=True):
    cfg = SchedulerConfig(max_num_batched_tokens=budget, max_num_seqs=max_seqs, max_model_len=1024,
                          enable_chunked_prefill=chunked)
    return Scheduler(cfg, BlockManager(num_blocks, block_size, b"root"))


def req(rid, n, max_tokens=4):
    return Request(rid, list(range(1, n + 1)), SamplingParams(max_tokens=max_tokens, temperature=0))


def step(s: Scheduler, token=7):
    batch = s.schedule()
    s.commit(batch)
    for r in batch.requests:
        if r.num_computed_tokens == r.num_tokens:
            r.all_token_ids.append(token)
    return batch


def test_chunked_prefill_respects_budget_and_mixes_decodes():
    s = make(budget=16)
    s.add(req("a", 10))
    b1 = step(s)
    assert b1.num_tokens == [10]
    s.add(req("b", 40))
    b2 = step(s)  # a decodes (1 token) while b prefills a 15-token chunk
    assert sorted(b2.num_tokens) == [1, 15] and b2.total_tokens == 16
    assert b2.num_tokens[-1] == 1  # single-token work is laid out last
    b3 = step(s)
    assert b3.total_tokens == 16


def test_no_chunking_waits_for_budget():
    s = make(budget=16, chunked=False)
    s.add(req("a", 20))
    assert step(s).requests == []


def test_max_num_seqs():
    s = make(max_seqs=2)
    for i in range(4):
        s.add(req(str(i), 3))
    assert len(step(s).requests) == 2 and len(s.waiting) == 2


def test_preempts_newest_running_when_out_of_blocks():
    s = make(num_blocks=6, block_size=4, budget=64)
    s.add(req("old", 8, max_tokens=20))
    s.add(req("new", 8, max_tokens=20))
    step(s)  # both admitted: 2 blocks each
    for _ in range(8):
        batch = step(s)
        if batch.preempted:
            break
    assert [r.request_id for r in batch.preempted] == ["new"]
    new = batch.preempted[0]
    assert new.status is RequestStatus.WAITING and new.num_computed_tokens == 0
    assert s.waiting[0] is new and s.blocks.block_tables.get("new") is None


def test_finish_frees_blocks_everywhere():
    s = make()
    a, b = req("a", 5), req("b", 5)
    s.add(a)
    step(s)
    s.add(b)
    s.finish(b, "abort")  # still waiting
    s.finish(a, "abort")  # running
    assert not s.has_unfinished() and s.blocks.num_used_blocks == 0
