"""Ranks 1..N-1 of a replica's tensor-parallel group as Ray actors in the replica's placement group.

The replica (rank 0) reserves tp_size bundles (`placement_group_bundles`, STRICT_PACK, so all
ranks share a node and DeepSpeed's shared-memory all-reduce works); rank r runs in bundle r.
Each actor runs `RankWorker.load()` then `serve_forever()`, the same code the engine's
multiprocessing path runs.
"""

from __future__ import annotations

import logging
import os

import ray
from ray.util.placement_group import get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from inference.config import EngineConfig
from inference.worker import RankWorker, RendezvousInfo

log = logging.getLogger(__name__)


@ray.remote(max_restarts=0, max_concurrency=2)  # type: ignore[call-overload]  # run() blocks a thread; pid() answers
class RankActor:
    def __init__(self, config_json: str, rank: int, rendezvous: RendezvousInfo) -> None:
        self.config = EngineConfig.model_validate_json(config_json)
        self.rank = rank
        self.rendezvous = rendezvous

    def run(self) -> None:
        worker = RankWorker(self.config, self.rank, self.rendezvous)
        worker.load()
        worker.serve_forever()

    def pid(self) -> int:
        return os.getpid()


class RayPeers:
    """`PeerRanks` over Ray actors (see inference/multiproc.py for the process version)."""

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
        per_rank = {"num_gpus": 1} if self.config.device == "cuda" else {}
        for rank in range(1, self.config.tp_size):
            actor = RankActor.options(  # type: ignore[attr-defined]
                name=None,
                num_cpus=self.config.num_threads or 1,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=rank
                ),
                **per_rank,
            ).remote(self.config.model_dump_json(), rank, self.rendezvous)
            self.actors.append(actor)
            self.runs.append(actor.run.remote())

    def pids(self) -> list[int]:
        return list(ray.get([a.pid.remote() for a in self.actors], timeout=10))

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
