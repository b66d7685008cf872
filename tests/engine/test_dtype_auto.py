"""`dtype: auto` on CPU is chosen by measurement (a GEMM probe, cached per CPU model), not by a CPU flag,
and whatever the compute dtype the logits are fp32."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inference.engine.llm_engine import LLMEngine
from inference.model.dtypes import choose_cpu_dtype, cpu_dtype_choice, dtype_choice
from inference.schema.config.engine import EngineConfig
from inference.schema.sampling import SamplingParams

ROOT = Path(__file__).resolve().parents[2]


def test_the_intel_kinds_timings_choose_fp32_though_the_cpu_has_avx512_bf16() -> None:
    # measured there (issue 26): bf16 GEMMs slower than fp32 at both sizes
    dtype, reason = choose_cpu_dtype({"fp32_decode": 0.057, "bf16_decode": 0.114, "fp32_batch": 0.39, "bf16_batch": 0.56})
    assert dtype == "float32" and "0.50x" in reason


def test_bf16_only_where_it_is_clearly_faster_at_both_sizes() -> None:
    assert choose_cpu_dtype({"fp32_decode": 1.0, "bf16_decode": 0.5, "fp32_batch": 1.0, "bf16_batch": 0.2})[0] == "bfloat16"
    # faster at one size only, or by less than the margin: fp32, which is exact
    assert choose_cpu_dtype({"fp32_decode": 1.0, "bf16_decode": 0.5, "fp32_batch": 1.0, "bf16_batch": 1.2})[0] == "float32"
    assert choose_cpu_dtype({"fp32_decode": 1.0, "bf16_decode": 0.95, "fp32_batch": 1.0, "bf16_batch": 0.95})[0] == "float32"


def test_auto_is_measured_once_then_read_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLOSERVE_CACHE_DIR", str(tmp_path))
    cpu_dtype_choice.cache_clear()
    try:
        choice = dtype_choice("auto", torch.device("cpu"))
    finally:
        cpu_dtype_choice.cache_clear()
    [cached] = list((tmp_path / "dtype").glob("*.json"))
    record = json.loads(cached.read_text())
    assert record["dtype"] == choice.dtype in ("float32", "bfloat16")
    assert set(record["timings_ms"]) == {"fp32_decode", "bf16_decode", "fp32_batch", "bf16_batch"}
    assert all(t > 0 for t in record["timings_ms"].values())
    assert choose_cpu_dtype(record["timings_ms"])[0] == choice.dtype  # the rule applied to what it measured
    assert choice.summary().startswith(choice.dtype) and "fp32" in choice.summary()
    # another process (a replica starting later) reads the choice instead of measuring: edit the
    # cached record and see the edit come back
    record["reason"] = "edited to show the cache is read"
    cached.write_text(json.dumps(record))
    code = "import torch; from inference.model.dtypes import dtype_choice; print(dtype_choice('auto', torch.device('cpu')).reason)"
    env = {**os.environ, "SLOSERVE_CACHE_DIR": str(tmp_path)}
    threads = f"torch.set_num_threads({torch.get_num_threads()}); "  # the cache is per thread count
    out = subprocess.run([sys.executable, "-c", code.replace("from inference", threads + "from inference", 1)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "edited to show the cache is read"


def test_a_dtype_set_in_the_config_is_not_measured() -> None:
    choice = dtype_choice("bfloat16", torch.device("cpu"))
    assert (choice.dtype, choice.reason, choice.timings_ms) == ("bfloat16", "set in the config", {})


def test_a_bf16_model_samples_from_fp32_logits(tiny_model_dir: Path) -> None:
    """bf16 logits of magnitude 16-32 are 0.125 apart and can tie; the runner's LM head computes in
    fp32 from bf16 hidden states, and greedy picks the argmax of those fp32 logits."""
    engine = LLMEngine(EngineConfig(model=str(tiny_model_dir), dtype="bfloat16", kv_cache_tokens=512, block_size=8))
    try:
        runner = engine.worker.runner
        assert runner is not None and runner.dtype == torch.bfloat16
        hidden = torch.randn(5, int(runner.config.hidden_size))
        logits = runner.lm_head(hidden)
        assert logits.dtype == torch.float32
        assert engine.info.dtype_choice.reason == "set in the config"
        [out] = engine.generate(["Hello there"], SamplingParams(max_tokens=4, temperature=0.0, logprobs=3,
                                                                ignore_eos=True))
        for token, lp in zip(out.outputs[0].token_ids, out.outputs[0].logprobs or [], strict=True):
            assert lp.logprob == max(lp.top.values()) and token in lp.top  # greedy: the top fp32 logit
    finally:
        engine.shutdown()
