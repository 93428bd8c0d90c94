"""Golden outputs: every strategy and tree kind on the vendored pair, greedy and seeded
sampling, compared token for token with outputs committed in ``golden_outputs.json``.

A refactor of the decode loop must not change a single token: greedy outputs are fixed by the
oracle, and a seeded sampled output is fixed by the order in which the loop draws from the one
random generator of a call, so both catch a change in what the loop proposes, verifies or
commits. The recorded outputs depend on ONNX Runtime's CPU kernels: the test skips (with a
reason) under another ONNX Runtime version. After an intended change of the outputs, rewrite
the file with ``STAGEDX_REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/runtime/test_golden.py``
and say why in the commit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stagedx.runtime import Generator, SamplingConfig
from stagedx.runtime.shapes import CHEAP_DRAFT_TREES, NO_DRAFT2_TREES

GOLDEN = Path(__file__).with_name("golden_outputs.json")
PROMPTS = (
    "def fibonacci(n):\n    ",
    "import os\n\n\ndef list_files(path):\n    ",
    "class Queue:\n    def __init__(self):\n        self.items = []\n\n    def put(self, x):\n",
)
# sampling -> (seeds, prompts): greedy on every prompt, sampling seeded on the first two
SAMPLINGS = {"greedy": ((0,), 3), "topk:50": ((0, 1), 2), "topp:0.9": ((0,), 2)}
# named decode variants: strategy and the tree (None: the Generator's choice for the mode)
VARIANTS = ("baseline", "speculative", "staged", "staged3", "draft-tree", "cheap-draft")
MAX_NEW = 32


def _tree(gen: Generator, variant: str, cfg: SamplingConfig):
    mode = "greedy" if cfg.greedy else "sample"
    if variant == "staged3":
        return gen.three_stage_tree(cfg)  # draft2 -> draft -> oracle (lookahead chain when sampling)
    if variant == "draft-tree":
        return NO_DRAFT2_TREES[mode]  # draft-grown trees: several draft calls, sampled widths > 1
    if variant == "cheap-draft":
        return CHEAP_DRAFT_TREES.get(mode, NO_DRAFT2_TREES[mode])
    return None


def decode_all(bundle: Path) -> dict:
    """``{"<sampling>|<variant>|seed<s>|<prompt index>": token ids}`` for every case."""
    out = {}
    with Generator(bundle, device="cpu", threads=1) as gen:
        for sampling, (seeds, n_prompts) in SAMPLINGS.items():
            cfg = SamplingConfig.parse(sampling)
            for variant in VARIANTS:
                strategy = variant if variant in ("baseline", "speculative") else "staged"
                tree = _tree(gen, variant, cfg)
                for seed in seeds:
                    for i, prompt in enumerate(PROMPTS[:n_prompts]):
                        res = gen.generate(
                            prompt, max_new_tokens=MAX_NEW, sampling=sampling, seed=seed, strategy=strategy, tree=tree
                        )
                        out[f"{sampling}|{variant}|seed{seed}|{i}"] = res.tokens
    return out


@pytest.mark.slow
def test_every_strategy_gives_the_committed_tokens(pair_bundle):
    import onnxruntime

    got = decode_all(pair_bundle)
    if os.environ.get("STAGEDX_REGEN_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps({"onnxruntime": onnxruntime.__version__, "outputs": got}, indent=0) + "\n")
    golden = json.loads(GOLDEN.read_text())
    if golden["onnxruntime"] != onnxruntime.__version__:
        pytest.skip(f"golden outputs were recorded with onnxruntime {golden['onnxruntime']}")
    want = golden["outputs"]
    assert sorted(got) == sorted(want), "the set of golden cases changed: regenerate the file"
    wrong = [k for k in want if got[k] != want[k]]
    first = wrong[0] if wrong else ""
    assert not wrong, f"{len(wrong)} of {len(want)} changed, first {first}: {got.get(first)} != {want.get(first)}"


@pytest.mark.slow
def test_greedy_golden_outputs_agree_across_strategies():
    """The committed greedy outputs themselves obey exactness: every variant equals baseline."""
    want = json.loads(GOLDEN.read_text())["outputs"]
    for key, tokens in want.items():
        sampling, _, seed, i = key.split("|")
        if sampling == "greedy":
            assert tokens == want[f"greedy|baseline|{seed}|{i}"], key
