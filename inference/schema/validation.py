"""How a pydantic validation error is told to a person: one problem per line, each naming the
field path and the value given. Shared by every schema (engine config, manifest, app config)."""

from __future__ import annotations

from pydantic import ValidationError


def describe_validation_error(error: ValidationError, sep: str = "\n") -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "<root>"
        given = item.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"
        parts.append(f"{where}: {item['msg']}{shown}")
    return sep.join(parts)
