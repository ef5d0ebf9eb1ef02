"""What the Trainer's last pass (imputing given every observed cell) is worth.

A trained family's kept imputations used to be those of its best loop, made with the
validation holdout hidden, so each row was imputed from its training cells only. The
Trainer now imputes once more with the held-out values back in the input
(``TrainResult.imputed``) and keeps the held-out-blind pass for scoring
(``TrainResult.scored_imputed``). Both come from the same fit, so this script fits each
family once per cell and scores the two passes on the hidden cells: RMSE on the
standardised scale (complete data's standard deviation, as ``scripts/benchmark.py``
scores), numeric columns only.

    python scripts/bench_final_pass.py --datasets concrete wine diabetes breast_cancer \\
        --mechanisms mcar mar --rates 0.3 --families cissvae miwae vae

It reads the tables and masks of ``scripts/benchmark.py`` (nothing is downloaded) and
uses each family's defaults, as ``run_imputation(model=...)`` does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark import load_problem, make_mask  # noqa: E402

from ciss_autoimpute import ClusterDataset  # noqa: E402
from ciss_autoimpute.models.registry import build_model  # noqa: E402
from ciss_autoimpute.training import Trainer, configs_from_dict  # noqa: E402


def hidden_rmse(frame, complete, mask, numeric) -> float:
    """RMSE over the hidden numeric cells, each column scaled by the complete data's std."""
    cols = [list(complete.columns).index(c) for c in numeric]
    truth = complete[numeric].to_numpy(float)
    scale = truth.std(axis=0)
    err = (frame[numeric].to_numpy(float) - truth) / scale
    return float(np.sqrt(np.mean(err[mask[:, cols]] ** 2)))


def run_cell(dataset: str, mechanism: str, rate: float, seed: int, family: str,
             train_params: dict | None = None) -> dict:
    """Fit ``family`` once on one cell; RMSE of the held-out-blind and the kept pass."""
    problem = load_problem(dataset)
    mask = np.asarray(make_mask(problem, mechanism, rate, seed))
    holed = problem.complete.mask(mask)
    start = time.perf_counter()
    ds = ClusterDataset(holed, seed=seed, device="cpu")
    model = build_model(family, ds.layout, ds.n_clusters, {}, seed=seed)
    train, refit = configs_from_dict(dict(train_params or {}))
    result = Trainer(model, train, refit, seed=seed, device="cpu").fit(ds.data)
    scored = hidden_rmse(ds.decode(result.scored_imputed), problem.complete, mask, problem.numeric)
    kept = hidden_rmse(ds.decode(result.imputed), problem.complete, mask, problem.numeric)
    return {"scored": scored, "kept": kept, "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["concrete", "wine", "diabetes", "breast_cancer"])
    ap.add_argument("--mechanisms", nargs="+", default=["mcar", "mar"])
    ap.add_argument("--rates", nargs="+", type=float, default=[0.3])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--families", nargs="+", default=["cissvae", "miwae", "vae"])
    args = ap.parse_args(argv)
    changes = []
    print("| dataset | mechanism | rate | seed | family | held-out blind | every observed cell | change | s |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|")
    for dataset in args.datasets:
        for mechanism in args.mechanisms:
            for rate in args.rates:
                for seed in args.seeds:
                    for family in args.families:
                        r = run_cell(dataset, mechanism, rate, seed, family)
                        change = 100.0 * (r["kept"] / r["scored"] - 1.0)
                        changes.append(change)
                        print(f"| {dataset} | {mechanism} | {rate:g} | {seed} | {family} | {r['scored']:.4f} | "
                              f"{r['kept']:.4f} | {change:+.1f} % | {r['seconds']:.0f} |", flush=True)
    if changes:
        print(f"\n{len(changes)} fits: median change {statistics.median(changes):+.1f} %, "
              f"range {min(changes):+.1f} % to {max(changes):+.1f} %, lower in {sum(c < 0 for c in changes)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
