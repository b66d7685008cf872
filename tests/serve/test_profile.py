"""`python -m load_tests profile`'s measurement through the served stack, on the tiny-model app; and its
argument checks, which fail before anything starts."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from inference.schema.manifest import SpeedProfile
from load_tests.profile import profile_variant
from tests.serve.conftest import ServeApp

ROOT = Path(__file__).resolve().parents[2]


def test_profile_measures_each_concurrency_of_a_pinned_variant(serve_app: ServeApp) -> None:
    profile = asyncio.run(profile_variant(serve_app.base_url, f"{serve_app.model_name}:full", [1, 2],
                                          input_len=8, output_len=6, log=lambda _: None))
    assert isinstance(profile, SpeedProfile)
    assert set(profile.tok_s_at) == set(profile.tpot_ms_at) == set(profile.ttft_ms_at) == {"1", "2"}
    assert profile.tok_s_bs1 == profile.tok_s_at["1"] > 0
    assert all(v > 0 for v in profile.tpot_ms_at.values())


def test_profile_names_variants_missing_from_the_quality_manifest(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "load_tests", "profile", "--config", str(ROOT / "cluster/configs/local.yaml"),
         "--quality", str(ROOT / "load_tests/traces/example_manifest.json"), "--quality-map", "int8-compute=w8a8",
         "--out", str(tmp_path / "m.json")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "no entry for ['int8-compute (-> w8a8)']" in result.stderr, result.stderr
    assert not (tmp_path / "m.json").exists()
