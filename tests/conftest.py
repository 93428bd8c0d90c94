"""Shared fixtures: tiny checkpoints and exported bundles, built once per test session.

Nothing heavy is imported at module level (a runtime test checks that generation never
loads torch); the fixtures import torch / the exporter when first used.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _models import PAIR, make_gpt2_checkpoint


@dataclass(frozen=True)
class CheckpointPair:
    oracle: Path
    draft: Path


# The suite runs export, validation and runtime sessions in one process: no global ORT pool.
os.environ["STAGEDX_ORT_GLOBAL_POOL"] = "0"


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _export(oracle: Path, draft: Path, out: Path, **kwargs) -> Path:
    from stagedx.export.bundle import ExportConfig, export_bundle

    _one_thread()
    return export_bundle(ExportConfig(oracle=str(oracle), draft=str(draft), output=out, **kwargs))


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> CheckpointPair:
    """Oracle (2 layers, 32 wide, 2 heads, stdlib 8192 vocab) and a perturbed copy as draft."""
    _one_thread()
    root = tmp_path_factory.mktemp("tiny_pair")
    oracle = make_gpt2_checkpoint(root / "oracle", seed=1)
    draft = make_gpt2_checkpoint(root / "draft", perturb_from=oracle, perturb_scale=0.05, seed=2)
    return CheckpointPair(oracle, draft)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_pair, tmp_path_factory) -> Path:
    """Exported bundle of ``tiny_pair`` (fp32, draft2 prompt-lookup)."""
    out = tmp_path_factory.mktemp("tiny_bundle") / "bundle"
    return _export(tiny_pair.oracle, tiny_pair.draft, out, draft2="prompt-lookup")


@pytest.fixture(scope="session")
def self_draft_bundle(tiny_pair, tmp_path_factory) -> Path:
    """Bundle whose draft is an exact copy of the oracle (every greedy draft token accepted)."""
    root = tmp_path_factory.mktemp("self_draft")
    draft = root / "draft"
    shutil.copytree(tiny_pair.oracle, draft)
    return _export(tiny_pair.oracle, draft, root / "bundle", draft2="prompt-lookup")


@pytest.fixture(scope="session")
def small_vocab_bundle(tmp_path_factory) -> Path:
    """Vocab 32 (char-level tokenizer), sharpened logits (top prob ~0.3), draft = perturbed
    oracle: for chi-square tests of sampling."""
    _one_thread()
    root = tmp_path_factory.mktemp("small_vocab")
    oracle = make_gpt2_checkpoint(root / "oracle", vocab=32, seed=3, weight_scale=16.0)
    draft = make_gpt2_checkpoint(root / "draft", perturb_from=oracle, perturb_scale=0.1, seed=4)
    return _export(oracle, draft, root / "bundle", draft2="prompt-lookup", topk=32)


@pytest.fixture(scope="session")
def pair_bundle(tmp_path_factory) -> Path:
    """The vendored stdlib-code pair, fp32, prompt lookup (a few seconds to export)."""
    out = tmp_path_factory.mktemp("pair_bundle") / "bundle"
    return _export(PAIR / "oracle", PAIR / "draft", out, draft2="prompt-lookup")
