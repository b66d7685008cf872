"""The OpenAI request models: what is implemented, what is ignored by design, what is refused (by name)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from deployments.http.openai_api import (
    IGNORED_FIELDS,
    ChatCompletionRequest,
    CompletionRequest,
    completion_response,
)
from inference.schema.errors import InvalidRequestError, InvalidSamplingParamsError
from inference.schema.requests import (
    Choice,
    GenerateRequest,
    GenerateResponse,
    RequestTiming,
    TokenLogprobOut,
    Usage,
)
from inference.schema.sampling import (
    CHAT_MAX_TOKENS_DEFAULT,
    COMPLETIONS_MAX_TOKENS_DEFAULT,
    HANDLE_MAX_TOKENS_DEFAULT,
    SamplingParams,
)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("field", ["suffix", "tools", "audio", "prediction", "reasoning_effort", "guided_grammar"])
def test_an_unimplemented_field_is_refused_by_name(field: str) -> None:
    with pytest.raises(ValidationError) as info:
        CompletionRequest.model_validate({"model": "m", "prompt": "hi", field: {"x": 1}})
    [error] = info.value.errors()
    assert error["type"] == "extra_forbidden" and error["loc"] == (field,)


def test_ignored_by_design_fields_and_null_unknowns_are_accepted() -> None:
    body = dict(CHAT, **{name: "x" for name in IGNORED_FIELDS}, tools=None, function_call=None)
    ChatCompletionRequest.model_validate(body)
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate(dict(CHAT, stream_options={"include_usage": True, "bogus": 1}))


def test_best_of_only_when_equal_to_n_and_logit_bias_keys_are_token_ids() -> None:
    CompletionRequest.model_validate({"model": "m", "prompt": "hi", "n": 2, "best_of": 2}).to_sampling()
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"model": "m", "prompt": "hi", "logit_bias": {"fox": 1.0}})
    for bad, param in (({"best_of": 3}, "best_of"), ({"logit_bias": {"5": 101.0}}, "logit_bias")):
        with pytest.raises((InvalidRequestError, InvalidSamplingParamsError)) as info:  # both name the field
            CompletionRequest.model_validate({"model": "m", "prompt": "hi", **bad}).to_sampling()
        assert getattr(info.value, "param", None) == param and param in str(info.value)
    options = CompletionRequest.model_validate({"model": "m", "prompt": "hi", "logit_bias": {"17": -100}}).to_sampling()
    assert options.logit_bias == {17: -100.0}


def test_each_api_has_its_max_tokens_default_and_the_bounds_are_the_engines() -> None:
    completion = CompletionRequest.model_validate({"model": "m", "prompt": "hi"}).to_sampling()
    assert completion.max_tokens == COMPLETIONS_MAX_TOKENS_DEFAULT
    assert ChatCompletionRequest.model_validate(CHAT).to_sampling().max_tokens == CHAT_MAX_TOKENS_DEFAULT
    chat = ChatCompletionRequest.model_validate(dict(CHAT, max_completion_tokens=7)).to_sampling()
    assert chat.max_tokens == 7 and chat == SamplingParams(max_tokens=7)  # unset fields take the engine's defaults
    assert GenerateRequest(prompt="hi").sampling.max_tokens == HANDLE_MAX_TOKENS_DEFAULT
    for field, value in (("top_p", 0.0), ("temperature", 2.5), ("n", 0), ("top_k", -2), ("stop", [""])):
        with pytest.raises(InvalidSamplingParamsError) as info:
            CompletionRequest.model_validate({"model": "m", "prompt": "hi", field: value}).to_sampling()
        assert info.value.param == field
        with pytest.raises(ValidationError, match=field):
            GenerateRequest.model_validate({"prompt": "hi", "sampling": {field: value}})


def test_batched_prompts_fan_out_one_request_each_and_echo_asks_for_prompt_logprobs() -> None:
    body = CompletionRequest.model_validate(
        {"model": "m", "prompt": ["a", "b", "c"], "n": 2, "echo": True, "logprobs": 3, "max_tokens": 0, "seed": 4}
    )
    requests = body.to_generate_requests({})
    assert [r.prompt for r in requests] == ["a", "b", "c"]
    assert all(r.echo and r.sampling.prompt_logprobs == 3 and r.sampling.max_tokens == 0 and r.sampling.seed == 4
               for r in requests)
    assert len({r.request_id for r in requests}) == 3
    ids = CompletionRequest.model_validate({"model": "m", "prompt": [[1, 2], [3]]}).prompts
    assert ids == [[1, 2], [3]]
    assert CompletionRequest.model_validate({"model": "m", "prompt": [1, 2]}).prompts == [[1, 2]]
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"model": "m", "prompt": ["a", ""]})


def test_response_format_and_guided_fields_become_one_grammar() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    guided = ChatCompletionRequest.model_validate(dict(CHAT, response_format=fmt)).to_sampling().guided
    assert guided is not None and guided.kind == "json" and json.loads(guided.spec) == schema
    assert guided.param == "response_format.json_schema.schema"
    obj = ChatCompletionRequest.model_validate(dict(CHAT, response_format={"type": "json_object"})).to_sampling().guided
    assert obj is not None and json.loads(obj.spec) == {"type": "object"}
    assert ChatCompletionRequest.model_validate(dict(CHAT, response_format={"type": "text"})).to_sampling().guided is None
    choice = CompletionRequest.model_validate({"model": "m", "prompt": "x", "guided_choice": ["yes", "no"]}).to_sampling()
    assert choice.guided is not None and choice.guided.kind == "choice"
    bad = dict(CHAT, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}})
    with pytest.raises(InvalidRequestError) as info:
        ChatCompletionRequest.model_validate(bad).to_sampling()
    assert info.value.param == "response_format.json_schema.schema"
    with pytest.raises(InvalidRequestError) as info:
        ChatCompletionRequest.model_validate(dict(CHAT, guided_regex="a+", guided_choice=["a"])).to_sampling()
    assert info.value.param == "guided_choice"


def test_echo_puts_the_prompt_and_its_logprobs_first_with_text_offsets() -> None:
    prompt = [TokenLogprobOut(token_id=1, token="Hi", logprob=None), TokenLogprobOut(token_id=2, token=" there", logprob=-2.0, top={" there": -2.0})]
    output = [TokenLogprobOut(token_id=3, token="!", logprob=-0.5, top={"!": -0.5})]
    choice = Choice(index=0, text="!", token_ids=[3], finish_reason="length", logprobs=output,
                    prompt_text="Hi there", prompt_logprobs=prompt)
    resp = GenerateResponse(request_id="r", variant="v", model="m:v", prompt_token_ids_len=2, choices=[choice],
                            usage=Usage(prompt_tokens=2, completion_tokens=1, total_tokens=3), timing=RequestTiming())
    body = completion_response(resp, "r")["choices"][0]
    assert body["text"] == "Hi there!"
    lp = body["logprobs"]
    assert lp["tokens"] == ["Hi", " there", "!"]
    assert lp["token_logprobs"] == [None, -2.0, -0.5]
    assert lp["top_logprobs"] == [None, {" there": -2.0}, {"!": -0.5}]
    assert lp["text_offset"] == [0, 2, 8]


def test_the_message_count_is_bounded_on_both_apis_before_any_message_is_validated() -> None:
    from inference.schema.requests import MAX_MESSAGES

    ChatCompletionRequest.model_validate(dict(CHAT, messages=CHAT["messages"] * MAX_MESSAGES))
    # one over the bound, and each message malformed: the count is the error, not 2049 role errors
    too_many = [{"role": "wizard"}] * (MAX_MESSAGES + 1)
    for model, body in ((ChatCompletionRequest, dict(CHAT, messages=too_many)), (GenerateRequest, {"messages": too_many})):
        with pytest.raises(ValidationError) as info:
            model.model_validate(body)
        [error] = info.value.errors()
        assert error["loc"] == ("messages",) and f"at most {MAX_MESSAGES} messages" in error["msg"]


def test_a_batch_of_prompts_is_bounded_before_any_prompt_is_validated() -> None:
    from inference.schema.requests import MAX_BATCH_PROMPTS

    assert len(CompletionRequest.model_validate({"model": "m", "prompt": [[1]] * MAX_BATCH_PROMPTS}).prompts) == MAX_BATCH_PROMPTS
    CompletionRequest.model_validate({"model": "m", "prompt": [1] * (MAX_BATCH_PROMPTS + 1)})  # one prompt of token ids
    for batch in ([[1]] * (MAX_BATCH_PROMPTS + 1), ["a"] * (MAX_BATCH_PROMPTS + 1)):
        with pytest.raises(ValidationError) as info:
            CompletionRequest.model_validate({"model": "m", "prompt": batch})
        [error] = info.value.errors()
        assert error["loc"] == ("prompt",) and f"at most {MAX_BATCH_PROMPTS} prompts" in error["msg"]
