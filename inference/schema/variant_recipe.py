"""`VariantRecipe`: what a variant directory's `sloserve_variant.json` says about how it was made.

Written by the compression methods, read by the engine's loader (`inference.model.quant.load_time`
applies the `load_time_quantization` it names). Plain JSON: no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

RECIPE_FILE = "sloserve_variant.json"
RECIPE_FORMAT = 1

Option = str | int | float | bool


@dataclass(slots=True)
class VariantRecipe:
    """What `sloserve_variant.json` says about a variant directory."""

    method: str
    options: dict[str, Option] = field(default_factory=dict)
    load_time_quantization: str = "none"  # applied by the loader after from_pretrained

    def save(self, model_dir: Path) -> None:
        payload = {
            "format": RECIPE_FORMAT,
            "method": self.method,
            "options": self.options,
            "load_time_quantization": self.load_time_quantization,
        }
        (model_dir / RECIPE_FILE).write_text(json.dumps(payload, indent=2) + "\n")

    @classmethod
    def load(cls, model_dir: Path | str) -> VariantRecipe | None:
        path = Path(model_dir) / RECIPE_FILE
        if not path.is_file():
            return None
        raw = json.loads(path.read_text())
        if raw.get("format") != RECIPE_FORMAT:
            raise ValueError(f"{path}: unsupported recipe format {raw.get('format')!r} (expected {RECIPE_FORMAT})")
        return cls(
            method=str(raw["method"]),
            options=dict(raw.get("options", {})),
            load_time_quantization=str(raw.get("load_time_quantization", "none")),
        )
