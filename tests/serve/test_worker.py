"""The decode slot's queue rules, with a scripted stand-in for ``Generator.stream`` whose
rounds the test releases one by one (the real server is exercised in test_app.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from stagedx.runtime.request import DecodeOptions
from stagedx.runtime.results import GenerationResult, Stats, Stream
from stagedx.serve.metrics import Metrics
from stagedx.serve.schemas import ApiError
from stagedx.serve.worker import DecodeWorker, Job


class Scripted:
    """``stream`` returns a Stream of "a", "b", "c", each after the test calls ``step()``; records who
    ran, how many ran at once, and which streams were closed early."""

    def __init__(self, gated: bool = True):
        self.gated = gated
        self.gate = threading.Semaphore(0)
        self.started, self.closed_early = [], []
        self.active = self.max_active = 0

    def step(self, n: int = 1) -> None:
        for _ in range(n):
            self.gate.release()

    def stream(self, prompt, *, options: DecodeOptions) -> Stream:
        return Stream(self._pieces(prompt))

    def _pieces(self, prompt):
        self.started.append(prompt[0])
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        finished = False
        try:
            for piece in "abc":
                if self.gated:
                    self.gate.acquire(timeout=10)
                yield piece
            stats = Stats("staged", "greedy", oracle_calls=1, new_tokens=3)
            finished = True
            return GenerationResult("abc", [1, 2, 3], len(prompt), "length", stats)
        finally:
            self.active -= 1
            if not finished:
                self.closed_early.append(prompt[0])


def job(loop, tag: int, timeout: float = 30.0) -> Job:
    return Job((tag,), DecodeOptions(max_new_tokens=3), time.monotonic() + timeout, loop)


async def drain(j: Job) -> list:
    events = []
    while not events or events[-1][0] == "text":
        events.append(await asyncio.wait_for(j.events.get(), 10))
    return events


def run(coro):
    return asyncio.run(coro)


def test_jobs_run_one_at_a_time_in_order():
    gen = Scripted(gated=False)
    worker = DecodeWorker(gen, Metrics("m"), max_queue=8, timeout_s=30)

    async def main():
        loop = asyncio.get_running_loop()
        jobs = [job(loop, i) for i in range(4)]
        for j in jobs:
            worker.submit(j)
        worker.start()
        return [await drain(j) for j in jobs]

    results = run(main())
    worker.close(5)
    assert gen.started == [0, 1, 2, 3] and gen.max_active == 1
    for events in results:
        assert [v for k, v in events[:-1]] == ["a", "b", "c"] and events[-1][0] == "done"


def test_full_queue_is_429_with_retry_after():
    gen = Scripted()
    worker = DecodeWorker(gen, Metrics("m"), max_queue=1, timeout_s=30)
    worker.start()

    async def main():
        loop = asyncio.get_running_loop()
        running, waiting = job(loop, 0), job(loop, 1)
        worker.submit(running)
        gen.step()
        assert (await running.events.get()) == ("text", "a")  # the slot is taken
        worker.submit(waiting)
        with pytest.raises(ApiError) as exc:
            worker.submit(job(loop, 2))
        assert exc.value.status == 429 and int(exc.value.headers["Retry-After"]) >= 1
        assert worker.queue_depth == 1 and worker.busy
        gen.step(5)
        await drain(running)
        assert (await drain(waiting))[-1][0] == "done"

    run(main())
    worker.close(5)
    assert gen.started == [0, 1]


def test_cancel_closes_the_stream_and_frees_the_slot():
    gen = Scripted()
    metrics = Metrics("m")
    worker = DecodeWorker(gen, metrics, max_queue=4, timeout_s=30)
    worker.start()

    async def main():
        loop = asyncio.get_running_loop()
        first, second = job(loop, 0), job(loop, 1)
        worker.submit(first)
        worker.submit(second)
        gen.step()
        assert (await first.events.get()) == ("text", "a")
        first.cancel()
        gen.step(4)  # the next round of the first job notices the flag
        assert (await drain(second))[-1][0] == "done"
        assert first.events.empty()  # nothing more was sent for the cancelled job

    run(main())
    worker.close(5)
    assert (
        gen.closed_early == [0] and metrics.outcome_count("cancelled") == 1 and metrics.outcome_count("completed") == 1
    )


def test_deadline_ends_a_job_with_504():
    gen = Scripted(gated=False)
    worker = DecodeWorker(gen, Metrics("m"), max_queue=4, timeout_s=0.5)

    async def main():
        late = job(asyncio.get_running_loop(), 0, timeout=-1.0)
        worker.submit(late)
        worker.start()
        return await drain(late)

    events = run(main())
    worker.close(5)
    assert events[-1][0] == "error" and events[-1][1].status == 504 and gen.started == []


def test_shutdown_refuses_new_jobs_and_ends_running_ones_after_the_grace():
    gen = Scripted()
    worker = DecodeWorker(gen, Metrics("m"), max_queue=4, timeout_s=30)
    worker.start()

    async def main():
        loop = asyncio.get_running_loop()
        running = job(loop, 0)
        worker.submit(running)
        gen.step()
        assert (await running.events.get()) == ("text", "a")
        assert worker.accepting
        worker.begin_shutdown(0.0)
        assert not worker.accepting  # /ready answers 503 from here on
        with pytest.raises(ApiError) as exc:
            worker.submit(job(loop, 1))
        assert exc.value.status == 503
        gen.step(5)
        return await drain(running)

    events = run(main())
    worker.close(5)
    assert events[-1][0] == "error" and events[-1][1].code == "shutting_down" and gen.closed_early == [0]


def test_close_with_jobs_still_queued_fails_them_and_cancels_the_running_one():
    gen = Scripted()
    metrics = Metrics("m")
    worker = DecodeWorker(gen, metrics, max_queue=4, timeout_s=30)
    worker.start()

    async def main():
        loop = asyncio.get_running_loop()
        running, queued = job(loop, 0), [job(loop, i) for i in (1, 2, 3)]
        for j in (running, *queued):
            worker.submit(j)
        gen.step()
        assert (await running.events.get()) == ("text", "a")
        assert worker.queue_depth == 3
        closer = loop.run_in_executor(None, worker.close, 5.0)  # joins the decode thread
        await asyncio.sleep(0.05)
        gen.step(5)  # the running job's next round sees its flag
        await closer
        with pytest.raises(ApiError) as exc:
            worker.submit(job(loop, 9))
        assert exc.value.code == "shutting_down"
        return [await drain(j) for j in queued], running

    failed, running = run(main())
    for events in failed:  # every queued request answered, none run
        assert events == [("error", events[0][1])] and events[0][1].status == 503
    assert running.events.empty() and running.cancelled.is_set()
    assert gen.started == [0] and gen.closed_early == [0] and not worker._thread.is_alive()
    assert worker.queue_depth == 0 and not worker.busy and metrics.outcome_count("cancelled") == 1


class Warming(Scripted):
    """``generate`` (the warm-up) waits for the test, then succeeds or raises."""

    def __init__(self, fails: bool):
        super().__init__(gated=False)
        self.fails = fails
        self.eos = 0
        self.release = threading.Event()

    def generate(self, prompt, *, max_new_tokens):
        self.release.wait(10)
        if self.fails:
            raise RuntimeError("no kernel for this node")
        return None


@pytest.mark.parametrize("fails", [False, True])
def test_warm_up_runs_first_on_the_decode_thread_and_reports_failure(fails):
    gen = Warming(fails)
    worker = DecodeWorker(gen, Metrics("m"), max_queue=4, timeout_s=30, warm_up=True)
    worker.start()
    assert not worker.warmed.is_set() and worker.warm_up_error is None
    gen.release.set()
    end = time.monotonic() + 10
    while not (worker.warmed.is_set() or worker.warm_up_error) and time.monotonic() < end:
        time.sleep(0.01)
    worker.close(5)
    assert worker.warmed.is_set() is not fails
    assert (worker.warm_up_error is not None) is fails
    if fails:
        assert "no kernel for this node" in worker.warm_up_error
