"""`sloserve generate`: one generation from a model in this process (no Ray) — a quick check."""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the user message (chat template applied) or, with --raw, the prompt")
    parser.add_argument("--model", default="packaged:smollm2-135m-instruct")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--raw", action="store_true", help="no chat template")


def run(args: argparse.Namespace) -> int:
    from inference.engine.llm_engine import LLMEngine
    from inference.schema.config.engine import EngineConfig
    from inference.schema.errors import InferenceError
    from inference.schema.sampling import SamplingParams

    try:
        engine = LLMEngine(EngineConfig(model=args.model, dtype=args.dtype, kv_cache_tokens=4096))
        prompt = args.prompt
        if not args.raw and getattr(engine.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": args.prompt}]
            prompt = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature)
        start = time.monotonic()
        engine.add_request(prompt, params)
        tokens = 0
        while engine.has_unfinished():
            for out in engine.step():
                sys.stdout.write(out.outputs[0].delta_text)
                sys.stdout.flush()
                tokens = len(out.outputs[0].token_ids)
        elapsed = time.monotonic() - start
        print(f"\n[{tokens} tokens in {elapsed:.2f} s, {tokens / elapsed:.1f} tok/s]", file=sys.stderr)
        engine.shutdown()
    except (InferenceError, ValueError) as e:
        print(f"sloserve: {e}", file=sys.stderr)
        return 2
    return 0
