"""Variant choice by weights, affinity keys, rendezvous ranking: pure functions."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from deployments.router.replica_choice import (
    affinity_key,
    affinity_order,
    chat_prefix_text,
    choose_variant,
    normalize_weights,
    prefix_key,
    rendezvous_rank,
    spill_over,
)
from inference.engine.prefix_hash import extend_block_hashes


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
    assert affinity_key("s1", long_prompt, "prefix", 16, 4) == "session:s1"
    key = affinity_key(None, long_prompt, "prefix", 16, 4)
    assert key is not None and key == affinity_key(None, long_prompt + " a different question", "prefix", 16, 4)
    assert affinity_key(None, "hi", "prefix", 16, 4) is None  # shorter than the blocks: no pinning
    assert affinity_key("s1", long_prompt, "none", 16, 4) is None
    assert affinity_key(None, long_prompt, "session", 16, 4) is None


def test_a_token_prompt_key_is_the_engines_hash_of_its_first_blocks() -> None:
    rng = random.Random(0)
    system = [rng.randrange(1000) for _ in range(70)]
    a, b = [*system, 1, 2, 3], [*system, 9]
    hashes: list[bytes] = []
    extend_block_hashes(hashes, a, 16, 4)  # what the engine registers for a's first 4 blocks
    assert prefix_key(a, 16, 4) == "prefix:" + hashes[3].hex() == prefix_key(b, 16, 4)
    assert prefix_key([7, *system[1:]], 16, 4) != prefix_key(a, 16, 4)  # the first token differs
    assert prefix_key(system[:63], 16, 4) is None  # fewer than 4 full blocks
    assert prefix_key(a, 16, 5) != prefix_key(a, 16, 4)


def test_chat_messages_sharing_a_system_prompt_share_a_key() -> None:
    system = ("system", "You are a careful assistant for a shipping company. " * 8)
    one = affinity_key(None, chat_prefix_text([system, ("user", "where is my parcel?")]), "prefix", 16, 4)
    two = affinity_key(None, chat_prefix_text([system, ("user", "cancel my order")]), "prefix", 16, 4)
    other = affinity_key(None, chat_prefix_text([("system", "x" * 400), ("user", "cancel my order")]), "prefix", 16, 4)
    assert one is not None and one == two != other


def test_affinity_keeps_the_preferred_replica_within_the_load_gap() -> None:
    ranked = ["a", "b", "c"]
    assert affinity_order(ranked, {"a": 5, "b": 1, "c": 3}, max_load_gap=4) == ranked
    assert affinity_order(ranked, {"a": 6, "b": 1, "c": 3}, max_load_gap=4) == ["b", "c", "a"]
    assert affinity_order(ranked, {"a": 1}, max_load_gap=0) == ["b", "c", "a"]  # unknown loads count as 0
    assert affinity_order(ranked, {"a": 2, "b": 2, "c": 2}, max_load_gap=0) == ranked


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


def test_spill_over_only_when_every_slot_of_the_chosen_variant_is_taken() -> None:
    slots = {"full": 32, "int8": 0, "distilled": 32}
    weights = {"full": 0.8, "int8": 0.0, "distilled": 0.2}
    assert spill_over("full", {"full": 31, "distilled": 0}, slots, weights) == "full"
    assert spill_over("full", {"full": 32, "distilled": 5}, slots, weights) == "distilled"
    # int8 has no ready replica (0 slots): never a target; nothing free anywhere: the request stays
    assert spill_over("full", {"full": 32, "distilled": 32}, slots, weights) == "full"
    # among variants with room: the most weight, then the most free slots
    slots3 = {"full": 8, "int8": 8, "distilled": 16}
    assert spill_over("full", {"full": 8, "int8": 0, "distilled": 0}, slots3, {"full": 1.0}) == "distilled"
    assert spill_over("full", {"full": 8}, slots3, {"full": 0.5, "int8": 0.3, "distilled": 0.2}) == "int8"
    # a variant without a ready replica spills too (its requests would wait for a cold start)
    assert spill_over("int8", {}, slots, weights) == "full"
