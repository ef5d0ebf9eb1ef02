"""scripts/bench_final_pass.py: both passes of one fit, scored on the hidden cells."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_final_pass.py"


def test_bench_final_pass_scores_both_passes_of_one_fit():
    spec = importlib.util.spec_from_file_location("bench_final_pass_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    quick = {"epochs": 100, "max_loops": 1, "epochs_per_loop": 20}
    r = module.run_cell("wine", "mcar", 0.3, 0, "vae", train_params=quick)
    assert math.isfinite(r["scored"]) and math.isfinite(r["kept"])
    # The same helper scores the column mean: both passes beat it, and they differ.
    problem = module.load_problem("wine")
    mask = np.asarray(module.make_mask(problem, "mcar", 0.3, 0))
    holed = problem.complete.mask(mask)
    mean_rmse = module.hidden_rmse(holed.fillna(holed.mean()), problem.complete, mask, problem.numeric)
    assert r["kept"] < 0.95 * mean_rmse and r["scored"] < 0.95 * mean_rmse
    assert r["kept"] != r["scored"]
