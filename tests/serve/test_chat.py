"""Chat templates: the bundle carries the checkpoint's template; /v1/chat/completions renders
it as ``transformers``' ``apply_chat_template`` does and decodes like ``Generator``."""

from __future__ import annotations

import json

import pytest

from stagedx.manifest import load_manifest
from stagedx.serve.chat import ChatTemplate
from stagedx.serve.schemas import ApiError

from .conftest import CHAT_TEMPLATE, ServerProcess

openai = pytest.importorskip("openai")

MESSAGES = [
    {"role": "system", "content": "You write Python."},
    {"role": "user", "content": "def square(x):"},
]


@pytest.fixture(scope="module")
def chat_server(chat_bundle, tmp_path_factory):
    server = ServerProcess(chat_bundle, "--model-name", "tiny-chat", log=tmp_path_factory.mktemp("chat") / "err.log")
    yield server
    assert server.stop() == 0


def hf_render(checkpoint, messages) -> str:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_export_carries_the_chat_template(chat_bundle, tiny_bundle):
    assert load_manifest(chat_bundle).tokenizer.chat_template == CHAT_TEMPLATE
    assert load_manifest(tiny_bundle).tokenizer.chat_template is None


def test_template_renders_like_transformers(chat_bundle, tiny_pair, tmp_path):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (checkpoint / name).write_bytes((tiny_pair.oracle / name).read_bytes())
    config = json.loads((checkpoint / "tokenizer_config.json").read_text())
    (checkpoint / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHAT_TEMPLATE}))
    mine = ChatTemplate(CHAT_TEMPLATE, "<|endoftext|>", "<|endoftext|>").render(MESSAGES)
    assert mine == hf_render(checkpoint, MESSAGES) and mine.endswith("<|assistant|>\n")


def test_template_errors_are_422():
    refusing = ChatTemplate("{{ raise_exception('only user messages') }}", "", "")
    with pytest.raises(ApiError) as exc:
        refusing.render(MESSAGES)
    assert exc.value.status == 422 and "only user messages" in exc.value.message


def test_chat_completion_equals_generator_on_the_rendered_prompt(chat_server, chat_bundle):
    from stagedx.runtime import Generator

    gen = Generator(chat_bundle, device="cpu", threads=1)
    prompt = ChatTemplate(CHAT_TEMPLATE, "<|endoftext|>", "<|endoftext|>").render(MESSAGES)
    want = gen.generate(prompt, max_new_tokens=24)
    c = openai.OpenAI(base_url=chat_server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    res = c.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=24, temperature=0)
    assert res.choices[0].message.role == "assistant" and res.choices[0].message.content == want.text
    assert res.usage.prompt_tokens == want.prompt_tokens
    chunks = list(
        c.chat.completions.create(
            model="tiny-chat",
            messages=MESSAGES,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == want.text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want.tokens)
    with pytest.raises(openai.UnprocessableEntityError):
        c.chat.completions.create(model="tiny-chat", messages=[{"role": "user"}])
