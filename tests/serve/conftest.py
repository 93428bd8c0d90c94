"""A real ``stagedx serve`` in a subprocess on a free loopback port, and the bundles it serves."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-key-0123456789"
# A ChatML-like template using the special tokens, as Hugging Face tokenizers carry them.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


class ServerProcess:
    """``python -m stagedx serve BUNDLE --port 0 ...``; ``url`` once /ready answers 200."""

    def __init__(self, bundle: Path, *args: str, log: Path):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        cmd = [
            sys.executable,
            "-m",
            "stagedx",
            "serve",
            str(bundle),
            "--port",
            "0",
            "--device",
            "cpu",
            "--threads",
            "1",
            *args,
        ]
        self.log = log
        self._err = open(log, "w")  # noqa: SIM115 - closed in stop(); a file, not a pipe: a full pipe would block the server
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._err, text=True, env=env, cwd=ROOT)
        ready, _, _ = select.select([self.proc.stdout], [], [], 120)
        line = self.proc.stdout.readline() if ready else ""
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        if not match:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"server did not start: {line!r}\n{self.stderr()}")
        self.url = match.group(1)
        self._wait_healthy()

    def _wait_healthy(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=5) as r:  # loaded and warmed up
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):  # HTTPError 503 included
                time.sleep(0.05)
        raise RuntimeError(f"server at {self.url} never became healthy\n{self.stderr()}")

    def stderr(self) -> str:
        return self.log.read_text()

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "/health", timeout=10) as r:
            return json.loads(r.read())

    def metrics(self) -> str:
        req = urllib.request.Request(self.url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read().decode()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self._err.close()
        return self.proc.returncode


def metric(text: str, name: str) -> float:
    """The value of one sample (``name`` includes its labels) in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise KeyError(name)


@pytest.fixture(scope="session")
def chat_bundle(tiny_pair, tmp_path_factory) -> Path:
    """The tiny pair exported from an oracle whose tokenizer config carries a chat template."""
    from stagedx.export.bundle import ExportConfig, export_bundle

    root = tmp_path_factory.mktemp("chat")
    oracle = root / "oracle"
    shutil.copytree(tiny_pair.oracle, oracle)
    config = json.loads((oracle / "tokenizer_config.json").read_text())
    (oracle / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHAT_TEMPLATE}))
    return export_bundle(
        ExportConfig(oracle=str(oracle), draft=str(tiny_pair.draft), output=root / "bundle", draft2="prompt-lookup")
    )


@pytest.fixture(scope="module")
def pair_server(pair_bundle, tmp_path_factory):
    """The vendored pair behind an API key, with room for one waiting request."""
    log = tmp_path_factory.mktemp("pair_server") / "stderr.log"
    server = ServerProcess(pair_bundle, "--api-key", API_KEY, "--max-queue", "1", "--model-name", "pair", log=log)
    yield server
    assert server.stop() == 0
    assert "Traceback" not in server.stderr() and "ERROR" not in server.stderr(), server.stderr()


@pytest.fixture(scope="module")
def pair_generator(pair_bundle):
    from stagedx.runtime import Generator

    return Generator(pair_bundle, device="cpu", threads=1)
