"""`AffinityRequestRouter`: Serve's replica choice for LLMServer deployments.

A request that carries an affinity key (session or prompt prefix, set by the router) goes to the
replica that key hashes to (rendezvous hashing), unless that replica has more than
`max_load_gap` requests in flight above the least loaded one (Serve's queue-length cache, kept
by probes and sends): then the least loaded takes it (`routing.affinity_order`). Serve falls
back to the next choices if the first is full. Other requests: the less loaded of two random
replicas (Serve probes their queues).
"""

from __future__ import annotations

import random

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from deployments.router.replica_choice import affinity_order, rendezvous_rank
from inference.schema.requests import GenerateRequest

DEFAULT_MAX_LOAD_GAP = 4  # RouterConfig.affinity_max_load_gap's default; the app passes the configured one


def _key(pending: PendingRequest | None) -> str | None:
    if pending is None:
        return None
    for arg in list(pending.args) + list(pending.kwargs.values()):
        if isinstance(arg, GenerateRequest):
            return arg.affinity_key
    return None


class AffinityRequestRouter(RequestRouter):
    max_load_gap: int = DEFAULT_MAX_LOAD_GAP

    def initialize_state(self, max_load_gap: int = DEFAULT_MAX_LOAD_GAP, **kwargs: object) -> None:
        if kwargs:
            raise TypeError(f"AffinityRequestRouter: unknown request_router_kwargs {sorted(kwargs)}")
        if max_load_gap < 0:
            raise ValueError(f"AffinityRequestRouter: max_load_gap must be >= 0, got {max_load_gap}")
        self.max_load_gap = max_load_gap

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        key = _key(pending_request)
        if key is not None and len(candidate_replicas) > 1:
            by_id: dict[str, RunningReplica] = {r.replica_id.unique_id: r for r in candidate_replicas}
            cache = self.replica_queue_len_cache
            loads = {uid: cache.get(r.replica_id) or 0 for uid, r in by_id.items()}
            order = affinity_order(rendezvous_rank(key, list(by_id)), loads, self.max_load_gap)
            return [[by_id[order[0]]], [by_id[i] for i in order[1:]]]
        if len(candidate_replicas) <= 2:
            return [list(candidate_replicas)]
        return [random.sample(candidate_replicas, 2)]


__all__ = ["AffinityRequestRouter", "ReplicaID"]
