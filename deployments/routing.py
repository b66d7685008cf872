"""Pure routing choices (no Ray): which variant serves a request, and the replica-affinity key.

Variant: weighted random by the controller's weights (per SLO class when it gives them), or
the variant the request names. Affinity: requests of one session (`x-session-id`) or with the
same prompt prefix hash to the same replica, so its KV for that prefix can be reused;
requests with neither go to the less loaded of two random replicas (deployments/request_router.py).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence


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


def affinity_key(session_id: str | None, prompt_text: str, mode: str, prefix_chars: int) -> str | None:
    """The replica-affinity key of a request, or None for load-based choice."""
    if mode == "none":
        return None
    if session_id:
        return f"session:{session_id}"
    if mode == "prefix" and len(prompt_text) >= min(prefix_chars, 32):
        return "prefix:" + hashlib.blake2b(prompt_text[:prefix_chars].encode(), digest_size=8).hexdigest()
    return None


def rendezvous_rank(key: str, replica_ids: Sequence[str]) -> list[str]:
    """Highest-random-weight hashing: a stable order of replicas for a key (few keys move when one leaves)."""

    def score(replica_id: str) -> int:
        return int.from_bytes(hashlib.blake2b(f"{key}|{replica_id}".encode(), digest_size=8).digest(), "big")

    return sorted(replica_ids, key=score, reverse=True)
