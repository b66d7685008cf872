"""Test helper: the KV pool is whole again once no sequence is alive."""

from __future__ import annotations

from inference.engine.block_manager import BlockManager


def assert_pool_whole(bm: BlockManager) -> None:
    """Raise if the pool is inconsistent or any block is still referenced (call when no sequence is alive)."""
    bm.check_consistent()
    assert bm.num_free_blocks == bm.num_blocks, (
        f"KV pool not whole: {bm.num_free_blocks}/{bm.num_blocks} free or cached-evictable"
    )
