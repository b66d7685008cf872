"""The prefix cache in the block manager and the scheduler, on fake sequences (no model): chain hashes,
reuse of the longest cached prefix, never the last token, LRU eviction, duplicates, and a random
fuzz that keeps the pool consistent (free + cached-evictable + referenced) at every step."""

from __future__ import annotations

import random

from inference.engine.block_manager import BlockManager
from inference.engine.prefix_hash import extend_block_hashes, prefix_hash
from inference.engine.scheduler import Scheduler
from inference.engine.sequence import Sequence, SequenceGroup
from inference.schema.outputs import RequestMetrics
from inference.schema.sampling import SamplingParams
from tests.kv_pool import assert_pool_whole

BS = 4


def seq(token_ids: list[int]) -> Sequence:
    return Sequence(seq_id=0, index=0, token_ids=list(token_ids), num_prompt_tokens=len(token_ids),
                    detokenizer=None)  # type: ignore[arg-type]


def compute(bm: BlockManager, s: Sequence) -> None:
    """What a prefill of the whole sequence does: allocate, mark computed, register its full blocks."""
    before = s.num_computed_tokens
    bm.grow(s.block_table, s.num_tokens)
    s.num_computed_tokens = s.num_tokens
    bm.cache_full_blocks(s, before)


def test_chain_hash_names_the_whole_prefix() -> None:
    a, b = list(range(12)), [99, *range(1, 12)]
    ha: list[bytes] = []
    extend_block_hashes(ha, a, BS, 3)
    hb: list[bytes] = []
    extend_block_hashes(hb, b, BS, 3)
    assert all(x != y for x, y in zip(ha, hb, strict=True))  # one token in block 0 changes every later hash
    assert prefix_hash(a, BS, 2) == ha[1] and prefix_hash(a, BS, 4) is None


def test_a_shared_prefix_is_reused_and_refcounted() -> None:
    bm = BlockManager(16, BS, enable_prefix_caching=True)
    first = seq(list(range(20)))
    compute(bm, first)
    second = seq([*range(12), 50, 51, 52])
    assert bm.reuse_cached_prefix(second) == 12
    assert second.block_table == first.block_table[:3]
    bm.free(first.block_table)
    assert bm.num_free_blocks == 16 - 3  # the shared blocks stay referenced by `second`
    bm.check_consistent()
    bm.free(second.block_table)
    assert_pool_whole(bm)
    again = seq([*range(20), 7])
    assert bm.reuse_cached_prefix(again) == 20  # from evictable blocks nobody references
    bm.free(again.block_table)
    assert_pool_whole(bm)


def test_the_last_token_is_always_computed() -> None:
    bm = BlockManager(16, BS, enable_prefix_caching=True)
    compute(bm, seq(list(range(16))))
    same = seq(list(range(16)))  # the whole prompt is cached, block-aligned
    assert bm.reuse_cached_prefix(same) == 12  # its last block is computed again, for the last logits
    short = seq(list(range(3)))
    assert bm.reuse_cached_prefix(short) == 0  # a partial block is never reused


def test_lru_eviction_takes_the_least_recent_and_tails_first() -> None:
    bm = BlockManager(6, BS, enable_prefix_caching=True)
    old, new = seq(list(range(12))), seq(list(range(100, 112)))
    for s in (old, new):
        compute(bm, s)
        bm.free(s.block_table)
    assert bm.num_free_blocks == 6  # all six cached, evictable
    fresh: list[int] = []
    bm.grow(fresh, 4)  # no free block left: evicts one cached block, the tail of the least recent prompt
    probe = seq([*range(12), 1])
    assert bm.reuse_cached_prefix(probe) == 8  # `old` lost its last block only
    bm.free(probe.block_table)
    probe = seq([*range(100, 112), 1])
    assert bm.reuse_cached_prefix(probe) == 12
    bm.free(probe.block_table)
    bm.free(fresh)
    assert_pool_whole(bm)


def test_a_duplicate_computation_is_not_registered_twice() -> None:
    bm = BlockManager(16, BS, enable_prefix_caching=True)
    a, b = seq(list(range(8))), seq(list(range(8)))
    compute(bm, a)
    compute(bm, b)  # computed concurrently, before `a` was registered... or after: same content
    probe = seq([*range(8), 1])
    assert bm.reuse_cached_prefix(probe) == 8 and probe.block_table == a.block_table  # `a`'s blocks, registered once
    bm.free(probe.block_table)
    bm.free(b.block_table)
    assert bm.num_free_blocks == 16 - 2  # `b`'s unregistered blocks went back to the free list
    bm.free(a.block_table)
    assert_pool_whole(bm)


def test_disabled_cache_reuses_and_registers_nothing() -> None:
    bm = BlockManager(16, BS)
    compute(bm, seq(list(range(20))))
    assert bm.reuse_cached_prefix(seq(list(range(20)))) == 0


def test_random_reuse_fork_free_keeps_the_pool_consistent() -> None:
    rng = random.Random(0)
    bm = BlockManager(40, BS, enable_prefix_caching=True)
    heads = [[rng.randrange(50) for _ in range(rng.randint(0, 14))] for _ in range(4)]
    live: list[Sequence] = []
    reused = 0
    for _ in range(3000):
        action = rng.random()
        if action < 0.35:
            s = seq(rng.choice(heads) + [rng.randrange(50) for _ in range(rng.randint(1, 6))])
            reused += bm.reuse_cached_prefix(s)
            if bm.num_blocks_to_grow(s.block_table, s.num_tokens) <= bm.num_free_blocks:
                compute(bm, s)
                live.append(s)
            else:
                bm.free(s.block_table)
        elif action < 0.5 and live and bm.num_free_blocks > 1:
            parent = rng.choice(live)
            child = seq(parent.token_ids)
            child.block_table, _ = bm.fork(parent.block_table, parent.num_tokens)
            child.num_computed_tokens = parent.num_computed_tokens
            child.block_hashes = list(parent.block_hashes)
            live.append(child)
        elif action < 0.75 and live:
            s = rng.choice(live)
            s.token_ids += [rng.randrange(50) for _ in range(rng.randint(1, 5))]
            if bm.num_blocks_to_grow(s.block_table, s.num_tokens) <= bm.num_free_blocks:
                compute(bm, s)
            else:
                s.token_ids = s.token_ids[: s.num_computed_tokens]
        elif live:
            bm.free(live.pop(rng.randrange(len(live))).block_table)
        bm.check_consistent()
    for s in live:
        bm.free(s.block_table)
    assert_pool_whole(bm)
    assert reused > 0


def _group(rid: str, ids: list[int], prompt_logprobs: int | None = None) -> SequenceGroup:
    params = SamplingParams(max_tokens=4, prompt_logprobs=prompt_logprobs)
    return SequenceGroup(rid, ids, params, [seq(ids)], RequestMetrics(0.0), 4)


def _run_prefill(sched: Scheduler) -> None:
    out = sched.schedule()
    for item in out.prefills:
        before = item.seq.num_computed_tokens
        item.seq.num_computed_tokens += item.num_tokens
        sched.block_manager.cache_full_blocks(item.seq, before)


def test_scheduler_admits_at_the_cached_prefix_and_counts_hits() -> None:
    bm = BlockManager(32, BS, enable_prefix_caching=True)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=100, watermark=0.0)
    system = list(range(40))
    sched.add(_group("a", [*system, 1, 2]))
    _run_prefill(sched)
    sched.add(_group("b", [*system, 3, 4, 5]))
    out = sched.schedule()
    assert [(p.group.request_id, p.seq.num_computed_tokens, p.num_tokens) for p in out.prefills] == [("b", 40, 3)]
    assert sched.num_prefix_queried_tokens == 42 + 43 and sched.num_prefix_hit_tokens == 40


def test_scheduler_gives_cached_blocks_back_when_it_cannot_admit() -> None:
    bm = BlockManager(12, BS, enable_prefix_caching=True)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=100, watermark=0.0)
    sched.add(_group("a", [*range(16), 1]))
    _run_prefill(sched)  # 5 blocks, 4 of them cached
    sched.add(_group("big", list(range(16)) + list(range(100, 130))))  # needs 8 more blocks: 7 are free
    assert not sched.schedule().prefills
    big = sched.waiting[0].seqs[0]
    assert big.block_table == [] and big.num_computed_tokens == 0
    assert sched.num_prefix_hit_tokens == 0
    for g in list(sched.running) + list(sched.waiting):
        sched.remove(g)
    assert_pool_whole(bm)


def test_prompt_logprobs_requests_compute_their_whole_prompt() -> None:
    bm = BlockManager(32, BS, enable_prefix_caching=True)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=100, watermark=0.0)
    sched.add(_group("a", list(range(20))))
    _run_prefill(sched)
    sched.add(_group("echo", [*range(20), 1], prompt_logprobs=1))
    out = sched.schedule()
    assert [(p.seq.num_computed_tokens, p.num_tokens) for p in out.prefills] == [(0, 21)]
