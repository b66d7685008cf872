"""On a CUDA machine: FlexAttention over the paged pool with CUDA-graph decode steps against the
SDPA path, the KV pool sized from gpu_memory_utilization, int8-compute, guided decoding, and a TP=2
replica served through Ray Serve (rank 1 a Ray actor holding its own GPU). Skipped elsewhere, naming why."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch

from inference.engine.llm_engine import LLMEngine
from inference.schema.config.engine import EngineConfig
from inference.schema.sampling import SamplingParams
from tests.serve.conftest import free_port

PROMPTS = ["The quick brown fox " * k for k in (3, 1, 7, 2, 5, 3)]


def _greedy(model: Path, **settings: object) -> tuple[list[list[int]], LLMEngine]:
    engine = LLMEngine(EngineConfig(model=str(model), device="cuda", dtype="float32", kv_cache_tokens=2048,
                                    max_num_batched_tokens=32, max_num_seqs=4, **settings))  # type: ignore[arg-type]
    try:
        outs = engine.generate(PROMPTS, SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True))
        return [o.outputs[0].token_ids for o in outs], engine
    finally:
        engine.shutdown()


@pytest.mark.timeout(900)
def test_flex_attention_with_cuda_graphs_gives_the_sdpa_paths_tokens(tiny_model_dir: Path) -> None:
    sdpa, _ = _greedy(tiny_model_dir, attention="sdpa")
    flex, engine = _greedy(tiny_model_dir, attention="auto")  # flex on CUDA, decode steps from CUDA graphs
    runner = engine.worker.runner
    assert runner is not None and runner.flex and runner.bucketed is not None and runner.bucketed.cuda_graphs
    assert flex == sdpa


def test_kv_pool_sized_from_gpu_memory_utilization(tiny_model_dir: Path) -> None:
    engine = LLMEngine(EngineConfig(model=str(tiny_model_dir), device="cuda", dtype="float32",
                                    gpu_memory_utilization=0.3))
    try:
        runner = engine.worker.runner
        assert runner is not None and runner.kv_cache is not None
        _free, total = torch.cuda.mem_get_info(engine.worker.device)
        pool_bytes = engine.info.num_kv_blocks * runner.block_bytes
        assert 0 < pool_bytes <= 0.3 * total
        [out] = engine.generate(["The quick brown fox"], SamplingParams(max_tokens=8, temperature=0.0))
        assert len(out.outputs[0].token_ids) == 8
    finally:
        engine.shutdown()


def test_int8_compute_on_cuda_runs_int_mm(tiny_model_dir: Path) -> None:
    engine = LLMEngine(EngineConfig(model=str(tiny_model_dir), device="cuda", dtype="bfloat16",
                                    quantization="int8-compute", kv_cache_tokens=1024))
    try:
        runner = engine.worker.runner
        assert runner is not None
        backends = {getattr(m, "backend", None) for layer in runner.layers for m in layer.modules()}
        assert "_int_mm" in backends
        [out] = engine.generate(["The quick brown fox"], SamplingParams(max_tokens=8, temperature=0.0))
        assert len(out.outputs[0].token_ids) == 8
    finally:
        engine.shutdown()


@pytest.mark.min_cuda_devices(2)
@pytest.mark.timeout(900)
def test_tp2_replica_served_through_ray_serve(tiny_model_dir: Path) -> None:
    import ray
    from ray import serve

    from deployments.app import build_app
    from deployments.replica.tp_group import replica_placements
    from inference.schema.config import parse_config

    engine = {"kv_cache_tokens": 2048, "max_num_seqs": 8, "max_num_batched_tokens": 64}
    config = parse_config({
        "model": {"source": str(tiny_model_dir), "name": "tiny"},
        "variants": [{"name": "tp", "device": "cuda", "dtype": "float32", "tp_size": 2, "num_cpus_per_rank": 1,
                      "num_replicas": 1, "engine": engine}],
        "router": {"max_in_flight": 16, "affinity": "none"},
    })
    port = free_port()
    ray.init(num_gpus=2, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(config), name="sloserve", route_prefix="/")
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=120, json={
            "model": "tiny", "prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0})
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] == 8
        [ranks] = replica_placements("sloserve", "llm-tp", 1).values()
        # each rank holds one GPU of its own, which it sees as cuda:0
        assert [r.device for r in ranks] == ["cuda:0", "cuda:0"]
        assert len({r.gpu_ids for r in ranks}) == 2
    finally:
        serve.shutdown()
        ray.shutdown()


def test_guided_decoding_on_cuda(tiny_model_dir: Path) -> None:
    """The grammar's token bitmask is applied to logits on the GPU (xgrammar's CUDA/torch path)."""
    import json
    import re

    from inference.schema.guided import GuidedDecoding

    engine = LLMEngine(EngineConfig(model=str(tiny_model_dir), device="cuda", dtype="float32", kv_cache_tokens=2048))
    try:
        schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
        outs = engine.generate(["Give me JSON:", "Pick:"], [
            SamplingParams(max_tokens=40, temperature=0.0, guided=GuidedDecoding("json", json.dumps(schema))),
            SamplingParams(max_tokens=20, temperature=1.0, seed=2,
                           guided=GuidedDecoding("regex", r"[0-9]{3}-[a-c]{2}", "guided_regex")),
        ])
        assert isinstance(json.loads(outs[0].outputs[0].text)["ok"], bool)
        assert re.fullmatch(r"[0-9]{3}-[a-c]{2}", outs[1].outputs[0].text)
    finally:
        engine.shutdown()


def test_fp8_compute_on_cuda_runs_scaled_mm_or_is_refused_with_the_reason(tiny_model_dir: Path) -> None:
    from inference.schema.errors import UnsupportedModelError

    config = EngineConfig(model=str(tiny_model_dir), device="cuda", dtype="bfloat16", quantization="fp8-compute",
                          kv_cache_tokens=1024)
    if torch.cuda.get_device_capability() < (8, 9):
        with pytest.raises(UnsupportedModelError, match="needs FP8 tensor cores"):
            LLMEngine(config)
        return
    engine = LLMEngine(config)
    try:
        runner = engine.worker.runner
        assert runner is not None
        assert {getattr(m, "backend", None) for layer in runner.layers for m in layer.modules()} >= {"_scaled_mm"}
        [out] = engine.generate(["The quick brown fox"], SamplingParams(max_tokens=8, temperature=0.0))
        assert len(out.outputs[0].token_ids) == 8
    finally:
        engine.shutdown()
