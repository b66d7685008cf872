"""Variant choice by weights, affinity keys, rendezvous ranking: pure functions."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from deployments.routing import affinity_key, choose_variant, normalize_weights, rendezvous_rank


def test_weighted_choice_follows_the_weights_and_skips_zero() -> None:
    rng = random.Random(0)
    counts = Counter(choose_variant({"full": 0.25, "int8": 0.75, "off": 0.0}, rng) for _ in range(20000))
    assert counts["off"] == 0
    assert abs(counts["int8"] / 20000 - 0.75) < 0.02


def test_no_positive_weight_is_an_error() -> None:
    with pytest.raises(ValueError, match="positive"):
        choose_variant({"a": 0.0}, random.Random(0))


def test_normalize_rejects_unknown_and_negative_and_fills_missing() -> None:
    assert normalize_weights({"a": 2.0}, ["a", "b"]) == {"a": 1.0, "b": 0.0}
    with pytest.raises(ValueError, match="unknown variants"):
        normalize_weights({"c": 1.0}, ["a", "b"])
    with pytest.raises(ValueError, match=">= 0"):
        normalize_weights({"a": -1.0, "b": 2.0}, ["a", "b"])


def test_affinity_prefers_the_session_then_the_prefix() -> None:
    long_prompt = "system: you are helpful. " * 20
    assert affinity_key("s1", long_prompt, "prefix", 256) == "session:s1"
    key = affinity_key(None, long_prompt, "prefix", 256)
    assert key is not None and key == affinity_key(None, long_prompt + " a different question", "prefix", 256)
    assert affinity_key(None, "hi", "prefix", 256) is None  # too short to be worth pinning
    assert affinity_key("s1", long_prompt, "none", 256) is None
    assert affinity_key(None, long_prompt, "session", 256) is None


def test_rendezvous_ranking_is_stable_and_moves_few_keys_when_a_replica_leaves() -> None:
    replicas = [f"r{i}" for i in range(5)]
    keys = [f"k{i}" for i in range(1000)]
    before = {k: rendezvous_rank(k, replicas)[0] for k in keys}
    assert before == {k: rendezvous_rank(k, list(reversed(replicas)))[0] for k in keys}
    spread = Counter(before.values())
    assert min(spread.values()) > 120  # roughly even
    after = {k: rendezvous_rank(k, replicas[:-1])[0] for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == "r4" for k in moved)  # only the departed replica's keys move
