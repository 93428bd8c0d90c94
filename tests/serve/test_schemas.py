"""Request validation: OpenAI's fields, types and ranges, with the status each error gets."""

from __future__ import annotations

import pytest

from stagedx.serve.schemas import ApiError, Limits, chat_params, completion_params, parse_body

LIMITS = Limits(model="m", context=256, vocab=100)


def test_defaults_follow_openai():
    p = completion_params({"model": "m", "prompt": "hi"}, LIMITS)
    assert p.max_tokens == 16 and p.sampling.mode == "sample" and p.sampling.temperature == 1.0
    assert p.seed is None and p.stop == () and not p.stream


def test_temperature_zero_is_greedy_and_sampling_options_pass_through():
    assert completion_params({"model": "m", "prompt": "hi", "temperature": 0}, LIMITS).sampling.greedy
    p = completion_params(
        {
            "model": "m",
            "prompt": [1, 2],
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 5,
            "seed": 3,
            "stop": "\n",
            "max_tokens": 7.0,
        },
        LIMITS,
    )
    assert (p.prompt, p.sampling.top_k, p.sampling.top_p, p.seed, p.stop, p.max_tokens) == (
        (1, 2),
        5,
        0.9,
        3,
        ("\n",),
        7,
    )
    assert completion_params({"model": "m", "prompt": ["one"]}, LIMITS).prompt == "one"


@pytest.mark.parametrize(
    "body, status",
    [
        ({"prompt": "x"}, 422),
        ({"model": "other", "prompt": "x"}, 404),
        ({"model": "m", "prompt": ["a", "b"]}, 422),
        ({"model": "m", "prompt": [1, 100]}, 422),
        ({"model": "m", "prompt": "x", "max_tokens": 0}, 422),
        ({"model": "m", "prompt": "x", "max_tokens": 257}, 422),
        ({"model": "m", "prompt": "x", "max_tokens": True}, 422),
        ({"model": "m", "prompt": "x", "top_p": 0}, 422),
        ({"model": "m", "prompt": "x", "temperature": float("nan")}, 422),
        ({"model": "m", "prompt": "x", "seed": -1}, 422),
        ({"model": "m", "prompt": "x", "stop": ["a"] * 5}, 422),
        ({"model": "m", "prompt": "x", "stream": "yes"}, 422),
        ({"model": "m", "prompt": "x", "logprobs": 2}, 422),
        ({"model": "m", "prompt": "x", "echo": True}, 422),
        ({"model": "m", "prompt": "x", "stop": ""}, 422),
        ({"model": "m", "prompt": "x", "stop": ["\n", ""]}, 422),
        ({"model": "m", "prompt": "x", "temprature": 0.5}, 400),
        ({"model": "m", "prompt": "x", "repetition_penalty": 1.1}, 400),
        ({"model": "m", "prompt": "x", "min_tokens": 3}, 400),
        ({"model": "m", "prompt": "x", "messages": []}, 400),
    ],
)
def test_invalid_completion_bodies(body, status):
    with pytest.raises(ApiError) as exc:
        completion_params(body, LIMITS)
    assert exc.value.status == status and exc.value.body()["error"]["message"]


def test_chat_messages_and_max_completion_tokens():
    p = chat_params(
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
            "max_completion_tokens": 9,
        },
        LIMITS,
    )
    assert p.messages == ({"role": "user", "content": "ab"},) and p.decode.max_tokens == 9
    assert chat_params({"model": "m", "messages": [{"role": "user", "content": "x"}]}, LIMITS).decode.max_tokens is None
    for messages in ([], [{"role": "user"}], [{"role": "user", "content": [{"type": "image_url"}]}], "hi"):
        with pytest.raises(ApiError) as exc:
            chat_params({"model": "m", "messages": messages}, LIMITS)
        assert exc.value.status == 422


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'"text"', b"\xff\xfe"])
def test_bodies_that_are_not_json_objects_are_400(raw):
    with pytest.raises(ApiError) as exc:
        parse_body(raw)
    assert exc.value.status == 400 and exc.value.code == "invalid_json"


@pytest.mark.parametrize(
    "endpoint, body",
    [
        (completion_params, {"model": "m", "prompt": "x", "temprature": 0.5, "min_tokens": 3}),
        (chat_params, {"model": "m", "messages": [{"role": "user", "content": "x"}], "repetition_penalty": 1.1}),
    ],
)
def test_unknown_fields_are_refused_as_openai_does(endpoint, body):
    with pytest.raises(ApiError) as exc:
        endpoint(body, LIMITS)
    err = exc.value.body()["error"]
    assert exc.value.status == 400 and err["code"] == "unknown_parameter" and err["type"] == "invalid_request_error"
    assert err["message"].startswith("Unrecognized request argument supplied: ") and err["param"] in body


def test_known_openai_fields_at_their_neutral_value_pass():
    body = {"model": "m", "prompt": "x", "user": "u", "n": 1, "presence_penalty": 0, "logit_bias": {}, "echo": False}
    assert completion_params(body, LIMITS).prompt == "x"
    chat = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "tool_choice": "none",
        "max_completion_tokens": 3,
    }
    assert chat_params(chat, LIMITS).decode.max_tokens == 3


def test_a_deeply_nested_body_is_a_400_not_a_crash():
    raw = b'{"a":' * 200_000 + b"1" + b"}" * 200_000  # about 1.2 MB: deeper than any parser recursion
    with pytest.raises(ApiError) as exc:
        parse_body(raw)
    assert exc.value.status == 400 and exc.value.code == "invalid_json" and "nested" in exc.value.message


def test_a_request_becomes_the_generators_decode_options():
    limits = Limits("m", 64, 100)
    params = completion_params({"model": "m", "prompt": "x", "seed": 5, "stop": "\n", "top_k": 3}, limits)
    opts = params.options(10)
    assert (opts.max_new_tokens, opts.seed, opts.stop_strings()) == (10, 5, ("\n",))
    assert opts.sampling_config().top_k == 3
    with pytest.raises(ApiError) as err:
        params.options(0)  # a prompt that fills the whole context leaves no room
    assert err.value.status == 400
