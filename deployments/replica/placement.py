"""A variant's Serve deployment: its name, and where one replica runs (placement group, each rank's share).

The one definition the app builder (`deployments/app.py`), the k8s renderer (serveConfigV2 and
worker pod sizing) and the `ray up` checks use. A replica is one tensor-parallel group: tp_size
bundles packed on one node (STRICT_PACK, so the ranks share a node's NVLink / shared memory),
bundle r = rank r's {"CPU": num_cpus_per_rank} plus {"GPU": num_gpus_per_rank} on CUDA (1, or a share
of one GPU for replicas of tp_size 1 that share it). Rank 0 is the Serve
replica actor and fills bundle 0 exactly (its `ray_actor_options`); ranks 1..N-1 are actors that
fill bundles 1..N-1 exactly (deployments/replica/tp_group.py reads the bundles back). So every rank,
rank 0 included, holds one GPU and Ray sets its `CUDA_VISIBLE_DEVICES` to that GPU alone.
Pure: takes a `VariantConfig` (or a variant's name), returns names and plain dicts.
"""

from __future__ import annotations

from typing import Any

from inference.schema.config import VariantConfig

PLACEMENT_STRATEGY = "STRICT_PACK"
LLM_DEPLOYMENT_PREFIX = "llm-"


def llm_deployment_name(variant: str) -> str:
    """The Serve deployment of a variant's replicas: `llm-<variant>`."""
    return f"{LLM_DEPLOYMENT_PREFIX}{variant}"


def rank_bundle(variant: VariantConfig) -> dict[str, float]:
    """What one rank reserves: its CPUs, and its GPU (or GPU share) on CUDA."""
    bundle: dict[str, float] = {"CPU": variant.num_cpus_per_rank}
    if variant.device == "cuda":
        bundle["GPU"] = variant.num_gpus_per_rank
    return bundle


def placement_bundles(variant: VariantConfig) -> list[dict[str, float]]:
    """tp_size bundles, bundle r for rank r."""
    return [rank_bundle(variant) for _ in range(variant.tp_size)]


def replica_actor_options(variant: VariantConfig) -> dict[str, Any]:
    """`ray_actor_options` of the replica actor (rank 0): exactly bundle 0, in Ray's option names."""
    bundle = rank_bundle(variant)
    return {"num_cpus": bundle["CPU"], "num_gpus": bundle.get("GPU", 0)}


def replica_cpus(variant: VariantConfig) -> float:
    return sum(b["CPU"] for b in placement_bundles(variant))


def replica_gpus(variant: VariantConfig) -> float:
    return sum(b.get("GPU", 0) for b in placement_bundles(variant))
