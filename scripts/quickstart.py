"""Tune on the shipped example (Palmer penguins, real missing values) into an SQLite study.

Writes ``quickstart/imputed.csv``, ``quickstart/studies.db`` (the Optuna study) and
``quickstart/imputer.pt`` (the fitted model: best trial or ensemble), then says how to open the dashboard.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ciss_autoimpute import ClusterDataset, SearchSpace, autotune
from ciss_autoimpute.datasets import load_example


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="quickstart", help="output folder (default: quickstart)")
    parser.add_argument("--trials", type=int, default=10, help="Optuna trials (default: 10)")
    parser.add_argument("--space", default="quick", help="search-space preset (default: quick)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df = load_example()
    print(f"Example data: {df.shape[0]} rows x {df.shape[1]} columns, {int(df.isna().sum().sum())} missing cells")
    dataset = ClusterDataset(df, seed=args.seed)
    print(dataset)
    db = out / "studies.db"
    tuned = autotune(
        SearchSpace.preset(args.space),
        dataset,
        n_trials=args.trials,
        storage=f"sqlite:///{db.resolve()}",
        study_name="penguins",
        seed=args.seed,
        show_progress=True,
    )
    tuned.imputed.to_csv(out / "imputed.csv")
    tuned.imputer.save(out / "imputer.pt")
    print()
    print(f"Best trial: model={tuned.best_config.get('model')} validation error={tuned.best_value:.4f}")
    if tuned.ensemble_weights:
        mix = ", ".join(f"#{n} {m.model} {w:.2f}" for n, w, m in zip(tuned.imputer.trial_numbers_,
                                                                   tuned.imputer.weights_, tuned.imputer.members_))
        print(f"Returned: an ensemble of {mix}; validation error={tuned.ensemble_value:.4f}")
    print(f"Imputed table:  {out / 'imputed.csv'}")
    print(f"Fitted model:   {out / 'imputer.pt'}   (Imputer.load(path).transform(new_rows))")
    print(f"Optuna study:   {db}  ({len(tuned.study.trials)} trials in study 'penguins')")
    print(f"Dashboard:      .venv/bin/optuna-dashboard sqlite:///{db.resolve()}   then open http://127.0.0.1:8080")


if __name__ == "__main__":
    main()
