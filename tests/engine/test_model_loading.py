"""Model sources and their errors: packaged GGUF (converted once, cached), HF dirs, bad paths, bad architectures, KV pool too big."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from inference.engine.llm_engine import LLMEngine
from inference.model.model_loader import gguf_cache_key, load_model, resolve_model_dir
from inference.schema.config.engine import EngineConfig
from inference.schema.errors import KVCacheTooSmallError, ModelSourceError, UnsupportedModelError


def test_packaged_model_is_converted_once_then_loaded_from_the_cache() -> None:
    first = resolve_model_dir("packaged:smollm2-135m-instruct")
    assert isinstance(first, Path) and (first / "model.safetensors").is_file()
    config = json.loads((first / "config.json").read_text())
    assert "quantization_config" not in config  # a plain model, not a GGUF-quantized one
    assert (first / "tokenizer.json").is_file() and (first / "chat_template.jinja").is_file()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    started = time.monotonic()
    again = resolve_model_dir("packaged:smollm2-135m-instruct")
    assert again == first and time.monotonic() - started < 1.0
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # not re-dequantized


def test_unknown_packaged_name_lists_the_known_ones() -> None:
    with pytest.raises(ModelSourceError, match="smollm2-135m-instruct"):
        resolve_model_dir("packaged:llama-70b")


def test_missing_paths_are_named(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="not found"):
        resolve_model_dir(str(tmp_path / "nope"))
    with pytest.raises(ModelSourceError, match="GGUF file not found"):
        resolve_model_dir(str(tmp_path / "model.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match=r"no config\.json"):
        resolve_model_dir(str(tmp_path / "empty"))


def test_unsupported_architecture_is_refused_by_name(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="gpt2"):
        load_model(str(tmp_path), torch.float32)


def test_a_kv_pool_larger_than_memory_is_refused_before_allocating(tmp_path: Path) -> None:
    from tests.tiny_models import make_tiny_model_dir

    # 4 layers x 4 KV heads x 16 dims x fp32 x (K and V) = 2 KiB per token: 16.7M tokens = 34 GiB
    model = make_tiny_model_dir(tmp_path, num_hidden_layers=4, num_key_value_heads=4)
    with pytest.raises(KVCacheTooSmallError, match="kv_cache_tokens"):
        LLMEngine(EngineConfig(model=str(model), dtype="float32", kv_cache_tokens=16_777_216, block_size=256))


def test_gguf_path_source_converts_like_the_packaged_one(tmp_path: Path) -> None:
    from inference.model.model_loader import packaged_gguf_path

    gguf = packaged_gguf_path("smollm2-135m-instruct")
    cache = tmp_path / "cache"
    os.environ["SLOSERVE_CACHE_DIR"] = str(cache)  # a fresh cache: this run converts
    try:
        location = resolve_model_dir(str(gguf))
        # The same file installed elsewhere (another venv, a newer mtime) is the same cache entry:
        # keyed by content, it is not converted again.
        other = tmp_path / "other-install" / gguf.name
        other.parent.mkdir()
        shutil.copyfile(gguf, other)
        started = time.monotonic()
        assert resolve_model_dir(str(other)) == location and time.monotonic() - started < 1.0
        assert [p.name for p in (cache / "models").iterdir() if p.is_dir()] == [location.name]
        # ... and a different file is another entry.
        with open(other, "r+b") as f:
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
            f.seek(-1, os.SEEK_END)
            f.write(bytes([last[0] ^ 0xFF]))
        assert gguf_cache_key(other) != gguf_cache_key(gguf)
    finally:
        del os.environ["SLOSERVE_CACHE_DIR"]
    assert isinstance(location, Path) and location.parent.parent == cache
    assert (location / "model.safetensors").is_file()
