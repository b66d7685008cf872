"""The engine's settings, each defined once (type, bound, default, description, cross-field rule).

`EngineConfig` is everything one engine (one replica, one tensor-parallel group) needs to start;
tests and benchmarks build it directly. It is made of two parts the app config embeds as they are:
`ExecutionSettings` (dtype, device, quantization, tp_size: a variant's own keys) and `EngineSettings`
(the KV pool and batching bounds: a variant's `engine:` section). Validated before any model loads.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from inference.schema.config.base import DEFAULT_MODEL, StrictModel

DType = Literal["auto", "bfloat16", "float16", "float32", "float64"]
Device = Literal["cpu", "cuda"]
Attention = Literal["auto", "flex", "sdpa"]
DEFAULT_CPU_KV_TOKENS = 16384
Quantization = Literal["none", "torch-int8", "int8-compute", "fp8-compute", "bnb-int8", "bnb-nf4"]

ModelSource = Annotated[
    str,
    Field(min_length=1, description="'packaged:<name>', a local Hugging Face directory, a .gguf file, or a hub id."),
]
MaxModelLen = Annotated[int, Field(ge=2, le=1_048_576, description="Longest prompt + output, in tokens.")]
ChatTemplate = Annotated[str, Field(
    min_length=1, max_length=262_144,
    description="A Jinja chat template replacing the model's own (e.g. one that renders `tools`).")]


class ExecutionSettings(StrictModel):
    """How the weights are loaded and where the ranks run: precision, compression, device, parallelism."""

    quantization: Quantization = Field(
        default="none", description="Load-time compression of the weights (for a model that is not already compressed)."
    )
    dtype: DType = Field(
        default="auto",
        description="'auto': on CPU bf16 where a GEMM probe at first start measures it faster than fp32 "
        "(cached per CPU model), else fp32; on CUDA bf16 where supported, else fp16. Logits are fp32 "
        "whatever the dtype. float64 exists for exactness tests.",
    )
    device: Device = Field(default="cpu", description="Where the ranks run.")
    tp_size: int = Field(default=1, ge=1, le=64, description="Tensor-parallel ranks (processes) of one engine.")

    @model_validator(mode="after")
    def _quantization_fits_tp(self) -> Self:
        if self.quantization in ("bnb-int8", "bnb-nf4") and self.tp_size > 1:
            raise ValueError(f"quantization={self.quantization!r} does not support tp_size > 1 (got {self.tp_size})")
        return self


class EngineSettings(StrictModel):
    """The KV pool and batching bounds of one engine (a variant's `engine:` section)."""

    kv_cache_tokens: int | None = Field(
        default=None, ge=16, le=16_777_216,
        description=f"KV pool capacity in tokens, preallocated per engine. Default: on CPU {DEFAULT_CPU_KV_TOKENS}; "
        "on CUDA what fits in `gpu_memory_utilization` of the GPU after the weights and a measured "
        "step's activations.",
    )
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0.0, le=0.99,
        description="CUDA: the share of the GPU's memory this engine may use in all (weights, activations, "
        "KV pool); sizes the pool when kv_cache_tokens is not given (vLLM's meaning).",
    )
    block_size: int = Field(default=16, ge=1, le=256, description="Tokens per KV block.")
    max_num_seqs: int = Field(default=32, ge=1, le=4096, description="Most sequences in one step.")
    max_num_batched_tokens: int = Field(
        default=512, ge=1, le=262_144,
        description="Most tokens in one step (>= max_num_seqs); longer prompts are chunked.",
    )
    attention: Attention = Field(
        default="auto",
        description="'flex': torch FlexAttention reads the KV pool in place for decodes and prompt chunks "
        "(one compiled kernel per layer); 'sdpa': decodes through the CPU paged kernel (on CPU) or a "
        "gather + SDPA, prompt chunks through SDPA; 'auto': flex on CUDA, sdpa on CPU (measured faster "
        "there, docs/engine-step.md).",
    )
    cuda_graphs: bool = Field(
        default=True,
        description="CUDA with attention flex: decode-only steps are padded to batch-size buckets and replayed "
        "from CUDA graphs (captured at start-up); off: every step is launched eagerly.",
    )

    @model_validator(mode="after")
    def _pool_and_step_fit(self) -> Self:
        if self.kv_cache_tokens is not None and self.kv_cache_tokens < self.block_size:
            raise ValueError(f"kv_cache_tokens ({self.kv_cache_tokens}) must be >= block_size ({self.block_size})")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs "
                f"({self.max_num_seqs}): a step holds one token of every running sequence"
            )
        return self


class EngineConfig(ExecutionSettings, EngineSettings):
    """Configuration of one engine: model, precision, parallelism, KV pool and batching bounds."""

    model_config = ConfigDict(frozen=True)

    model: ModelSource = DEFAULT_MODEL
    max_model_len: MaxModelLen | None = Field(
        default=None, description="Longest prompt + output, in tokens; default: the model's limit."
    )
    chat_template: ChatTemplate | None = None
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
