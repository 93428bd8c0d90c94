"""``stagedx serve`` as a command: one-line errors, and a clean exit on SIGTERM / SIGINT mid-stream."""

from __future__ import annotations

import http.client
import signal
import socket
import threading
import time
import urllib.request

import pytest

from stagedx.cli import main

from .conftest import ServerProcess
from .test_app import API_KEY, LongStream


def run_cli(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code, capsys.readouterr().err


def test_bad_bundle_is_one_line_and_exit_2(tmp_path, capsys):
    code, err = run_cli(["serve", str(tmp_path / "missing")], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize("args", [["--port", "70000"], ["--max-queue", "-1"], ["--api-key", " "]])
def test_bad_options_are_one_line_and_exit_2(tiny_bundle, args, capsys):
    code, err = run_cli(["serve", str(tiny_bundle), *args], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1


def test_port_in_use_is_one_line_and_exit_2(tiny_bundle, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        code, err = run_cli(["serve", str(tiny_bundle), "--port", str(busy.getsockname()[1]), "--threads", "1"], capsys)
    assert code == 2 and "cannot listen on 127.0.0.1:" in err and err.count("\n") == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_stream_cancels_at_the_grace_and_exits_0(pair_bundle, tmp_path, sig):
    # baseline: ~1000 greedy tokens last seconds however well speculation does, longer than the grace
    server = ServerProcess(
        pair_bundle,
        "--api-key",
        API_KEY,
        "--model-name",
        "pair",
        "--grace",
        "0.5",
        "--strategy",
        "baseline",
        log=tmp_path / "e",
    )
    long = LongStream(server)  # a decode of ~1000 tokens is running
    rest = {}

    def read_rest():
        try:
            rest["body"] = long.resp.read()
        except http.client.IncompleteRead as exc:  # the server closed the stream mid-way
            rest["body"] = exc.partial

    reader = threading.Thread(target=read_rest)
    reader.start()
    try:
        assert server.stop(sig, timeout=30) == 0
    finally:
        reader.join(30)
        long.close()
    assert "Traceback" not in server.stderr() and "stagedx serve: stopped" in server.stderr()
    events = rest["body"].decode().strip().split("\n\n")
    assert events[-1] == "data: [DONE]" and '"code": "shutting_down"' in events[-2]  # ended at the grace
    assert not any('"finish_reason": "length"' in e for e in events)  # cut at shutdown, not run to the end
    assert "ERROR" not in server.stderr()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=5).close()


def test_sigint_ends_a_running_stream_at_once_despite_the_default_grace(pair_bundle, tmp_path):
    server = ServerProcess(
        pair_bundle, "--api-key", API_KEY, "--model-name", "pair", "--strategy", "baseline", log=tmp_path / "e"
    )  # default --grace (10 s): SIGINT must not wait for it
    long = LongStream(server)
    rest = {}

    def read_rest():
        try:
            rest["body"] = long.resp.read()
        except http.client.IncompleteRead as exc:
            rest["body"] = exc.partial

    reader = threading.Thread(target=read_rest)
    reader.start()
    t0 = time.monotonic()
    try:
        assert server.stop(signal.SIGINT, timeout=30) == 0
    finally:
        reader.join(30)
        long.close()
    assert time.monotonic() - t0 < 8.0  # the grace (10 s) was not waited for
    events = rest["body"].decode().strip().split("\n\n")
    assert events[-1] == "data: [DONE]" and '"code": "shutting_down"' in events[-2]


def test_access_log_goes_to_stderr(pair_bundle, tmp_path):
    server = ServerProcess(pair_bundle, "--access-log", log=tmp_path / "e")
    try:
        server.health()
        urllib.request.urlopen(server.url + "/ready", timeout=10).close()
    finally:
        assert server.stop() == 0
    log = server.stderr()
    assert '"GET /health HTTP/1.1" 200' in log and '"GET /ready HTTP/1.1" 200' in log
