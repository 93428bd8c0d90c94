"""The bench loop's machine record: the busy-machine warning and the load average."""

from __future__ import annotations

from stagedx.bench.bench import BUSY_LOAD_SHARE, available_cores, busy_warning, load_average


def test_a_busy_machine_gets_one_warning_line():
    assert busy_warning(None, 2) is None  # no load average on this platform: no claim
    assert busy_warning(BUSY_LOAD_SHARE * 2, 2) is None
    line = busy_warning(12.4, 2)
    assert line.startswith("warning: the machine is busy (load average 12.4 on 2 cores)") and "\n" not in line


def test_the_load_average_and_cores_are_read():
    load = load_average()
    assert load is None or load >= 0
    assert available_cores() >= 1
