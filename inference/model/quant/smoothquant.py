"""The int8-compute variant made at load time: calibrate SmoothQuant, quantize, check, cache.

`quantize_int8_compute(model, model_dir)` turns a loaded float Llama-like model into one whose
decoder linears are `W8A8Linear`s, in place:
  1. calibration: the per-input-channel max |x| of every linear's input (q/k/v share one, gate/up
     one, o_proj and down_proj their own) over the shipped calibration prompts (the `train` split
     of `data/prompts.jsonl`, chat-formatted), a forward of the float model: seconds on 2 cores;
  2. smoothing vectors (alpha `ALPHA`) and per-channel int8 weights (`inference/model/quant/w8a8_linear.py`);
  3. a quality check: next-token agreement with the float model, teacher-forced over the shipped
     held-out text; below `MIN_AGREEMENT` the variant refuses to start (`QualityCheckError`).
The activation maxima and the measured agreement are cached per model content and code version
(`$SLOSERVE_CACHE_DIR/w8a8/`), so a later start quantizes in about a second and re-checks nothing.
The LM head stays float (its logits are fp32, `model_runner.fp32_lm_head`) unless asked.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from inference.model.quant.w8a8_linear import W8A8Linear, smoothing, weight_qmax
from inference.schema.errors import QualityCheckError, UnsupportedModelError

log = logging.getLogger(__name__)
ALPHA = 0.5  # SmoothQuant's migration strength (the value measured on the packaged model)
MIN_AGREEMENT = 0.85  # teacher-forced next-token agreement with the float model, held-out text
NUM_CALIB_PROMPTS = 60
CHECK_TOKENS = 512  # held-out tokens the check reads (in windows of CHECK_WINDOW)
CHECK_WINDOW = 128
INCLUDE_LM_HEAD = False  # measured both ways: docs/int8-compute.md
FORMAT = 3  # bump when calibration or quantization changes what a cached record means


@dataclass(frozen=True, slots=True)
class Int8ComputeReport:
    """What loading the int8-compute variant measured (or read from the cache)."""

    agreement: float  # next-token agreement with the float model over the held-out text
    num_calib_prompts: int
    calibrate_s: float
    cached: bool


def _groups(layer: Any) -> dict[str, list[tuple[nn.Module, str]]]:
    """The linears of one decoder layer by shared input: (parent, attribute) pairs."""
    attn, mlp = layer.self_attn, layer.mlp
    return {
        "qkv": [(attn, "q_proj"), (attn, "k_proj"), (attn, "v_proj")],
        "o": [(attn, "o_proj")],
        "gate_up": [(mlp, "gate_proj"), (mlp, "up_proj")],
        "down": [(mlp, "down_proj")],
    }


def _check_plain(model: Any) -> None:
    for i, layer in enumerate(model.model.layers):
        for name, members in _groups(layer).items():
            for parent, attr in members:
                module = getattr(parent, attr)
                if type(module) is not nn.Linear:
                    raise UnsupportedModelError(
                        f"int8-compute needs plain float linears; layer {i} {name} has {type(module).__name__} "
                        "(tensor parallelism and other quantizations are not supported with it)")


def collect_act_absmax(model: Any, prompts: list[list[int]], include_lm_head: bool) -> dict[str, torch.Tensor]:
    """Per-input-channel max |x| of each linear group's input, over `prompts` (one forward each)."""
    found: dict[str, torch.Tensor] = {}
    hooks = []

    def hook(key: str) -> Any:
        def record(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            amax = args[0].detach().reshape(-1, args[0].shape[-1]).abs().amax(dim=0).float()
            found[key] = amax if key not in found else torch.maximum(found[key], amax)
        return record

    for i, layer in enumerate(model.model.layers):
        for name, members in _groups(layer).items():
            parent, attr = members[0]
            hooks.append(getattr(parent, attr).register_forward_pre_hook(hook(f"{i}.{name}")))
    if include_lm_head:
        hooks.append(model.lm_head.register_forward_pre_hook(hook("lm_head")))
    try:
        with torch.inference_mode():
            for ids in prompts:
                model(input_ids=torch.tensor([ids], device=model.device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return found


def apply_w8a8(model: Any, act_absmax: dict[str, torch.Tensor], alpha: float = ALPHA,
               include_lm_head: bool = False, fmt: str = "int8") -> Any:
    """Replace the decoder linears (and the LM head, if asked) with `W8A8Linear`s of `fmt`, in place."""
    for i, layer in enumerate(model.model.layers):
        for name, members in _groups(layer).items():
            modules = [getattr(parent, attr) for parent, attr in members]
            s = smoothing(act_absmax[f"{i}.{name}"], [m.weight for m in modules], alpha)
            for (parent, attr), module in zip(members, modules, strict=True):
                setattr(parent, attr, W8A8Linear.from_linear(module, s, fmt))
    if include_lm_head:
        head = model.lm_head
        model.lm_head = W8A8Linear.from_linear(head, smoothing(act_absmax["lm_head"], [head.weight], alpha), fmt)
    return model


def next_token_agreement(model: Any, windows: list[list[int]], reference: list[torch.Tensor] | None
                         ) -> tuple[float, list[torch.Tensor]]:
    """Share of positions where `model`'s argmax equals `reference`'s (1.0 without one), and the argmaxes."""
    argmaxes = []
    with torch.inference_mode():
        for ids in windows:
            logits = model(input_ids=torch.tensor([ids], device=model.device), use_cache=False).logits[0]
            argmaxes.append(logits.float().argmax(dim=-1).cpu())
    if reference is None:
        return 1.0, argmaxes
    same = sum(int((a == r).sum()) for a, r in zip(argmaxes, reference, strict=True))
    return same / sum(len(r) for r in reference), argmaxes


def _calibration_data(tokenizer: Any) -> tuple[list[list[int]], list[list[int]]]:
    from inference.data import chat_prompt_ids, load_heldout_text, load_prompts

    prompts = [chat_prompt_ids(tokenizer, p) for p in load_prompts("train")[:NUM_CALIB_PROMPTS]]
    heldout = list(tokenizer.encode(load_heldout_text()))[:CHECK_TOKENS]
    windows = [heldout[i : i + CHECK_WINDOW] for i in range(0, len(heldout), CHECK_WINDOW)]
    if len(prompts) < 8 or sum(map(len, windows)) < CHECK_WINDOW:
        raise QualityCheckError(f"int8-compute: calibration data missing ({len(prompts)} prompts, "
                                f"{sum(map(len, windows))} held-out tokens; the package's compression/data)")
    return prompts, windows


def _cache_path(model_dir: Path, dtype: torch.dtype, include_lm_head: bool, fmt: str) -> Path:
    from inference.model.model_loader import cache_root

    files = sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".json", ".bin"))
    stamp = "|".join(f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in files)
    qmax = weight_qmax(torch.device("cpu"))  # the check's numerics depend on it
    key = f"{model_dir.resolve()}|{stamp}|{dtype}|{include_lm_head}|{ALPHA}|{NUM_CALIB_PROMPTS}|{qmax}|{FORMAT}|{fmt}"
    return cache_root() / "w8a8" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def quantize_int8_compute(model: Any, tokenizer: Any, model_dir: Path | None,
                          include_lm_head: bool | None = None, fmt: str = "int8") -> Int8ComputeReport:
    """Calibrate (or read the cached calibration), quantize in place, and check quality. The LM head
    is quantized too where `include_lm_head` (default `INCLUDE_LM_HEAD`) says so. `fmt` 'fp8' makes
    the fp8-compute variant (the same calibration and check, float8 e4m3 codes)."""
    method = f"{fmt}-compute"
    include_lm_head = INCLUDE_LM_HEAD if include_lm_head is None else include_lm_head
    _check_plain(model)
    dtype = next(model.parameters()).dtype
    path = _cache_path(model_dir, dtype, include_lm_head, fmt) if model_dir is not None and model_dir.is_dir() else None
    if path is not None and path.is_file():
        record = torch.load(path, weights_only=True)
        apply_w8a8(model, record["act_absmax"], ALPHA, include_lm_head, fmt)
        report = Int8ComputeReport(float(record["agreement"]), int(record["num_prompts"]), 0.0, cached=True)
    else:
        started = time.monotonic()
        prompts, windows = _calibration_data(tokenizer)
        log.info("%s: calibrating SmoothQuant on %d shipped prompts (once per model; cached)", method, len(prompts))
        act_absmax = collect_act_absmax(model, prompts, include_lm_head)
        _, reference = next_token_agreement(model, windows, None)
        apply_w8a8(model, act_absmax, ALPHA, include_lm_head, fmt)
        agreement, _ = next_token_agreement(model, windows, reference)
        report = Int8ComputeReport(agreement, len(prompts), time.monotonic() - started, cached=False)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.{os.getpid()}")
            torch.save({"act_absmax": act_absmax, "agreement": agreement, "num_prompts": len(prompts)}, partial)
            os.replace(partial, path)
    log.info("%s: next-token agreement with the float model %.3f on held-out text (%s)", method,
             report.agreement, "cached" if report.cached else f"calibrated in {report.calibrate_s:.1f} s")
    if report.agreement < MIN_AGREEMENT:
        raise QualityCheckError(
            f"{method} failed its quality check: next-token agreement with the float model "
            f"{report.agreement:.3f} < {MIN_AGREEMENT} on the shipped held-out text")
    return report
