"""Worker group sizing: how many pods of which shape the variants' replicas need.

A replica of a variant is one placement group of tp_size bundles packed on one node (STRICT_PACK;
the bundles are defined in deployments/replica/placement.py). So a pod must hold a whole
replica, and the group's pod bounds follow from the variants' replica bounds: the minimum is a
lower bound assuming perfect packing, the maximum an upper bound packing each variant alone.
The router and controller replicas go to the CPU group (the head advertises 0 CPUs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from deployments.replica.placement import replica_cpus, replica_gpus
from inference.schema.config import AppConfig, ConfigError, KubernetesConfig, VariantConfig, WorkerGroupConfig

UNBOUNDED = 10_000  # replicas per pod of a variant that reserves neither CPUs nor GPUs


@dataclass(frozen=True, slots=True)
class WorkerGroupPlan:
    """One KubeRay worker group: pod shape (requests = limits) and pod count bounds."""

    name: str
    num_cpus: int
    memory: str
    num_gpus: int
    min_workers: int
    max_workers: int
    replicas: int
    variants: tuple[str, ...]
    settings: WorkerGroupConfig


def _replicas_per_pod(variant: VariantConfig, group: str, num_cpus: int, num_gpus: int) -> int:
    """Whole replicas of the variant one pod holds; ConfigError naming the field when none fits."""
    fits = [UNBOUNDED]
    if replica_gpus(variant):
        fits.append(math.floor(num_gpus / replica_gpus(variant)))
        if num_gpus < variant.tp_size:
            raise ConfigError(
                f"kubernetes.{group}.num_gpus ({num_gpus}) is below variant {variant.name!r} tp_size "
                f"({variant.tp_size}): a replica's ranks are packed on one pod (STRICT_PACK)"
            )
    if replica_cpus(variant) > 0:
        fits.append(math.floor(num_cpus / replica_cpus(variant)))
        if num_cpus < replica_cpus(variant):
            raise ConfigError(
                f"kubernetes.{group}.num_cpus ({num_cpus}) is below variant {variant.name!r} "
                f"tp_size x num_cpus_per_rank ({replica_cpus(variant):g})"
            )
    return min(fits)


def _plan(
    name: str, settings: WorkerGroupConfig, num_gpus: int, variants: list[VariantConfig], ingress_cpus: float
) -> WorkerGroupPlan:
    cpus, field = settings.num_cpus, f"{name}_group"
    per_pod = {v.name: _replicas_per_pod(v, field, cpus, num_gpus) for v in variants}

    def lower_bound(count_of: str) -> int:
        need_cpus = ingress_cpus + sum(getattr(v, count_of) * replica_cpus(v) for v in variants)
        need_gpus = sum(getattr(v, count_of) * replica_gpus(v) for v in variants)
        pods = math.ceil(need_cpus / cpus)
        return max(pods, math.ceil(need_gpus / num_gpus)) if num_gpus else pods

    computed_max = math.ceil(ingress_cpus / cpus) + sum(math.ceil(v.max_replicas / per_pod[v.name]) for v in variants)
    min_workers = settings.min_workers if settings.min_workers is not None else lower_bound("min_replicas")
    max_workers = settings.max_workers if settings.max_workers is not None else max(computed_max, min_workers)
    needed = lower_bound("min_replicas")
    if max_workers < needed:
        raise ConfigError(
            f"kubernetes.{field}.max_workers ({max_workers}) cannot hold the min_replicas of "
            f"{[v.name for v in variants] or 'the router'} (needs at least {needed} pods)"
        )
    if min_workers > max_workers:
        raise ConfigError(f"kubernetes.{field}.min_workers ({min_workers}) exceeds max_workers ({max_workers})")
    replicas = min(max(lower_bound("num_replicas"), min_workers), max_workers)
    return WorkerGroupPlan(
        name=name,
        num_cpus=cpus,
        memory=settings.memory,
        num_gpus=num_gpus,
        min_workers=min_workers,
        max_workers=max_workers,
        replicas=replicas,
        variants=tuple(v.name for v in variants),
        settings=settings,
    )


def plan_worker_groups(config: AppConfig, k8s: KubernetesConfig) -> list[WorkerGroupPlan]:
    """The CPU group (always: router, controller, CPU variants) and, with CUDA variants, the GPU group."""
    cpu_variants = [v for v in config.variants if v.device == "cpu"]
    gpu_variants = [v for v in config.variants if v.device == "cuda"]
    num_ingress = config.router.num_replicas + (1 if config.controller.enabled else 0)
    plans = [_plan("cpu", k8s.cpu_group, 0, cpu_variants, num_ingress * k8s.num_cpus_per_ingress_replica)]
    if gpu_variants:
        num_gpus = k8s.gpu_group.num_gpus or max(v.tp_size for v in gpu_variants)
        plans.append(_plan("gpu", k8s.gpu_group, num_gpus, gpu_variants, 0.0))
    return plans
