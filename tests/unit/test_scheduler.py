"""The continuous-batching scheduler on fake sequences (no model): budgets, chunking, admission, preemption."""

from __future__ import annotations

from inference.engine.block_manager import BlockManager
from inference.engine.scheduler import Scheduler
from inference.engine.sequence import Sequence, SequenceGroup
from inference.schema.outputs import RequestMetrics
from inference.schema.sampling import SamplingParams
from tests.kv_pool import assert_pool_whole


class _NoDetok:
    pass


def group(rid: str, prompt_len: int, max_tokens: int = 8) -> SequenceGroup:
    ids = list(range(1, prompt_len + 1))
    seq = Sequence(seq_id=hash(rid) & 0xFFFF, index=0, token_ids=list(ids), num_prompt_tokens=prompt_len,
                   detokenizer=_NoDetok())  # type: ignore[arg-type]
    return SequenceGroup(rid, ids, SamplingParams(max_tokens=max_tokens), [seq], RequestMetrics(0.0), max_tokens)


def advance(sched: Scheduler, out) -> None:  # type: ignore[no-untyped-def]
    """What the engine does after a step: mark computed, append a token where the chunk ended."""
    for item in out.decodes + out.prefills:
        done = item.completes_prefill
        item.seq.num_computed_tokens += item.num_tokens
        if done:
            item.seq.token_ids.append(7)


def test_long_prompt_is_chunked_and_running_decodes_keep_going() -> None:
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=16)
    short, long = group("short", 4), group("long", 40)
    sched.add(short)
    advance(sched, sched.schedule())  # short prefilled
    sched.add(long)
    chunks = []
    for _ in range(3):
        out = sched.schedule()
        assert [d.group.request_id for d in out.decodes] == ["short"]  # never stalled by the long prompt
        assert out.num_tokens <= 16
        chunks += [p.num_tokens for p in out.prefills]
        advance(sched, out)
    assert chunks == [15, 15, 10]


def test_admission_stops_at_max_num_seqs_and_fcfs() -> None:
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=2, max_num_batched_tokens=100)
    for i in range(4):
        sched.add(group(f"r{i}", 3))
    out = sched.schedule()
    assert [p.group.request_id for p in out.prefills] == ["r0", "r1"]
    assert [g.request_id for g in sched.waiting] == ["r2", "r3"]


def test_admission_waits_for_free_blocks() -> None:
    sched = Scheduler(BlockManager(4, 4), max_num_seqs=8, max_num_batched_tokens=100, watermark=0.0)
    sched.add(group("big", 12))
    sched.add(group("next", 8))
    out = sched.schedule()
    assert [p.group.request_id for p in out.prefills] == ["big"]
    assert [g.request_id for g in sched.waiting] == ["next"]


def test_pool_exhaustion_preempts_the_newest_and_requeues_it_first() -> None:
    bm = BlockManager(4, 4)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=100, watermark=0.0)
    a, b = group("a", 8), group("b", 7)
    sched.add(a)
    sched.add(b)
    advance(sched, sched.schedule())  # a: 9 tokens (3 blocks), b: 8 tokens... b got the last block
    for _ in range(3):
        out = sched.schedule()
        advance(sched, out)
        if out.preempted:
            break
    assert [g.request_id for g in out.preempted] == ["b"]
    assert sched.waiting[0] is b and b.seqs[0].num_computed_tokens == 0 and b.seqs[0].block_table == []
    assert b.metrics.num_preemptions == 1


def test_remove_returns_every_block() -> None:
    bm = BlockManager(16, 4)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=100)
    groups = [group(f"r{i}", 5) for i in range(3)]
    for g in groups:
        sched.add(g)
    advance(sched, sched.schedule())
    for g in groups:
        sched.remove(g)
    assert_pool_whole(bm)
    assert not sched.running and not sched.waiting
