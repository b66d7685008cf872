"""GPU placement across several nodes (ray.cluster_utils.Cluster on one machine, fake GPUs).

Two worker nodes of 4 CPUs and 4 GPUs each (Ray-declared, not real: torch sees no CUDA, so the
ranks run on the CPU, allowed by SLOSERVE_CUDA_ON_CPU=1, but Ray still assigns each a GPU and sets CUDA_VISIBLE_DEVICES); a CUDA
variant of tp_size 2 with two replicas. Checked: every rank, rank 0 included, holds its own GPU of
its replica's STRICT_PACK group, the group never spans nodes, the two replicas sit on different
nodes, and removing a node mid-stream ends the requests there with an error (none hangs) while
Serve recovers the replica on the remaining node.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from deployments.replica.tp_group import replica_placements
from inference.parallel.worker import ALLOW_CPU_FOR_CUDA_ENV
from tests.serve.conftest import free_port, wait_until
from tests.tiny_models import make_tiny_model_dir

pytestmark = pytest.mark.slow
VARIANT = "tp"
NODE_RESOURCES = {"num_cpus": 4, "num_gpus": 4}


@dataclass
class MultiNode:
    cluster: Any
    workers: list[Any]
    base_url: str


@pytest.fixture(scope="module")
def multinode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiNode]:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from deployments.app import build_app
    from inference.schema.config import parse_config

    model_dir = make_tiny_model_dir(tmp_path_factory.mktemp("multinode-tiny"), max_position_embeddings=256)
    engine = {"kv_cache_tokens": 1024, "block_size": 16, "max_num_seqs": 8, "max_num_batched_tokens": 64}
    config = parse_config({
        "model": {"source": str(model_dir), "name": "tiny", "max_model_len": 256},
        "variants": [{"name": VARIANT, "device": "cuda", "dtype": "float32", "tp_size": 2, "num_cpus_per_rank": 1,
                      "num_replicas": 2, "min_replicas": 1, "max_replicas": 2, "engine": engine}],
        "router": {"max_in_flight": 16, "request_timeout_s": 60, "affinity": "none"},
    })
    # The GPUs are declared to Ray only: torch sees none, so 'cuda' ranks may run on the CPU only
    # because this says so (without it a 'cuda' variant refuses to start). The nodes inherit it.
    os.environ[ALLOW_CPU_FOR_CUDA_ENV] = "1"
    # the head hosts only Serve's controller, proxy and the router (0 CPUs): no GPUs there
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
    try:
        workers = [cluster.add_node(**NODE_RESOURCES) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        port = free_port()
        # one proxy: every node of this test shares 127.0.0.1
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        serve.run(build_app(config), name="sloserve", route_prefix="/")
        yield MultiNode(cluster, workers, f"http://127.0.0.1:{port}")
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
        os.environ.pop(ALLOW_CPU_FOR_CUDA_ENV, None)


def test_every_rank_holds_its_own_gpu_and_a_group_never_spans_nodes(multinode: MultiNode) -> None:
    from ray.util.placement_group import placement_group_table

    replicas = replica_placements("sloserve", f"llm-{VARIANT}", 2)
    assert len(replicas) == 2
    for ranks in replicas.values():
        assert [r.rank for r in ranks] == [0, 1]
        assert len({r.node_id for r in ranks}) == 1, ranks  # STRICT_PACK: one node per TP group
        assert all(len(r.gpu_ids) == 1 for r in ranks), ranks  # rank 0 included
        assert len({r.gpu_ids[0] for r in ranks}) == 2, ranks  # distinct GPUs within the group
        assert all(r.cuda_visible_devices == r.gpu_ids[0] for r in ranks), ranks
        assert all(r.device == "cpu" for r in ranks), ranks  # declared GPUs only: torch sees no CUDA
    nodes = {ranks[0].node_id for ranks in replicas.values()}
    assert len(nodes) == 2, "the two replicas share a node"  # spread over the worker nodes
    groups = [g for g in placement_group_table().values() if g["state"] == "CREATED" and g["strategy"] == "STRICT_PACK"]
    assert len(groups) == 2
    for group in groups:
        assert list(group["bundles"].values()) == [{"CPU": 1.0, "GPU": 1.0}] * 2
        assert len(set(group["bundles_to_node_id"].values())) == 1


def _stream(base_url: str, prompt: str, outcome: dict[str, str]) -> None:
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 200, "ignore_eos": True, "stream": True}
    try:
        with httpx.Client(base_url=base_url, timeout=httpx.Timeout(60, read=45)) as client, \
                client.stream("POST", "/v1/completions", json=body) as response:
            tail = ""
            for line in response.iter_lines():
                if line.startswith("data: "):
                    tail = line
            outcome[prompt] = "done" if tail == "data: [DONE]" and response.status_code == 200 else f"error {tail}"
    except httpx.HTTPError as e:  # a dropped connection is an error too, as long as it is not a hang
        outcome[prompt] = f"error {e!r}"


def test_removing_a_node_mid_stream_errors_its_requests_and_serve_recovers_elsewhere(multinode: MultiNode) -> None:
    import ray

    replicas = replica_placements("sloserve", f"llm-{VARIANT}", 2)
    doomed_node = next(iter(replicas.values()))[0].node_id
    [doomed] = [n for n in multinode.workers if n.node_id == doomed_node]
    outcome: dict[str, str] = {}
    threads = [threading.Thread(target=_stream, args=(multinode.base_url, f"Story {i}", outcome)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.0)  # the streams are under way on both replicas
    multinode.cluster.remove_node(doomed)
    for t in threads:
        t.join(timeout=90)
    assert not any(t.is_alive() for t in threads), "a request hung after its node went away"
    assert len(outcome) == 4
    assert all(o == "done" or o.startswith("error") for o in outcome.values()), outcome
    assert any(o.startswith("error") for o in outcome.values()), outcome  # those on the removed node

    survivor = next(n.node_id for n in multinode.workers if n is not doomed)
    assert doomed_node not in {n["NodeID"] for n in ray.nodes() if n["Alive"]}

    def recovered() -> bool:
        placed = replica_placements("sloserve", f"llm-{VARIANT}", 2, timeout_s=10)
        return len(placed) == 2 and all(r.node_id == survivor for ranks in placed.values() for r in ranks)

    assert wait_until(recovered, 150, interval_s=2.0), "Serve did not bring back 2 replicas on the remaining node"
    r = httpx.post(f"{multinode.base_url}/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 4}, timeout=30)
    assert r.status_code == 200, r.text

