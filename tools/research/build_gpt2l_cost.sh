#!/usr/bin/env bash
# Build the GPT-2-L-cost benchmark pair: the vendored pair's function at GPT-2-Large cost
# (tools/research/scale_pair.py), export it like tools/demo_small.sh exports the vendored pair, and check it.
# ~10 GB RAM, a few minutes on 2 cores, ~7 GB of disk (checkpoints + bundle).
#   oracle: 6 x 384 -> 27 layers x 1536 (R=4, 24 heads)  ~779M params (GPT-2-L: 774M)
#   draft:  2 x 192 ->  5 layers x  768 (R=4, 12 heads)  ~42.5M params (the paper's 40M draft)
# Environment: PY (python with stagedx), OUT (checkpoints), BUNDLE, SMALL_BUNDLE (the vendored
# pair's bundle, exported first when missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
PAIR=${PAIR:-models/stdlib-code-pair}
OUT=${OUT:-pairs/gpt2l-cost}
BUNDLE=${BUNDLE:-bundles/gpt2l-cost}
SMALL_BUNDLE=${SMALL_BUNDLE:-bundles/stdlib-code-pair}
EXPORT_ARGS=(--draft2 both --corpus stdlib --exclude-from "$PAIR/val_files.json" --force)

rm -f "$OUT/READY"
mkdir -p "$OUT"
if [ ! -f "$SMALL_BUNDLE/manifest.json" ]; then
  $PY -m stagedx export "$PAIR/oracle" --draft "$PAIR/draft" "${EXPORT_ARGS[@]}" -o "$SMALL_BUNDLE"
fi
$PY tools/research/scale_pair.py scale "$PAIR/oracle" "$OUT/oracle" --factor 4 --layers 27 --seed 0 --force
$PY tools/research/scale_pair.py scale "$PAIR/draft" "$OUT/draft" --factor 4 --layers 5 --seed 1 --force
$PY -m stagedx export "$OUT/oracle" --draft "$OUT/draft" "${EXPORT_ARGS[@]}" -o "$BUNDLE"
$PY tools/research/scale_pair.py check-bundle "$SMALL_BUNDLE" "$BUNDLE" --prompts 3 --tokens 24 --threads 2
$PY -m stagedx inspect "$BUNDLE"
touch "$OUT/READY"
