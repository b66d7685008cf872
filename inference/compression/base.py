"""The shared interface of compression methods, and what every variant directory holds.

A `Compressor` takes the full model (a `CompressionContext`: its directory, calibration prompts,
budgets) and writes one variant directory that `AutoModelForCausalLM.from_pretrained` loads as a
standard Llama (smaller, sparser or bitsandbytes-quantized), plus the tokenizer and a
`sloserve_variant.json` recipe naming the method, its options, and, for methods whose weights
cannot be saved in a standard format, the load-time quantization the loader must apply.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from inference.schema.variant_recipe import Option, VariantRecipe


@dataclass(frozen=True, slots=True)
class CompressionContext:
    """Everything a method may use: the full model's directory, calibration prompts, budgets."""

    base_dir: Path  # a Hugging Face directory of the full model
    calib_prompts: list[list[int]]  # token ids of calibration/training prompts (chat-formatted)
    quick: bool = False  # smoke run: tiny budgets
    seed: int = 0
    work_dir: Path | None = None  # scratch space (teacher generations, checkpoints) kept across runs


@dataclass(slots=True)
class CompressedVariant:
    """A variant directory written by a `Compressor`."""

    name: str
    path: Path
    recipe: VariantRecipe


class Compressor(ABC):
    """One compression method. `compress` writes a loadable variant directory under `out_dir`."""

    method: str  # the name used in `--methods` and in the manifest

    @abstractmethod
    def compress(self, ctx: CompressionContext, out_dir: Path) -> CompressedVariant:
        """Write the variant into `out_dir` (created, overwritten) and return what was written."""

    def options(self) -> dict[str, Option]:
        """The method's settings, recorded in the recipe and the manifest."""
        return {}


def compute_dtype() -> torch.dtype:
    """The dtype to run teachers, training and evaluation in: what the engine serves with on this
    CPU (`dtype: auto`): bf16 where the CPU does bf16 matmul natively, else fp32. Emulated bf16 is
    5-9x slower than fp32 at 8+ rows (measured on a 2-core AVX2 EPYC), so hardwiring bf16 made a
    teacher pass there take minutes instead of seconds."""
    from inference.model.dtypes import resolve_dtype

    return resolve_dtype("auto", torch.device("cpu"))


def load_base_model(base_dir: Path, dtype: torch.dtype = torch.float32) -> Any:
    """The full model as a plain HF module in eval mode (float32 by default, for exact surgery)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype).eval()


def save_variant(model: Any, base_dir: Path, out_dir: Path, recipe: VariantRecipe, dtype: torch.dtype) -> None:
    """Save weights (cast to `dtype`), the base model's tokenizer files and the recipe."""
    from transformers import AutoTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(dtype)
    model.config.dtype = dtype
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
    recipe.save(out_dir)


def count_params(model: torch.nn.Module) -> int:
    """Logical parameters: a 4-bit packed weight counts its unpacked elements."""
    total = 0
    seen: set[int] = set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            shape = getattr(getattr(param, "quant_state", None), "shape", None)
            total += int(torch.Size(shape).numel()) if shape is not None else param.numel()
        logical = getattr(module, "num_logical_params", None)
        if isinstance(logical, int):
            total += logical
    return total


def resident_bytes(model: torch.nn.Module) -> int:
    """Bytes the loaded weights occupy: tensors (shared ones once) plus opaque packed weights."""
    total = 0
    seen: set[int] = set()
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.device.type == "meta" or tensor.untyped_storage().data_ptr() in seen:
            continue
        seen.add(tensor.untyped_storage().data_ptr())
        total += tensor.untyped_storage().nbytes()
    for module in model.modules():
        extra = getattr(module, "packed_nbytes", None)
        if isinstance(extra, int):
            total += extra
    return total


def weight_bytes_on_disk(model_dir: Path) -> int:
    """Bytes of the weight files in a model directory."""
    return sum(p.stat().st_size for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin"))
