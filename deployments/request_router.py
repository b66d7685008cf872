"""`AffinityRequestRouter`: Serve's replica choice for LLMServer deployments.

A request that carries an affinity key (session or prompt prefix, set by the router) goes to the
replica that key hashes to (rendezvous hashing), falling back to the others by load if that one
is full. Other requests: the less loaded of two random replicas (Serve probes their queues).
"""

from __future__ import annotations

import random

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from deployments.protocol import GenerateRequest
from deployments.routing import rendezvous_rank


def _key(pending: PendingRequest | None) -> str | None:
    if pending is None:
        return None
    for arg in list(pending.args) + list(pending.kwargs.values()):
        if isinstance(arg, GenerateRequest):
            return arg.affinity_key
    return None


class AffinityRequestRouter(RequestRouter):
    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        key = _key(pending_request)
        if key is not None and len(candidate_replicas) > 1:
            by_id: dict[str, RunningReplica] = {r.replica_id.unique_id: r for r in candidate_replicas}
            ranked = rendezvous_rank(key, list(by_id))
            return [[by_id[ranked[0]]], [by_id[i] for i in ranked[1:]]]
        if len(candidate_replicas) <= 2:
            return [list(candidate_replicas)]
        return [random.sample(candidate_replicas, 2)]


__all__ = ["AffinityRequestRouter", "ReplicaID"]
