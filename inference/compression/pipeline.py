"""`sloserve compress` end to end: make each variant, measure it, write `variants.json` and a plot.

For the full model and every method asked for: write the variant directory under `out_dir`, load it
as it will be served (bf16 on this hardware, plus its load-time quantization), measure size, quality
against the full model (`quality.py`) and speed through the engine (`speed.py`), and add a manifest
entry. Methods: see `METHODS`; `<method>+torch-int8` serves a method's weights with torch int8
(variant `<method>-int8`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from inference.compression.base import (
    CompressedVariant,
    CompressionContext,
    Compressor,
    VariantRecipe,
    compute_dtype,
    count_params,
    load_base_model,
    resident_bytes,
    save_variant,
    weight_bytes_on_disk,
)
from inference.compression.methods import build_compressor, is_known, known_methods
from inference.compression.quality import (
    Reference,
    build_reference,
    compare_to_reference,
    perplexity,
    qa_accuracy,
)
from inference.compression.speed import (
    DEFAULT_CONCURRENCIES,
    load_average,
    measure_hf_speed,
    measure_variant_speed,
)
from inference.data import chat_prompt_ids, load_heldout_text, load_prompts, load_qa
from inference.model.quant.load_time import apply_load_time_quantization, recipe_quantization
from inference.schema.manifest import Measurement, QualityMetrics, VariantEntry, VariantManifest

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CompressJob:
    source: str
    methods: list[str]
    out_dir: Path
    quick: bool = False
    concurrencies: tuple[int, ...] = DEFAULT_CONCURRENCIES
    repeats: int = 3  # timed runs per concurrency (medians)
    max_tokens: int = 64
    seed: int = 0
    reuse: bool = False  # keep variant directories already in out_dir (re-measure only)
    budget_minutes: float | None = None  # per training run (distillation, healing); None: the method's default


@dataclass(slots=True)
class EvalData:
    tokenizer: Any
    reference: Reference
    qa: list[Any]
    text: str


def run_compress(job: CompressJob) -> VariantManifest:
    from transformers import AutoTokenizer

    from inference.model.model_loader import resolve_model_dir

    unknown = [m for m in job.methods if not is_known(m.removesuffix("+torch-int8"))]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {known_methods()} (each may end in '+torch-int8')")
    base_dir = Path(resolve_model_dir(job.source))
    job.out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    train = load_prompts("train")[: 16 if job.quick else None]
    ctx = CompressionContext(
        base_dir=base_dir, calib_prompts=[chat_prompt_ids(tokenizer, p) for p in train],
        quick=job.quick, seed=job.seed, work_dir=job.out_dir / ".work",
    )
    started = time.monotonic()
    # before any work of ours: afterwards the 1-minute average counts our own compression too
    load_before, when = load_average(), datetime.now(UTC).isoformat(timespec="seconds")
    if load_before >= 0.5:
        log.warning("load average %.2f: other work is running, speed figures will be low and noisy", load_before)
    full_dir = job.out_dir / "full"
    if not (job.reuse and (full_dir / "config.json").is_file()):
        save_variant(load_base_model(base_dir), base_dir, full_dir, VariantRecipe("none"), torch.bfloat16)
    variants = [CompressedVariant("full", full_dir, VariantRecipe("none"))]
    made: dict[str, CompressedVariant] = {}
    for method in job.methods:
        base_method, _, suffix = method.partition("+")
        existing = VariantRecipe.load(job.out_dir / base_method) if job.reuse else None
        # a directory is named after its method (`distill-20` holds a `distill` recipe)
        same = existing is not None and (base_method == existing.method or base_method.startswith(existing.method + "-"))
        if base_method not in made and existing is not None and same:
            log.warning("reusing: %s", base_method)
            made[base_method] = CompressedVariant(base_method, job.out_dir / base_method, existing)
        elif base_method not in made:
            log.warning("compressing: %s", base_method)
            compressor: Compressor = build_compressor(base_method, job.quick, job.budget_minutes)
            done = compressor.compress(ctx, job.out_dir / base_method)
            made[base_method] = CompressedVariant(base_method, done.path, done.recipe)  # named as asked
        name = f"{base_method}-int8" if suffix else base_method
        variant = made[base_method] if not suffix else _with_torch_int8(made[base_method], job.out_dir / name)
        if variant not in variants:
            variants.append(variant)
    data = _eval_data(tokenizer, full_dir, job.quick)
    entries = [_measure(v, job, data) for v in variants]
    measured = Measurement(
        when=when, how=f"in-process engine, `sloserve compress` ({torch.get_num_threads()} torch threads)",
        load_avg_before=load_before, load_avg_after=load_average(), repeats=_repeats(job),
    )
    manifest = VariantManifest(base=_base_name(job.source), hardware=_hardware(), measured=measured, variants=entries)
    manifest.save(job.out_dir / "variants.json")
    log.warning("compress: %d variants in %.0f s", len(entries), time.monotonic() - started)
    return manifest


def _with_torch_int8(variant: CompressedVariant, out_dir: Path) -> CompressedVariant:
    """A copy of a variant's directory whose recipe adds torch int8 at load time."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(variant.path, out_dir)
    recipe = VariantRecipe(f"{variant.recipe.method}+torch-int8", dict(variant.recipe.options), "torch-int8")
    recipe.save(out_dir)
    return CompressedVariant(out_dir.name, out_dir, recipe)


def _eval_data(tokenizer: Any, full_dir: Path, quick: bool) -> EvalData:
    full = load_base_model(full_dir, compute_dtype())
    prompts = load_prompts("eval")[: 4 if quick else None]
    reference = build_reference(full, tokenizer, prompts, max_new_tokens=8 if quick else 32)
    qa = load_qa()[: 8 if quick else None]
    return EvalData(tokenizer, reference, qa, load_heldout_text()[: 600 if quick else None])


def _measure(variant: CompressedVariant, job: CompressJob, data: EvalData) -> VariantEntry:
    from inference.model.model_loader import load_model

    quantization = recipe_quantization(variant.path)
    log.warning("measuring %s (%s)", variant.name, variant.recipe.method)
    model: Any = load_model(str(variant.path), compute_dtype()).model
    params = count_params(model)
    model = apply_load_time_quantization(model, quantization, data.tokenizer, variant.path)
    agreement, kl = compare_to_reference(model, data.reference)
    quality = QualityMetrics(
        agreement=agreement, kl=kl,
        task_accuracy=qa_accuracy(model, data.tokenizer, data.qa, max_new_tokens=8 if job.quick else 16),
        ppl=perplexity(model, data.tokenizer, data.text),
    )
    options = dict(variant.recipe.options)
    concurrencies = (1, 4) if job.quick else job.concurrencies
    max_tokens = 8 if job.quick else job.max_tokens
    try:
        speed = measure_variant_speed(variant.path, quantization, concurrencies, max_tokens, repeats=_repeats(job))
    except Exception as e:  # the engine cannot serve this layer type yet: measure with HF generate
        log.warning("engine could not run %s (%s); measuring with HF generate instead", variant.name, e)
        options["speed_measured_with"] = "hf-generate"
        speed = measure_hf_speed(model, int(model.config.vocab_size), concurrencies, max_tokens=max_tokens)
    entry = VariantEntry(
        name=variant.name, method=variant.recipe.method, path=os.path.relpath(variant.path, job.out_dir),
        params=params, bytes=weight_bytes_on_disk(variant.path), resident_bytes=resident_bytes(model),
        dtype="auto", quantization=quantization, quality=quality, speed=speed.profile(), options=options,
    )
    del model
    return entry


def _repeats(job: CompressJob) -> int:
    return 1 if job.quick else job.repeats


def _base_name(source: str) -> str:
    return source.removeprefix("packaged:").rstrip("/").split("/")[-1] or "model"


def _hardware() -> str:
    """The CPU, its core count and what `dtype: auto` chose there, with the probe's timings."""
    from inference.model.dtypes import dtype_choice

    choice = dtype_choice("auto", torch.device("cpu"))
    short = "bf16" if choice.dtype == "bfloat16" else "fp32"
    return f"cpu-{os.cpu_count()}core-{short}: {choice.cpu}; dtype auto = {choice.summary()}"
