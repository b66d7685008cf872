"""The variant manifest (`variants.json`): what is known, by measurement, about each variant.

It is the SLO controller's only source of truth about variants: size, quality against the full
model and speed on the hardware that serves it. Written by `sloserve compress`, read by the
controller, the simulator and the app builder. Pure pydantic: importing it pulls in no torch.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from inference.schema.validation import describe_validation_error


class ManifestError(ValueError):
    """A manifest file is missing, not JSON, or does not match the schema (the message names the field)."""


class QualityMetrics(BaseModel):
    """Quality of a variant measured against the full model on the project's held-out sets."""

    model_config = ConfigDict(extra="forbid")

    agreement: float = Field(ge=0.0, le=1.0, description="Share of greedy tokens equal to the full model's.")
    kl: float = Field(ge=0.0, description="Mean per-token KL(full || variant) in nats.")
    task_accuracy: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Accuracy on the shipped QA set."
    )
    ppl: float | None = Field(default=None, gt=0.0, description="Perplexity on the shipped held-out text.")


class SpeedProfile(BaseModel):
    """Speed of a variant measured through the engine on `VariantManifest.hardware`."""

    model_config = ConfigDict(extra="forbid")

    tok_s_bs1: float = Field(gt=0.0, description="Decode tokens/s of one stream.")
    tok_s_at: dict[str, float] = Field(
        default_factory=dict, description="Aggregate decode tokens/s at N concurrent requests (key: N)."
    )
    ttft_ms_p50: float | None = Field(default=None, ge=0.0, description="Median time to first token, ms.")
    tpot_ms_at: dict[str, float] = Field(
        default_factory=dict, description="Median time per output token at N concurrent requests, ms."
    )
    ttft_ms_at: dict[str, float] = Field(
        default_factory=dict, description="Median time to first token at N concurrent requests, ms."
    )

    @field_validator("tok_s_at", "tpot_ms_at", "ttft_ms_at")
    @classmethod
    def _keys_are_concurrency(cls, value: dict[str, float]) -> dict[str, float]:
        for key, number in value.items():
            if not key.isdigit() or int(key) < 1:
                raise ValueError(f"key {key!r} must be a concurrency level like '1', '8', '32'")
            if number <= 0:
                raise ValueError(f"value for concurrency {key} must be > 0, got {number}")
        return value


class VariantEntry(BaseModel):
    """One variant: where it lives, how it was made, how big, how good and how fast it is."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$", description="Variant name, e.g. 'full', 'int8'.")
    method: str = Field(min_length=1, description="Compression method that made it ('none' for the full model).")
    path: str = Field(min_length=1, description="Model directory (relative paths are relative to the manifest).")
    params: int = Field(gt=0, description="Number of parameters.")
    bytes: int = Field(gt=0, description="Bytes of weights on disk.")
    resident_bytes: int | None = Field(default=None, gt=0, description="Resident memory of the loaded model.")
    dtype: str = Field(default="auto", description="Engine dtype the variant is served with.")
    quantization: str = Field(
        default="none",
        description="Load-time quantization the engine applies to `path` (EngineConfig.quantization), e.g. 'torch-int8'.",
    )
    quality: QualityMetrics
    speed: SpeedProfile
    options: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Method options it was made with (sparsity, layers kept, ...)."
    )


class Measurement(BaseModel):
    """How the speed figures were taken, so a reader can judge them (and redo them)."""

    model_config = ConfigDict(extra="forbid")

    when: str = Field(min_length=1, description="ISO date and time of the measurement (UTC).")
    how: str = Field(min_length=1, description="The command or path measured: engine in-process or served stack.")
    load_avg_before: float = Field(ge=0.0, description="1-minute load average before measuring (quiet: < 0.5).")
    load_avg_after: float | None = Field(
        default=None, ge=0.0, description="1-minute load average when done (includes the measurement's own work)."
    )
    repeats: int = Field(default=1, ge=1, description="Runs per concurrency; figures are their medians.")
    warmed_up: bool = Field(default=True, description="Each concurrency ran once untimed first.")


class VariantManifest(BaseModel):
    """The whole manifest: one base model, the hardware it was measured on, its variants."""

    model_config = ConfigDict(extra="forbid")

    base: str = Field(min_length=1, description="Name of the full model the variants derive from.")
    hardware: str = Field(min_length=1, description="Where speeds were measured, e.g. 'cpu-2core-bf16'.")
    measured: Measurement | None = Field(default=None, description="How the speed figures were taken.")
    variants: list[VariantEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names_and_full(self) -> VariantManifest:
        names = [v.name for v in self.variants]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"variant names must be unique, repeated: {duplicates}")
        return self

    def get(self, name: str) -> VariantEntry:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(f"variant {name!r} not in manifest (have {[v.name for v in self.variants]})")

    def resolve_path(self, entry: VariantEntry, manifest_path: Path) -> Path:
        path = Path(entry.path)
        return path if path.is_absolute() else (manifest_path.parent / path)

    @classmethod
    def load(cls, path: str | Path) -> VariantManifest:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise ManifestError(f"manifest not found: {path}") from e
        except json.JSONDecodeError as e:
            raise ManifestError(f"manifest {path} is not valid JSON: {e}") from e
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise ManifestError(f"manifest {path} is invalid: {describe_validation_error(e, sep='; ')}") from e

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=2, exclude_none=True) + "\n")

