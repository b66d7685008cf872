"""`AffinityRequestRouter.choose_replicas` on Serve's real router state, with stand-in replicas (only
their ids are read): affinity to the key's replica, and the least loaded one past the load gap."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from ray.serve._private.common import DeploymentHandleSource, DeploymentID, ReplicaID, RequestMetadata
from ray.serve._private.request_router.common import PendingRequest

from deployments.router.replica_choice import rendezvous_rank
from deployments.router.serve_request_router import AffinityRequestRouter
from inference.schema.requests import GenerateRequest

DEPLOYMENT = DeploymentID("llm-full", "sloserve")


@dataclass
class StandInReplica:
    replica_id: ReplicaID
    max_ongoing_requests: int = 8


def choose(gap: int, loads: dict[str, int], key: str | None) -> tuple[list[list[str]], list[str]]:
    """The router's choice for a request with `key`, the replicas' queue lengths as Serve last saw them;
    returns the choice (replica ids per rank) and the key's rendezvous order."""

    async def run() -> list[list[str]]:
        router = AffinityRequestRouter(DEPLOYMENT, DeploymentHandleSource.UNKNOWN, use_replica_queue_len_cache=True)
        router.initialize_state(max_load_gap=gap)
        replicas = [StandInReplica(ReplicaID(uid, DEPLOYMENT)) for uid in loads]
        for replica in replicas:
            router.replica_queue_len_cache.update(replica.replica_id, loads[replica.replica_id.unique_id])
        request = GenerateRequest(prompt="hello", affinity_key=key)
        pending = PendingRequest(args=[request], kwargs={}, metadata=RequestMetadata("r1", "r1"))
        ranks = await router.choose_replicas(replicas, pending)  # type: ignore[arg-type]
        return [[r.replica_id.unique_id for r in rank] for rank in ranks]

    return asyncio.run(run()), rendezvous_rank(key or "", list(loads))


def test_a_keyed_request_goes_to_its_replica_while_the_load_gap_allows() -> None:
    loads = {"r0": 0, "r1": 0, "r2": 0}
    ranks, order = choose(2, loads, "prefix:abc")
    assert ranks == [[order[0]], order[1:]]
    loads[order[0]] = 2  # exactly the gap above the least loaded: still preferred
    assert choose(2, loads, "prefix:abc")[0][0] == [order[0]]


def test_a_busy_preferred_replica_yields_to_the_least_loaded() -> None:
    _, order = choose(2, {"r0": 0, "r1": 0, "r2": 0}, "prefix:abc")
    loads = {order[0]: 5, order[1]: 4, order[2]: 1}
    ranks, _ = choose(2, loads, "prefix:abc")
    assert ranks == [[order[2]], [order[1], order[0]]]


def test_requests_without_a_key_go_to_two_random_replicas() -> None:
    ranks, _ = choose(2, {"r0": 0, "r1": 0, "r2": 0}, None)
    assert len(ranks) == 1 and len(ranks[0]) == 2


def test_unknown_router_kwargs_are_refused() -> None:
    async def run() -> None:
        router = AffinityRequestRouter(DEPLOYMENT, DeploymentHandleSource.UNKNOWN)
        router.initialize_state(max_gap=3)

    with pytest.raises(TypeError, match="max_gap"):
        asyncio.run(run())
