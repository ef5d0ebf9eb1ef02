#!/usr/bin/env bash
# Build the documentation into site/ with warnings as errors (mkdocs build --strict).
# Extra arguments go to mkdocs, e.g. --site-dir /tmp/site.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if [ ! -x "$PY" ] && ! command -v "$PY" >/dev/null 2>&1; then
    PY=python3
fi
if ! "$PY" -c "import mkdocs, mkdocstrings, mkdocstrings_handlers.python, material" 2>/dev/null; then
    echo "build_docs.sh: mkdocs, mkdocstrings[python] or mkdocs-material is missing for $PY;" \
         "install the docs extra: $PY -m pip install -e '.[docs]'" >&2
    exit 2
fi
# mkdocs-material prints a banner about its successor on every build; it is not a warning of ours.
export NO_MKDOCS_2_WARNING=1
exec "$PY" -m mkdocs build --strict "$@"
