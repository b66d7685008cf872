"""A chat template from the config replaces the model's own: one that renders `tools` gets the
request's tools and the history's calls in Hugging Face's shapes (the native path of tool calling)."""

from __future__ import annotations

from pathlib import Path

from deployments.app import engine_config_for
from inference.engine.async_engine import AsyncLLMEngine
from inference.schema.config import parse_config
from inference.schema.requests import ChatMessage, template_messages
from inference.schema.tools import Tool
from tests.tiny_models import CHATML_TEMPLATE

TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTOOLS:{% for t in tools %} {{ t.function.name }}{% endfor %}<|im_end|>\n"
    "{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}CALL {{ c.function.name }} {{ c.function.arguments | tojson }}{% endfor %}"
    "{% if m.tool_call_id %} (answers {{ m.tool_call_id }}){% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def test_the_config_template_reaches_the_engine_and_renders_tools_natively(tiny_model_dir: Path) -> None:
    config = parse_config({"model": {"source": str(tiny_model_dir), "name": "tiny", "max_model_len": 256,
                                     "chat_template": TOOLS_TEMPLATE},
                           "variants": [{"name": "full", "dtype": "float32", "engine": {"kv_cache_tokens": 1024}}]})
    engine_config = engine_config_for(config, config.variants[0])
    assert engine_config.chat_template == TOOLS_TEMPLATE
    assert "tools" not in CHATML_TEMPLATE  # the model's own template renders no tools
    engine = AsyncLLMEngine(engine_config)
    try:
        assert engine.renders_tools
        call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        messages = [ChatMessage(role="user", content="Weather?"), ChatMessage(role="assistant", tool_calls=[call]),
                    ChatMessage(role="tool", content="18 C", tool_call_id="call_1")]
        tools = [Tool.model_validate(WEATHER)]
        ids = engine.encode_chat(template_messages(messages, tools, native_tools=True),
                                 [t.model_dump(exclude_none=True) for t in tools])
        text = engine.tokenizer.decode(ids)  # type: ignore[attr-defined]
        assert text.startswith("<|im_start|>system\nTOOLS: get_weather<|im_end|>")
        assert 'CALL get_weather {"city": "Paris"}' in text and "18 C (answers call_1)" in text
        assert text.endswith("<|im_start|>assistant\n")
    finally:
        engine.shutdown()
