"""scripts/bench_batch_fit.py: one fit per family and batch size, scored on the hidden cells."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_batch_fit.py"


def test_each_batch_size_gets_a_fit_scored_on_the_hidden_cells(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_batch_fit_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "batch.csv"
    assert module.main(["--tables", "factors", "--rows", "400", "--families", "vae", "--batches", "auto", "64",
                        "--train-params", '{"epochs": 150, "max_loops": 1, "epochs_per_loop": 10}',
                        "--out", str(out)]) == 0
    got = pd.read_csv(out)
    assert got["batch"].tolist() == [256, 64]  # "auto" resolved for 400 rows, then the given size
    assert got["epochs"].tolist() == [160, 160]
    # The factor model's columns are predictable from each other: well under the column mean's error (1.0).
    assert (got["rmse"] < 0.95).all() and (got["rmse"] > 0).all()
    assert got["rmse"].nunique() == 2  # the batch size changed the fit
