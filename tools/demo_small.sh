#!/usr/bin/env bash
# The small-pair demo (PAIR=small bash tools/demo.sh), offline: export the vendored 14M pair
# with a stdlib n-gram as draft2, then decode one HumanEval-style prompt with baseline /
# speculative / staged and print the speedup (greedy outputs must be identical).
set -euo pipefail
cd "$(dirname "$0")/.."
STAGEDX=.venv/bin/stagedx
PAIR=models/stdlib-code-pair
# The distilled draft ($PAIR/draft-distilled, `stagedx distill` on 512-token windows): in
# `stagedx bench` it beats the shipped draft ($PAIR/draft) wherever the draft is used, on the
# small pair and at GPT-2-L cost (speculative greedy 4.54 vs 4.22 tokens per oracle call, top-k
# 2.66 vs 2.13; docs/distill.md). DRAFT=$PAIR/draft runs the demo with the shipped one.
DRAFT=${DRAFT:-$PAIR/draft-distilled}
BUNDLE=${BUNDLE:-bundles/stdlib-code-pair}
echo "demo: oracle $PAIR/oracle, draft $DRAFT (the bench's favourite; see docs/distill.md), bundle $BUNDLE"
made_from() {  # the draft checkpoint an existing bundle was exported from
  .venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["models"]["draft"]["source"]["checkpoint"])' \
    "$BUNDLE/manifest.json" 2>/dev/null || true
}
if [ ! -f "$BUNDLE/manifest.json" ] || [ "$(made_from)" != "$DRAFT" ]; then
  $STAGEDX export "$PAIR/oracle" --draft "$DRAFT" --draft2 both \
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
