"""Python callers: another Serve deployment calls the router's handle methods; TP=2 replica in Serve."""

from __future__ import annotations

import pytest
from ray import serve

from inference.schema.requests import ChatMessage, GenerateRequest, GenerateResponse
from inference.schema.sampling import SamplingParams
from tests.serve.conftest import ServeApp


@serve.deployment(name="caller", ray_actor_options={"num_cpus": 0})
class Caller:
    """Another team's service: it only knows the app name and the protocol types."""

    def __init__(self) -> None:
        self.router = serve.get_app_handle("sloserve")

    async def unary(self, prompt: str) -> dict:  # type: ignore[type-arg]
        response: GenerateResponse = await self.router.generate.remote(
            GenerateRequest(prompt=prompt, sampling=SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))
        )
        return response.model_dump()

    async def streamed(self, prompt: str) -> dict:  # type: ignore[type-arg]
        request = GenerateRequest(
            messages=[ChatMessage(role="user", content=prompt)],
            sampling=SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True),
        )
        chunks = [c async for c in self.router.options(stream=True).stream.remote(request)]
        return {"text": "".join(c.delta_text for c in chunks), "finished": chunks[-1].finished,
                "usage": chunks[-1].usage.model_dump() if chunks[-1].usage else None,
                "variants": sorted({c.variant for c in chunks})}


@pytest.fixture(scope="module")
def caller(serve_app: ServeApp):  # type: ignore[no-untyped-def]
    handle = serve.run(Caller.bind(), name="caller-app", route_prefix="/caller")
    yield handle
    serve.delete("caller-app")


def test_another_deployment_calls_generate(caller) -> None:  # type: ignore[no-untyped-def]
    result = caller.unary.remote("The quick brown fox").result(timeout_s=60)
    assert result["variant"] == "full" and result["model"] == "tiny:full"
    assert result["usage"]["completion_tokens"] == 8
    assert len(result["choices"][0]["token_ids"]) == 8
    assert result["timing"]["ttft_s"] > 0


def test_another_deployment_streams(caller) -> None:  # type: ignore[no-untyped-def]
    result = caller.streamed.remote("Tell me a story").result(timeout_s=60)
    assert result["finished"] and result["usage"]["completion_tokens"] == 8
    assert result["variants"] == ["full"]


def test_tp2_replica_in_serve_answers_like_tp1() -> None:
    router = serve.get_app_handle("sloserve")
    prompts = ["The quick brown fox", "What is the capital of France?", "0123456789 + - * /"]
    for prompt in prompts:
        tokens = {}
        for variant in ("full", "tp2"):
            request = GenerateRequest(prompt=prompt, variant=variant,
                                      sampling=SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True))
            response = router.generate.remote(request).result(timeout_s=120)
            assert response.variant == variant
            tokens[variant] = response.choices[0].token_ids
        assert tokens["tp2"] == tokens["full"], prompt
