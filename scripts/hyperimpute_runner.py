"""Run HyperImpute on one holed table, inside HyperImpute's own virtual environment.

Called by ``scripts/benchmark.py`` as a subprocess (HyperImpute's pins clash with
ours, see ``scripts/setup_anchors.sh``)::

    /tmp/ciss_anchors/hyperimpute/bin/python scripts/hyperimpute_runner.py WORKDIR

``WORKDIR`` holds ``X.npy`` (float64 ``[n, p]``, NaN = missing; categorical columns as
integer codes 0..k-1) and ``meta.json`` (``columns``, ``categorical`` {column: categories},
``seed``, ``options``). The runner writes ``imputed.npy`` (same layout; categorical
columns as valid codes) and ``result.json`` (``seconds`` of the fit alone,
``base_rss_mb`` after imports and data load, ``peak_rss_mb`` = the process's VmHWM,
``info``); on failure ``result.json`` holds ``error`` and the exit code is 1.

This file imports nothing from ciss_autoimpute: it runs where that package is absent.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path


def _status_mb(field: str) -> float:
    """A memory line of /proc/self/status (VmRSS: current, VmHWM: peak) in MiB."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main(workdir: Path) -> int:
    result: dict = {}
    # HyperImpute changes thread variables on import: record what the caller asked for first.
    threads = os.environ.get("OMP_NUM_THREADS")
    try:
        import numpy as np
        import pandas as pd
        from hyperimpute.plugins.imputers import Imputers

        meta = json.loads((workdir / "meta.json").read_text())
        X = np.load(workdir / "X.npy")
        columns = list(meta["columns"])
        categorical = meta.get("categorical", {})
        seed = int(meta.get("seed", 0))
        options = dict(meta.get("options", {}))
        frame = pd.DataFrame(X, columns=[str(c) for c in columns])
        result["base_rss_mb"] = _status_mb("VmRSS")

        start = time.perf_counter()
        # HyperImpute's default plugin: per-column model search (linear, trees, boosting)
        # inside an iterative imputation; columns with few distinct values get classifiers.
        imputer = Imputers().get(options.pop("plugin", "hyperimpute"), random_state=seed, **options)
        out = np.asarray(imputer.fit_transform(frame.copy()), dtype=np.float64)
        result["seconds"] = time.perf_counter() - start

        # Categorical codes come back as floats from regressors in some plugins: snap to a valid code.
        for j, col in enumerate(columns):
            if str(col) in categorical or col in categorical:
                cats = categorical.get(str(col), categorical.get(col))
                out[:, j] = np.clip(np.rint(out[:, j]), 0, len(cats) - 1)
        np.save(workdir / "imputed.npy", out)
        result["peak_rss_mb"] = _status_mb("VmHWM")
        result["info"] = {"plugin": "hyperimpute", "omp_threads_requested": threads}
        code = 0
    except Exception as exc:  # report any failure to the parent instead of a bare traceback
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()[-4000:]
        code = 1
    (workdir / "result.json").write_text(json.dumps(result, default=str))
    return code


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: hyperimpute_runner.py WORKDIR")
    sys.exit(main(Path(sys.argv[1])))
