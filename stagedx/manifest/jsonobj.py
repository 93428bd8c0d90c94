"""Typed manifest entries <-> JSON objects: known keys become fields, unknown ones are kept
in ``other`` and written back, absent ones stay absent (old and newer bundles round-trip)."""

from __future__ import annotations

import dataclasses


def split_known(cls, d: dict) -> tuple[dict, dict]:
    """(the keys of ``d`` that are fields of ``cls``, the others)."""
    names = {f.name for f in dataclasses.fields(cls)} - {"other"}
    return {k: v for k, v in d.items() if k in names}, {k: v for k, v in d.items() if k not in names}


def plain(entry) -> dict:
    """The JSON object of a typed entry: its fields that are set (None = absent), then ``other``."""
    out = {}
    for f in dataclasses.fields(entry):
        value = getattr(entry, f.name)
        if f.name != "other" and value is not None:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return {**out, **entry.other}
