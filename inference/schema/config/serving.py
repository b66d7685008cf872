"""The serving sections: the base model, each variant (engine, placement, replicas), the router and
where the cluster runs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import Field, model_validator

from inference.schema.config.base import API_KEYS_ENV, DEFAULT_MODEL, StrictModel
from inference.schema.config.engine import (
    ChatTemplate,
    EngineSettings,
    ExecutionSettings,
    MaxModelLen,
    ModelSource,
)


class ModelConfig(StrictModel):
    """The base model every variant derives from."""

    source: ModelSource = DEFAULT_MODEL
    name: str = Field(
        default="smollm2-135m-instruct",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="Public model name in the OpenAI API (`model` field); variants answer as '<name>:<variant>'.",
    )
    max_model_len: MaxModelLen = Field(default=2048, description="Longest prompt + output, in tokens, a request may use.")
    chat_template: ChatTemplate | None = Field(
        default=None,
        description="A Jinja chat template (inline, e.g. a YAML block) replacing the model's own for every "
        "variant; one that mentions `tools` renders them itself (README, tool calling).")


class VariantConfig(ExecutionSettings):
    """One served variant: a Serve deployment of replicas of one (possibly compressed) model. Its engine
    keys are the engine's own: `dtype`, `device`, `quantization`, `tp_size` (`ExecutionSettings`) and the
    `engine:` section (`EngineSettings`)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$", description="Variant name, e.g. 'full', 'int8'.")
    source: str | None = Field(
        default=None,
        description="Model of this variant (a variant directory, e.g. one `sloserve compress` wrote); a path "
        "starting with './' or '../' is read beside the config file; default: model.source.",
    )
    num_cpus_per_rank: float = Field(
        default=1.0, ge=0.0, le=256.0,
        description="CPUs reserved per rank (its placement group bundle); >= 1 with tp_size > 1, > 0 on CPU.",
    )
    num_gpus_per_rank: float = Field(
        default=1.0, gt=0.0, le=1.0,
        description="CUDA: the GPU share each rank reserves; below 1, replicas of tp_size 1 share a GPU (Ray's "
        "fractional GPUs): give each a gpu_memory_utilization within its share, or kv_cache_tokens.",
    )
    num_replicas: int = Field(
        default=1, ge=0, le=1024,
        description="Replicas at start; deploying needs >= 1 (the controller may scale to min_replicas).",
    )
    min_replicas: int = Field(default=1, ge=0, le=1024, description="Lower bound for the controller.")
    max_replicas: int = Field(default=1, ge=1, le=1024, description="Upper bound for the controller.")
    weight: float = Field(default=1.0, ge=0.0, le=1.0, description="Initial share of traffic.")
    max_ongoing_requests: int = Field(
        default=64, ge=1, le=4096, description="Requests one replica accepts at once (Serve's bound)."
    )
    engine: EngineSettings = Field(default_factory=EngineSettings)

    @model_validator(mode="after")
    def _replica_bounds(self) -> VariantConfig:
        if not self.min_replicas <= self.num_replicas <= self.max_replicas:
            raise ValueError(
                f"variant {self.name!r}: need min_replicas <= num_replicas <= max_replicas, "
                f"got {self.min_replicas} <= {self.num_replicas} <= {self.max_replicas}"
            )
        if self.tp_size > 1 and self.num_cpus_per_rank < 1:
            raise ValueError(
                f"variant {self.name!r}: num_cpus_per_rank ({self.num_cpus_per_rank:g}) must be >= 1 with "
                f"tp_size {self.tp_size}: each rank is a process running torch, placed in its own bundle"
            )
        if self.device == "cpu" and self.num_cpus_per_rank <= 0:
            raise ValueError(
                f"variant {self.name!r}: num_cpus_per_rank must be > 0 on device 'cpu' (got "
                f"{self.num_cpus_per_rank:g}): a rank's placement group bundle must reserve something"
            )
        if self.num_gpus_per_rank < 1 and self.tp_size > 1:
            raise ValueError(
                f"variant {self.name!r}: num_gpus_per_rank ({self.num_gpus_per_rank:g}) below 1 needs tp_size 1 "
                f"(got {self.tp_size}): the ranks of a tensor-parallel group each hold a GPU of their own")
        if (self.device == "cuda" and self.num_gpus_per_rank < 1 and self.engine.kv_cache_tokens is None
                and self.engine.gpu_memory_utilization > self.num_gpus_per_rank):
            raise ValueError(
                f"variant {self.name!r}: engine.gpu_memory_utilization ({self.engine.gpu_memory_utilization:g}) "
                f"exceeds its GPU share num_gpus_per_rank ({self.num_gpus_per_rank:g}): replicas sharing a GPU "
                "would each size their KV pool for most of it; set gpu_memory_utilization within the share")
        if self.quantization.startswith("bnb") and self.source is not None:
            raise ValueError(
                f"variant {self.name!r}: quantization={self.quantization!r} applies at load time to "
                "model.source; a variant directory (source) is already compressed"
            )
        return self


class RouterConfig(StrictModel):
    """The ingress: admission, variant choice, replica choice."""

    max_in_flight: int = Field(
        default=64, ge=1, le=100_000, description="Requests admitted at once; past it the router answers 429."
    )
    retry_after_s: int = Field(default=1, ge=1, le=3600, description="Retry-After sent with 429.")
    request_timeout_s: float = Field(
        default=300.0, gt=0.0, le=86400.0, description="A request running longer gets 504 and is aborted."
    )
    affinity: Literal["session", "prefix", "none"] = Field(
        default="prefix",
        description="Replica choice: by x-session-id, else by prompt-prefix hash ('prefix'), or never.",
    )
    prefix_blocks: int = Field(
        default=4, ge=1, le=4096,
        description="Prefix affinity hashes the prompt's first this many full KV blocks (model.block_size "
        "tokens each; text prompts: 4 characters a token, the router has no tokenizer); a shorter prompt "
        "gets no prefix key and goes to a less loaded replica.",
    )
    affinity_max_load_gap: int = Field(
        default=4, ge=0, le=100_000,
        description="A request with an affinity key (session or prefix) goes to its preferred replica unless "
        "that replica has more than this many requests in flight above the least loaded one (Serve's "
        "queue-length view); then the least loaded takes it. 0: any imbalance breaks affinity.",
    )
    spill_over: bool = Field(
        default=True,
        description="A request for a variant (by weight, not named by the client) whose ready replicas have "
        "every batch slot (engine.max_num_seqs; a request takes n) taken goes to the variant with a free slot "
        "that has the most weight, instead of queueing. Each router replica counts its own requests and takes "
        "its share (1 / num_replicas) of the slots.",
    )
    num_replicas: int = Field(default=1, ge=1, le=64, description="Router replicas.")
    api_keys_env: str | None = Field(
        default=API_KEYS_ENV,
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        max_length=128,
        description="Environment variable holding comma-separated API keys. When it holds a key, every HTTP "
        "request but /health needs 'Authorization: Bearer <key>' (else 401); unset or empty: no keys. "
        "null: never read. In Kubernetes it is filled from the Secret (kubernetes.secrets).",
    )
    protect_ops_endpoints: bool = Field(
        default=True,
        description="With API keys set, /metrics, /controller/decisions, /v1/sloserve/stats and the OpenAPI "
        "docs need a key too; false leaves them open.",
    )
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, le=1024**3,
        description="Largest HTTP request body; a larger one gets 413 before it is read.",
    )
    max_prompt_chars: int = Field(
        default=262_144, ge=16, le=64 * 1024**2,
        description="Most characters in a prompt (all chat messages together), or token ids in a token "
        "prompt; checked before tokenizing (400).",
    )

    def api_keys(self, environ: Mapping[str, str] | None = None) -> frozenset[str]:
        """The API keys from `api_keys_env` (comma-separated, blanks ignored); empty: no authentication."""
        if self.api_keys_env is None:
            return frozenset()
        raw = (os.environ if environ is None else environ).get(self.api_keys_env, "")
        return frozenset(key.strip() for key in raw.split(",") if key.strip())


# Ray Serve's own switches (ray/serve/_private/constants.py, read once per process at import). Together
# they are its "throughput optimized" mode without direct ingress (which moves HTTP to per-replica ports)
# and without its logging changes (replica logs stay on stderr, access logs unbuffered).
SERVE_FAST_PATH_ENV: dict[str, str] = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",  # user code on the replica's loop: no thread hop per call/chunk
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",  # a handle routes on its caller's loop
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",  # deployment-to-deployment calls and streams over gRPC
}


class ClusterConfig(StrictModel):
    """Where it runs: the local Ray or an existing cluster, and the HTTP endpoint."""

    address: str | None = Field(default=None, description="Ray address; none starts a local Ray.")
    http_host: str = Field(default="127.0.0.1", description="Serve HTTP host.")
    http_port: int = Field(default=8000, ge=1, le=65535, description="Serve HTTP port.")
    num_cpus: int | None = Field(default=None, ge=1, le=4096, description="CPUs of a local Ray (default: all).")
    app_name: str = Field(default="sloserve", pattern=r"^[a-z0-9][a-z0-9-]{0,46}$")
    route_prefix: str = Field(default="/", pattern=r"^/")
    graceful_shutdown_timeout_s: float = Field(
        default=30.0, ge=0.0, le=3600.0,
        description="On a redeploy or scale-down a replica takes no new requests and lets those in flight finish "
        "for up to this long (graceful drain) before it stops.",
    )
    max_surge_percent: int = Field(
        default=100, ge=0, le=100,
        description="Extra replicas (% of each deployment's count) during a redeploy: replacements start and "
        "become ready before old replicas stop, so a redeploy never leaves a deployment without one.",
    )
    serve_fast_path: bool = Field(
        default=True,
        description="Ray Serve's low-latency settings in every Ray process (SERVE_FAST_PATH_ENV): user code and "
        "handle routing on the process's own event loop, gRPC between deployments (measured in "
        "docs/serving-path.md). Serve reads them at process start: `sloserve up`, `profile` and the k8s pods "
        "set them; an existing cluster (`sloserve deploy --address`) must have been started with them.",
    )

    def ray_env(self) -> dict[str, str]:
        """Environment variables every Ray process of this deployment should start with."""
        return dict(SERVE_FAST_PATH_ENV) if self.serve_fast_path else {}
