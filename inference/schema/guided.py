"""`GuidedDecoding`: what a request's output must match (structured output), as plain data.

The sampling parameters carry it; `structured_output.py` compiles it into a grammar (xgrammar,
torch). Kept apart so the engine's schemas import no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from inference.schema.errors import InvalidRequestError

GuidedKind = Literal["json", "regex", "choice", "tool_calls"]


@dataclass(frozen=True, slots=True)
class GuidedDecoding:
    """What a sequence's output must match.

    kind "json": `spec` is a JSON schema (JSON text); "regex": a regular expression; "choice": a
    JSON list of the allowed strings; "tool_calls": the request's tools, tool_choice and
    parallel_tool_calls as JSON (`inference/schema/tools.py`). `param` is the request field it came from, named in errors.
    """

    kind: GuidedKind
    spec: str
    param: str = "guided_json"

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.spec)


def check_json_schema(schema: Any, param: str) -> None:
    """Raise an InvalidRequestError naming `param` unless `schema` is a valid JSON schema object
    (a `response_format` / `guided_json` schema, a tool's parameters)."""
    from jsonschema import Draft202012Validator  # imported on first use: not on every start-up path
    from jsonschema.exceptions import SchemaError

    if not isinstance(schema, dict):
        raise InvalidRequestError(f"{param}: a JSON schema must be an object", param)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        raise InvalidRequestError(f"{param}: not a valid JSON schema: {e.message}", param) from e
