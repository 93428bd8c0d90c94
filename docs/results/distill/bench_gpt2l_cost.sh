#!/usr/bin/env bash
# Both drafts at GPT-2-L cost (tools/research/scale_pair.py twins of the vendored oracle with the shipped
# and the distilled draft), same options, back to back on a quiet machine.
#   bundles: tools/research/build_gpt2l_cost.sh (shipped draft), then
#   python tools/research/scale_pair.py scale models/stdlib-code-pair/draft-distilled pairs/gpt2l-cost/draft-distilled \
#       --factor 4 --layers 5 --seed 1 --force
#   python -m stagedx export pairs/gpt2l-cost/oracle --draft pairs/gpt2l-cost/draft-distilled --draft2 both \
#       --corpus stdlib --exclude-from models/stdlib-code-pair/val_files.json -o bundles/gpt2l-cost-distilled
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
BUNDLES=${BUNDLES:-/work/bundles}
OPTS=(--limit 5 --max-new-tokens 128 --sampling greedy,topk:50 --threads 2)
date -u
$PY -m stagedx bench "$BUNDLES/gpt2l-cost" "${OPTS[@]}" --out docs/results/distill/gpt2l-cost-shipped-draft
date -u
$PY -m stagedx bench "$BUNDLES/gpt2l-cost-distilled" "${OPTS[@]}" --out docs/results/distill/gpt2l-cost-distilled-draft
date -u
