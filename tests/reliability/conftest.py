"""Fixtures of the reliability suite: a copy of the tiny bundle with an n-gram draft2."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from stagedx.files import sha256_file
from tests.reliability._util import edit_manifest

CORPUS = [
    "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n",
    "import os\nimport sys\n\nfor i in range(10):\n    print(i, os.sep)\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
]


@pytest.fixture(scope="session")
def ngram_bundle(tiny_bundle, tmp_path_factory):
    """The tiny bundle with draft2 = an n-gram fitted on a few lines of Python (read-only: copy it)."""
    from stagedx.export.ngram import NgramFitConfig, fit_ngram

    root = tmp_path_factory.mktemp("ngram_bundle")
    bundle = root / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    files = []
    for i, text in enumerate(CORPUS):
        files.append(root / f"m{i}.py")
        files[-1].write_text(text)
    entry = fit_ngram(
        files, bundle / "tokenizer.json", bundle / "draft2_ngram.npz", NgramFitConfig(show_progress=False)
    )
    ng = {**dataclasses.asdict(entry), "corpus": list(entry.corpus)}
    edit_manifest(bundle, lambda d: d.__setitem__("draft2", {"kind": "ngram", "ngram": ng}))
    assert ng["sha256"] == sha256_file(bundle / "draft2_ngram.npz")
    return bundle
