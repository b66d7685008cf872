"""`EngineConfig`: everything one engine (one replica, one tensor-parallel group) needs to start.

The deployment layer builds it from the variant's section of `AppConfig`; tests and the
benchmark build it directly. Validated before any model is loaded.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DTypeName = Literal["auto", "bfloat16", "float16", "float32", "float64"]
QuantizationName = Literal["none", "torch-int8", "int8-compute", "bnb-int8", "bnb-nf4"]


def check_kv_pool(kv_cache_tokens: int, block_size: int) -> None:
    """The KV pool must hold at least one block (the app config applies the same rule)."""
    if kv_cache_tokens < block_size:
        raise ValueError(f"kv_cache_tokens ({kv_cache_tokens}) must be >= block_size ({block_size})")


class EngineConfig(BaseModel):
    """Configuration of one engine: model, precision, parallelism, KV pool and batching bounds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        default="packaged:smollm2-135m-instruct",
        min_length=1,
        description="'packaged:<name>', a local Hugging Face directory, a .gguf file, or a hub id.",
    )
    dtype: DTypeName = Field(
        default="auto",
        description="'auto': on CPU bf16 where a GEMM probe at first start measures it faster than fp32 "
        "(cached per CPU model), else fp32; on CUDA bf16 where supported, else fp16. Logits are fp32 "
        "whatever the dtype. float64 exists for exactness tests.",
    )
    device: Literal["cpu", "cuda"] = Field(default="cpu")
    quantization: QuantizationName = Field(default="none", description="Load-time compression of the weights.")
    tp_size: int = Field(default=1, ge=1, le=64, description="Tensor-parallel ranks (processes).")
    kv_cache_tokens: int = Field(default=16384, ge=16, le=16_777_216, description="KV pool capacity, tokens.")
    block_size: int = Field(default=16, ge=1, le=256, description="Tokens per KV block.")
    max_num_seqs: int = Field(default=32, ge=1, le=4096, description="Most sequences in one step.")
    max_num_batched_tokens: int = Field(
        default=512, ge=1, le=262_144, description="Most tokens in one step; longer prompts are chunked."
    )
    max_model_len: int | None = Field(
        default=None, ge=2, le=1_048_576, description="Longest prompt + output; default: the model's limit."
    )
    num_threads: int | None = Field(
        default=None, ge=1, le=1024, description="torch threads per rank (CPU); default: cores / tp_size."
    )
    master_port: int | None = Field(
        default=None, ge=1024, le=65535, description="Rendezvous port of the TP group; default: a free port."
    )
    collective_timeout_s: float = Field(
        default=120.0, ge=1.0, le=86_400.0,
        description="Longest wait of a rank in one collective; an idle group sends keep-alives at a quarter of it.",
    )
    seed: int = Field(default=0, ge=0, description="Seed for requests that give none.")
    enable_prefix_caching: bool = Field(
        default=True,
        description="Reuse the KV of full blocks whose prompt prefix was computed before (hashed by content, "
        "least recently used evicted first); requests asking for prompt logprobs always compute their prompt.",
    )
    compile: bool = Field(
        default=False,
        description="Compile the decode step with torch.compile (inductor) at engine start, warming it up "
        "for every batch size; prompt steps stay eager. Off: every step runs eagerly.",
    )

    @model_validator(mode="after")
    def _checks(self) -> EngineConfig:
        check_kv_pool(self.kv_cache_tokens, self.block_size)
        if self.quantization in ("bnb-int8", "bnb-nf4") and self.tp_size > 1:
            raise ValueError(f"quantization={self.quantization!r} does not support tp_size > 1 (got {self.tp_size})")
        return self

    @property
    def num_kv_blocks(self) -> int:
        return self.kv_cache_tokens // self.block_size
