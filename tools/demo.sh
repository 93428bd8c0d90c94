#!/usr/bin/env bash
# The end-to-end demo, offline: export the vendored model pair with a stdlib n-gram as
# draft2, then decode one HumanEval-style prompt with baseline / speculative / staged and
# print the speedup (greedy outputs must be identical).
set -euo pipefail
cd "$(dirname "$0")/.."
STAGEDX=.venv/bin/stagedx
PAIR=models/stdlib-code-pair
# The shipped draft ($PAIR/draft): the distilled one ($PAIR/draft-distilled) agrees better with
# the oracle on held-out text but did not beat it in `stagedx bench` (docs/distill.md).
BUNDLE=${BUNDLE:-bundles/stdlib-code-pair}
if [ ! -f "$BUNDLE/manifest.json" ]; then
  $STAGEDX export "$PAIR/oracle" --draft "$PAIR/draft" --draft2 both \
    --corpus stdlib --exclude-from "$PAIR/val_files.json" -o "$BUNDLE" --force
fi
$STAGEDX inspect "$BUNDLE"
PROMPT='from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    """ Check if in given list of numbers, are any two numbers closer to each other than
    given threshold.
    """
'
$STAGEDX generate "$BUNDLE" "$PROMPT" --compare --max-new-tokens 128 --threads 2 --ignore-eos
