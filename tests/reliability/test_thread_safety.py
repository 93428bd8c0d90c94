"""Class 1: one Generator shared between threads serialises its calls; outputs never mix."""

from __future__ import annotations

import threading

import pytest

from stagedx.errors import StagedxError
from stagedx.runtime import Generator

PROMPTS = ["def f(x):", "import os\n", "class A:\n    def", "for i in range(", "x = [", "print(", "return "]


def test_shared_generator_gives_every_thread_the_single_threaded_output(tiny_bundle):
    gen = Generator(tiny_bundle, device="cpu", threads=1)
    strategies = ["staged", "speculative", "baseline"]
    jobs = [(p, s) for p in PROMPTS for s in strategies]
    expected = {job: gen.generate(job[0], max_new_tokens=12, strategy=job[1], ignore_eos=True).tokens for job in jobs}
    results: dict = {}
    errors: list = []
    start = threading.Barrier(6)

    def worker(k: int) -> None:
        start.wait()
        for i in range(k, len(jobs), 6):
            prompt, strategy = jobs[i]
            try:
                if i % 2:  # half streamed, half generated, interleaved across threads
                    stream = gen.stream(prompt, max_new_tokens=12, strategy=strategy, ignore_eos=True)
                    text = "".join(stream)
                    results[jobs[i]] = (stream.result.tokens, text)
                else:
                    res = gen.generate(prompt, max_new_tokens=12, strategy=strategy, ignore_eos=True)
                    results[jobs[i]] = (res.tokens, res.text)
            except Exception as exc:  # noqa: BLE001 - collected and reported below
                errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert set(results) == set(jobs)
    for job, (tokens, text) in results.items():
        assert tokens == expected[job], job
        assert text == gen.tokenizer.decode(expected[job]), job


def test_a_stream_holds_the_generator_until_it_ends(tiny_bundle):
    gen = Generator(tiny_bundle, device="cpu", threads=1)
    ref = gen.generate("import os\n", max_new_tokens=6, ignore_eos=True).tokens
    stream = gen.stream("def f(x):", max_new_tokens=12, ignore_eos=True)
    next(stream)
    with pytest.raises(StagedxError, match="already decoding in this thread"):
        gen.generate("import os\n", max_new_tokens=6, ignore_eos=True)
    with pytest.raises(StagedxError, match="already decoding in this thread"):
        gen.close()  # would wait for itself
    other: list = []
    t = threading.Thread(
        target=lambda: other.append(gen.generate("import os\n", max_new_tokens=6, ignore_eos=True).tokens)
    )
    t.start()
    t.join(timeout=0.5)
    assert t.is_alive()  # waits for the stream, does not interleave with it
    rest = "".join(stream)
    t.join(timeout=60)
    assert other == [ref]
    assert rest is not None
    stream = gen.stream("def f(x):", max_new_tokens=12, ignore_eos=True)
    next(stream)
    stream.close()  # closing releases the lock
    assert gen.generate("import os\n", max_new_tokens=6, ignore_eos=True).tokens == ref


def test_close_waits_for_a_decode_in_another_thread(tiny_bundle):
    gen = Generator(tiny_bundle, device="cpu", threads=1)
    stream = gen.stream("def f(x):", max_new_tokens=12, ignore_eos=True)
    next(stream)
    gave_up: list = []
    t = threading.Thread(target=lambda: gave_up.append(gen.close(timeout=0.2)))
    t.start()
    t.join(timeout=30)
    assert gave_up == [False]  # the stream holds the Generator: nothing released
    t = threading.Thread(target=gen.close)
    t.start()
    t.join(timeout=0.5)
    assert t.is_alive()  # waits for the stream
    text = "".join(stream)
    t.join(timeout=60)
    assert not t.is_alive() and text and stream.result.tokens
    with pytest.raises(StagedxError, match="closed"):
        gen.generate("import os\n", max_new_tokens=6)
