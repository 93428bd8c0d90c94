"""The decode slot: one thread runs one decode at a time (batch size 1 by design) from a
bounded FIFO queue, so the server never calls the ``Generator`` from two threads.

A :class:`Job` talks back to the event loop through an ``asyncio.Queue`` of ``Event``s:
``Event("text", str)`` for each piece the runtime accepts, then one ``Event("done",
GenerationResult)`` or ``Event("error", ApiError)`` (or ``Event("gone", None)`` when the
client left). A job is cancelled (client gone, server
shutting down) by setting its flag: the decode thread checks it after every piece the stream
yields, closes the stream and takes the next job. The per-request deadline is
checked at the same points and when a job leaves the queue.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from ..errors import StagedxError
from ..runtime.request import DecodeOptions
from .metrics import Metrics
from .responses import FINISH
from .schemas import ApiError

log = logging.getLogger("stagedx.serve")


EventKind = Literal["text", "done", "error", "gone"]
EVENT_KINDS = ("text", "done", "error", "gone")


class Event(NamedTuple):
    """What a job tells the event loop: its kind and the value of that kind (a text piece, the
    ``GenerationResult``, the ``ApiError``, or None when the client is gone)."""

    kind: EventKind
    value: object = None


@dataclass
class Job:
    prompt: tuple  # token ids
    options: DecodeOptions  # the Generator's decode options (max_new_tokens, sampling, seed, stop)
    deadline: float  # time.monotonic() after which the job is abandoned
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    arrived: float = field(default_factory=time.monotonic)  # for the latency histograms
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()

    def emit(self, kind: EventKind, value) -> None:
        """Called from the decode thread."""
        assert kind in EVENT_KINDS, kind
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, Event(kind, value))
        except RuntimeError:  # the event loop has closed: nobody is listening any more
            self.cancel()


def shutdown_error() -> ApiError:
    return ApiError(503, "the server is shutting down", kind="server_error", code="shutting_down")


def timeout_error(seconds: float) -> ApiError:
    return ApiError(
        504, f"the request did not finish within the server's timeout of {seconds:g} s", kind="timeout", code="timeout"
    )


class DecodeWorker:
    """``submit`` from the event loop; ``start`` / ``close`` around the server's life."""

    def __init__(self, generator, metrics: Metrics, max_queue: int, timeout_s: float, warm_up: bool = False):
        self.generator = generator
        self.warm_up = warm_up  # run one short decode on the thread before the first job
        self.warmed = threading.Event()
        self.warm_up_error: str | None = None
        self.metrics = metrics
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._closed = False
        self._mean_s = 1.0  # running mean of a decode's duration, for Retry-After
        self.stop_at: float | None = None  # set once by begin_shutdown (from a signal handler)
        self._thread = threading.Thread(target=self._loop, name="stagedx-decode", daemon=True)

    # -- event-loop side -------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        with self._cond:
            return len(self._waiting)

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._running is not None

    @property
    def full(self) -> bool:
        """Whether ``submit`` would answer 429 now."""
        with self._cond:
            return (self._running is not None or bool(self._waiting)) and len(self._waiting) >= self.max_queue

    @property
    def accepting(self) -> bool:
        return not self._closed and self.stop_at is None

    def submit(self, job: Job) -> None:
        """Queue ``job``, or raise 429 when ``max_queue`` requests already wait for the slot."""
        with self._cond:
            if self._closed or self.stop_at is not None:
                raise shutdown_error()
            if (self._running is not None or self._waiting) and len(self._waiting) >= self.max_queue:
                wait = max(1, math.ceil(self._mean_s * (len(self._waiting) + 1)))
                raise ApiError(
                    429,
                    f"the decode queue is full ({len(self._waiting)} waiting): retry later",
                    kind="rate_limit_error",
                    code="queue_full",
                    headers={"Retry-After": str(wait)},
                )
            self._waiting.append(job)
            self._cond.notify()

    def begin_shutdown(self, grace_s: float) -> None:
        """Refuse new jobs; those running or waiting may go on for ``grace_s`` seconds, then
        end with a 503 (a later call may only bring that end closer). Safe in a signal
        handler: one attribute write, no lock."""
        end = time.monotonic() + grace_s
        if self.stop_at is None or end < self.stop_at:  # a second signal may shorten it
            self.stop_at = end

    def close(self, grace_s: float) -> None:
        """Refuse new jobs, fail the waiting ones, cancel the running one, join the thread."""
        with self._cond:
            self._closed = True
            waiting, self._waiting = list(self._waiting), deque()
            if self._running is not None:
                self._running.cancel()
            self._cond.notify_all()
        for job in waiting:
            job.emit("error", shutdown_error())
        if self._thread.is_alive():
            self._thread.join(timeout=grace_s)

    # -- decode thread -----------------------------------------------------------------------
    def _warm_up(self) -> None:
        """The first request pays no set-up (ONNX Runtime's first runs allocate and plan)."""
        gen = self.generator
        try:
            gen.generate([gen.eos if gen.eos is not None else 0], max_new_tokens=2)
        except Exception as exc:  # the server stays alive and says so on /health and /ready
            log.exception("warm-up decode failed")
            self.warm_up_error = f"{type(exc).__name__}: {exc}"
            return
        self.warmed.set()

    def _loop(self) -> None:
        if self.warm_up:
            self._warm_up()
        else:
            self.warmed.set()
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if not self._waiting:
                    return
                job = self._running = self._waiting.popleft()
            t0 = time.monotonic()
            try:
                self._run(job)
            finally:
                with self._cond:
                    self._running = None
                    self._mean_s = 0.8 * self._mean_s + 0.2 * (time.monotonic() - t0)

    def _must_end(self, job: Job) -> bool:
        """Whether ``job`` ends here: cancelled, past its deadline or past the shutdown grace."""
        now = time.monotonic()
        if job.cancelled.is_set():
            self.metrics.outcome("cancelled")
        elif now > job.deadline:
            self.metrics.outcome("timeout")
            job.emit("error", timeout_error(self.timeout_s))
        elif self.stop_at is not None and now > self.stop_at:
            self.metrics.outcome("cancelled")
            job.emit("error", shutdown_error())
        else:
            return False
        return True

    def _run(self, job: Job) -> None:
        if self._must_end(job):
            return
        stream = None
        started = time.monotonic()
        first = last = None
        try:
            stream = self.generator.stream(list(job.prompt), options=job.options)
            for piece in stream:
                if self._must_end(job):
                    return
                now = time.monotonic()
                if first is None:
                    first = now
                    self.metrics.first_token(now - job.arrived)
                else:
                    self.metrics.piece_gap(now - last)
                last = now
                job.emit("text", piece)
            result = stream.result
        except StagedxError as exc:
            self.metrics.outcome("failed")
            job.emit("error", ApiError(400, str(exc)))
            return
        except Exception as exc:  # a failed decode must not end the slot's thread
            log.exception("decode failed")
            self.metrics.outcome("failed")
            job.emit("error", ApiError(500, f"the decode failed: {type(exc).__name__}", kind="server_error"))
            return
        finally:
            if stream is not None:
                stream.close()
        timings = {
            "queue": started - job.arrived,
            "first": None if first is None else first - job.arrived,
            "total": time.monotonic() - job.arrived,
        }
        self.metrics.decode(result, FINISH[result.finish_reason], timings)
        job.emit("done", result)
