"""Content hashes of full KV blocks, chained: the identity of a token prefix, one block at a time.

Block i's hash covers (block i-1's hash, the ids of block i's tokens), so one hash names the whole
prefix up to and including its block, as in vLLM's automatic prefix caching. 128-bit BLAKE2b over
the ids' bytes: deterministic across processes (the router computes the same keys as the engine)
and not forgeable into a collision by a client choosing its prompt. Pure Python, no torch.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence

BlockHash = bytes
ROOT_HASH: BlockHash = b""  # the parent of block 0


def hash_block(parent: BlockHash, token_ids: Sequence[int]) -> BlockHash:
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(array("q", token_ids).tobytes())
    return h.digest()


def extend_block_hashes(hashes: list[BlockHash], token_ids: Sequence[int], block_size: int, num_blocks: int) -> None:
    """Append to `hashes` (the chain of `token_ids`' first blocks) until it holds `num_blocks` of them.

    Only full blocks have a hash: `num_blocks` must be <= len(token_ids) // block_size.
    """
    assert num_blocks * block_size <= len(token_ids), "only full blocks are hashed"
    parent = hashes[-1] if hashes else ROOT_HASH
    for i in range(len(hashes), num_blocks):
        parent = hash_block(parent, token_ids[i * block_size : (i + 1) * block_size])
        hashes.append(parent)


def prefix_hash(token_ids: Sequence[int], block_size: int, num_blocks: int) -> BlockHash | None:
    """The chain hash of the first `num_blocks` full blocks of `token_ids`, or None if it has fewer."""
    if num_blocks < 1 or len(token_ids) < num_blocks * block_size:
        return None
    hashes: list[BlockHash] = []
    extend_block_hashes(hashes, token_ids, block_size, num_blocks)
    return hashes[-1]
