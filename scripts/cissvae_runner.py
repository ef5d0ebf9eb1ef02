"""Run the CISS-VAE package (``pip install ciss-vae``) on one holed table, in its own venv.

Called by ``scripts/benchmark.py`` as a subprocess (see ``scripts/setup_anchors.sh``)::

    /tmp/ciss_anchors/cissvae/bin/python scripts/cissvae_runner.py WORKDIR

``WORKDIR`` holds ``X.npy`` (float64 ``[n, p]``, NaN = missing; categorical columns as
integer codes 0..k-1) and ``meta.json``:

* ``columns``, ``categorical`` ({column: categories}), ``seed``;
* ``options.clusters`` (optional): one cluster label per row, used instead of the
  package's own clustering (``run_cissvae(clusters=...)``, or the autotune dataset's);
* ``options.mode``: ``"run"`` — ``run_cissvae`` with the package's defaults (Leiden
  clustering on the missingness pattern, 500 epochs, up to 100 refit loops of 500 epochs,
  patience 2); or ``"autotune"`` — its ``autotune`` over its default ``SearchSpace``
  with ``options.n_trials`` trials, and the epoch counts given in ``options`` (the
  package's 1000 initial epochs and 100 loops x 1000 epochs do not fit a CPU benchmark;
  ``benchmark.py`` passes the same sizing as our ``cissvae`` preset).

Categorical columns go in one-hot (``binary_feature_mask`` + ``categorical_column_map``,
the package's way) and come back as the arg-max category code. Writes ``imputed.npy``
and ``result.json`` (``seconds`` of the fit, ``base_rss_mb``, ``peak_rss_mb`` = VmHWM,
``info``); on failure ``result.json`` holds ``error`` and the exit code is 1. The
package prints progress: the caller sends stdout to a log file.
"""

from __future__ import annotations

import json
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


def _one_hot(X, columns, categorical):
    """Expand categorical code columns into 0/1 dummies (NaN where the cell is missing)."""
    import numpy as np
    import pandas as pd

    parts, names, binary, cat_map = [], [], [], {}
    for j, col in enumerate(columns):
        key = str(col)
        if key in categorical:
            cats = categorical[key]
            codes = X[:, j]
            dummies = [f"{key}__{k}" for k in range(len(cats))]
            block = np.where(np.isnan(codes)[:, None], np.nan, (codes[:, None] == np.arange(len(cats))[None, :]) * 1.0)
            parts.append(block)
            names.extend(dummies)
            binary.extend([True] * len(cats))
            cat_map[key] = dummies
        else:
            parts.append(X[:, [j]])
            names.append(key)
            binary.append(False)
    frame = pd.DataFrame(np.hstack(parts), columns=names)
    return frame, binary, cat_map


def _decode(out_frame, columns, categorical, cat_map):
    """Back to one column per feature: arg-max code for categorical groups."""
    import numpy as np

    cols = []
    for col in columns:
        key = str(col)
        if key in categorical:
            cols.append(np.argmax(out_frame[cat_map[key]].to_numpy(dtype=np.float64), axis=1).astype(np.float64))
        else:
            cols.append(out_frame[key].to_numpy(dtype=np.float64))
    return np.column_stack(cols)


def main(workdir: Path) -> int:
    result: dict = {}
    try:
        import numpy as np

        meta = json.loads((workdir / "meta.json").read_text())
        X = np.load(workdir / "X.npy")
        columns = [str(c) for c in meta["columns"]]
        categorical = {str(k): v for k, v in meta.get("categorical", {}).items()}
        seed = int(meta.get("seed", 0))
        options = dict(meta.get("options", {}))
        mode = options.get("mode", "run")
        frame, binary, cat_map = _one_hot(X, columns, categorical)
        extra = {}
        if cat_map:
            extra = {"binary_feature_mask": binary, "categorical_column_map": cat_map}
        result["base_rss_mb"] = _status_mb("VmRSS")
        info: dict = {"mode": mode}

        start = time.perf_counter()
        if mode == "run":
            from ciss_vae.training.run_cissvae import run_cissvae

            given = {} if options.get("clusters") is None else {"clusters": np.asarray(options["clusters"])}
            out = run_cissvae(
                frame, seed=seed, device="cpu", print_dataset=False, return_model=False, verbose=False,
                **given, **extra,
            )
            if given:
                info["n_clusters"] = int(len(np.unique(given["clusters"])))
        elif mode == "autotune":
            from ciss_vae.classes.cluster_dataset import ClusterDataset
            from ciss_vae.training.autotune import SearchSpace, autotune
            from ciss_vae.utils.clustering import cluster_on_missing

            if options.get("clusters") is not None:
                clusters, silhouette = np.asarray(options["clusters"]), None
            else:
                clusters, silhouette = cluster_on_missing(frame, seed=seed)
            ds = ClusterDataset(frame, clusters, val_proportion=0.1, val_seed=seed, **extra)
            space = SearchSpace(
                num_epochs=int(options.get("num_epochs", 1000)),
                refit_loops=int(options.get("refit_loops", 100)),
                epochs_per_loop=int(options.get("epochs_per_loop", 1000)),
            )
            out, _model, study, _table = autotune(
                space,
                ds,
                n_trials=int(options.get("n_trials", 20)),
                device_preference="cpu",
                seed=seed,
                show_progress=False,
                verbose=False,
            )
            info.update(
                best_value=float(study.best_value),
                best_params={k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                             for k, v in study.best_params.items()},
                n_clusters=int(len(np.unique(clusters))),
                silhouette=None if silhouette is None else float(silhouette),
                space={k: options.get(k) for k in ("num_epochs", "refit_loops", "epochs_per_loop")},
            )
        else:
            raise ValueError(f"options.mode must be 'run' or 'autotune', got {mode!r}")
        result["seconds"] = time.perf_counter() - start

        np.save(workdir / "imputed.npy", _decode(out, columns, categorical, cat_map))
        result["peak_rss_mb"] = _status_mb("VmHWM")
        result["info"] = info
        code = 0
    except Exception as exc:  # report any failure to the parent instead of a bare traceback
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()[-4000:]
        code = 1
    (workdir / "result.json").write_text(json.dumps(result, default=str))
    return code


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: cissvae_runner.py WORKDIR")
    sys.exit(main(Path(sys.argv[1])))
