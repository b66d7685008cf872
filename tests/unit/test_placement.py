"""Placement of a replica (deployments/replica/placement.py): the one definition the app builder and the k8s
renderer share; rank 0 (the replica actor) holds bundle 0 exactly, a GPU on CUDA."""

from __future__ import annotations

from cluster.k8s.serve_config import build_serve_config
from deployments.replica.placement import placement_bundles, replica_actor_options, replica_cpus, replica_gpus
from inference.schema.config import VariantConfig, parse_config


def test_cuda_replica_reserves_one_gpu_per_rank_and_rank_0_takes_its_own() -> None:
    variant = VariantConfig(name="big", device="cuda", tp_size=2, num_cpus_per_rank=2)
    assert placement_bundles(variant) == [{"CPU": 2.0, "GPU": 1}, {"CPU": 2.0, "GPU": 1}]
    assert replica_actor_options(variant) == {"num_cpus": 2.0, "num_gpus": 1}
    assert (replica_cpus(variant), replica_gpus(variant)) == (4.0, 2)


def test_replicas_of_tp_size_1_may_share_a_gpu() -> None:
    variant = VariantConfig(name="half", device="cuda", num_gpus_per_rank=0.5, engine={"kv_cache_tokens": 4096})
    assert placement_bundles(variant) == [{"CPU": 1.0, "GPU": 0.5}]
    assert replica_actor_options(variant) == {"num_cpus": 1.0, "num_gpus": 0.5}
    assert replica_gpus(variant) == 0.5


def test_cpu_replica_reserves_no_gpu() -> None:
    variant = VariantConfig(name="full", tp_size=3, num_cpus_per_rank=1.5)
    assert placement_bundles(variant) == [{"CPU": 1.5}] * 3
    assert replica_actor_options(variant) == {"num_cpus": 1.5, "num_gpus": 0}


def test_app_builder_and_k8s_render_use_the_same_placement() -> None:
    from deployments.app import server_options

    config = parse_config({"variants": [{"name": "big", "device": "cuda", "tp_size": 2, "num_cpus_per_rank": 2}]})
    variant = config.variants[0]
    options = server_options(config, variant)
    rendered = build_serve_config(config, config.kubernetes)["applications"][0]["deployments"]
    [deployment] = [d for d in rendered if d["name"] == "llm-big"]
    assert options["placement_group_bundles"] == deployment["placement_group_bundles"]
    assert options["ray_actor_options"] == deployment["ray_actor_options"]
    assert options["placement_group_strategy"] == deployment["placement_group_strategy"] == "STRICT_PACK"
