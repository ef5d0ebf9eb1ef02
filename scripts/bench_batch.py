"""Accuracy and time of ``TrainConfig(batch_size="auto")`` against batch 256 on large data.

``"auto"`` trains 100k rows at batch 1,000 instead of 256 (``resolve_batch_size``), so an
epoch takes about a quarter of the optimiser steps. This script checks that this does
not cost accuracy: for each family it trains the same model (same seed, same data)

* at batch 256 for ``--epochs`` epochs,
* at ``"auto"`` for the same number of epochs,
* at ``"auto"`` for as many epochs as fit in the batch-256 run's time
  (``--epochs`` times the measured CPU-time ratio, rounded; CPU time because the
  machine may be shared),
* with ``--runs ... scaled-lr``, at ``"auto"`` for ``--epochs`` epochs with the learning
  rate scaled by ``sqrt(batch / 256)`` (the usual square-root rule for Adam),

and reports the validation score (RMSE of the held-out observed cells, on the
standardised scale the package scores with), the RMSE of the truly missing cells
against the complete table, the seconds and the CPU seconds of each fit.

Data: ``rows x cols`` numeric columns from an 8-factor linear model plus noise
(correlated columns, so imputation can beat the mean), 30 % of cells missing
completely at random, 10 % of the observed cells held out, one cluster.
Initial training only (``RefitConfig(max_loops=0)``), one torch thread.

Usage::

    .venv/bin/python scripts/bench_batch.py                      # 100k x 20, vae and miwae, 30 epochs
    .venv/bin/python scripts/bench_batch.py --rows 20000 --epochs 5 --families vae   # quick check
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import torch

from ciss_autoimpute.data.dataset import ClusterDataset
from ciss_autoimpute.models.registry import build_model
from ciss_autoimpute.training import RefitConfig, TrainConfig, Trainer, resolve_batch_size

MISSING = 0.3
VAL_PROPORTION = 0.1


def make_data(n_rows: int, n_cols: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(complete table, table with NaN at 30 % MCAR cells), float32."""
    rng = np.random.default_rng(seed)
    n_factors = 8
    factors = rng.standard_normal((n_rows, n_factors), dtype=np.float32)
    loadings = rng.standard_normal((n_factors, n_cols), dtype=np.float32) / np.float32(math.sqrt(n_factors))
    full = factors @ loadings + np.float32(0.5) * rng.standard_normal((n_rows, n_cols), dtype=np.float32)
    holed = full.copy()
    holed[rng.random((n_rows, n_cols)) < MISSING] = np.nan
    return full, holed


def fit_once(family: str, ds: ClusterDataset, full_std: torch.Tensor, missing: torch.Tensor,
             batch_size: int | str, epochs: int, seed: int, lr: float | None = None) -> dict:
    model = build_model(family, ds.layout, ds.n_clusters, {}, seed=seed)
    train = TrainConfig(epochs=epochs, batch_size=batch_size, **({} if lr is None else {"lr": lr}))
    trainer = Trainer(model, train, RefitConfig(max_loops=0),
                      seed=seed, device="cpu")
    wall, cpu = time.perf_counter(), time.process_time()
    result = trainer.fit(ds.data)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    err = (result.imputed - full_std)[missing]
    return {
        "family": family, "batch": f"{batch_size!r} -> {result.batch_size}, lr {train.lr:.3g}", "epochs": epochs,
        "val": result.best_score.total, "missing_rmse": float(err.pow(2).mean().sqrt()),
        "seconds": wall, "cpu_seconds": cpu, "load": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--cols", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--families", nargs="+", default=["vae", "miwae"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", nargs="+", default=["256", "auto", "same-time"],
                        choices=["256", "auto", "same-time", "scaled-lr"],
                        help="runs per family (default 256 auto same-time; same-time needs 256 and auto; "
                             "scaled-lr: 'auto' for --epochs epochs with lr * sqrt(batch / 256))")
    args = parser.parse_args(argv)
    if "same-time" in args.runs and not {"256", "auto"} <= set(args.runs):
        parser.error("--runs same-time needs the 256 and auto runs too")
    torch.set_num_threads(1)

    full, holed = make_data(args.rows, args.cols, args.seed)
    ds = ClusterDataset(holed, clusters=np.zeros(args.rows, dtype=np.int64), val_proportion=VAL_PROPORTION,
                        seed=args.seed, device="cpu")
    # The package standardises numeric columns with the observed cells' mean and std;
    # scale the complete table the same way so both RMSEs are on one scale.
    mean = np.nanmean(holed, axis=0)
    std = np.nanstd(holed, axis=0)
    full_std = torch.from_numpy((full - mean) / std)
    missing = torch.from_numpy(np.isnan(holed))
    auto = resolve_batch_size("auto", args.rows)
    print(f"# {args.rows:,} x {args.cols}, {MISSING:.0%} MCAR, seed {args.seed}; 'auto' -> batch {auto}; "
          f"load at start {os.getloadavg()}", flush=True)
    check = ds.data.x[ds.data.train_mask]
    ref = full_std[ds.data.train_mask.cpu()]
    if not torch.allclose(check, ref, atol=1e-3):
        print("# warning: encoded scale differs from (x - mean) / std; missing_rmse is on the table's own scale",
              flush=True)

    header = "| family | batch | epochs | val (held-out RMSE) | missing-cell RMSE | s | CPU s | load |"
    print(header + "\n|---|---|---:|---:|---:|---:|---:|---:|", flush=True)

    def show(r: dict) -> None:
        print(f"| {r['family']} | {r['batch']} | {r['epochs']} | {r['val']:.4f} | {r['missing_rmse']:.4f} | "
              f"{r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['load']:.1f} |", flush=True)

    for family in args.families:
        # Warm-up fit (not shown): the first fit of a process pays one-time start-up costs.
        fit_once(family, ds, full_std, missing, 256, 1, args.seed)
        if "256" in args.runs:
            small = fit_once(family, ds, full_std, missing, 256, args.epochs, args.seed)
            show(small)
        if "auto" in args.runs:
            big = fit_once(family, ds, full_std, missing, "auto", args.epochs, args.seed)
            show(big)
        if "same-time" in args.runs:
            # CPU time: the load-robust measure of the work done (one thread).
            matched = max(args.epochs, round(args.epochs * small["cpu_seconds"] / big["cpu_seconds"]))
            show(fit_once(family, ds, full_std, missing, "auto", matched, args.seed))
        if "scaled-lr" in args.runs:
            lr = TrainConfig().lr * math.sqrt(auto / 256)
            show(fit_once(family, ds, full_std, missing, "auto", args.epochs, args.seed, lr=lr))
    print(f"# load at end {os.getloadavg()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
