"""Ranks 1..N-1 of a replica's tensor-parallel group as Ray actors in the replica's placement group.

The replica (rank 0) reserves tp_size bundles (`placement_group_bundles`, STRICT_PACK, so all
ranks share a node and DeepSpeed's shared-memory all-reduce works; deployments/replica/placement.py defines
them); rank r runs in bundle r and asks for exactly that bundle's CPUs and GPUs, read back from the
placement group, so it always fits and holds its own GPU. Each actor runs `RankWorker.load()` then
`serve_forever()`, the same code the engine's multiprocessing path runs. `RankPlacement` is where a
rank landed (node, GPU ids Ray assigned, the torch device it chose).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import ray
from ray.util.placement_group import get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from inference.engine.logs import show_engine_log
from inference.parallel.worker import RankWorker, RendezvousInfo
from inference.schema.config.engine import EngineConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RankPlacement:
    """Where one rank of a replica runs."""

    rank: int
    node_id: str
    pid: int
    gpu_ids: tuple[str, ...]  # accelerator ids Ray assigned to the rank's process
    cuda_visible_devices: str | None
    device: str  # the torch device the rank's worker chose


def this_process_placement(rank: int, device: str) -> RankPlacement:
    context = ray.get_runtime_context()
    return RankPlacement(
        rank=rank,
        node_id=context.get_node_id(),
        pid=os.getpid(),
        gpu_ids=tuple(str(i) for i in context.get_accelerator_ids().get("GPU", [])),
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        device=device,
    )


@ray.remote(max_restarts=0, max_concurrency=2)  # type: ignore[call-overload]  # run() blocks a thread; placement() answers
class RankActor:
    def __init__(self, config_json: str, rank: int, rendezvous: RendezvousInfo) -> None:
        show_engine_log()
        self.config = EngineConfig.model_validate_json(config_json)
        self.rank = rank
        self.rendezvous = rendezvous

        self.worker = RankWorker(self.config, self.rank, self.rendezvous)

    def run(self) -> None:
        self.worker.load()
        self.worker.serve_forever()

    def placement(self) -> RankPlacement:
        return this_process_placement(self.rank, str(self.worker.device))


class RayPeers:
    """`PeerRanks` over Ray actors (see inference/parallel/multiproc.py for the process version)."""

    def __init__(self, config: EngineConfig, rendezvous: RendezvousInfo) -> None:
        self.config = config
        self.rendezvous = rendezvous
        self.actors: list[ray.actor.ActorHandle] = []
        self.runs: list[ray.ObjectRef] = []
        self._stopping = False

    def start(self) -> None:
        pg = get_current_placement_group()
        if pg is None:
            raise RuntimeError(
                f"tp_size={self.config.tp_size} needs the replica to run in a placement group "
                "(placement_group_bundles on the deployment)"
            )
        bundles = pg.bundle_specs
        if len(bundles) < self.config.tp_size:
            raise RuntimeError(f"tp_size={self.config.tp_size} needs as many bundles, the placement group has {len(bundles)}")
        owner = ray.get_runtime_context().get_actor_name()  # the replica's actor name, e.g. SERVE_REPLICA::app#dep#id
        for rank in range(1, self.config.tp_size):
            actor = RankActor.options(  # type: ignore[attr-defined]
                name=f"{owner}#rank{rank}" if owner else None,  # `ray list actors` shows whose rank it is
                num_cpus=bundles[rank].get("CPU", 0),
                num_gpus=bundles[rank].get("GPU", 0),
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=rank
                ),
            ).remote(self.config.model_dump_json(), rank, self.rendezvous)
            self.actors.append(actor)
            self.runs.append(actor.run.remote())

    def placements(self) -> list[RankPlacement]:
        return list(ray.get([a.placement.remote() for a in self.actors], timeout=10))

    def dead_ranks(self) -> list[int]:
        if self._stopping or not self.runs:
            return []
        done, _ = ray.wait(self.runs, num_returns=len(self.runs), timeout=0)
        done_set = set(done)
        return [rank for rank, ref in enumerate(self.runs, start=1) if ref in done_set]

    def stop(self) -> None:
        self._stopping = True
        if self.runs:
            ray.wait(self.runs, num_returns=len(self.runs), timeout=10)
        for actor in self.actors:
            ray.kill(actor)
        self.actors.clear()
        self.runs.clear()


def replica_placements(app_name: str, deployment: str, num_replicas: int,
                       timeout_s: float = 60.0) -> dict[int, list[RankPlacement]]:
    """Where every rank of a deployment's replicas runs, keyed by rank 0's pid: asks the deployment
    (each call reaches one replica) until `num_replicas` have answered or `timeout_s` passes."""
    import time

    from ray import serve

    handle = serve.get_deployment_handle(deployment, app_name=app_name)
    found: dict[int, list[RankPlacement]] = {}
    deadline = time.monotonic() + timeout_s
    while len(found) < num_replicas and time.monotonic() < deadline:
        ranks = handle.placement.remote().result(timeout_s=30)
        found[ranks[0].pid] = ranks
    return found
