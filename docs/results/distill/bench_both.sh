#!/usr/bin/env bash
# Both drafts' bundles, same options, back to back under one hold of the timing lock.
set -euo pipefail
cd /work/wt/distill
export PYTHONPATH=$PWD
OPTS=(--limit 10 --max-new-tokens 128 --sampling greedy,topk:50 --threads 1)
date -u
/work/main/.venv/bin/python -m stagedx bench /work/bundles/stdlib-code-pair "${OPTS[@]}" --out docs/results/distill/shipped-draft
date -u
/work/main/.venv/bin/python -m stagedx bench bundles/stdlib-code-pair-distilled "${OPTS[@]}" --out docs/results/distill/distilled-draft
date -u
