"""The Starlette application: routes, authentication, body limits, and the glue between HTTP
requests and the decode slot (:mod:`.worker`).

Every error leaves as OpenAI-style JSON (never a traceback); a streamed response that fails
after its headers ends with an ``error`` event and ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import time
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import StagedxError
from .chat import template_for
from .metrics import CONTENT_TYPE, Metrics
from .responses import DONE, Reply, event
from .schemas import ApiError, DecodeParams, Limits, chat_params, completion_params, parse_body
from .worker import DecodeWorker, Event, Job

log = logging.getLogger("stagedx.serve")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(frozen=True)
class ServeConfig:
    model: str  # the name clients pass as "model"
    api_key: str | None = None
    max_queue: int = 16  # requests waiting behind the running decode
    timeout_s: float = 300.0  # per request, queue wait included
    grace_s: float = 10.0  # shutdown: how long in-flight work may run on
    max_body_bytes: int = 1 << 20
    warm_up: bool = True  # one short decode before /ready says yes


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


class Server:
    """State shared by the routes: the generator (touched only by the decode thread), an
    encoder-only tokenizer for the event loop, the chat template, queue and metrics."""

    def __init__(self, generator, config: ServeConfig):
        from ..runtime.tokenizer import Tokenizer

        self.config = config
        self.generator = generator
        bundle, manifest = generator.bundle_dir, generator.manifest
        self.tokenizer = Tokenizer.for_bundle(bundle, manifest.tokenizer)  # a second instance: encode only
        self.limits = Limits(config.model, generator.context_limit, generator.vocab)
        self.chat = template_for(manifest, self.tokenizer)
        self.metrics = Metrics(config.model)
        self.worker = DecodeWorker(generator, self.metrics, config.max_queue, config.timeout_s, config.warm_up)

    # -- plumbing ----------------------------------------------------------------------------
    def route(self, path: str, name: str, handler, methods: tuple, public: bool = False) -> Route:
        async def endpoint(request: Request) -> Response:
            try:
                if not public:
                    self._authorize(request)
                response = await handler(request)
            except ApiError as err:
                response = error_response(err)
            except Exception:  # the client gets JSON, the log gets the traceback
                log.exception("request failed")
                response = error_response(ApiError(500, "internal server error", kind="server_error"))
            self.metrics.request(name, response.status_code)
            return response

        return Route(path, endpoint, methods=list(methods))

    def _authorize(self, request: Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise ApiError(
                401,
                "invalid or missing API key: send 'Authorization: Bearer KEY'",
                kind="authentication_error",
                code="invalid_api_key",
            )

    async def _body(self, request: Request) -> dict:
        limit = self.config.max_body_bytes
        too_big = ApiError(413, f"the request body exceeds {limit} bytes", code="request_too_large")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        return parse_body(b"".join(chunks))

    def _encode(self, prompt) -> tuple:
        if isinstance(prompt, tuple):
            ids = prompt
        else:
            try:
                ids = tuple(int(t) for t in self.tokenizer.encode(prompt))
            except StagedxError as exc:
                raise ApiError(400, str(exc), param="prompt") from None
        if not ids:
            raise ApiError(400, "the prompt encodes to no tokens", param="prompt")
        if len(ids) >= self.limits.context:
            raise ApiError(
                400,
                f"the prompt has {len(ids)} tokens; this model's context is {self.limits.context}",
                param="prompt",
                code="context_length_exceeded",
            )
        return ids

    # -- routes ------------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        """Liveness: 200 while the process can serve (the decode slot alive), else 503."""
        w = self.worker
        body = {"status": "ok", "model": self.config.model, "busy": w.busy, "queue_depth": w.queue_depth}
        if w.warm_up_error is not None:
            return JSONResponse({**body, "status": "failed", "error": w.warm_up_error}, status_code=503)
        return JSONResponse(body)

    async def ready(self, request: Request) -> Response:
        """Readiness: 200 when a request sent now would be taken (model loaded and warmed, not
        shutting down, queue not full), else 503 with the reason; routers and Kubernetes
        send traffic elsewhere meanwhile."""
        w = self.worker
        if w.warm_up_error is not None:
            reason = "failed"
        elif not w.warmed.is_set():
            reason = "warming_up"
        elif not w.accepting:
            reason = "shutting_down"
        elif w.full:
            reason = "queue_full"
        else:
            reason = None
        body = {"status": reason or "ready", "model": self.config.model, "busy": w.busy, "queue_depth": w.queue_depth}
        return JSONResponse(body, status_code=503 if reason else 200)

    async def models(self, request: Request) -> Response:
        g = self.generator
        card = {
            "id": self.config.model,
            "object": "model",
            "created": 0,
            "owned_by": "stagedx",
            "stagedx": {
                "bundle": str(g.bundle_dir),
                "device": g.device,
                "backend": g.backend,
                "strategy": g.strategy,
                "context": self.limits.context,
                "chat_template": self.chat is not None,
            },
        }
        return JSONResponse({"object": "list", "data": [card]})

    async def metrics_text(self, request: Request) -> Response:
        w = self.worker
        return Response(self.metrics.render(w.queue_depth, w.busy, w.max_queue), media_type=CONTENT_TYPE)

    async def completions(self, request: Request) -> Response:
        params = completion_params(await self._body(request), self.limits)
        return await self._decode(request, params, self._encode(params.prompt), Reply.new(False, self.config.model))

    async def chat_completions(self, request: Request) -> Response:
        if self.chat is None:
            raise ApiError(
                400, "this bundle's tokenizer has no chat template: use /v1/completions", code="no_chat_template"
            )
        params = chat_params(await self._body(request), self.limits)
        ids = self._encode(self.chat.render(params.messages))
        return await self._decode(request, params.decode, ids, Reply.new(True, self.config.model))

    # -- one decode --------------------------------------------------------------------------
    async def _decode(self, request: Request, params: DecodeParams, ids: tuple, reply: Reply) -> Response:
        room = self.limits.context - len(ids) + 1  # the most new tokens the context leaves
        max_tokens = min(params.max_tokens or room, room)
        if params.max_tokens is not None and params.max_tokens > room:  # say so, never cut silently
            reply = dataclasses.replace(reply, max_tokens_cut=(params.max_tokens, room))
        deadline = time.monotonic() + self.config.timeout_s
        job = Job(ids, params.options(max_tokens), deadline, asyncio.get_running_loop())
        self.worker.submit(job)
        watcher = asyncio.create_task(_watch_disconnect(request, job))
        streaming = False  # once the EventStream owns the job, it cancels it
        try:
            first = await job.events.get()
            if first[0] == "error":
                raise first[1]
            if first[0] == "gone":
                return Response(status_code=499)  # nobody reads it
            if params.stream:
                watcher.cancel()  # from here on the streaming response watches the connection
                await asyncio.gather(watcher, return_exceptions=True)
                streaming = True
                return EventStream(self._sse(job, first, reply, params.include_usage), job, reply.headers())
            events = [first]
            while events[-1][0] == "text":
                events.append(await job.events.get())
            kind, value = events[-1]
            if kind == "error":
                raise value
            if kind == "gone":
                return Response(status_code=499)
            return JSONResponse(reply.full(value), headers=reply.headers())
        finally:
            watcher.cancel()
            if not streaming:
                job.cancel()  # no-op once the decode has finished; frees the slot otherwise

    async def _sse(self, job: Job, first: tuple, reply: Reply, include_usage: bool):
        if reply.chat:
            yield reply.chunk(role=True)
        kind, value = first
        while True:
            if kind == "text":
                yield reply.chunk(text=value)
            elif kind == "done":
                yield reply.chunk(result=value)
                if include_usage:
                    yield reply.usage_chunk(value)
                yield DONE
                return
            elif kind == "error":
                yield event(value.body())
                yield DONE
                return
            else:  # "gone"
                return
            kind, value = await job.events.get()


class EventStream(StreamingResponse):
    """Server-sent events whose decode is cancelled however the response ends (client gone,
    server shutting down, error while sending)."""

    def __init__(self, content, job: Job, headers: dict):
        super().__init__(content, media_type="text/event-stream", headers={**SSE_HEADERS, **headers})
        self.job = job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()
            with contextlib.suppress(Exception):
                await self.body_iterator.aclose()


async def _watch_disconnect(request: Request, job: Job) -> None:
    """Until cancelled: when the client goes away, cancel its job and wake the handler."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancel()
            job.events.put_nowait(Event("gone"))
            return


def create_app(generator, config: ServeConfig) -> Starlette:
    """The ASGI application over a loaded ``stagedx.runtime.Generator``."""
    server = Server(generator, config)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        server.worker.start()
        try:
            yield
        finally:
            server.worker.close(config.grace_s)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = "not_found" if exc.status_code == 404 else "method_not_allowed" if exc.status_code == 405 else None
        err = ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=code)
        server.metrics.request("other", exc.status_code)
        return error_response(err)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("unhandled error", exc_info=exc)
        return error_response(ApiError(500, "internal server error", kind="server_error"))

    routes = [
        server.route("/health", "health", server.health, ("GET",), public=True),
        server.route("/ready", "ready", server.ready, ("GET",), public=True),
        server.route("/v1/models", "models", server.models, ("GET",)),
        server.route("/metrics", "metrics", server.metrics_text, ("GET",)),
        server.route("/v1/completions", "completions", server.completions, ("POST",)),
        server.route("/v1/chat/completions", "chat_completions", server.chat_completions, ("POST",)),
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error, Exception: server_error}
    )
    app.state.server = server
    return app
