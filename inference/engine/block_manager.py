"""`BlockManager`: accounting of the preallocated KV pool in fixed-size blocks, and the prefix cache. Pure Python.

The pool's tensors live in `kv_cache.KVCache`; this class only hands out block ids, counts
references (forked sequences share their full blocks) and takes them back. With prefix caching,
every full block a sequence has computed is registered under its chain hash (`prefix_hash`);
a sequence admitted later with the same leading tokens points its table at those blocks instead
of computing them again. A freed registered block is kept, evictable, until the free list runs
dry; then the least recently used one is reused. Invariant, checked by `check_consistent()`:
every block is exactly one of free, cached-evictable, or referenced, and the hash map agrees.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import TYPE_CHECKING

from inference.engine.prefix_hash import BlockHash, extend_block_hashes

if TYPE_CHECKING:
    from inference.engine.sequence import Sequence


class BlockManager:
    """Free-list allocator over `num_blocks` blocks of `block_size` tokens, with an LRU prefix cache."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False) -> None:
        assert num_blocks > 0 and block_size > 0
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._free: deque[int] = deque(range(num_blocks))  # unreferenced, holding nothing worth keeping
        self._evictable: OrderedDict[int, None] = OrderedDict()  # unreferenced cached blocks, least recent first
        self._refs = [0] * num_blocks
        self._hash_of: list[BlockHash | None] = [None] * num_blocks
        self._cached: dict[BlockHash, int] = {}

    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation can take: free ones, then cached ones nobody references (evicted)."""
        return len(self._free) + len(self._evictable)

    @property
    def used_ratio(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def num_blocks_to_grow(self, block_table: list[int], num_tokens: int) -> int:
        """How many blocks `block_table` must take to hold `num_tokens` tokens."""
        return max(0, self.blocks_needed(num_tokens) - len(block_table))

    def grow(self, block_table: list[int], num_tokens: int) -> None:
        """Extend `block_table` in place to hold `num_tokens` tokens."""
        extra = self.num_blocks_to_grow(block_table, num_tokens)
        if extra > self.num_free_blocks:
            raise RuntimeError(f"KV pool exhausted: need {extra} blocks, {self.num_free_blocks} free")
        for _ in range(extra):
            block_table.append(self._take())

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
            if not self.num_free_blocks:
                raise RuntimeError("KV pool exhausted while forking")
            dst = self._take()
            child.append(dst)
            copy = (block_table[num_full], dst)
        return child, copy

    def free(self, block_table: list[int]) -> None:
        # last block first: a sequence's tail is evicted before its head, which other prompts share more
        for block in reversed(block_table):
            assert self._refs[block] > 0, f"double free of block {block}"
            self._refs[block] -= 1
            if self._refs[block] == 0:
                if self._hash_of[block] is None:
                    self._free.append(block)
                else:
                    self._evictable[block] = None
        block_table.clear()

    # ---- prefix cache ---------------------------------------------------------------------------
    def reuse_cached_prefix(self, seq: Sequence) -> int:
        """Point the empty table of `seq` at the longest chain of cached blocks of its tokens and mark
        them computed; returns the number of tokens reused. The last token is never reused (its
        logits pick the next token), so neither is a block it ends."""
        assert not seq.block_table and seq.num_computed_tokens == 0, "only a sequence with no KV reuses a prefix"
        if not self.enable_prefix_caching:
            return 0
        bs = self.block_size
        for i in range((seq.num_tokens - 1) // bs):
            if i == len(seq.block_hashes):
                extend_block_hashes(seq.block_hashes, seq.token_ids, bs, i + 1)
            block = self._cached.get(seq.block_hashes[i])
            if block is None:
                break
            if self._refs[block] == 0:
                del self._evictable[block]
            self._refs[block] += 1
            seq.block_table.append(block)
        seq.num_computed_tokens = len(seq.block_table) * bs
        return seq.num_computed_tokens

    def cache_full_blocks(self, seq: Sequence, num_computed_before: int) -> None:
        """Register the blocks of `seq` that became full when its computed tokens grew from
        `num_computed_before` (call after the forward pass wrote their KV). A block whose content
        is cached already under another id stays unregistered (freed as plain free)."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        first, stop = num_computed_before // bs, seq.num_computed_tokens // bs
        if stop <= first:
            return
        extend_block_hashes(seq.block_hashes, seq.token_ids, bs, stop)
        for i in range(first, stop):
            block, block_hash = seq.block_table[i], seq.block_hashes[i]
            if self._hash_of[block] is None and block_hash not in self._cached:
                self._cached[block_hash] = block
                self._hash_of[block] = block_hash

    def _take(self) -> int:
        """An unreferenced block, referenced once: a free one, else the least recently used cached one."""
        if self._free:
            block = self._free.popleft()
        else:
            block, _ = self._evictable.popitem(last=False)
            block_hash = self._hash_of[block]
            assert block_hash is not None
            del self._cached[block_hash]
            self._hash_of[block] = None
        self._refs[block] = 1
        return block

    # ---- invariants -----------------------------------------------------------------------------
    def check_consistent(self) -> None:
        """Raise unless every block is exactly one of free, cached-evictable, referenced, and the
        hash map and the blocks' hashes agree (any time, sequences alive or not)."""
        free, evictable = set(self._free), set(self._evictable)
        referenced = {b for b, r in enumerate(self._refs) if r > 0}
        problems = []
        if len(free) != len(self._free):
            problems.append("a block is on the free list twice")
        if free & evictable or (free | evictable) & referenced:
            problems.append("a block is in two of free / evictable / referenced")
        if len(free | evictable | referenced) != self.num_blocks:
            problems.append(f"{self.num_blocks - len(free | evictable | referenced)} blocks are lost")
        if any(self._hash_of[b] is not None for b in free):
            problems.append("a free block is still registered in the prefix cache")
        if any(self._hash_of[b] is None for b in evictable):
            problems.append("an evictable block is not registered in the prefix cache")
        if any(self._hash_of[b] != h for h, b in self._cached.items()) or (
            sum(h is not None for h in self._hash_of) != len(self._cached)
        ):
            problems.append("the prefix cache's hash map and the blocks' hashes disagree")
        if problems:
            raise AssertionError(
                f"KV pool inconsistent: {'; '.join(problems)} ({len(free)} free, {len(evictable)} "
                f"cached-evictable, {len(referenced)} referenced of {self.num_blocks})"
            )
