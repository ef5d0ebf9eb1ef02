"""Mask generators for evaluation (ciss_autoimpute.data.masks)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ciss_autoimpute.data.masks import MECHANISMS, make_missing


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    rng = np.random.default_rng(42)
    # Mixed scales and skewed columns: calibration must not rely on standard normals. The
    # two left-skewed columns put just over half the cells above their column mean, so
    # mnar_selfmask can reach a 50% rate.
    base = rng.normal(size=(400, 8))
    base[:, 2] = np.exp(base[:, 2])
    base[:, 4] = -np.exp(base[:, 4])
    base[:, 6] = -np.exp(base[:, 6])
    base[:, 5] = 100 + 20 * base[:, 5]
    return base


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("rate", [0.3, 0.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_rate_is_hit_and_no_row_is_emptied(X, mechanism, rate, seed):
    mask = make_missing(X, mechanism, rate=rate, seed=seed)
    assert mask.dtype == bool and mask.shape == X.shape
    assert abs(mask.mean() - rate) <= 0.02
    assert not mask.all(axis=1).any()


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_same_seed_same_mask_other_seed_other_mask(X, mechanism):
    a = make_missing(X, mechanism, rate=0.3, seed=3)
    assert np.array_equal(a, make_missing(X, mechanism, rate=0.3, seed=3))
    other = make_missing(X, mechanism, rate=0.3, seed=4)
    if mechanism == "mnar_quantile":
        # Without ties the top values are fixed; the seed only breaks ties (tested below).
        assert np.array_equal(a, other)
    else:
        assert not np.array_equal(a, other)


def test_selfmask_hides_only_values_above_the_mean(X):
    above = X > X.mean(axis=0)
    mask = make_missing(X, "mnar_selfmask", rate=0.3, seed=0)
    assert not (mask & ~above).any()
    # rate=None: the not-MIWAE protocol, every above-mean value goes (but no row is emptied).
    everything = make_missing(X, "mnar_selfmask", rate=None, seed=0)
    assert not (everything & ~above).any()
    emptied = above.all(axis=1)
    assert np.array_equal(everything[~emptied], above[~emptied])
    assert (everything[emptied].sum(axis=1) == X.shape[1] - 1).all()


def test_selfmask_refuses_an_unreachable_rate(X):
    reachable = (X > X.mean(axis=0)).mean()
    with pytest.raises(ValueError, match=rf"largest achievable rate is {reachable:.3f}.*rate=None"):
        make_missing(X, "mnar_selfmask", rate=0.8)


def test_quantile_hides_the_largest_values_of_each_column(X):
    mask = make_missing(X, "mnar_quantile", rate=0.25, seed=0)
    for j in range(X.shape[1]):
        hidden, kept = X[mask[:, j], j], X[~mask[:, j], j]
        assert len(hidden) == 100
        assert hidden.min() > kept.max()


def test_quantile_breaks_ties_at_random():
    X = np.repeat(np.array([[0.0, 1.0, 2.0]]), 100, axis=0)
    X[:50, 0] = 1.0  # column 0: half ties at 1; column 1 is all ties
    # Two of three columns may go missing: each loses 0.2 * 3 / 2 = 30% of its cells.
    a = make_missing(X, "mnar_quantile", rate=0.2, seed=0, columns=[0, 1])
    b = make_missing(X, "mnar_quantile", rate=0.2, seed=1, columns=[0, 1])
    assert a[:, 0].sum() == 30 and a[50:, 0].sum() == 0  # only the larger values go
    assert not np.array_equal(a[:, 1], b[:, 1])


def test_logistic_hides_larger_values_more_often(X):
    mask = make_missing(X, "mnar_logistic", rate=0.3, seed=0)
    for j in range(X.shape[1]):
        assert X[mask[:, j], j].mean() > X[~mask[:, j], j].mean()


def test_mar_keeps_predictors_observed_and_depends_on_them(X):
    mask = make_missing(X, "mar", rate=0.3, seed=0)
    predictors = np.flatnonzero(~mask.any(axis=0))
    assert len(predictors) == round(0.3 * X.shape[1])
    targets = np.flatnonzero(mask.any(axis=0))
    assert np.allclose(mask[:, targets].mean(axis=0), 0.3 * 8 / len(targets), atol=0.08)
    # Missingness is explained by the predictors: a linear fit on them separates the
    # masked from the kept cells far better than chance in every target column.
    Z = np.column_stack([np.ones(len(X)), X[:, predictors]])
    for j in targets:
        coef, *_ = np.linalg.lstsq(Z, mask[:, j].astype(float), rcond=None)
        fitted = Z @ coef
        assert fitted[mask[:, j]].mean() - fitted[~mask[:, j]].mean() > 0.2


def test_columns_restrict_the_mask_and_the_rate_stays_overall():
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(300, 4)), columns=["a", "b", "c", "d"])
    df["label"] = ["x", "y", "z"] * 100  # not numeric: never read by these calls
    before = df.copy(deep=True)
    for mechanism in MECHANISMS:
        mask = make_missing(df, mechanism, rate=0.15, seed=0, columns=["a", "c"])
        assert not mask[:, [1, 3, 4]].any()
        assert abs(mask.mean() - 0.15) <= 0.02
    pd.testing.assert_frame_equal(df, before)


def test_no_row_is_ever_emptied_even_at_high_rates():
    X = np.random.default_rng(0).normal(size=(200, 3))
    mask = make_missing(X, "mcar", rate=0.9, seed=0)
    assert not mask.all(axis=1).any()
    assert mask.sum(axis=1).max() == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mechanism": "mnar"}, r"mechanism='mnar' is unknown; valid mechanisms are \['mcar', 'mar', 'mnar_selfmask'"),
        ({"mechanism": "mcar", "rate": 0.0}, r"rate must be a number strictly between 0 and 1, got 0\.0"),
        ({"mechanism": "mcar", "rate": 1.0}, r"rate must be a number strictly between 0 and 1, got 1\.0"),
        ({"mechanism": "mcar", "rate": None}, r"rate=None is only meaningful for mechanism='mnar_selfmask'"),
        ({"mechanism": "mcar", "rate": 0.6, "columns": [0]}, r"overall rate must stay below 0\.250"),
        ({"mechanism": "mcar", "columns": [9]}, r"columns \[9\] are not column positions of X"),
        ({"mechanism": "mar", "columns": [0, 1, 2, 3]}, r"'mar' needs at least one numeric column that stays observed"),
        ({"mechanism": "mcar", "seed": -1}, r"seed must be a non-negative integer, got -1"),
        ({"mechanism": "mnar_logistic", "strength": 0}, r"strength must be a positive finite number"),
    ],
)
def test_bad_arguments(kwargs, match):
    X = np.random.default_rng(0).normal(size=(20, 4))
    with pytest.raises(ValueError, match=match):
        make_missing(X, **kwargs)


def test_value_based_mechanisms_need_complete_numeric_columns():
    df = pd.DataFrame({"a": np.arange(10.0), "b": ["u", "v"] * 5})
    with pytest.raises(ValueError, match=r"reads the values of columns \['b'\], which are not numeric"):
        make_missing(df, "mnar_selfmask", rate=0.2)
    df.loc[3, "a"] = np.nan
    with pytest.raises(ValueError, match=r"needs complete, finite values.*\{'a': 1\}"):
        make_missing(df, "mnar_logistic", rate=0.2, columns=["a"])
    # MCAR never reads values: holes and text are fine.
    assert make_missing(df, "mcar", rate=0.2).shape == (10, 2)
    with pytest.raises(TypeError, match=r"X must be a pandas DataFrame or a 2-D numpy array, got list"):
        make_missing([[1.0, 2.0]], "mcar")


def test_intercept_calibration_is_exact_even_for_steep_logits():
    from ciss_autoimpute.data.masks import _calibrated_probabilities

    rng = np.random.default_rng(0)
    logits = np.column_stack([np.zeros(500), rng.normal(size=500), 200 * np.exp(rng.normal(size=500))])
    for q in (0.01, 0.3, 0.99):
        np.testing.assert_allclose(_calibrated_probabilities(logits, q).mean(axis=0), q, atol=1e-9)
