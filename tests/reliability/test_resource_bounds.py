"""Class 3: thread counts bounded by the cores this process may use, in every command and the API."""

from __future__ import annotations

import pytest

from stagedx.errors import StagedxError
from stagedx.runtime import Generator
from stagedx.runtime.device import available_cores, check_threads
from tests.reliability._util import assert_one_line_error, run_cli


@pytest.mark.parametrize("threads", [0, -3, 999, available_cores() + 1])
def test_api_refuses_threads_outside_the_cores(tiny_bundle, threads):
    with pytest.raises(StagedxError, match=r"threads must be an integer in \[1, "):
        Generator(tiny_bundle, device="cpu", threads=threads)


def test_every_core_count_in_range_is_accepted():
    for n in range(1, available_cores() + 1):
        check_threads(n)
    check_threads(None)


@pytest.mark.parametrize(
    "command", [["generate", "{b}", "def f(x):"], ["bench", "{b}", "--limit", "1"], ["tune", "{b}"]]
)
@pytest.mark.parametrize("threads", ["0", "-3", "999"])
def test_cli_refuses_threads_outside_the_cores(tiny_bundle, tmp_path, capsys, monkeypatch, command, threads):
    monkeypatch.chdir(tmp_path)
    args = [str(tiny_bundle) if a == "{b}" else a for a in command]
    code, _, err = run_cli(capsys, [*args, "--threads", threads])
    assert_one_line_error(code, err, "--threads")
    assert list(tmp_path.iterdir()) == []  # bench wrote no output folder
