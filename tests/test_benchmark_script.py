"""Smoke tests of scripts/benchmark.py's own logic: scoring, masks, the Gaussian oracle.

No anchors, no model training: these check the measuring instrument, not the methods.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmark_script"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("benchmark_script", None)


def test_score_hand_computed(bench):
    truth = pd.DataFrame({"a": [0.0, 2.0, 4.0, 6.0], "c": pd.Categorical(["x", "y", "x", "y"])})
    imputed = pd.DataFrame({"a": [0.0, 3.0, 4.0, 3.0], "c": pd.Categorical(["x", "x", "x", "y"])})
    mask = np.array([[False, False], [True, True], [False, True], [True, False]])
    center, scale = pd.Series({"a": 3.0}), pd.Series({"a": 2.0})
    out = bench.score(truth, imputed, mask, ["a"], ["c"], center, scale)
    # standardised errors on hidden numeric cells: rows 1 and 3 -> (3-2)/2 = 0.5, (3-6)/2 = -1.5
    assert out["n_num_cells"] == 2
    assert out["rmse"] == pytest.approx(np.sqrt((0.25 + 2.25) / 2))
    assert out["mae"] == pytest.approx(1.0)
    # hidden categorical cells: row 1 (y vs x: miss), row 2 (x vs x: hit)
    assert out["n_cat_cells"] == 2 and out["cat_acc"] == pytest.approx(0.5)


def test_apply_mask_keeps_dtypes_and_input(bench):
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "n": [1, 2, 3], "c": pd.Categorical(["u", "v", "u"])})
    before = frame.copy()
    mask = np.array([[True, False, False], [False, True, True], [False, False, False]])
    holed = bench.apply_mask(frame, mask)
    pd.testing.assert_frame_equal(frame, before)  # caller's frame untouched
    np.testing.assert_array_equal(holed.isna().to_numpy(), mask)
    assert isinstance(holed["c"].dtype, pd.CategoricalDtype)
    assert list(holed["c"].cat.categories) == ["u", "v"]
    with pytest.raises(ValueError, match="mask shape"):
        bench.apply_mask(frame, mask[:2])


def test_observed_unchanged_detects_a_changed_cell(bench):
    holed = pd.DataFrame({"a": [1.0, np.nan, 3.0], "c": pd.Categorical(["u", None, "v"])})
    good = pd.DataFrame({"a": [1.0, 9.0, 3.0], "c": pd.Categorical(["u", "v", "v"])})
    assert bench.observed_unchanged(holed, good)
    bad = good.copy()
    bad.loc[0, "a"] = 1.0 + 1e-12
    assert not bench.observed_unchanged(holed, bad)
    bad_cat = good.copy()
    bad_cat["c"] = pd.Categorical(["v", "v", "v"])
    assert not bench.observed_unchanged(holed, bad_cat)


def test_conditional_mean_matches_two_variable_formula(bench):
    mu = np.array([1.0, -1.0])
    sigma = np.array([[1.0, 0.8], [0.8, 2.0]])
    X = np.array([[np.nan, 1.0], [3.0, np.nan], [0.5, 0.5], [np.nan, np.nan]])
    out = bench.conditional_mean(X, mu, sigma)
    assert out[0, 0] == pytest.approx(1.0 + 0.8 / 2.0 * (1.0 - (-1.0)))
    assert out[1, 1] == pytest.approx(-1.0 + 0.8 / 1.0 * (3.0 - 1.0))
    np.testing.assert_array_equal(out[2], [0.5, 0.5])  # observed rows untouched
    np.testing.assert_allclose(out[3], mu)  # nothing observed: the mean


def test_oracle_beats_mean_and_column_regressions(bench):
    prob = bench.gaussian_problem(n=400, p=5, seed=1)
    mask = bench.make_mask(prob, "mcar", 0.3, seed=0)
    holed = bench.apply_mask(prob.complete, mask)
    center, scale = bench.standardisation(prob)
    cm = bench.conditional_mean(holed.to_numpy(), prob.mu, prob.sigma)
    oracle = bench.score(prob.complete, pd.DataFrame(cm, columns=holed.columns), mask, prob.numeric, [],
                         center, scale)["rmse"]
    mean = bench.score(prob.complete, bench._mean_impute(holed, [], 0), mask, prob.numeric, [], center,
                       scale)["rmse"]
    assert 0.2 < oracle < 0.85 * mean  # correlated columns: conditioning helps a lot


def test_masks_for_each_mechanism(bench):
    prob = bench.gaussian_problem(n=300, p=6, seed=0)
    for mech in ("mcar", "mar", "mnar"):
        mask = bench.make_mask(prob, mech, 0.3, seed=2)
        assert abs(mask.mean() - 0.3) < 0.04, mech
        assert not mask.all(axis=1).any()
    mnar = bench.make_mask(prob, "mnar", 0.3, seed=2)
    above = prob.complete.to_numpy() > prob.complete.to_numpy().mean(axis=0)
    assert not (mnar & ~above).any()  # self-masking hides above-mean values only
    # an unreachable rate falls back to every above-mean value hidden
    allm = bench.make_mask(prob, "mnar", 0.9, seed=2)
    assert allm.sum() >= above.sum() - prob.complete.shape[0] * 0.05
    with pytest.raises(ValueError, match="mechanism must be one of"):
        bench.make_mask(prob, "bogus", 0.3, seed=0)
    # Smooth self-masking: the hidden values are higher on average, but not only above the mean.
    logi = bench.make_mask(prob, "mnar_logistic", 0.3, seed=2)
    X = prob.complete.to_numpy()
    assert abs(logi.mean() - 0.3) < 0.04 and (logi & ~above).any()
    assert (X[logi].mean() - X[~logi].mean()) > 0.5
    assert bench.methods_for(bench.Cell("d", "mnar_logistic", 0.3, 0), ["ours_autotune_mnar"]) == ["ours_autotune_mnar"]


def test_mnar_paper_is_the_not_miwae_protocol(bench):
    # First half of the numeric columns: every above-mean value hidden; the rest complete.
    prob = bench.gaussian_problem(n=300, p=6, seed=0)
    X = prob.complete.to_numpy()
    mask = bench.make_mask(prob, "mnar_paper", 0.3, seed=5)
    expected = np.zeros_like(mask)
    expected[:, :3] = X[:, :3] > X[:, :3].mean(axis=0)
    np.testing.assert_array_equal(mask, expected)
    assert np.array_equal(mask, bench.make_mask(prob, "mnar_paper", 0.5, seed=9))  # rate and seed do not apply
    m = bench.methods_for(bench.Cell("concrete", "mnar_paper", 0.3, 0), ["mean", "ours_autotune_mnar"])
    assert m == ["mean", "ours_autotune_mnar"]


def test_holdout_mask_only_hides_observed_cells(bench):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(200, 4)))
    frame = frame.mask(rng.random(frame.shape) < 0.3)
    mask = bench.holdout_mask(frame, 0.1, seed=3)
    obs = frame.notna().to_numpy()
    assert not (mask & ~obs).any()
    assert 0.07 < mask.sum() / obs.sum() < 0.13
    left = obs & ~mask
    assert left[obs.any(axis=1)].any(axis=1).all()  # every row keeps an observed cell


def test_sklearn_wrapper_mixed_types(bench):
    rng = np.random.default_rng(0)
    n = 120
    g = rng.integers(0, 2, n)
    frame = pd.DataFrame({"x": g * 3.0 + rng.normal(size=n) * 0.1, "y": rng.normal(size=n),
                          "c": pd.Categorical.from_codes(g, ["lo", "hi"])})
    mask = np.zeros(frame.shape, dtype=bool)
    mask[::5, 2] = True
    mask[1::7, 0] = True
    holed = bench.apply_mask(frame, mask)
    out = bench._knn(holed, ["c"], 0)
    assert not out.isna().any().any()
    assert bench.observed_unchanged(holed, out)
    acc = bench.score(frame, out, mask, ["x", "y"], ["c"], *bench.standardisation(
        bench.Problem("t", "t", complete=frame, categorical=["c"])))["cat_acc"]
    assert acc > 0.9  # the category is recoverable from x


def test_codes_round_trip(bench):
    frame = pd.DataFrame({"a": [1.5, np.nan], "c": pd.Categorical(["q", None], categories=["p", "q"])})
    X, cats = bench.to_codes(frame, ["c"])
    assert cats == {"c": ["p", "q"]}
    np.testing.assert_array_equal(np.isnan(X), [[False, False], [True, True]])
    X[1] = [2.0, 0.2]
    back = bench.from_codes(X, frame, ["c"])
    assert back["c"].tolist() == ["q", "p"] and back["a"].tolist() == [1.5, 2.0]


def test_markdown_bolds_best_and_keeps_hand_text(bench, tmp_path):
    rows = pd.DataFrame([
        {"dataset": "d", "mechanism": "mcar", "rate": 0.3, "seed": s, "method": m, "status": "ok",
         "rmse": v + 0.01 * s, "realised_rate": 0.3}
        for s in (0, 1) for m, v in (("mean", 1.0), ("mice", 0.5))
    ])
    table = bench.pivot(rows, "rmse", ["mean", "mice"])
    assert table.loc["d / mcar / 30%", "mice"] == pytest.approx(0.505)
    text = bench.markdown_table(table)
    assert "**0.505**" in text and "| 1.005 |" in text
    path = tmp_path / "b.md"
    path.write_text("# Title\n\nhand-written intro\n")
    bench.write_markdown(path, "first")
    body = path.read_text()
    path.write_text(body + "\nhand-written analysis\n")
    bench.write_markdown(path, "second")
    body = path.read_text()
    assert "second" in body and "first" not in body and "hand-written analysis" in body


def test_cli_rejects_bad_rate(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--rates", "1.5"])
    args = bench.parse_args(["--quick"])
    assert args.seeds == [0] and args.rates == [0.3] and args.trials == 5


def test_cell_grid_and_method_filter(bench):
    problems = {"gaussian": bench.gaussian_problem(n=20, p=3),
                "pima_like": bench.Problem("pima_like", "x", observed=pd.DataFrame({"a": [1.0, np.nan]}))}
    cells = bench.build_cells(problems, ["mcar", "mnar"], [0.3, 0.5], [0])
    assert [(c.dataset, c.mechanism, c.rate) for c in cells] == [
        ("gaussian", "mcar", 0.3), ("pima_like", "real", bench.REAL_HOLDOUT), ("gaussian", "mcar", 0.5)]
    m = bench.methods_for(bench.Cell("concrete", "mcar", 0.3, 0),
                          ["oracle", "mean", "ours_autotune_mnar", "ours_notmiwae_known"])
    assert m == ["mean"]
    m = bench.methods_for(bench.Cell("concrete", "mnar", 0.3, 0), ["mean", "ours_notmiwae_known"])
    assert m == ["mean", "ours_notmiwae_known"]
    assert json.dumps(bench.METHOD_NOTES)  # every note serialisable for the docs


def _target_rows(values: dict) -> pd.DataFrame:
    """Finished runs of table ``d`` at 30 %, seed 0: ``{(mechanism, method): rmse}``."""
    return pd.DataFrame([{"dataset": "d", "mechanism": mech, "rate": 0.3, "seed": 0, "method": m, "status": "ok",
                          "rmse": v, "realised_rate": 0.3} for (mech, m), v in values.items()])


def test_targets_count_the_mnar_study_on_mnar_cells(bench):
    # Two cells: MCAR (the default study wins) and MNAR (the default study loses to MICE,
    # the mnar preset's study beats it).
    values = {("mcar", "ours_autotune"): 0.5, ("mcar", "mice"): 0.6,
              ("mnar", "ours_autotune"): 0.9, ("mnar", "mice"): 0.8, ("mnar", "ours_autotune_mnar"): 0.7}
    lines = bench.targets_summary(_target_rows(values), ["mice", "ours_autotune", "ours_autotune_mnar"])
    default = next(line for line in lines if line.startswith("- Against the other tools"))
    assert "lowest RMSE in 1 of 2 cells" in default and "worst ratio to the best 1.125" in default
    by_mechanism = next(line for line in lines if line.startswith("- The study for the mechanism"))
    assert "lowest RMSE in 2 of 2 cells" in by_mechanism and "within 5 % of the best in 2 of 2" in by_mechanism
    assert not any("mnar_correction" in line for line in lines)  # no such run, no line


def test_targets_count_the_mnar_correction_study_on_mnar_cells_only(bench):
    values = {("mcar", "ours_autotune"): 0.5, ("mcar", "mice"): 0.6, ("mcar", "ours_autotune_mnarcorr"): 0.9,
              ("mnar", "ours_autotune"): 0.9, ("mnar", "mice"): 0.8, ("mnar", "ours_autotune_mnarcorr"): 0.88}
    lines = bench.targets_summary(_target_rows(values), ["mice", "ours_autotune", "ours_autotune_mnarcorr"])
    line = next(line for line in lines if line.startswith("- The `mnar_correction` study"))
    # Only the MNAR cell counts (its MCAR run is not what the preset is for): 0.88 / 0.8.
    assert "lowest RMSE in 0 of 1 cells" in line and "worst ratio to the best 1.100" in line


def test_seeds_column_shows_a_range_when_methods_differ(bench):
    rows = pd.DataFrame([
        {"dataset": "d", "mechanism": mech, "rate": 0.3, "seed": s, "method": m, "status": "ok", "rmse": 0.5,
         "mae": 0.4, "realised_rate": 0.3, "n_cat_cells": 0, "cat_acc": np.nan, "oracle_rmse": np.nan,
         "ratio_to_oracle": np.nan, "seconds": 1.0, "peak_rss_mb": 10.0, "base_rss_mb": 5.0,
         "observed_unchanged": True, "any_missing_left": False, "info": "{}", "error": ""}
        for mech, plan in (("mcar", {"mean": (0, 1, 2), "mice": (0,)}), ("mar", {"mean": (0, 1), "mice": (0, 1)}))
        for m, seeds in plan.items() for s in seeds
    ])
    text = bench.render_markdown(rows, command="c", machine="m", problems={}, methods=["mean", "mice"])
    assert "| d / mcar / 30% | 0.500 | 0.500 | 1-3 |" in text.replace("**", "")
    assert "| d / mar / 30% | 0.500 | 0.500 | 2 |" in text.replace("**", "")


def test_a_column_left_constant_by_the_mask_is_set_aside_for_our_methods(bench):
    holed = pd.DataFrame({"a": [1.0, np.nan, 3.0, 4.0], "erl": [0.5, np.nan, 0.5, np.nan],
                          "c": pd.Categorical(["x", "y", None, "x"])})
    seen = {}

    def fake(h, categorical, seed, **kw):
        seen["columns"], seen["categorical"] = list(h.columns), categorical
        return h.fillna({"a": 2.0}).assign(c=h["c"].fillna("x")), {"val_error": 0.1}

    imputed, info = bench._set_constant_columns_aside(fake)(holed, ["c"], 0)
    assert seen == {"columns": ["a", "c"], "categorical": ["c"]}  # the library never sees `erl`
    assert list(imputed.columns) == ["a", "erl", "c"] and imputed["erl"].tolist() == [0.5] * 4
    assert imputed["a"].tolist() == [1.0, 2.0, 3.0, 4.0] and imputed["c"].dtype == holed["c"].dtype
    assert info == {"val_error": 0.1, "constant_columns_filled": ["erl"]}
    # Nothing constant: the table goes through as it is.
    _, info = bench._set_constant_columns_aside(fake)(holed.drop(columns="erl"), ["c"], 0)
    assert "constant_columns_filled" not in info
