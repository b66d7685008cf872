"""Shared fixtures: tiny random models made once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_models import make_tiny_model_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (hidden 64, 2 layers, 4 heads, 2 KV heads) with a byte-level BPE tokenizer."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))
