"""The chat prompt set and chat prompts from files, rendered through a bundle's chat template."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from stagedx.bench.chat_prompts import CHAT_INSTRUCTIONS
from stagedx.bench.prompts import load_prompts, render_chat
from stagedx.errors import StagedxError
from stagedx.manifest import load_manifest, update_manifest

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.fixture(scope="module")
def chat_copy(tiny_bundle, tmp_path_factory):
    """The tiny bundle with a chat template in its manifest."""
    out = tmp_path_factory.mktemp("chat_copy") / "bundle"
    shutil.copytree(tiny_bundle, out)
    tok = load_manifest(out).tokenizer
    update_manifest(out, tokenizer=dataclasses.replace(tok, chat_template=TEMPLATE))
    return out


def _tokenizer(bundle):
    from stagedx.runtime.tokenizer import Tokenizer

    return Tokenizer(bundle / load_manifest(bundle).tokenizer.file)


def test_chat_set_is_twenty_distinct_user_turns():
    prompts = load_prompts("chat")
    assert len(prompts) == len(CHAT_INSTRUCTIONS) == 20
    assert len({p.id for p in prompts}) == 20 and len({p.messages for p in prompts}) == 20
    assert all(p.text == "" and len(p.messages) == 1 and p.messages[0][0] == "user" for p in prompts)
    assert [p.id for p in load_prompts("chat:2-4")] == [p.id for p in prompts[2:5]]
    assert len(load_prompts("chat", limit=3)) == 3
    for bad in ("chat:5-2", "chat:20", "chat:x"):
        with pytest.raises(StagedxError, match="chat range"):
            load_prompts(bad)


def test_jsonl_messages(tmp_path):
    f = tmp_path / "p.jsonl"
    rows = [
        {"id": "a", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
        {"prompt": "def f():"},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    a, b = load_prompts(str(f))
    assert a.id == "a" and a.messages == (("system", "Be brief."), ("user", "Hi")) and a.text == ""
    assert b.text == "def f():" and b.messages == ()
    for bad in ({"messages": []}, {"messages": [{"role": "user"}]}, {"prompt": "x", "messages": []}, {"x": 1}, [1]):
        f.write_text(json.dumps(bad) + "\n")
        with pytest.raises(StagedxError, match="p.jsonl:1"):
            load_prompts(str(f))


def test_render_chat_uses_the_bundle_template(chat_copy, tiny_bundle):
    from stagedx.serve.chat import ChatTemplate

    manifest, tok = load_manifest(chat_copy), _tokenizer(chat_copy)
    eos = tok.decode([manifest.tokenizer.eos_token_id])
    prompts = load_prompts("chat", limit=2) + load_prompts("humaneval", limit=1)
    rendered = render_chat(prompts, manifest, tok)
    for before, after in zip(prompts[:2], rendered[:2]):
        expected = ChatTemplate(TEMPLATE, "", eos).render([{"role": "user", "content": before.messages[0][1]}])
        assert after.text == expected and after.text.endswith("<|assistant|>\n") and after.id == before.id
    assert rendered[2] == prompts[2]  # a plain prompt is left as it is
    with pytest.raises(StagedxError, match="has a chat template; this one has none"):
        render_chat(prompts, load_manifest(tiny_bundle), _tokenizer(tiny_bundle))
    assert render_chat(prompts[2:], load_manifest(tiny_bundle), None) == prompts[2:]


def test_template_refusal_is_one_clear_error(chat_copy):
    manifest = load_manifest(chat_copy)
    refusing = dataclasses.replace(
        manifest, tokenizer=dataclasses.replace(manifest.tokenizer, chat_template="{{ raise_exception('no') }}")
    )
    with pytest.raises(StagedxError, match="chat/explain-photosynthesis: .*no"):
        render_chat(load_prompts("chat", limit=1), refusing, _tokenizer(chat_copy))


def test_bench_on_the_chat_set(chat_copy, tmp_path):
    from click.testing import CliRunner

    from stagedx.cli import _register, cli

    _register()
    out = tmp_path / "out"
    args = ["bench", str(chat_copy), "--prompts", "chat:3-4", "--max-new-tokens", "3", "--warmup", "0"]
    args += ["--sampling", "greedy", "--methods", "baseline,staged", "--threads", "1", "--out", str(out)]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    data = json.loads((out / "bench.json").read_text())
    ids = [p.id for p in load_prompts("chat:3-4")]
    assert data["config"]["prompt_ids"] == ids and data["config"]["prompts"] == "chat:3-4"
    # the prompt the model saw is the rendered one: longer than the bare instruction's tokens
    tok = _tokenizer(chat_copy)
    bare = [len(tok.encode(p.messages[0][1])) for p in load_prompts("chat:3-4")]
    seen = {r["prompt"]: r["prompt_tokens"] for r in data["records"]}
    assert all(seen[i] > n for i, n in zip(ids, bare))
