"""`make gpu-check`'s driver (load_tests/benchmarks/gpu_check.py) without a GPU: the served config it writes is
a valid app config for the device, and its one table reports each step, errors included. The
whole run is smoke-tested by hand with `--device cpu --quick` (docs in the README)."""

from __future__ import annotations

from typing import Any

import pytest

from inference.schema.config import parse_config
from load_tests.benchmarks.gpu_check import _served_config, table


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_the_served_config_is_valid_for_the_device(device: str) -> None:
    config = parse_config(_served_config(device))
    assert [v.name for v in config.variants] == ["full", "int8-compute"]
    assert {v.device for v in config.variants} == {device}
    assert config.variants[1].quantization == "int8-compute"
    # on CUDA both replicas fit one GPU (the one-GPU box a first run usually has)
    assert sum(v.num_gpus_per_rank for v in config.variants if v.device == "cuda") in (0, 1.0)


def _report(**parts: Any) -> dict[str, Any]:
    return {"when": "2026-12-07 05:50 UTC", "device": "cuda", "device_name": "NVIDIA H100 x1, torch 2.13.0",
            "quick": False, "levels": [1, 8, 32],
            "gpu_tests": {"returncode": 0, "counts": {"passed": 4}, "seconds": 80.0, "skipped_because": []}, **parts}


def test_the_table_reports_every_step() -> None:
    speed = {"tok_s_at": {"1": 100.0, "8": 500.0, "32": 1000.0}, "tpot_ms_at": {"1": 10.0, "8": 16.0, "32": 32.0}}
    faster = {"tok_s_at": {"1": 110.0, "8": 600.0, "32": 1400.0}, "tpot_ms_at": {"1": 9.0, "8": 13.0, "32": 23.0}}
    bench: dict[str, Any] = {s: {"engine": 900.0, "hf_generate": 100.0, "speedup": 9.0}
                             for s in ("single", "uniform32", "mixed64")}
    bench.update(attention="flex", compiled=True, compile_s=42.0, dtype="bfloat16")
    text = table(_report(engine_bench=bench, served={"full": speed, "int8-compute": faster}))
    assert "NVIDIA H100 x1" in text and "| tests/gpu | 4 passed in 80.0 s (exit 0) |" in text
    assert "| engine | attention flex, decode step compiled in 42.0 s, bfloat16 |" in text
    assert "| engine uniform32, tok/s (transformers generate) | 900.0 (100.0): 9.0x |" in text
    assert "| served @32: tok/s full / int8-compute (TPOT p50 ms) | 1000.0 / 1400.0 = 1.40x (32.0 / 23.0) |" in text


def test_the_table_names_a_failed_step() -> None:
    text = table(_report(engine_bench={"error": "load_tests.benchmarks.engine exited 1 (log: x)"},
                         served={"error": "sloserve up exited 2 before serving (log: y)"}))
    assert "| engine benchmark | load_tests.benchmarks.engine exited 1 (log: x) |" in text
    assert "| served | sloserve up exited 2 before serving (log: y) |" in text
