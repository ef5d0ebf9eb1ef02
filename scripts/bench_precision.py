"""Imputation error with TrainConfig.precision "32" against "bf16-mixed", family by family.

Draws a correlated Gaussian table (default 3,000 x 10), hides 30 % of its cells
completely at random, imputes it with ``run_imputation(model=family)`` once per
precision (same seed, same holdout) and prints the RMSE on the hidden cells
(standardised scale) and the wall time of each fit::

    .venv/bin/python scripts/bench_precision.py                       # vae cissvae miwae notmiwae gain mida
    .venv/bin/python scripts/bench_precision.py --families miwae --rows 10000 --epochs 200

bfloat16 only pays on CPUs with AMX / AVX-512 bfloat16 units and for wide layers;
``scripts/bench_speed.py --precision bf16-mixed`` measures the speed.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
import torch

FAMILIES = ["vae", "cissvae", "miwae", "notmiwae", "gain", "mida"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", nargs="+", default=FAMILIES, choices=FAMILIES)
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--cols", type=int, default=10)
    ap.add_argument("--missing", type=float, default=0.3)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    from ciss_autoimpute import run_imputation

    rng = np.random.default_rng(args.seed)
    factor = rng.normal(size=(args.cols, args.cols))
    cov = factor @ factor.T / args.cols + 0.2 * np.eye(args.cols)
    full = rng.multivariate_normal(np.zeros(args.cols), cov, size=args.rows)
    hidden = rng.random(full.shape) < args.missing
    holed = pd.DataFrame(full, columns=[f"x{i}" for i in range(args.cols)]).mask(hidden)
    scale = full.std(axis=0)

    print(f"{args.rows} x {args.cols} correlated Gaussian, {args.missing:.0%} MCAR, {args.epochs} epochs, "
          f"seed {args.seed}, {args.threads} thread(s)")
    print("| family | RMSE 32 | RMSE bf16-mixed | change | seconds 32 | seconds bf16-mixed |")
    print("|---|---:|---:|---:|---:|---:|")
    for family in args.families:
        rmse, secs = {}, {}
        for precision in ("32", "bf16-mixed"):
            start = time.perf_counter()
            res = run_imputation(holed, model=family, seed=args.seed, device="cpu",
                                 train_params={"precision": precision, "epochs": args.epochs})
            secs[precision] = time.perf_counter() - start
            err = (res.imputed.to_numpy() - full) / scale
            rmse[precision] = float(np.sqrt(np.mean(err[hidden] ** 2)))
        change = rmse["bf16-mixed"] / rmse["32"] - 1
        print(f"| {family} | {rmse['32']:.4f} | {rmse['bf16-mixed']:.4f} | {change:+.2%} "
              f"| {secs['32']:.1f} | {secs['bf16-mixed']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
