"""The SLO controller on a real local cluster, bounded (about 3 minutes, loopback only).

Two variants whose speeds differ several-fold, made here: `full`, a random Llama of 48 layers, and
`fast`, a compressed copy keeping 4 of its layers (the compression package's layer surgery). The
manifest is measured here with the compression package's quality and speed functions. `sloserve
up` runs them with the controller; the load-test tool replays a step trace (low, high, low) twice:
with the controller (the router splits by its weights), then pinned to `full` alone. The
controller must shift traffic to `fast` in the high phase and back to `full` after it, and the
controller run must attain the SLO more often than the full-only run.

Rates are multiples of `full`'s measured capacity under the SLO, so the test keeps its margins on
a slower or busier machine: the high phase is several times what `full` can carry, and a small
share of what `fast` can. `SLOSERVE_E2E_OUT=DIR` keeps both load-test reports, with plots.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from load_tests.sloserve_process import sloserve_up
from tests.serve.conftest import free_port, wait_until
from tests.tiny_models import make_tiny_model_dir

ROOT = Path(__file__).resolve().parents[2]
LAYERS_FULL, LAYERS_FAST = 48, 4
SLO_MS = {"ttft_p95_ms": 1500.0, "tpot_p95_ms": 250.0}
OUTPUT_TOKENS = 32
PHASES_S = (8.0, 22.0, 25.0)  # low, high, low
LOW, HIGH = 0.2, 2.5  # multiples of full's capacity under the SLO (from the measured manifest)
# Small replicas keep the rates, and so the serving path's per-request CPU (which both variants
# share on a 2-core machine), low: full runs 2 requests at a time, fast 16.
ENGINE = {"kv_cache_tokens": 8192, "block_size": 16, "max_num_seqs": 2, "max_num_batched_tokens": 256}
FAST_ENGINE = ENGINE | {"max_num_seqs": 16}


def _make_variants(root: Path) -> tuple[Path, Path]:
    """`full` (random, 48 layers) and `fast` (4 evenly spaced layers of it, like a distilled student)."""
    from inference.compression.base import load_base_model, save_variant
    from inference.compression.surgery import evenly_spaced_layers, keep_layers_
    from inference.schema.variant_recipe import VariantRecipe

    full = make_tiny_model_dir(root / "full", num_hidden_layers=LAYERS_FULL, hidden_size=256,
                               intermediate_size=1024, max_position_embeddings=512)
    model = keep_layers_(load_base_model(full), evenly_spaced_layers(LAYERS_FULL, LAYERS_FAST))
    recipe = VariantRecipe("layer-drop", {"layers_kept": LAYERS_FAST})
    save_variant(model, full, root / "fast", recipe, model.dtype)
    return full, root / "fast"


def _measure_manifest(full: Path, fast: Path, path: Path) -> dict[str, Any]:
    """variants.json of the two, measured on this machine as the replicas run (one thread each)."""
    import torch
    from transformers import AutoTokenizer

    from inference.compression.base import count_params, load_base_model, weight_bytes_on_disk
    from inference.compression.quality import build_reference, compare_to_reference
    from inference.compression.speed import measure_variant_speed
    from inference.data import load_prompts
    from inference.schema.manifest import QualityMetrics, VariantEntry, VariantManifest

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(full)
    reference = build_reference(load_base_model(full), tokenizer, load_prompts("eval")[:6], max_new_tokens=16)
    entries = []
    for name, directory, method in (("full", full, "none"), ("fast", fast, "layer-drop")):
        model = load_base_model(directory)
        agreement, kl = compare_to_reference(model, reference)
        speed = measure_variant_speed(directory, "none", (1, 2, 4), max_tokens=OUTPUT_TOKENS, num_threads=1)
        entries.append(VariantEntry(
            name=name, method=method, path=str(directory), params=count_params(model),
            bytes=weight_bytes_on_disk(directory), quality=QualityMetrics(agreement=agreement, kl=kl),
            speed=speed.profile(),
        ))
    VariantManifest(base="tiny-24l", hardware="measured by the e2e test", variants=entries).save(path)
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def _config(full: Path, fast: Path, directory: Path) -> Path:
    config = {
        "model": {"source": str(full), "name": "tiny", "max_model_len": 512},
        "variants": [
            {"name": "full", "dtype": "float32", "weight": 1.0, "engine": ENGINE},
            {"name": "fast", "source": str(fast), "dtype": "float32", "weight": 0.0, "engine": FAST_ENGINE},
        ],
        # Spilling over off: with `full`'s 2 slots the router would answer the step (and much of the
        # low phase) from `fast` before the controller moves a weight, and the switches this test
        # times would not show. Spilling has its own test (tests/serve/test_spill_over.py).
        "router": {"max_in_flight": 256, "request_timeout_s": 120, "spill_over": False},
        "slo": {"default_class": "interactive", "classes": {"interactive": SLO_MS}},
        "controller": {
            "enabled": True, "manifest": "variants.json",  # next to the config file
            "interval_s": 1.0, "window_s": 10.0, "recent_window_s": 3.0, "min_samples": 8,
            "restore_hold_s": 4.0, "restore_step": 0.5, "max_total_replicas": 2,
            # the time scale of a 55-s trace: restores are sized on the long-run rate too, whose time
            # constant is max(scale_down_hold_s, window_s); at the default (minutes) the restore after
            # the trace would take minutes
            "scale_down_hold_s": 15.0,
            # random weights: `fast` agrees with `full` on no token, so quality is kept out of this test
            "quality_floor": 0.0, "quality_budget": 1.0,
        },
    }
    path = directory / "slo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _full_capacity_rps(config_path: Path) -> float:
    from deployments.controller.slo_controller import load_manifest
    from deployments.slo.capacity import capacities
    from deployments.slo.settings import PolicyInputs
    from inference.schema.config import load_config

    config = load_config(config_path)
    _, manifest = load_manifest(config, config_path)
    inputs = PolicyInputs.of(config)
    return capacities(manifest, inputs.variants, inputs.slo, mean_output_tokens=OUTPUT_TOKENS)["full"].rps


@contextmanager
def _sloserve_up(config: Path, port: int, log: Path) -> Iterator[str]:
    with sloserve_up(config, port, log, ready_timeout_s=180):
        yield f"http://127.0.0.1:{port}"


def _run_trace(base_url: str, model: str, rates: tuple[float, float], result_dir: Path | None) -> dict[str, Any]:
    from load_tests.config import GoodputTargets, RunConfig
    from load_tests.gen.arrivals import TracePhase, TraceSpec
    from load_tests.run_command import execute

    low, high = rates
    phases = [TracePhase(duration_s=d, rate=r) for d, r in zip(PHASES_S, (low, high, low), strict=True)]
    config = RunConfig(
        base_url=base_url, model=model, trace=TraceSpec(name="step", phases=phases), input_len=24,
        output_len=OUTPUT_TOKENS, ignore_eos=True, seed=7, drain_timeout_s=10.0, request_timeout_s=60.0,
        slo=GoodputTargets(ttft_ms=SLO_MS["ttft_p95_ms"], tpot_ms=SLO_MS["tpot_p95_ms"]),
        result_dir=result_dir, plots=result_dir is not None, quiet=True,
    )
    _, analysis = execute(config)
    return analysis.summary


@pytest.mark.timeout(420)
def test_controller_shifts_to_the_fast_variant_in_a_step_and_beats_full_alone(tmp_path: Path) -> None:
    full, fast = _make_variants(tmp_path / "variants")
    manifest = _measure_manifest(full, fast, tmp_path / "variants.json")
    config = _config(full, fast, tmp_path)
    capacity = _full_capacity_rps(config)
    rates = (round(LOW * capacity, 2), round(HIGH * capacity, 2))
    out = Path(os.environ["SLOSERVE_E2E_OUT"]) if os.environ.get("SLOSERVE_E2E_OUT") else None
    print(f"\nmanifest: {json.dumps([{k: v[k] for k in ('name', 'quality', 'speed')} for v in manifest['variants']])}")
    print(f"full capacity under the SLO {capacity:.2f} req/s; trace rates (low, high) {rates}")

    with _sloserve_up(config, free_port(), tmp_path / "up.log") as base_url:
        with_controller = _run_trace(base_url, "tiny", rates, out / "controller" if out else None)
        events = with_controller["switch_events"]
        assert wait_until(lambda: httpx.get(f"{base_url}/controller/decisions").json()["weights"]["full"] == 1.0,
                          60), httpx.get(f"{base_url}/controller/decisions").json()
        log = httpx.get(f"{base_url}/controller/decisions").json()["decisions"]
        full_only = _run_trace(base_url, "tiny:full", rates, out / "full-only" if out else None)
    if out:
        (out / "controller" / "decisions.json").write_text(json.dumps(log, indent=1))

    def brief(s: dict[str, Any]) -> dict[str, Any]:
        return {"attainment": s["slo_attainment"], "completed": s["completed"], "failed": s["failed"],
                "shares": {v: round(g["share"], 3) for v, g in s["variants"].items()}}

    switches = [(round(e["time_s"], 1), e["from_variant"], e["to_variant"], e["reason"]) for e in events if e["is_switch"]]
    print("decisions:\n" + "\n".join(f"  {d['reason']}: {d['detail']}" for d in log))
    print(f"with controller: {brief(with_controller)}\nswitches (s, from, to, reason): {switches}")
    print(f"full only:       {brief(full_only)}")
    low_s, high_s = PHASES_S[0], PHASES_S[0] + PHASES_S[1]
    to_fast = [t for t, _, to, _ in switches if to == "fast"]
    back = [t for t, _, to, _ in switches if to == "full"]
    assert to_fast and low_s <= to_fast[0] <= low_s + 10, switches  # within seconds of the step up
    # back to full once the load fell: all of it within 60 s of the trace's end (asserted above). The restore
    # is gradual (the calm rate it plans with decays over the latency window), so the majority may flip back
    # only after the trace; when it flips inside it, it is after the step down.
    assert not back or (back[-1] > high_s and back[-1] > to_fast[0]), switches
    assert with_controller["variants"]["fast"]["share"] > 0.3
    assert with_controller["slo_attainment"] >= full_only["slo_attainment"] + 0.15
