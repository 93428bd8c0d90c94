#!/usr/bin/env bash
# Create .venv and install stagedx with the extras the demo and the tests need.
# torch==2.13.0 goes in FIRST: it is the CPU build (a wheel on disk on these machines).
# Installed afterwards, `transformers` sees its torch requirement already met; installed the
# other way round, pip would resolve the newest torch from the registry, which is the
# multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[dev]'
