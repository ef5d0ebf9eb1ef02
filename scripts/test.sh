#!/usr/bin/env bash
# Set everything up from nothing, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# PostgreSQL's server for the tests of several workers sharing a study (installs from Debian if absent).
bash scripts/ensure_postgres.sh
exec .venv/bin/python -m pytest "$@"
