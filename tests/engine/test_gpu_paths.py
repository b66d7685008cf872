"""What a first CUDA run would hit, checked on CPU machines (issue 28's five defects).

- LOCAL_RANK under Ray: each rank sees only its own GPU (cuda:0), and DeepSpeed calls
  `set_device(LOCAL_RANK)`, so LOCAL_RANK is the GPU index this process sees, not the rank.
- An idle tensor-parallel group outlives its collective timeout (rank 0's keep-alive headers).
- Beam search builds its tensors on the logits' device: checked on the meta device, which refuses
  a CPU operand as CUDA does (torch's FakeTensorMode cannot run these ops with cuda tensors on a
  CPU-only build). Prompt logprobs do too (tests/gpu runs echo + logprobs on CUDA), and a failure
  there ends only its own request.
- A seeded request's generator lives on the engine's device (`multinomial` on CUDA refuses a CPU one).
- `device: cuda` where torch sees no GPU is an error naming the torch build, never a silent CPU run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inference.engine import llm_engine
from inference.engine.llm_engine import LLMEngine
from inference.parallel.worker import (
    ALLOW_CPU_FOR_CUDA_ENV,
    DeviceUnavailableError,
    distributed_env,
    select_device,
)
from inference.sampling.beam_search import candidate_scores
from inference.schema.config.engine import EngineConfig
from inference.schema.sampling import SamplingParams

CUDA = torch.device("cuda", 0)
ROOT = Path(__file__).resolve().parents[2]


def test_local_rank_is_the_gpu_this_rank_sees_not_its_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    # under Ray, CUDA_VISIBLE_DEVICES holds the rank's own GPU only: torch sees one device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    device = select_device("cuda", rank=1)
    assert device == CUDA
    env = distributed_env(1, 2, device, "10.0.0.1", 29500)
    assert env["LOCAL_RANK"] == "0" and env["RANK"] == "1" and env["WORLD_SIZE"] == env["LOCAL_SIZE"] == "2"
    # processes that see every GPU (the engine's own multiprocess path): rank 1 takes cuda:1
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed_env(1, 2, select_device("cuda", rank=1), "h", 1)["LOCAL_RANK"] == "1"
    # on CPU LOCAL_RANK stays the rank: it names the rank's shared-memory all-reduce buffer
    assert distributed_env(1, 2, torch.device("cpu"), "h", 1)["LOCAL_RANK"] == "1"


def test_cuda_where_torch_sees_no_gpu_is_an_error(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(ALLOW_CPU_FOR_CUDA_ENV, raising=False)
    build = re.escape(f"torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no CUDA device")
    with pytest.raises(DeviceUnavailableError, match=build):
        LLMEngine(EngineConfig(model=str(tiny_model_dir), device="cuda", kv_cache_tokens=256, block_size=8))
    monkeypatch.setenv(ALLOW_CPU_FOR_CUDA_ENV, "1")  # said explicitly (tests whose GPUs Ray only declares)
    assert select_device("cuda", rank=0) == torch.device("cpu")


def test_beam_scores_stay_on_the_logits_device() -> None:
    # the meta device stands in for a GPU: adding a CPU tensor to it raises, as on CUDA
    meta = torch.device("meta")
    with pytest.raises(RuntimeError, match="not on the expected device"):
        _ = torch.tensor([0.0, 1.0])[:, None] + torch.empty(2, 50, device=meta)
    scores = candidate_scores([-0.5, -1.25], torch.empty(2, 50, device=meta))
    assert scores.device == meta and scores.shape == (100,)


def test_prompt_logprobs_that_fail_end_only_their_request(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    """A request whose prompt logprobs raise (a device mismatch did on CUDA) ends alone with the
    error; the request beside it finishes and the engine keeps serving."""
    from inference.sampling import prompt_logprobs

    real = prompt_logprobs.prompt_logprob_tensors

    def failing(rows: torch.Tensor, targets: list[int], k: int) -> tuple[torch.Tensor, ...]:
        if k == 3:  # the poisoned request asks for 3
            raise RuntimeError("Expected all tensors to be on the same device")
        return real(rows, targets, k)

    monkeypatch.setattr(prompt_logprobs, "prompt_logprob_tensors", failing)
    engine = LLMEngine(EngineConfig(model=str(tiny_model_dir), kv_cache_tokens=512, block_size=8))
    try:
        bad = engine.add_request("one two three four", SamplingParams(max_tokens=4, prompt_logprobs=3, temperature=0.0))
        good = engine.add_request("five six seven", SamplingParams(max_tokens=4, prompt_logprobs=1, temperature=0.0,
                                                                    ignore_eos=True))
        final = {}
        for _ in range(100):
            if not engine.has_unfinished():
                break
            final.update({o.request_id: o for o in engine.step() if o.finished})
        assert "same device" in (final[bad].error or "")
        assert final[good].error is None and len(final[good].outputs[0].token_ids) == 4
        assert final[good].prompt_logprobs is not None
        [again] = engine.generate(["eight nine"], SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True))
        assert len(again.outputs[0].token_ids) == 2
    finally:
        engine.shutdown()


def test_a_seeded_request_samples_with_a_generator_on_the_engine_device(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    engine = LLMEngine(EngineConfig(model=str(tiny_model_dir), kv_cache_tokens=256, block_size=8))
    made: list[object] = []
    real = torch.Generator

    def generator(device: object = None) -> torch.Generator:
        made.append(device)
        return real(device="cpu")  # this machine has no CUDA generator to give

    try:
        monkeypatch.setattr(llm_engine.torch, "Generator", generator)
        engine.worker.device = CUDA  # as on a GPU replica: the logits the sampler sees live there
        engine.add_request("hello", SamplingParams(max_tokens=1, temperature=1.0, seed=7))
        assert made == [CUDA]
    finally:
        monkeypatch.undo()
        engine.worker.device = torch.device("cpu")
        engine.shutdown()


IDLE_GROUP = """
import asyncio, sys
from inference.engine.async_engine import AsyncLLMEngine
from inference.schema.config.engine import EngineConfig
from inference.schema.sampling import SamplingParams

async def run():
    engine = AsyncLLMEngine(EngineConfig(model=sys.argv[1], dtype="float32", tp_size=2, num_threads=1,
                                         kv_cache_tokens=1024, max_num_batched_tokens=16, max_num_seqs=8,
                                         collective_timeout_s=4))
    try:
        await asyncio.sleep(10)  # 2.5 collective timeouts with nothing to do
        engine.check_health()  # a peer that timed out would be dead by now
        tokens = []
        async for out in engine.generate(engine.encode("The quick brown fox"), SamplingParams(max_tokens=8, temperature=0.0,
                                                                                ignore_eos=True)):
            tokens = out.outputs[0].token_ids
        engine.check_health()
        print("tokens", len(tokens))
    finally:
        engine.shutdown()

asyncio.run(run())
"""


@pytest.mark.timeout(300)
def test_an_idle_tensor_parallel_group_outlives_its_collective_timeout(tiny_model_dir: Path) -> None:
    # its own process: DeepSpeed's CPU shared-memory all-reduce initialises once per process, so a
    # process hosts rank 0 of one CPU tensor-parallel group in its life (the other TP tests' too)
    done = subprocess.run([sys.executable, "-c", IDLE_GROUP, str(tiny_model_dir)], cwd=ROOT, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tokens 8" in done.stdout
