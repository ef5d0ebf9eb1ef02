"""Missingness masks for evaluation: hide known cells, impute them, compare.

:func:`make_missing` draws a boolean mask (True = make missing) over a complete table
under one of the classic mechanisms: completely at random (MCAR), at random given
other, always-observed columns (MAR), or not at random, depending on the hidden value
itself (three MNAR variants, including the self-masking protocol of the not-MIWAE
paper). Apply it with ``X.mask(mask)`` (DataFrame) or ``np.where(mask, np.nan, X)``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["MECHANISMS", "MAR_PREDICTOR_SHARE", "make_missing"]

#: The mechanisms :func:`make_missing` knows.
MECHANISMS: tuple[str, ...] = ("mcar", "mar", "mnar_selfmask", "mnar_quantile", "mnar_logistic")

#: Share of the columns kept fully observed as predictors under ``"mar"`` (at least one).
MAR_PREDICTOR_SHARE = 0.3


def make_missing(
    X: pd.DataFrame | np.ndarray,
    mechanism: str,
    *,
    rate: float | None = 0.3,
    seed: int = 0,
    columns: Sequence[Hashable] | None = None,
    strength: float = 2.0,
) -> np.ndarray:
    """Draw a missingness mask for a complete table.

    ``rate`` is always the expected share of missing cells in the *whole* matrix
    ``[n, p]`` (so ``mask.mean()`` is close to ``rate``). When only ``k`` of the ``p``
    columns can go missing (the ``columns`` argument, or the predictors kept observed
    under MAR), each of those columns loses a share ``q = rate * p / k`` of its cells;
    a rate needing ``q >= 1`` is refused with the largest achievable rate.

    Mechanisms (``x_ij`` the value, ``z_ij`` the value standardised per column,
    ``sigmoid(t) = 1 / (1 + exp(-t))``):

    ``"mcar"``
        Each target cell is missing independently with probability ``q``.
    ``"mar"``
        A random :data:`MAR_PREDICTOR_SHARE` of the numeric columns (at least one; when
        ``columns`` is given, every other numeric column) stays fully observed. For each
        target column ``j``, ``P(miss_ij) = sigmoid(strength * s_ij + b_j)`` where
        ``s_ij`` is a random linear combination of the row's standardised predictors
        (weights standard normal, then ``s_j`` scaled to unit variance) and the
        intercept ``b_j`` is solved for (safeguarded Newton/bisection) so that the
        column's mean probability is ``q``. Missingness depends only on observed values.
    ``"mnar_selfmask"``
        The not-MIWAE protocol: only values above their column's mean can go missing,
        each with the same probability ``pi = rate * n * p / A`` (``A`` = number of
        above-mean target cells). ``rate=None`` masks *every* above-mean value, as in the
        paper. A rate needing ``pi > 1`` is refused with the largest achievable rate ``A / (n p)``.
    ``"mnar_quantile"``
        In each target column the ``round(q * n)`` largest values go missing (values
        above the column's ``1 - q`` quantile), ties broken at random.
    ``"mnar_logistic"``
        Logistic self-masking: ``P(miss_ij) = sigmoid(strength * z_ij + b_j)`` with
        ``b_j`` solved for the same way so the column's mean probability is ``q``: larger
        values are more likely to be missing.

    No row is ever left with every cell missing: in such a row one of its cells, chosen
    at random, is kept observed. This lowers the realised rate slightly (only when every
    column is a target, and rarely at moderate rates); nothing is recalibrated.

    Parameters
    ----------
    X
        Complete table, DataFrame or 2-D numpy array, ``[n, p]`` with ``p >= 2``. Only
        the columns a mechanism reads must be numeric (bool counts) and free of missing
        values: none for ``"mcar"``, the predictors for ``"mar"``, the targets for the
        MNAR mechanisms.
    mechanism
        One of :data:`MECHANISMS`.
    rate
        Expected overall share of missing cells, in ``(0, 1)``; ``None`` only for
        ``"mnar_selfmask"``.
    seed
        Seed of the ``numpy.random.default_rng`` used for every random choice.
    columns
        The columns that may go missing (labels for a DataFrame, positions for an
        array); ``None`` means all columns (for ``"mar"``: all but the predictors).
    strength
        Slope of the logistic models of ``"mar"`` and ``"mnar_logistic"``; larger is a
        stronger dependence on the values.

    Returns
    -------
    numpy.ndarray
        bool ``[n, p]``, True where the cell should be made missing.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(500, 4))
    >>> mask = make_missing(X, "mnar_selfmask", rate=0.2, seed=0)
    >>> abs(float(mask.mean()) - 0.2) < 0.02
    True
    >>> bool((X[mask] > X.mean(axis=0)[np.nonzero(mask)[1]]).all())
    True
    """
    if not isinstance(mechanism, str) or mechanism not in MECHANISMS:
        raise ValueError(f"mechanism={mechanism!r} is unknown; valid mechanisms are {list(MECHANISMS)}.")
    _check_rate(rate, mechanism)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    if (
        isinstance(strength, bool)
        or not isinstance(strength, (int, float, np.integer, np.floating))
        or not np.isfinite(strength)
        or strength <= 0
    ):
        raise ValueError(f"strength must be a positive finite number, got {strength!r}.")
    table = _Table(X)
    n, p = table.shape
    if n < 1 or p < 2:
        raise ValueError(
            f"X must have at least one row and two columns (a row may never lose every cell), got shape {(n, p)}."
        )
    rng = np.random.default_rng(seed)
    mask = np.zeros((n, p), dtype=bool)
    chosen = table.positions(columns)

    if mechanism == "mar":
        predictors, targets = _mar_split(table, chosen, rng)
    else:
        targets = chosen if chosen is not None else list(range(p))
    k = len(targets)
    q = None if rate is None else rate * p / k
    if q is not None and q >= 1 and mechanism != "mnar_selfmask":
        raise ValueError(
            f"rate={rate} cannot be reached: only {k} of the {p} columns may go missing, so the overall "
            f"rate must stay below {k / p:.3f}. Fix: lower the rate or allow more columns."
        )

    if mechanism == "mcar":
        mask[:, targets] = rng.random((n, k)) < q
    elif mechanism == "mar":
        Z = _standardise(table.values(predictors, mechanism))
        weights = rng.standard_normal((len(predictors), k))
        scores = _standardise(Z @ weights)
        prob = _calibrated_probabilities(strength * scores, q)
        mask[:, targets] = rng.random((n, k)) < prob
    elif mechanism == "mnar_selfmask":
        V = table.values(targets, mechanism)
        above = V > V.mean(axis=0)
        n_above = int(above.sum())
        if rate is None:
            mask[:, targets] = above
        else:
            pi = rate * n * p / n_above if n_above else np.inf
            if pi > 1:
                raise ValueError(
                    f"rate={rate} cannot be reached under mnar_selfmask: only {n_above} cells lie above their "
                    f"column mean, so the largest achievable rate is {n_above / (n * p):.3f}. Fix: lower the "
                    "rate, allow more columns, or pass rate=None to mask every above-mean value."
                )
            mask[:, targets] = above & (rng.random((n, k)) < pi)
    elif mechanism == "mnar_quantile":
        V = table.values(targets, mechanism)
        m = int(round(q * n))
        # Shuffle each column's rows independently, then sort stably: tied values keep
        # their random order, so ties at the cut are broken at random.
        perm = rng.permuted(np.tile(np.arange(n), (k, 1)), axis=1).T
        order = np.argsort(np.take_along_axis(V, perm, axis=0), axis=0, kind="stable")
        top = np.take_along_axis(perm, order[n - m :], axis=0)  # [m, k] row indices
        if m:
            mask[top, np.asarray(targets)[None, :]] = True
    else:  # mnar_logistic
        Z = _standardise(table.values(targets, mechanism))
        prob = _calibrated_probabilities(strength * Z, q)
        mask[:, targets] = rng.random((n, k)) < prob

    full = np.flatnonzero(mask.all(axis=1))
    if len(full):
        mask[full, rng.integers(0, p, size=len(full))] = False
    return mask


# ---------------------------------------------------------------------------- helpers
def _check_rate(rate: Any, mechanism: str) -> None:
    if rate is None:
        if mechanism == "mnar_selfmask":
            return
        raise ValueError(
            f"rate=None is only meaningful for mechanism='mnar_selfmask' (mask every above-mean value); "
            f"give {mechanism!r} a rate in (0, 1)."
        )
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)) or not (0 < rate < 1):
        raise ValueError(f"rate must be a number strictly between 0 and 1, got {rate!r}.")


class _Table:
    """Uniform column access to a DataFrame or a 2-D array."""

    def __init__(self, X: Any) -> None:
        if isinstance(X, pd.DataFrame):
            self.frame: pd.DataFrame | None = X
            self.array: np.ndarray | None = None
            self.labels = list(X.columns)
        elif isinstance(X, np.ndarray):
            if X.ndim != 2:
                raise TypeError(f"X must be a 2-D array (rows x columns), got shape {X.shape}.")
            self.frame = None
            self.array = X
            self.labels = list(range(X.shape[1]))
        else:
            raise TypeError(
                f"X must be a pandas DataFrame or a 2-D numpy array, got {type(X).__name__}; "
                "convert it with pd.DataFrame(X) or np.asarray(X)."
            )
        self.shape = (len(X), len(self.labels))

    def positions(self, columns: Sequence[Hashable] | None) -> list[int] | None:
        if columns is None:
            return None
        if isinstance(columns, (str, bytes)) or not hasattr(columns, "__iter__"):
            columns = [columns]
        columns = list(columns)
        if not columns:
            raise ValueError("columns is empty; pass at least one column that may go missing, or None for all.")
        unknown = [c for c in columns if c not in self.labels]
        if unknown:
            what = "column labels" if self.frame is not None else "column positions"
            raise ValueError(f"columns {unknown} are not {what} of X; valid ones are {self.labels[:20]}.")
        if len(set(columns)) != len(columns):
            raise ValueError(f"columns lists a column more than once: {columns}.")
        return sorted(self.labels.index(c) for c in columns)

    def is_numeric(self, j: int) -> bool:
        if self.frame is not None:
            dtype = self.frame.dtypes.iloc[j]
            return pd.api.types.is_numeric_dtype(dtype) and not isinstance(dtype, pd.CategoricalDtype)
        return np.issubdtype(self.array.dtype, np.number) or self.array.dtype == bool

    def values(self, positions: Sequence[int], mechanism: str) -> np.ndarray:
        """float64 values of the given columns; they must be numeric and complete."""
        bad = [self.labels[j] for j in positions if not self.is_numeric(j)]
        if bad:
            raise ValueError(
                f"mechanism {mechanism!r} reads the values of columns {bad}, which are not numeric; "
                "restrict `columns` to numeric columns or encode them as numbers."
            )
        if self.frame is not None:
            V = self.frame.iloc[:, list(positions)].to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            V = np.asarray(self.array[:, list(positions)], dtype=np.float64)
        missing = ~np.isfinite(V)
        if missing.any():
            counts = missing.sum(axis=0)
            where = {self.labels[j]: int(c) for j, c in zip(positions, counts) if c}
            raise ValueError(
                f"mechanism {mechanism!r} needs complete, finite values in the columns it reads; found "
                f"missing or infinite cells {where} (column: count). Fix: pass the complete data."
            )
        return V


def _mar_split(table: _Table, chosen: list[int] | None, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Predictor (always observed) and target columns for MAR."""
    p = table.shape[1]
    numeric = [j for j in range(p) if table.is_numeric(j)]
    if chosen is not None:
        targets = chosen
        predictors = [j for j in numeric if j not in set(chosen)]
    else:
        n_pred = min(max(1, int(round(MAR_PREDICTOR_SHARE * p))), p - 1, len(numeric))
        predictors = sorted(rng.choice(numeric, size=n_pred, replace=False).tolist()) if n_pred else []
        targets = [j for j in range(p) if j not in set(predictors)]
    if not predictors:
        raise ValueError(
            "mechanism 'mar' needs at least one numeric column that stays observed to drive the "
            f"missingness, but none is left (numeric columns: {[table.labels[j] for j in numeric]}). "
            "Fix: leave a numeric column out of `columns`."
        )
    return predictors, targets


def _standardise(V: np.ndarray) -> np.ndarray:
    std = V.std(axis=0)
    # A constant column carries no signal: it contributes zeros rather than NaN.
    safe = np.where(std > 0, std, 1.0)
    return np.where(std > 0, (V - V.mean(axis=0)) / safe, 0.0)


def _sigmoid(t: np.ndarray) -> np.ndarray:
    # tanh form: no overflow warnings for large |t|.
    return 0.5 * (1.0 + np.tanh(0.5 * t))


def _calibrated_probabilities(logits: np.ndarray, q: float, max_iter: int = 100) -> np.ndarray:
    """``sigmoid(logits + b)`` with one ``b`` per column so each column's mean is ``q``.

    The column mean ``f(b)`` is increasing in ``b``, so Newton steps kept inside a
    shrinking bracket (bisection whenever a step would leave it) converge for all
    columns at once, in a handful of iterations instead of ~60 halvings.
    """
    k = logits.shape[1]
    span = float(np.abs(logits).max(initial=0.0)) + 50.0
    lo = np.full(k, -span)
    hi = np.full(k, span)
    b = np.full(k, np.log(q / (1.0 - q))) - logits.mean(axis=0)
    b = np.clip(b, lo, hi)
    for _ in range(max_iter):
        prob = _sigmoid(logits + b)
        f = prob.mean(axis=0) - q
        if np.abs(f).max() < 1e-12:
            break
        slope = (prob * (1.0 - prob)).mean(axis=0)
        hi = np.where(f > 0, b, hi)
        lo = np.where(f > 0, lo, b)
        newton = b - f / np.maximum(slope, 1e-300)
        inside = (newton > lo) & (newton < hi)
        b = np.where(inside, newton, 0.5 * (lo + hi))
    return _sigmoid(logits + b)
