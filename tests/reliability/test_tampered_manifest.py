"""Tampered manifests (hypothesis): any change to any field of a real manifest either still
loads and decodes, or is refused with a StagedxError (one line, exit 2 in the CLI); never
another exception, and never a crash inside ONNX Runtime."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stagedx.errors import StagedxError
from stagedx.manifest import Manifest, load_manifest
from stagedx.runtime import Generator
from tests.reliability._util import copy_bundle, read_manifest, write_manifest_dict

JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2, 8, 4096, 10**12]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["../x", "/etc/passwd", "oracle.onnx", "draft.onnx", "tokenizer.json", "fp16", "gpt2", "ngram"]),
)
JSON = st.recursive(
    JSON_LEAF,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
    max_leaves=6,
)
DELETE = object()


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _mutate(data, path, value):
    if not path:
        return value if value is not DELETE else {}
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return data


@pytest.fixture(scope="module")
def tamper_target(tiny_bundle, tmp_path_factory):
    bundle = copy_bundle(tiny_bundle, tmp_path_factory.mktemp("tamper") / "b")
    return bundle, read_manifest(bundle)


def _strategy(original):
    paths = sorted(_paths(original), key=repr)
    return st.lists(st.tuples(st.sampled_from(paths), st.one_of(JSON, st.just(DELETE))), min_size=1, max_size=3)


def _apply(original, edits):
    data = json.loads(json.dumps(original))
    for path, value in edits:
        try:
            data = _mutate(data, path, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced this path
    return data


def test_from_dict_refuses_or_accepts_any_tampered_manifest(tamper_target):
    bundle, original = tamper_target

    @given(_strategy(original))
    @settings(max_examples=400, deadline=None)
    def check(edits):
        try:
            Manifest.from_dict(_apply(original, edits))
        except StagedxError as exc:
            assert "\n" not in str(exc)

    check()


def test_a_tampered_bundle_loads_and_decodes_or_is_refused(tamper_target):
    bundle, original = tamper_target

    @given(_strategy(original))
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    def check(edits):
        write_manifest_dict(bundle, _apply(original, edits))
        try:
            load_manifest(bundle)
            gen = Generator(bundle, device="cpu", threads=1)
            gen.generate("def f(x):", max_new_tokens=3, ignore_eos=True)
            gen.generate("def f(x):", max_new_tokens=3, sampling="topk:5", seed=1, ignore_eos=True)
        except StagedxError as exc:
            assert "\n" not in str(exc)
        finally:
            write_manifest_dict(bundle, original)

    check()


@pytest.mark.parametrize(
    "data, needle",
    [
        ([1, 2], "JSON object"),
        ({"schema_version": 0}, "schema version 0"),
        ({"schema_version": True}, "integer"),
        ({"schema_version": 1, "models": []}, "malformed"),
    ],
)
def test_shapes_of_json_that_are_not_manifests(data, needle):
    with pytest.raises(StagedxError, match=needle):
        Manifest.from_dict(data)
