"""`BlockManager`: accounting of the preallocated KV pool in fixed-size blocks. Pure Python.

The pool's tensors live in `kv_cache.KVCache`; this class only hands out block ids, counts
references (forked sequences share their full blocks) and takes them back. Invariant, checked
by `check_whole()`: every block is either free or referenced, never both, never lost.
"""

from __future__ import annotations

from collections import deque


class BlockManager:
    """Free-list allocator over `num_blocks` blocks of `block_size` tokens."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        assert num_blocks > 0 and block_size > 0
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))
        self._refs = [0] * num_blocks

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def used_ratio(self) -> float:
        return 1.0 - len(self._free) / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def can_grow(self, block_table: list[int], num_tokens: int, reserve: int = 0) -> bool:
        """Whether `block_table` can be extended to hold `num_tokens`, leaving `reserve` blocks free."""
        extra = self.blocks_needed(num_tokens) - len(block_table)
        return extra <= 0 or extra + reserve <= len(self._free)

    def grow(self, block_table: list[int], num_tokens: int) -> None:
        """Extend `block_table` in place to hold `num_tokens` tokens."""
        extra = self.blocks_needed(num_tokens) - len(block_table)
        if extra > len(self._free):
            raise RuntimeError(f"KV pool exhausted: need {extra} blocks, {len(self._free)} free")
        for _ in range(extra):
            block = self._free.popleft()
            self._refs[block] = 1
            block_table.append(block)

    def fork(self, block_table: list[int], num_tokens: int) -> tuple[list[int], tuple[int, int] | None]:
        """A child table sharing the parent's full blocks; the partly filled last block is copied.

        Returns the child's table and the (src, dst) block copy the model runner must do before
        either sequence writes again, or None when the last block is full (nothing is copied).
        """
        num_full = num_tokens // self.block_size
        child = block_table[:num_full]
        for block in child:
            self._refs[block] += 1
        copy = None
        if num_full < len(block_table):
            if not self._free:
                raise RuntimeError("KV pool exhausted while forking")
            dst = self._free.popleft()
            self._refs[dst] = 1
            child.append(dst)
            copy = (block_table[num_full], dst)
        return child, copy

    def free(self, block_table: list[int]) -> None:
        for block in block_table:
            assert self._refs[block] > 0, f"double free of block {block}"
            self._refs[block] -= 1
            if self._refs[block] == 0:
                self._free.append(block)
        block_table.clear()

    def check_whole(self) -> None:
        """Raise if any block is referenced (call when no sequence is alive) or the free list is off."""
        if len(self._free) != self.num_blocks or len(set(self._free)) != self.num_blocks or any(self._refs):
            raise AssertionError(
                f"KV pool not whole: {len(self._free)}/{self.num_blocks} free, "
                f"{sum(1 for r in self._refs if r)} still referenced"
            )
