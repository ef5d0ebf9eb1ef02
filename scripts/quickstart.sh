#!/usr/bin/env bash
# Set everything up from nothing, then tune on the shipped example into an SQLite study.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/quickstart.py "$@"
