"""Pure routing choices (no Ray): which variant serves a request, and the replica-affinity key.

Variant: weighted random by the controller's weights (per SLO class when it gives them), or
the variant the request names; a request for a variant whose batch slots are all taken spills
over to one with a free slot (`spill_over`). Affinity: requests of one session (`x-session-id`) or with the
same prompt prefix hash to the same replica, so the engine's prefix cache there serves that
prefix; the prefix is the engine's own notion, the chain hash of the prompt's first full KV
blocks (inference/engine/prefix_hash.py). A preferred replica busier than the least loaded by more
than a bound yields to it (`affinity_order`); requests with neither key go to the less loaded
of two random replicas (deployments/router/serve_request_router.py).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence

from inference.engine.prefix_hash import prefix_hash


def choose_variant(weights: Mapping[str, float], rng: random.Random) -> str:
    """Weighted random choice among variants with weight > 0."""
    names = [n for n, w in weights.items() if w > 0]
    if not names:
        raise ValueError(f"no variant has a positive weight: {dict(weights)}")
    total = sum(weights[n] for n in names)
    point = rng.random() * total
    for name in names:
        point -= weights[name]
        if point < 0:
            return name
    return names[-1]


def normalize_weights(weights: Mapping[str, float], known: Sequence[str]) -> dict[str, float]:
    """Validate and scale weights to sum to 1; unknown names or all-zero weights raise ValueError."""
    unknown = sorted(set(weights) - set(known))
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {list(known)}")
    if any(w < 0 for w in weights.values()):
        raise ValueError(f"weights must be >= 0, got {dict(weights)}")
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("at least one weight must be > 0")
    return {name: weights.get(name, 0.0) / total for name in known}


def spill_over(chosen: str, in_flight: Mapping[str, int], slots: Mapping[str, int], weights: Mapping[str, float]) -> str:
    """Where a request chosen for `chosen` goes: there while it has a free batch slot (requests in
    flight below `slots`, its ready replicas' `max_num_seqs` together), else to the variant with a
    free slot that has the most traffic weight (then the most free slots), so that the request
    starts at once instead of queueing behind a full batch. With no free slot anywhere it stays.

    The controller moves traffic only after a rise has cleared the noise of a few seconds of
    arrivals; spilling is the router's answer within those seconds. Simulated on the packaged
    model's measured manifest, it took the `burst` trace from 13-58 violations to none at every
    seed (docs/slo-controller.md)."""
    if in_flight.get(chosen, 0) < slots.get(chosen, 0):
        return chosen
    room = {n: s - in_flight.get(n, 0) for n, s in slots.items() if n != chosen and in_flight.get(n, 0) < s}
    if not room:
        return chosen
    return max(room, key=lambda n: (weights.get(n, 0.0), room[n], n))


CHARS_PER_TOKEN = 4  # text prompts only: the router holds no tokenizer, so a block is this many chars a token


def prefix_key(prompt: str | Sequence[int], block_size: int, num_blocks: int) -> str | None:
    """The prefix-affinity key: the chain hash of the prompt's first `num_blocks` full KV blocks, or
    None if it has fewer. Token ids: exactly the engine's block hash, so one key = one cached prefix.
    Text (the router has no tokenizer): the same chain over the code points of blocks of
    `block_size * CHARS_PER_TOKEN` characters, about as long as the token blocks."""
    if isinstance(prompt, str):
        block_hash = prefix_hash([ord(c) for c in prompt[: num_blocks * block_size * CHARS_PER_TOKEN]],
                                 block_size * CHARS_PER_TOKEN, num_blocks)
    else:
        block_hash = prefix_hash(prompt, block_size, num_blocks)
    return None if block_hash is None else "prefix:" + block_hash.hex()


def chat_prefix_text(messages: Sequence[tuple[str, str]]) -> str:
    """Chat messages as one text for `prefix_key` (roles and contents in order; no JSON formatting)."""
    return "".join(f"<{role}>{content}\n" for role, content in messages)


def affinity_key(session_id: str | None, prompt: str | Sequence[int], mode: str, block_size: int,
                 num_blocks: int) -> str | None:
    """The replica-affinity key of a request, or None for load-based choice."""
    if mode == "none":
        return None
    if session_id:
        return f"session:{session_id}"
    if mode == "prefix":
        return prefix_key(prompt, block_size, num_blocks)
    return None


def affinity_order(ranked: Sequence[str], loads: Mapping[str, int], max_load_gap: int) -> list[str]:
    """Replicas in the order to try for a request with an affinity key: `ranked` (its rendezvous
    order) unless the first is busier than the least loaded by more than `max_load_gap` requests;
    then least loaded first (the key's later choices break ties). Missing loads count as 0."""
    least = min(loads.get(r, 0) for r in ranked)
    if loads.get(ranked[0], 0) - least <= max_load_gap:
        return list(ranked)
    return sorted(ranked, key=lambda r: loads.get(r, 0))  # stable: rendezvous order among equals


def rendezvous_rank(key: str, replica_ids: Sequence[str]) -> list[str]:
    """Highest-random-weight hashing: a stable order of replicas for a key (few keys move when one leaves)."""

    def score(replica_id: str) -> int:
        return int.from_bytes(hashlib.blake2b(f"{key}|{replica_id}".encode(), digest_size=8).digest(), "big")

    return sorted(replica_ids, key=score, reverse=True)
