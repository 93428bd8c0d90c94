"""Structured output over HTTP: ``response_format`` (json_object, json_schema) on both
endpoints through the official ``openai`` client, the ``regex`` / ``grammar`` extensions, and
bad schemas refused with OpenAI-style JSON errors."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from .conftest import ServerProcess
from .test_app import client, raw

openai = pytest.importorskip("openai")

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "size": {"type": "integer", "minimum": 0, "maximum": 99999},
        "kind": {"enum": ["file", "dir"]},
    },
    "required": ["name", "size", "kind"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "entry", "schema": SCHEMA, "strict": True}}


def assert_json_object(choice, text: str) -> None:
    """Any JSON object (no bounds: a random model may use up the tokens): a whole object when
    the grammar ended the text, else the start of one."""
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(text), dict), text
    else:
        assert choice.finish_reason == "length" and text.startswith("{"), text


@pytest.fixture(scope="module")
def chat_server(chat_bundle, tmp_path_factory):
    log = tmp_path_factory.mktemp("structured_chat") / "err.log"
    server = ServerProcess(chat_bundle, "--model-name", "tiny-chat", log=log)
    yield server
    assert server.stop() == 0


def test_completions_json_schema_greedy_and_sampled(pair_server):
    c = client(pair_server)
    for extra in ({"temperature": 0}, {"temperature": 1.0, "top_k": 50, "seed": 3}):
        res = c.completions.create(
            model="pair", prompt="def add(a, b):\n", max_tokens=100, extra_body={"response_format": FORMAT, **extra}
        )
        assert res.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(res.choices[0].text), SCHEMA)


def test_completions_stream_and_extensions(pair_server):
    c = client(pair_server)
    chunks = c.completions.create(
        model="pair", prompt="x = ", max_tokens=100, stream=True, extra_body={"response_format": FORMAT}
    )
    jsonschema.validate(json.loads("".join(ch.choices[0].text for ch in chunks if ch.choices)), SCHEMA)
    fmt = {"response_format": {"type": "json_object"}}
    res = c.completions.create(model="pair", prompt="x = ", max_tokens=60, extra_body=fmt)
    assert_json_object(res.choices[0], res.choices[0].text)
    res = c.completions.create(model="pair", prompt="x = ", max_tokens=20, extra_body={"regex": "[0-9]{2,5}"})
    assert re.fullmatch("[0-9]{2,5}", res.choices[0].text)
    res = c.completions.create(
        model="pair", prompt="x = ", max_tokens=20, extra_body={"grammar": 'start: "yes" | "no"'}
    )
    assert res.choices[0].text in ("yes", "no")


def test_chat_response_format(chat_server):
    c = client(chat_server)
    messages = [{"role": "user", "content": "describe a file"}]
    res = c.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=100, response_format=FORMAT)
    jsonschema.validate(json.loads(res.choices[0].message.content), SCHEMA)
    res = c.chat.completions.create(
        model="tiny-chat", messages=messages, max_tokens=60, response_format={"type": "json_object"}, temperature=0
    )
    assert_json_object(res.choices[0], res.choices[0].message.content)
    res = c.chat.completions.create(
        model="tiny-chat", messages=messages, max_tokens=5, response_format={"type": "text"}
    )
    assert res.choices[0].message.content is not None


@pytest.mark.parametrize(
    "extra, status, code",
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}}},
            400,
            "invalid_schema",
        ),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, 422, "invalid_value"),
        ({"response_format": {"type": "xml"}}, 422, "invalid_value"),
        ({"response_format": "json"}, 422, "invalid_value"),
        ({"regex": "(unclosed"}, 400, "invalid_regex"),
        ({"grammar": "start: missing_rule"}, 400, "invalid_grammar"),
        ({"regex": 5}, 422, "invalid_value"),
        ({"regex": "[a-z]+", "response_format": {"type": "json_object"}}, 422, "invalid_value"),
    ],
)
def test_bad_structured_requests_get_json_errors(pair_server, extra, status, code):
    got, _, err = raw(pair_server, "POST", "/v1/completions", {"model": "pair", "prompt": "x", **extra})
    assert got == status and err["error"]["code"] == code and err["error"]["message"], err
    assert "Traceback" not in json.dumps(err)
