"""Rubin's rules: combine an analysis repeated on each of ``m`` imputed data sets.

Fit the same analysis to every completed copy (from
:meth:`ciss_autoimpute.Imputer.sample`), collect each copy's estimate ``Q_i`` and its
squared standard error ``U_i``, and pool (Rubin, 1987; Barnard & Rubin, 1999)::

    Q_bar = mean(Q_i)                      pooled estimate
    U_bar = mean(U_i)                      within-imputation variance
    B     = var(Q_i, ddof=1)               between-imputation variance
    T     = U_bar + (1 + 1/m) B            total variance
    riv   = (1 + 1/m) B / U_bar            relative increase in variance
    lambda = (1 + 1/m) B / T               share of the variance due to missing data
    df_old = (m - 1) / lambda^2            Rubin's degrees of freedom
    df_obs = (df_com + 1) / (df_com + 3) * df_com * (1 - lambda)
    df    = df_old * df_obs / (df_old + df_obs)   Barnard-Rubin (when df_com is given)
    fmi   = (riv + 2 / (df + 3)) / (1 + riv)      fraction of missing information

Each parameter is pooled on its own (the variances are the diagonal of the
covariance). Intervals use Student's t with ``df`` degrees of freedom.

Examples
--------
>>> p = pool([1.0, 2.0, 3.0], [0.5, 0.5, 0.5])
>>> p.estimate, p.between, round(p.total, 4)
(2.0, 1.0, 1.8333)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["PooledEstimate", "pool", "pool_function"]


@dataclass(frozen=True)
class PooledEstimate:
    """Rubin's-rules summary of ``m`` repeated analyses.

    Every statistic is a float for a scalar analysis, otherwise a 1-D array with one
    entry per parameter (in the order of :attr:`names`).

    Attributes
    ----------
    estimate
        Pooled estimate ``Q_bar``.
    within
        Within-imputation variance ``U_bar``.
    between
        Between-imputation variance ``B``.
    total
        Total variance ``T = U_bar + (1 + 1/m) B``.
    df
        Degrees of freedom (Barnard-Rubin when ``dfcom`` was given; ``inf`` when
        nothing varies between imputations and ``dfcom`` is not given).
    riv
        Relative increase in variance due to missing data.
    lambda_
        Share of the total variance due to missing data.
    fmi
        Fraction of missing information.
    m
        Number of imputations.
    dfcom
        Complete-data degrees of freedom used (``inf``: large sample).
    names
        Parameter names (``None`` for a scalar or unnamed analysis).
    """

    estimate: Any
    within: Any
    between: Any
    total: Any
    df: Any
    riv: Any
    lambda_: Any
    fmi: Any
    m: int
    dfcom: float
    names: tuple[Any, ...] | None = None

    @property
    def std_error(self) -> Any:
        """``sqrt(total)``."""
        return np.sqrt(self.total)

    def confint(self, level: float = 0.95) -> tuple[Any, Any]:
        """Lower and upper bounds of the ``level`` interval ``Q_bar -+ t_df * sqrt(T)``."""
        from scipy import stats

        if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0.0 < float(level) < 1.0:
            raise ValueError(f"level must be a number strictly between 0 and 1 (e.g. 0.95), got {level!r}.")
        df = np.asarray(self.df, dtype=np.float64)
        q = (1.0 + float(level)) / 2.0
        crit = np.where(np.isfinite(df), stats.t.ppf(q, np.where(np.isfinite(df), df, 1.0)), stats.norm.ppf(q))
        half = crit * np.sqrt(np.asarray(self.total, dtype=np.float64))
        lo, hi = np.asarray(self.estimate) - half, np.asarray(self.estimate) + half
        if np.ndim(self.estimate) == 0:
            return float(lo), float(hi)
        return lo, hi

    def to_frame(self, level: float = 0.95) -> pd.DataFrame:
        """One row per parameter: estimate, std_error, within, between, total, df, riv,
        lambda, fmi and the ``level`` interval (``ci_lower``, ``ci_upper``)."""
        lo, hi = self.confint(level)
        data = {
            "estimate": self.estimate,
            "std_error": self.std_error,
            "within": self.within,
            "between": self.between,
            "total": self.total,
            "df": self.df,
            "riv": self.riv,
            "lambda": self.lambda_,
            "fmi": self.fmi,
            "ci_lower": lo,
            "ci_upper": hi,
        }
        data = {k: np.atleast_1d(np.asarray(v, dtype=np.float64)) for k, v in data.items()}
        k = len(data["estimate"])
        index = list(self.names) if self.names is not None else list(range(k))
        return pd.DataFrame(data, index=pd.Index(index, name="parameter"))


# ---------------------------------------------------------------------------- inputs
def _as_vector(value: Any, what: str, i: int | None = None) -> tuple[np.ndarray, tuple[Any, ...] | None, bool]:
    """A 1-D float array, its names (Series index / dict keys) and whether it was a scalar."""
    where = f"{what}" if i is None else f"{what} of imputation {i}"
    names = None
    if isinstance(value, pd.Series):
        names = tuple(value.index)
        arr = value.to_numpy(dtype=np.float64, na_value=np.nan)
    elif isinstance(value, Mapping):
        names = tuple(value.keys())
        arr = np.asarray(list(value.values()), dtype=np.float64)
    else:
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(
                f"{where} must be a number, a sequence of numbers, a pandas Series or a dict, "
                f"got {type(value).__name__}."
            ) from None
    scalar = arr.ndim == 0
    return np.atleast_1d(arr), names, scalar


def _check_dfcom(dfcom: Any) -> float:
    if dfcom is None:
        return math.inf
    if isinstance(dfcom, bool) or not isinstance(dfcom, numbers.Real) or not float(dfcom) > 0:
        raise ValueError(
            f"dfcom must be a positive number (complete-data degrees of freedom, e.g. n - p) or None, got {dfcom!r}."
        )
    return float(dfcom)


# ---------------------------------------------------------------------------- rules
def pool(estimates: Any, variances: Any, *, dfcom: float | None = None) -> PooledEstimate:
    """Pool ``m`` estimates and their variances with Rubin's rules.

    Parameters
    ----------
    estimates
        ``m`` estimates: a sequence of numbers (scalar analysis), an ``[m, k]``
        array, or a sequence of ``m`` pandas Series / dicts (named parameters).
    variances
        The squared standard errors, shaped like ``estimates``; an ``[m, k, k]``
        array of covariance matrices is accepted and its diagonals are used.
    dfcom
        Degrees of freedom of the analysis on complete data (e.g. ``n - p`` for a
        regression); ``None`` means a large sample (Rubin's original ``df``).

    Returns
    -------
    PooledEstimate

    Raises
    ------
    ValueError
        Fewer than 2 imputations, shapes that do not match, non-finite estimates, or
        negative / non-finite variances.

    Examples
    --------
    >>> p = pool([[1.0, 10.0], [3.0, 10.0]], [[1.0, 2.0], [1.0, 2.0]])
    >>> p.estimate.tolist(), p.between.tolist()
    ([2.0, 10.0], [2.0, 0.0])
    """
    dfcom_f = _check_dfcom(dfcom)
    if isinstance(estimates, (str, bytes)) or not isinstance(estimates, (Sequence, np.ndarray, pd.Series, pd.DataFrame)):
        raise TypeError(
            f"estimates must be a sequence with one entry per imputation, got {type(estimates).__name__}."
        )
    if isinstance(estimates, pd.DataFrame):
        est_rows = [row for _, row in estimates.iterrows()]
    else:
        est_rows = list(estimates)
    if isinstance(variances, pd.DataFrame):
        var_rows = [row for _, row in variances.iterrows()]
    elif isinstance(variances, (str, bytes)) or not isinstance(variances, (Sequence, np.ndarray, pd.Series)):
        raise TypeError(
            f"variances must be a sequence with one entry per imputation, got {type(variances).__name__}."
        )
    else:
        var_rows = list(variances)
    m = len(est_rows)
    if m < 2:
        raise ValueError(
            f"Rubin's rules need at least 2 imputations (the between-imputation variance), got {m}; "
            "draw more with Imputer.sample(X, n=...)."
        )
    if len(var_rows) != m:
        raise ValueError(f"estimates has {m} entries but variances has {len(var_rows)}; give one per imputation.")
    names: tuple[Any, ...] | None = None
    q_list, u_list = [], []
    scalar = False
    for i, (q_i, u_i) in enumerate(zip(est_rows, var_rows), start=1):
        q, q_names, scalar = _as_vector(q_i, "estimate", i)
        if q.ndim != 1:
            raise ValueError(f"estimate of imputation {i} must be a number or a 1-D vector, got shape {q.shape}.")
        u_raw, u_names, _ = _as_vector(u_i, "variance", i)
        if u_raw.ndim == 2 and u_raw.shape == (len(q), len(q)):
            u_raw = np.diagonal(u_raw).copy()
        if u_raw.shape != q.shape:
            raise ValueError(
                f"imputation {i}: the estimate has {len(q)} value(s) but the variance has shape {u_raw.shape}; "
                "give one squared standard error per estimate (or a k x k covariance)."
            )
        if names is None:
            names = q_names
        elif q_names is not None and q_names != names:
            raise ValueError(
                f"imputation {i} names its parameters {list(q_names)} but imputation 1 has {list(names)}; "
                "the analysis must return the same parameters every time."
            )
        if u_names is not None and q_names is not None and tuple(u_names) != tuple(q_names):
            raise ValueError(
                f"imputation {i}: variances are named {list(u_names)} but estimates {list(q_names)}; align them."
            )
        q_list.append(q)
        u_list.append(u_raw)
    widths = {len(q) for q in q_list}
    if len(widths) != 1:
        raise ValueError(f"the analyses returned different numbers of estimates {sorted(widths)}; they must agree.")
    q_mat, u_mat = np.vstack(q_list), np.vstack(u_list)
    if not np.isfinite(q_mat).all():
        raise ValueError("estimates hold NaN or infinite values; check the analysis on every imputed copy.")
    if not np.isfinite(u_mat).all() or (u_mat < 0).any():
        raise ValueError("variances must be finite and >= 0 (squared standard errors); got a negative or NaN value.")

    q_bar = q_mat.mean(0)
    u_bar = u_mat.mean(0)
    b = q_mat.var(0, ddof=1)
    inflated = (1.0 + 1.0 / m) * b
    t = u_bar + inflated
    with np.errstate(divide="ignore", invalid="ignore"):
        riv = np.where(inflated == 0, 0.0, inflated / u_bar)  # B > 0 with U_bar = 0 gives inf
        lam = np.where(t > 0, inflated / np.where(t > 0, t, 1.0), 0.0)
        df_old = np.where(lam > 0, (m - 1) / np.where(lam > 0, lam, 1.0) ** 2, np.inf)
        if math.isinf(dfcom_f):
            df = df_old
        else:
            df_obs = (dfcom_f + 1.0) / (dfcom_f + 3.0) * dfcom_f * (1.0 - lam)
            df = np.where(np.isinf(df_old), df_obs, df_old * df_obs / (df_old + df_obs))
        fmi = np.where(np.isinf(riv), 1.0, (riv + 2.0 / (df + 3.0)) / (1.0 + riv))
    if names is not None and len(names) != len(q_bar):
        names = None

    def out(v: np.ndarray) -> Any:
        return float(v[0]) if scalar and len(v) == 1 else v

    return PooledEstimate(
        estimate=out(q_bar),
        within=out(u_bar),
        between=out(b),
        total=out(t),
        df=out(np.asarray(df, dtype=np.float64)),
        riv=out(np.asarray(riv, dtype=np.float64)),
        lambda_=out(np.asarray(lam, dtype=np.float64)),
        fmi=out(np.asarray(fmi, dtype=np.float64)),
        m=m,
        dfcom=dfcom_f,
        names=None if scalar else names,
    )


def pool_function(
    imputed: Sequence[pd.DataFrame] | pd.DataFrame,
    fn: Callable[[pd.DataFrame], tuple[Any, Any]],
    *,
    dfcom: float | None = None,
) -> PooledEstimate:
    """Run ``fn`` on every imputed copy and pool the results with :func:`pool`.

    Parameters
    ----------
    imputed
        The list returned by :meth:`~ciss_autoimpute.Imputer.sample`, or its long
        frame (``long=True``; split on the ``imputation`` column, which ``fn`` does
        not see).
    fn
        ``fn(frame) -> (estimate, variance)``: a number and its squared standard
        error, or vectors / Series / dicts of them (e.g. regression coefficients and
        their squared standard errors, or a coefficient vector and its covariance).
    dfcom
        Complete-data degrees of freedom, as for :func:`pool`.

    Returns
    -------
    PooledEstimate

    Examples
    --------
    >>> import pandas as pd
    >>> copies = [pd.DataFrame({"y": [1.0, 2.0, 3.0]}), pd.DataFrame({"y": [1.0, 2.0, 6.0]})]
    >>> def mean_and_var(df):
    ...     y = df["y"]
    ...     return y.mean(), y.var(ddof=1) / len(y)
    >>> pool_function(copies, mean_and_var).estimate
    2.5
    """
    if not callable(fn):
        raise TypeError(f"fn must be a function frame -> (estimate, variance), got {type(fn).__name__}.")
    if isinstance(imputed, pd.DataFrame):
        if "imputation" not in imputed.columns:
            raise ValueError(
                "a single DataFrame must be the long format of Imputer.sample(..., long=True) with an "
                "'imputation' column; pass the list of completed copies otherwise."
            )
        frames = [g.drop(columns="imputation") for _, g in imputed.groupby("imputation", sort=True)]
    elif isinstance(imputed, (list, tuple)):
        frames = list(imputed)
        bad = [i for i, f in enumerate(frames) if not isinstance(f, pd.DataFrame)]
        if bad:
            raise TypeError(
                f"imputed must hold DataFrames (the output of Imputer.sample); entry {bad[0]} is "
                f"{type(frames[bad[0]]).__name__}."
            )
    else:
        raise TypeError(
            f"imputed must be a list of completed DataFrames or a long DataFrame, got {type(imputed).__name__}."
        )
    estimates, variances = [], []
    for i, frame in enumerate(frames, start=1):
        result = fn(frame)
        if not isinstance(result, tuple) or len(result) != 2:
            raise TypeError(
                f"fn must return a pair (estimate, variance); on imputation {i} it returned {type(result).__name__}."
            )
        estimates.append(result[0])
        variances.append(result[1])
    return pool(estimates, variances, dfcom=dfcom)
