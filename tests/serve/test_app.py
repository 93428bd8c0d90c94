"""The real server in a subprocess, driven by the official ``openai`` client and raw HTTP."""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from stagedx.runtime import SamplingConfig

from .conftest import API_KEY, metric

openai = pytest.importorskip("openai")

PROMPT = "def add(a, b):\n"
LONG_PROMPT = "def fib(n):"  # greedy: 1000 tokens of repetition, no EOS (seconds of decoding)


def client(server, key: str = API_KEY):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


def raw(server, method: str, path: str, body=None, headers=None, key: str | None = API_KEY):
    """(status, headers, parsed JSON or text) of one plain HTTP request."""
    url = urlparse(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        hdrs["Authorization"] = f"Bearer {key}"
    data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
    conn.request(method, path, body=data, headers=hdrs)
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    try:
        return resp.status, dict(resp.getheaders()), json.loads(text)
    except ValueError:
        return resp.status, dict(resp.getheaders()), text


class LongStream:
    """A streaming request of ~1000 greedy tokens, open until ``close``: it holds the slot."""

    def __init__(self, server):
        url = urlparse(server.url)
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        body = {"model": "pair", "prompt": LONG_PROMPT, "max_tokens": 1000, "temperature": 0, "stream": True}
        self.conn.request(
            "POST",
            "/v1/completions",
            body=json.dumps(body),
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        )
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200
        assert self.resp.readline().startswith(b"data: {")  # the decode is running

    def close(self) -> None:
        self.conn.sock.close()  # an abrupt disconnect, as a client that goes away
        self.conn.close()


def wait_until(predicate, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.02)


def test_greedy_text_equals_generator(pair_server, pair_generator):
    want = pair_generator.generate(PROMPT, max_new_tokens=40)
    c = client(pair_server)
    res = c.completions.create(model="pair", prompt=PROMPT, max_tokens=40, temperature=0)
    assert res.choices[0].text == want.text
    assert res.choices[0].finish_reason == {"eos": "stop", "length": "length"}[want.finish_reason]
    assert res.usage.prompt_tokens == want.prompt_tokens and res.usage.completion_tokens == len(want.tokens)
    ext = res.model_extra["stagedx"]
    assert ext["strategy"] == "auto" and ext["sampling"] == "greedy"
    assert sum(ext["planner"]["choices"].values()) == ext["rounds"]  # the planner's decisions
    assert ext["tokens_per_oracle_call"] == pytest.approx(len(want.tokens) / ext["oracle_calls"], rel=1e-3)

    chunks = list(c.completions.create(model="pair", prompt=PROMPT, max_tokens=40, temperature=0, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == want.text
    assert len(chunks) >= 2 and all(ch.choices[0].finish_reason is None for ch in chunks[:-1])
    last = chunks[-1]
    assert last.choices[0].finish_reason == res.choices[0].finish_reason
    assert all(ch.usage is None for ch in chunks)  # include_usage not asked: no usage, as OpenAI
    assert "tokens_per_oracle_call" in last.model_extra["stagedx"]
    with_usage = list(
        c.completions.create(
            model="pair",
            prompt=PROMPT,
            max_tokens=40,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert with_usage[-1].choices == [] and with_usage[-1].usage.completion_tokens == len(want.tokens)
    assert all(ch.usage is None for ch in with_usage[:-1])


def test_stream_ends_with_done_event(pair_server):
    status, headers, text = raw(
        pair_server,
        "POST",
        "/v1/completions",
        {"model": "pair", "prompt": PROMPT, "max_tokens": 8, "stream": True, "seed": 1},
    )
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [e for e in text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: {") for e in events[:-1])


def test_sampled_with_seed_is_reproducible(pair_server, pair_generator):
    c = client(pair_server)
    kwargs = dict(
        model="pair", prompt=PROMPT, max_tokens=30, temperature=0.8, top_p=0.95, seed=7, extra_body={"top_k": 40}
    )
    first = c.completions.create(**kwargs).choices[0].text
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(stream=True, **kwargs))
    cfg = SamplingConfig("sample", 0.8, top_k=40, top_p=0.95)
    assert first == streamed == pair_generator.generate(PROMPT, max_new_tokens=30, sampling=cfg, seed=7).text


def test_stop_string_ends_the_text(pair_server, pair_generator):
    full = pair_generator.generate(PROMPT, max_new_tokens=40).text
    stop = full[12:15]  # a string the greedy text reaches
    want = pair_generator.generate(PROMPT, max_new_tokens=40, stop=(stop,))
    res = client(pair_server).completions.create(model="pair", prompt=PROMPT, max_tokens=40, temperature=0, stop=[stop])
    assert res.choices[0].text == want.text == full[: full.find(stop)]
    assert res.choices[0].finish_reason == "stop"


def test_api_key_is_required_except_for_health(pair_server):
    with pytest.raises(openai.AuthenticationError) as exc:
        client(pair_server, key="wrong").completions.create(model="pair", prompt=PROMPT, max_tokens=2)
    assert exc.value.status_code == 401 and exc.value.code == "invalid_api_key"
    for path in ("/v1/models", "/metrics"):
        status, _, body = raw(pair_server, "GET", path, key=None)
        assert status == 401 and body["error"]["type"] == "authentication_error"
    assert raw(pair_server, "GET", "/health", key=None)[0] == 200
    models = client(pair_server).models.list()
    assert [m.id for m in models.data] == ["pair"]
    text = pair_server.metrics()
    assert (
        'stagedx:http_requests_total{code="401",endpoint="completions"}' in text
        and "stagedx:num_requests_waiting 0.0" in text
    )


@pytest.mark.parametrize(
    "body, status, code",
    [
        (b"{bad json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        ({"model": "pair", "prompt": PROMPT, "max_tokens": "ten"}, 422, "invalid_value"),
        ({"model": "pair", "prompt": PROMPT, "temperature": 5}, 422, "invalid_value"),
        ({"model": "pair", "prompt": PROMPT, "n": 2}, 422, "invalid_value"),
        ({"model": "pair", "prompt": ""}, 422, "invalid_value"),
        ({"model": "pair"}, 422, "invalid_value"),
        ({"model": "other", "prompt": PROMPT}, 404, "model_not_found"),
        ({"model": "pair", "prompt": "x = 1\n" * 1000}, 400, "context_length_exceeded"),
        (b"{" + b" " * (2 << 20) + b"}", 413, "request_too_large"),
    ],
)
def test_bad_requests_get_openai_json_errors(pair_server, body, status, code):
    got, _, err = raw(pair_server, "POST", "/v1/completions", body)
    assert got == status and err["error"]["code"] == code and err["error"]["message"]
    assert "Traceback" not in json.dumps(err)


def test_unknown_routes_and_chat_without_template(pair_server):
    assert raw(pair_server, "GET", "/v2/nothing")[2]["error"]["code"] == "not_found"
    assert raw(pair_server, "GET", "/v1/completions")[2]["error"]["code"] == "method_not_allowed"
    with pytest.raises(openai.BadRequestError) as exc:
        client(pair_server).chat.completions.create(model="pair", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.code == "no_chat_template"


def test_full_queue_gets_429(pair_server, pair_generator):
    long = LongStream(pair_server)  # holds the slot
    queued = {}

    def wait_in_queue():
        queued["res"] = client(pair_server).completions.create(model="pair", prompt=PROMPT, max_tokens=5, temperature=0)

    thread = threading.Thread(target=wait_in_queue)
    try:
        thread.start()
        wait_until(lambda: pair_server.health()["queue_depth"] == 1)  # --max-queue 1: now full
        status, headers, err = raw(pair_server, "POST", "/v1/completions", {"model": "pair", "prompt": PROMPT})
        assert status == 429 and err["error"]["code"] == "queue_full" and int(headers["retry-after"]) >= 1
        with pytest.raises(openai.RateLimitError):
            client(pair_server).completions.create(model="pair", prompt=PROMPT, max_tokens=2)
    finally:
        long.close()
        thread.join(60)
    assert queued["res"].choices[0].text == pair_generator.generate(PROMPT, max_new_tokens=5).text  # served, not lost


def test_disconnect_mid_stream_frees_the_slot(pair_server, pair_generator):
    before = pair_server.metrics()
    cancelled = 'stagedx:decodes_total{outcome="cancelled"}'
    long = LongStream(pair_server)
    long.close()
    wait_until(lambda: metric(pair_server.metrics(), cancelled) == metric(before, cancelled) + 1)
    res = client(pair_server).completions.create(model="pair", prompt=PROMPT, max_tokens=5, temperature=0)
    assert res.choices[0].text == pair_generator.generate(PROMPT, max_new_tokens=5).text
    after = pair_server.metrics()
    # the cancelled decode stopped early: far fewer than its 1000 tokens were generated
    done = metric(after, "stagedx:generation_tokens_total") - metric(before, "stagedx:generation_tokens_total")
    assert done == 5
    assert pair_server.health() == {"status": "ok", "model": "pair", "busy": False, "queue_depth": 0}


def test_server_process_never_loads_torch(pair_server):
    maps = Path(f"/proc/{pair_server.proc.pid}/maps")
    if not maps.exists():
        pytest.skip("needs /proc")
    text = maps.read_text()
    assert "onnxruntime" in text and "libtorch" not in text


def test_a_client_that_leaves_the_queue_is_skipped(pair_server):
    cancelled = 'stagedx:decodes_total{outcome="cancelled"}'
    before = metric(pair_server.metrics(), cancelled)
    tokens = metric(pair_server.metrics(), "stagedx:generation_tokens_total")
    long = LongStream(pair_server)
    try:
        url = urlparse(pair_server.url)
        waiting = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        body = json.dumps({"model": "pair", "prompt": PROMPT, "max_tokens": 5})
        waiting.request("POST", "/v1/completions", body=body, headers={"Authorization": f"Bearer {API_KEY}"})
        wait_until(lambda: pair_server.health()["queue_depth"] == 1)
        waiting.sock.close()  # gone while queued
    finally:
        long.close()
    wait_until(lambda: metric(pair_server.metrics(), cancelled) == before + 2)
    assert metric(pair_server.metrics(), "stagedx:generation_tokens_total") == tokens  # neither decode completed
    wait_until(lambda: pair_server.health()["queue_depth"] == 0 and not pair_server.health()["busy"])


def test_usage_reports_this_requests_speculation_and_metrics_add_it_up(pair_server, pair_generator):
    before = pair_server.metrics()
    res = client(pair_server).completions.create(model="pair", prompt=PROMPT, max_tokens=40, temperature=0)
    after = pair_server.metrics()
    spec = res.usage.model_extra["spec_decode"]
    ext = res.model_extra["stagedx"]  # this request's own stats (auto: its trees depend on its timings)
    per_pos = spec["num_accepted_tokens_per_pos"]
    assert all(a >= b for a, b in zip(per_pos, per_pos[1:]))  # depth d accepted only below depth d - 1
    assert spec["num_accepted_tokens"] == sum(per_pos) > 0
    assert spec["num_accepted_tokens"] == ext["accepted_by_stage"]["draft2"] + ext["accepted_by_stage"]["draft"]
    assert spec["num_draft_tokens"] > 0 and spec["num_drafts"] <= ext["oracle_calls"]
    assert res.choices[0].text == pair_generator.generate(PROMPT, max_new_tokens=40).text  # greedy: exact

    def delta(name):
        return metric(after, name) - metric(before, name)

    assert delta("stagedx:spec_decode_num_draft_tokens_total") == spec["num_draft_tokens"]
    assert delta("stagedx:spec_decode_num_accepted_tokens_total") == spec["num_accepted_tokens"]
    assert delta("stagedx:spec_decode_num_drafts_total") == spec["num_drafts"]
    assert (
        delta('stagedx:spec_decode_num_accepted_tokens_per_pos_total{position="0"}')
        == (spec["num_accepted_tokens_per_pos"][0])
    )
    assert delta("stagedx:generation_tokens_total") == res.usage.completion_tokens
    for hist in ("time_to_first_token", "e2e_request_latency", "inter_token_latency", "time_per_output_token"):
        assert delta(f"stagedx:{hist}_seconds_count") >= 1, hist
        assert f'stagedx:{hist}_seconds_bucket{{le="0.005"}}' in after


def test_ready_is_public_and_turns_503_when_the_queue_is_full(pair_server):
    status, _, body = raw(pair_server, "GET", "/ready", key=None)
    assert status == 200 and body["status"] == "ready"
    long = LongStream(pair_server)
    waiting = threading.Thread(
        target=lambda: client(pair_server).completions.create(model="pair", prompt=PROMPT, max_tokens=2)
    )
    try:
        waiting.start()
        wait_until(lambda: pair_server.health()["queue_depth"] == 1)  # --max-queue 1: full
        status, _, body = raw(pair_server, "GET", "/ready", key=None)
        assert status == 503 and body["status"] == "queue_full"
        assert raw(pair_server, "GET", "/health", key=None)[0] == 200  # alive all the same
    finally:
        long.close()
        waiting.join(60)
    wait_until(lambda: raw(pair_server, "GET", "/ready", key=None)[0] == 200)


def test_max_tokens_beyond_the_context_is_cut_and_says_so(pair_server, pair_generator):
    context = pair_generator.context_limit
    prompt = [int(t) for t in pair_generator.tokenizer.encode("x = 1\n" * 400)][: context - 10]  # 10 left
    status, headers, body = raw(
        pair_server, "POST", "/v1/completions", {"model": "pair", "prompt": prompt, "max_tokens": 500, "temperature": 0}
    )
    room = context - len(prompt) + 1
    assert status == 200 and headers["x-stagedx-max-tokens-cut"] == str(room)
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] <= room
    assert body["stagedx"]["max_tokens"] == {"requested": 500, "allowed": room}
    status, headers, body = raw(
        pair_server, "POST", "/v1/completions", {"model": "pair", "prompt": prompt, "max_tokens": 3, "temperature": 0}
    )
    assert "x-stagedx-max-tokens-cut" not in headers and "max_tokens" not in body["stagedx"]


@pytest.mark.parametrize(
    "body, code",
    [
        (b'{"a":' * 150_000 + b"1" + b"}" * 150_000, "invalid_json"),  # 0.9 MB, nested past any recursion limit
        ({"model": "pair", "prompt": PROMPT, "temprature": 0.5}, "unknown_parameter"),
        ({"model": "pair", "prompt": PROMPT, "stop": ""}, "invalid_value"),
    ],
)
def test_red_team_bodies_get_4xx(pair_server, body, code):
    status, _, err = raw(pair_server, "POST", "/v1/completions", body)
    assert status in (400, 422) and err["error"]["code"] == code


def _chunked_post(server, pieces):
    url = urlparse(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    conn.request("POST", "/v1/completions", body=iter(pieces), headers=headers, encode_chunked=True)
    resp = conn.getresponse()
    sent = resp.getheaders()
    body = json.loads(resp.read())
    conn.close()
    return resp.status, dict(sent), body


def test_chunked_body_without_content_length_is_capped_at_1_mib(pair_server):
    head = json.dumps({"model": "pair", "prompt": PROMPT, "max_tokens": 2, "temperature": 0})[:-1]
    status, headers, body = _chunked_post(pair_server, [head.encode(), b"}"])
    assert status == 200 and body["usage"]["completion_tokens"] >= 1 and "content-length" in headers
    padding = [b" " * 65536] * 17  # 1.06 MiB in chunks, no Content-Length header
    status, _, body = _chunked_post(pair_server, [head.encode(), *padding, b"}"])
    assert status == 413 and body["error"]["code"] == "request_too_large"
