"""The router spills a request over to another variant when every batch slot of the one chosen by
weight is taken (routing.spill_over), through real Serve, over HTTP.

A second router app over the package's replicas, whose config gives `full` 2 batch slots: the
router counts slots from the config (and Serve's ready replicas), so two running streams fill
`full` here while its replica itself could run more. Everything else is the real path."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from ray import serve

from tests.serve.conftest import ServeApp

LONG = {"prompt": "Keep going", "max_tokens": 200, "ignore_eos": True, "stream": True}  # ~0.7 s each here


@pytest.fixture(scope="module")
def spill_url(serve_app: ServeApp) -> Iterator[str]:
    from deployments.router.router import RouterDeployment
    from inference.schema.config import parse_config

    config = parse_config({
        "model": {"name": "tiny", "max_model_len": 256},
        "variants": [
            {"name": "full", "weight": 1.0, "engine": {"max_num_seqs": 2}},
            {"name": "spare", "weight": 0.0, "engine": {"max_num_seqs": 16}},
        ],
        "router": {"max_in_flight": 16},
    })
    servers = {n: serve.get_deployment_handle(f"llm-{n}", app_name="sloserve") for n in ("full", "spare")}
    router = RouterDeployment.options(name="router-spill", ray_actor_options={"num_cpus": 0})
    serve.run(router.bind(config.model_dump_json(), servers), name="spill", route_prefix="/spill")
    try:
        yield f"{serve_app.base_url}/spill"
    finally:
        serve.delete("spill")


async def _variant_of_stream(client: httpx.AsyncClient, model: str) -> str:
    async with client.stream("POST", "/v1/completions", json={"model": model, **LONG}) as response:
        assert response.status_code == 200
        chunks = [line async for line in response.aiter_lines() if line.startswith("data: {")]
        assert len(chunks) >= 150  # the whole answer came back, wherever it ran
        return response.headers["x-sloserve-variant"]


def test_requests_spill_over_when_the_chosen_variants_slots_are_taken_and_named_ones_never_do(spill_url: str) -> None:
    async def scenario() -> tuple[list[str], list[str], dict, str]:  # type: ignore[type-arg]
        async with httpx.AsyncClient(base_url=spill_url, timeout=60) as client:
            by_weight = [_variant_of_stream(client, "tiny") for _ in range(6)]
            named = [_variant_of_stream(client, "tiny:full") for _ in range(3)]
            variants = await asyncio.gather(*by_weight, *named)
            stats = (await client.get("/v1/sloserve/stats")).json()
            metrics = (await client.get("/metrics")).text
        return variants[:6], variants[6:], stats, metrics

    by_weight, named, stats, metrics = asyncio.run(asyncio.wait_for(scenario(), 120))
    # 9 streams of ~0.7 s sent at once against 2 slots of `full`: the first two by weight hold them
    assert by_weight.count("full") >= 1 and by_weight.count("spare") >= 1, by_weight
    assert named == ["full"] * 3  # a variant the client names is never spilled
    assert stats["in_flight_by_variant"] == {"full": 0, "spare": 0}  # every slot came back
    spills = [line for line in metrics.splitlines()
              if line.startswith("sloserve_spilled_total") and 'to="spare"' in line and 'variant="full"' in line]
    assert spills and float(spills[0].split()[-1]) == by_weight.count("spare"), spills
