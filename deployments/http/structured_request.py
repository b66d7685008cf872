"""Structured-output fields of an OpenAI request, turned into one `GuidedDecoding` for the engine.

OpenAI's `response_format` (`text`, `json_object`, `json_schema` with `strict`) and vLLM's
extensions `guided_json`, `guided_regex`, `guided_choice`; at most one of them may constrain a
request. JSON schemas are checked here (a bad one is a 400 naming the field, e.g.
`response_format.json_schema.schema`); the engine compiles the grammar (xgrammar) and caches it.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from inference.schema.errors import InvalidRequestError
from inference.schema.guided import GuidedDecoding, check_json_schema

ANY_JSON_OBJECT = {"type": "object"}
MAX_CHOICES = 256


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(default="response", max_length=64)
    description: str | None = None
    json_schema: dict[str, Any] = Field(alias="schema", description="The JSON schema the output must follow.")
    strict: bool | None = Field(
        default=None, description="Accepted; the output always follows the schema (no properties beyond it)."
    )


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


def _check_schema(schema: Any, param: str) -> str:
    check_json_schema(schema, param)
    return json.dumps(schema)


def guided_options(
    response_format: ResponseFormat | None,
    guided_json: dict[str, Any] | str | None,
    guided_regex: str | None,
    guided_choice: list[str] | None,
) -> GuidedDecoding | None:
    """The one grammar a request asks for, or None."""
    asked = []
    if response_format is not None and response_format.type != "text":
        asked.append("response_format")
    asked += [name for name, value in (("guided_json", guided_json), ("guided_regex", guided_regex),
                                        ("guided_choice", guided_choice)) if value is not None]
    if len(asked) > 1:
        raise InvalidRequestError(f"{asked[1]}: give at most one of {asked}", asked[1])
    if response_format is not None and response_format.type == "json_object":
        return GuidedDecoding("json", json.dumps(ANY_JSON_OBJECT), "response_format")
    if response_format is not None and response_format.type == "json_schema":
        if response_format.json_schema is None:
            raise InvalidRequestError("response_format.json_schema: is required for type json_schema",
                                      "response_format.json_schema")
        param = "response_format.json_schema.schema"
        return GuidedDecoding("json", _check_schema(response_format.json_schema.json_schema, param), param)
    if guided_json is not None:
        schema = guided_json
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise InvalidRequestError(f"guided_json: not valid JSON: {e}", "guided_json") from e
        return GuidedDecoding("json", _check_schema(schema, "guided_json"), "guided_json")
    if guided_regex is not None:
        if not guided_regex:
            raise InvalidRequestError("guided_regex: must not be empty", "guided_regex")
        return GuidedDecoding("regex", guided_regex, "guided_regex")
    if guided_choice is not None:
        if not guided_choice or len(guided_choice) > MAX_CHOICES or any(not c for c in guided_choice):
            raise InvalidRequestError(f"guided_choice: 1 to {MAX_CHOICES} non-empty strings", "guided_choice")
        return GuidedDecoding("choice", json.dumps(guided_choice), "guided_choice")
    return None
