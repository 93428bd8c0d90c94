"""Tuning entries: what ``stagedx tune`` stores per device, backend and thread count, the one
builder and parser of their keys (``"<device>|<backend>|<threads>"``) and the lookup a
Generator makes. The trees inside stay JSON objects here; ``runtime/shapes.py`` validates them
into ``TreeConfig`` (the runtime owns tree shapes, the manifest only carries them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import StagedxError
from .check import check_object
from .jsonobj import plain, split_known

TUNED_MODES = ("greedy", "sample")  # sampling modes a tuning entry holds a tree for


@dataclass(frozen=True)
class TuningKey:
    """``"<device>|<backend>|<threads>"``, the key of a manifest ``tuning`` entry."""

    device: str
    backend: str
    threads: int

    def __str__(self) -> str:
        return f"{self.device}|{self.backend}|{self.threads}"


def parse_tuning_key(key: str) -> TuningKey:
    """The one parser of tuning keys; anything but ``"<device>|<backend>|<digits>"`` is refused."""
    parts = key.split("|") if isinstance(key, str) else []
    if len(parts) != 3 or not (parts[2].isascii() and parts[2].isdigit()):
        text = repr(key)
        raise StagedxError(f'manifest.json: tuning key must be "<device>|<backend>|<threads>", got {text[:80]}')
    return TuningKey(parts[0], parts[1], int(parts[2]))


def tuning_key(device: str, backend: str, threads: int | None) -> str:
    """The one builder of tuning keys (``threads`` None: 0, the backend's default)."""
    return str(TuningKey(device, backend, threads or 0))


@dataclass(frozen=True)
class TuningEntry:
    """What ``stagedx tune`` stored for one device, backend and thread count. ``greedy`` /
    ``sample``: TreeConfig fields plus evidence (and ``three_stage``, a tree), validated by the
    runtime when it builds its TreeConfig; the other fields are the measurements behind them."""

    greedy: Any = None
    sample: Any = None
    tuned_utc: str | None = None
    calibration: dict | None = None
    past_len: int | None = None
    oracle_latency_s: dict | None = None  # str(tree size) -> seconds
    draft_latency_s: dict | None = None  # str(batch) -> seconds
    in_loop_factors: dict | None = None  # {"oracle": f, "draft": f}
    other: dict = field(default_factory=dict)

    def modes(self) -> dict:
        """``{mode: tree object}`` for each tuned sampling mode."""
        return {m: getattr(self, m) for m in TUNED_MODES if getattr(self, m) is not None}

    def three_stage(self, mode: str) -> dict | None:
        tree = getattr(self, mode, None)
        return tree.get("three_stage") if isinstance(tree, dict) else None

    @staticmethod
    def from_dict(d: dict, key: str = "") -> TuningEntry:
        check_object(f"tuning[{key!r}]", d)
        known, other = split_known(TuningEntry, d)
        return TuningEntry(**known, other=other)

    def to_dict(self) -> dict:
        return plain(self)


def find_tuning(tuning: dict, device: str, backend: str, threads: int | None) -> TuningEntry | None:
    """The entry of ``tuning`` (key -> TuningEntry) for this device and backend, never another
    device's: the same thread count if stored, else the nearest one (ties: the larger)."""
    same = {}
    for key, entry in tuning.items():
        k = parse_tuning_key(key)
        if (k.device, k.backend) == (device, backend):
            same[k.threads] = entry
    if not same:
        return None
    want = threads or 0
    return same[min(same, key=lambda t: (abs(t - want), -t))]
