"""Structured-output overhead: decode tok/s with a JSON schema and with a `required` tool call vs
unconstrained, same engine, same run.

    python -m load_tests.benchmarks.structured_output --model packaged:smollm2-135m-instruct [--concurrency 8] [--json]

Both scenarios submit `concurrency` chat requests at once and time every step after the last
prefill (decode only); tok/s = tokens generated in those steps / their wall time. The constrained
run asks each request for a JSON list of records (a schema that keeps the model writing), so the
grammar mask is paid on every decode step; the tool-call run offers one function taking the same
records (tool_choice "required", the tools described in the system message as the server does for
a template without tools), against unconstrained decoding of the same (longer) prompts. The target
is each constrained run >= 80% of its unconstrained baseline. Grammars
are compiled before timing starts (the server compiles off the engine loop and caches).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from inference.engine.llm_engine import LLMEngine
from inference.schema.config.engine import EngineConfig
from inference.schema.guided import GuidedDecoding
from inference.schema.requests import ChatMessage, template_messages
from inference.schema.sampling import SamplingParams
from inference.schema.tools import Tool, tool_grammar

SCHEMA = {
    "type": "object",
    "properties": {
        "people": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 24},
                    "age": {"type": "integer", "minimum": 0, "maximum": 120},
                    "city": {"type": "string", "maxLength": 24},
                },
                "required": ["name", "age", "city"],
            },
            "minItems": 1,
        }
    },
    "required": ["people"],
}
TOOL = Tool.model_validate({"type": "function", "function": {
    "name": "save_members", "description": "Save the members of a group", "parameters": SCHEMA}})
TOPICS = ["a football team", "a book club", "a village", "a company", "a class", "a band", "a family", "a crew"]


def decode_tok_s(engine: LLMEngine, prompts: list[str], params: SamplingParams) -> tuple[float, int]:
    """Decode tok/s (steps after every request has its first token) and the tokens those steps made."""
    for prompt in prompts:
        engine.add_request(prompt, params)
    tokens = 0
    started: float | None = None
    while engine.has_unfinished():
        outputs = engine.step()
        if started is None and all(g.metrics.first_token_s is not None for g in engine.groups.values()):
            started = time.perf_counter()  # every request is decoding from here on
            continue
        if started is not None:
            tokens += sum(len(c.delta_token_ids) for out in outputs for c in out.outputs)
    elapsed = time.perf_counter() - started if started is not None else 0.0
    return (tokens / elapsed if elapsed > 0 else 0.0), tokens


def run(model: str, concurrency: int, max_tokens: int) -> dict[str, float]:
    engine = LLMEngine(EngineConfig(model=model, max_num_seqs=max(8, concurrency)))
    try:
        template = engine.tokenizer.apply_chat_template  # type: ignore[attr-defined]
        asks = [[ChatMessage(role="user", content=f"List the members of {TOPICS[i % len(TOPICS)]} as JSON: name, age, city.")]
                for i in range(concurrency)]
        prompts = [template(template_messages(a, None, False), add_generation_prompt=True, tokenize=False) for a in asks]
        tool_prompts = [template(template_messages(a, [TOOL], False), add_generation_prompt=True, tokenize=False)
                        for a in asks]
        guided = GuidedDecoding("json", json.dumps(SCHEMA), "response_format.json_schema.schema")
        tool_call = tool_grammar([TOOL], "required", True)
        assert tool_call is not None
        for grammar in (guided, tool_call):
            engine.structured.compile(grammar)
        free = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        decode_tok_s(engine, prompts[:2], SamplingParams(max_tokens=4, temperature=0.0))  # warm-up
        free_tok_s, free_tokens = decode_tok_s(engine, prompts, free)
        json_tok_s, json_tokens = decode_tok_s(
            engine, prompts, SamplingParams(max_tokens=max_tokens, temperature=0.0, guided=guided))
        # the tools prompt is ~300 tokens longer: its own unconstrained baseline, so the ratio is the grammar's
        free_tools_tok_s, _ = decode_tok_s(engine, tool_prompts, free)
        tool_tok_s, tool_tokens = decode_tok_s(
            engine, tool_prompts, SamplingParams(max_tokens=max_tokens, temperature=0.0, guided=tool_call))
    finally:
        engine.shutdown()

    def ratio(tok_s: float, base: float) -> float:
        return tok_s / base if base else 0.0

    return {"concurrency": concurrency, "unconstrained_tok_s": free_tok_s, "json_schema_tok_s": json_tok_s,
            "ratio": ratio(json_tok_s, free_tok_s), "unconstrained_tools_prompt_tok_s": free_tools_tok_s,
            "tool_call_tok_s": tool_tok_s, "tool_call_ratio": ratio(tool_tok_s, free_tools_tok_s),
            "unconstrained_tokens": free_tokens, "json_schema_tokens": json_tokens, "tool_call_tokens": tool_tokens}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.benchmarks.structured_output", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="packaged:smollm2-135m-instruct")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = run(args.model, args.concurrency, args.max_tokens)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"concurrency {result['concurrency']}: unconstrained {result['unconstrained_tok_s']:.1f} tok/s, "
              f"json_schema {result['json_schema_tok_s']:.1f} tok/s (ratio {result['ratio']:.2f}), "
              f"with the tools prompt: unconstrained {result['unconstrained_tools_prompt_tok_s']:.1f} tok/s, "
              f"required tool call {result['tool_call_tok_s']:.1f} tok/s (ratio {result['tool_call_ratio']:.2f}); "
              "target >= 0.80 each")
    return 0 if min(result["ratio"], result["tool_call_ratio"]) >= 0.8 else 1


if __name__ == "__main__":
    sys.exit(main())
