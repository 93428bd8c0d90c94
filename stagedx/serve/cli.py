"""``stagedx serve``: load a bundle and serve the OpenAI API on it (uvicorn + Starlette)."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
from pathlib import Path

import click

from ..errors import StagedxError
from ..runtime import STRATEGIES

SHUTDOWN_MARGIN_S = 5.0


def _listen(host: str, port: int) -> socket.socket:
    """Bind and listen before the server starts, so that ``--port 0`` can report its port."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StagedxError(f"cannot resolve --host {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise StagedxError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _is_loopback(address: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def _signals_end_cleanly():
    """uvicorn shuts down gracefully on SIGTERM / SIGINT, then re-raises the signal so the
    previous handler runs; make that handler a no-op so that a requested stop exits 0."""
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _server_class(uvicorn):
    class GracefulServer(uvicorn.Server):
        """Tells the decode worker when a shutdown signal arrives: SIGTERM (an orchestrator)
        lets in-flight work run on for the grace, SIGINT (Ctrl-C at a terminal) or a second
        signal ends it now."""

        def __init__(self, config, worker, grace_s: float):
            super().__init__(config)
            self._worker = worker
            self._grace_s = grace_s

        def handle_exit(self, sig, frame) -> None:
            now = sig == signal.SIGINT or self.should_exit
            self._worker.begin_shutdown(0.0 if now else self._grace_s)
            super().handle_exit(sig, frame)

    return GracefulServer


def _log_config(uvicorn, access_log: bool) -> dict:
    """uvicorn's logging, with the access log (when asked) on stderr: stdout carries only the
    'listening on' line, for scripts that read the port from it."""
    import copy

    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    if access_log:
        config["loggers"]["uvicorn.access"]["level"] = "INFO"
    return config


@click.command("serve")
@click.argument("bundle", type=click.Path())
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="address to bind (loopback unless you say otherwise)"
)
@click.option("--port", type=int, default=8000, show_default=True, help="TCP port (0: any free port, printed at start)")
@click.option(
    "--api-key",
    default=None,
    envvar="STAGEDX_API_KEY",
    help="require 'Authorization: Bearer KEY' on every endpoint but /health (or set STAGEDX_API_KEY)",
)
@click.option("--max-queue", type=int, default=16, show_default=True, help="requests that may wait for the decode slot")
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=300.0,
    show_default=True,
    help="seconds a request may take, queue wait included",
)
@click.option(
    "--grace",
    "grace_s",
    type=float,
    default=10.0,
    show_default=True,
    help="on SIGTERM: seconds in-flight requests may run on before they are cancelled (SIGINT, a 2nd signal: at once)",
)
@click.option("--model-name", default=None, help="the model id clients pass (default: the bundle folder's name)")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="auto", show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | tensorrt")
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
@click.option("--access-log", is_flag=True, help="log every request to stderr")
def serve(
    bundle, host, port, api_key, max_queue, timeout_s, grace_s, model_name, strategy, device, threads, access_log
):
    """Serve BUNDLE over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions,
    /v1/models, /health, /metrics), one decode at a time."""
    if not 0 <= port <= 65535:
        raise StagedxError(f"--port must lie in [0, 65535], got {port}")
    if max_queue < 0 or timeout_s <= 0 or grace_s < 0:
        raise StagedxError("--max-queue must be >= 0, --timeout > 0 and --grace >= 0")
    if api_key is not None and not api_key.strip():
        raise StagedxError("--api-key must not be empty")
    try:
        import uvicorn

        from .app import ServeConfig, create_app
    except ImportError as exc:
        raise StagedxError(f"stagedx serve needs the 'serve' extra (pip install 'stagedx[serve]'): {exc}") from None
    from ..runtime.backends.ort import process_owner_thread_pool
    from ..runtime.generator import Generator

    process_owner_thread_pool(threads)
    gen = Generator(bundle, device=device, strategy=strategy, threads=threads)
    try:
        name = model_name or Path(bundle).resolve().name
        config = ServeConfig(model=name, api_key=api_key, max_queue=max_queue, timeout_s=timeout_s, grace_s=grace_s)
        app = create_app(gen, config)
        sock = _listen(host, port)
        bound = sock.getsockname()[1]
        # uvicorn's own grace is a backstop: the worker ends in-flight decodes at grace_s itself, so
        # that their responses close properly (a stream gets an error event and [DONE]).
        uv = uvicorn.Config(
            app,
            log_level="warning",
            log_config=_log_config(uvicorn, access_log),
            access_log=access_log,
            lifespan="on",
            timeout_graceful_shutdown=grace_s + SHUTDOWN_MARGIN_S,
        )
        if access_log:  # uvicorn sets every one of its loggers to log_level, hiding the access log
            logging.getLogger("uvicorn.access").setLevel(logging.INFO)
        shown = f"[{host}]" if ":" in host else host
        click.echo(
            f"stagedx serve: model {name!r} on {gen.device} ({gen.backend}); listening on http://{shown}:{bound}",
            err=False,
        )
        click.get_text_stream("stdout").flush()
        if api_key is None and not _is_loopback(sock.getsockname()[0]):
            click.echo(f"warning: {host} is reachable from other machines and no --api-key is set", err=True)
        with _signals_end_cleanly():
            _server_class(uvicorn)(uv, app.state.server.worker, grace_s).run(sockets=[sock])
        sock.close()
    finally:
        gen.close(timeout=0)  # a decode still running past the grace keeps its runners until the process ends
    click.echo("stagedx serve: stopped", err=True)


COMMANDS = [serve]
