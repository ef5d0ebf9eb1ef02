#!/usr/bin/env bash
# Build the two "anchor" environments the accuracy benchmark compares against:
#   <dir>/hyperimpute  - HyperImpute (pip install hyperimpute)
#   <dir>/cissvae      - the CISS-VAE package (pip install ciss-vae)
# Each gets its own venv because their pins clash with ours and with each other.
# torch is installed FIRST (the CPU build, pinned) so pip does not pull a CUDA build
# (several GB) as a dependency of either package.
#
# Usage: bash scripts/setup_anchors.sh [DIR]      (default DIR: /tmp/ciss_anchors)
# Then:  python scripts/benchmark.py --hyperimpute-python DIR/hyperimpute/bin/python \
#                                    --cissvae-python DIR/cissvae/bin/python
# A failed install is reported and the script goes on; benchmark.py then marks that
# method as unavailable in its output instead of silently dropping it.
set -u

DIR="${1:-/tmp/ciss_anchors}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PY="${PYTHON:-python3}"
mkdir -p "$DIR"
status=0

make_env() {
    local name="$1"; shift
    local env="$DIR/$name"
    local log="$DIR/$name.log"
    echo "[$name] creating $env (log: $log)"
    if [ ! -x "$env/bin/python" ]; then
        "$PY" -m venv "$env" >"$log" 2>&1 || { echo "[$name] FAILED: python -m venv (see $log)"; return 1; }
    fi
    "$env/bin/pip" install -q --upgrade pip >>"$log" 2>&1
    # torch first: pinned to the CPU build this machine provides (its pip config finds
    # torch-<v>+cpu in a local wheel folder); installed after the package, pip would
    # resolve torch itself and may pull a CUDA build with several GB of NVIDIA libraries.
    # Elsewhere, set PIP_INDEX_URL / TORCH_INDEX to the CPU wheel index.
    "$env/bin/pip" install -q ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "torch==$TORCH_VERSION" >>"$log" 2>&1 \
        || { echo "[$name] FAILED: torch==$TORCH_VERSION (see $log)"; return 1; }
    if "$env/bin/pip" install -q "$@" >>"$log" 2>&1; then
        echo "[$name] OK: $("$env/bin/pip" list 2>/dev/null | grep -iE "^($name|ciss-vae|hyperimpute|torch) " | tr -s ' ' | paste -sd ';')"
    else
        echo "[$name] FAILED: pip install $* (last lines of $log follow)"
        tail -n 15 "$log"
        return 1
    fi
}

# HyperImpute 0.1.17 (2023) predates pandas 2's copy-on-write and pandas 3: under pandas 3 its
# chained assignments (e.g. the clipping of imputations to the observed range) silently
# do nothing. Pin the libraries of its time so it runs as its authors tested it.
make_env hyperimpute hyperimpute "pandas<2" "numpy<2" "scikit-learn<1.3" || status=1
make_env cissvae ciss-vae || status=1
exit $status
