"""KV block accounting: grow, fork (shared full blocks, copied partial block), free — never a leak."""

from __future__ import annotations

import random

import pytest

from inference.engine.block_manager import BlockManager
from tests.kv_pool import assert_pool_whole


def test_grow_allocates_whole_blocks_and_free_returns_them() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    table: list[int] = []
    bm.grow(table, 5)
    assert len(table) == 2 and bm.num_free_blocks == 6
    bm.grow(table, 8)
    assert len(table) == 2  # still fits
    bm.grow(table, 9)
    assert len(table) == 3
    bm.free(table)
    assert table == [] and bm.num_free_blocks == 8
    assert_pool_whole(bm)


def test_fork_shares_full_blocks_and_copies_the_partial_one() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    parent: list[int] = []
    bm.grow(parent, 6)  # one full block, one partial
    child, copy = bm.fork(parent, 6)
    assert child[0] == parent[0] and child[1] != parent[1]
    assert copy == (parent[1], child[1])
    bm.free(parent)
    assert bm.num_free_blocks == 8 - 2  # the shared block stays with the child
    bm.free(child)
    assert_pool_whole(bm)


def test_fork_of_a_block_aligned_sequence_copies_nothing() -> None:
    bm = BlockManager(num_blocks=4, block_size=4)
    parent: list[int] = []
    bm.grow(parent, 8)
    child, copy = bm.fork(parent, 8)
    assert copy is None and child == parent
    bm.free(parent)
    bm.free(child)
    assert_pool_whole(bm)


def test_exhaustion_raises_and_num_blocks_to_grow_says_so_first() -> None:
    bm = BlockManager(num_blocks=2, block_size=4)
    table: list[int] = []
    assert bm.num_blocks_to_grow(table, 8) == 2 == bm.num_free_blocks and bm.num_blocks_to_grow(table, 9) == 3
    bm.grow(table, 5)
    assert bm.num_blocks_to_grow(table, 8) == 0 and bm.num_blocks_to_grow(table, 9) == 1
    with pytest.raises(RuntimeError, match="exhausted"):
        bm.grow(table, 9)


def test_double_free_is_caught() -> None:
    bm = BlockManager(num_blocks=2, block_size=4)
    table: list[int] = []
    bm.grow(table, 4)
    copy = list(table)
    bm.free(table)
    with pytest.raises(AssertionError, match="double free"):
        bm.free(copy)


def test_random_grow_fork_free_keeps_the_pool_whole() -> None:
    rng = random.Random(0)
    bm = BlockManager(num_blocks=64, block_size=4)
    live: list[tuple[list[int], int]] = []
    for _ in range(2000):
        action = rng.random()
        if action < 0.4 and bm.num_free_blocks > 2:
            table: list[int] = []
            n = rng.randint(1, 8)
            bm.grow(table, n)
            live.append((table, n))
        elif action < 0.6 and live and bm.num_free_blocks > 1:
            table, n = rng.choice(live)
            child, _ = bm.fork(table, n)
            live.append((child, n))
        elif action < 0.8 and live:
            i = rng.randrange(len(live))
            table, n = live[i]
            if bm.num_blocks_to_grow(table, n + 3) <= bm.num_free_blocks:
                bm.grow(table, n + 3)
                live[i] = (table, n + 3)
        elif live:
            table, _ = live.pop(rng.randrange(len(live)))
            bm.free(table)
    for table, _ in live:
        bm.free(table)
    assert_pool_whole(bm)
