"""What the observed data says about the direction of each column's missingness."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["missingness_direction_evidence", "data_signs", "DIRECTION_EVIDENCE_THRESHOLD"]

#: ``|t|`` from which :func:`missingness_direction_evidence` calls a direction.
DIRECTION_EVIDENCE_THRESHOLD = 3.0


def missingness_direction_evidence(
    dataset: Any,
    *,
    threshold: float = DIRECTION_EVIDENCE_THRESHOLD,
    ridge: float = 1e-2,
    max_rows: int | None = 50_000,
) -> pd.DataFrame:
    """Are a column's missing values likely higher or lower than its observed ones?

    For each numeric column with missing cells, a ridge regression of the
    column on the others (their training values, with the fill value where missing,
    plus an indicator of each other column's missingness) is fitted on the rows where
    the column is observed, then predicts the column on every row. If the rows where
    it is missing get systematically higher predictions than the rows where it is
    observed, the values that went missing were probably high ones; lower, low ones.
    The statistic is Welch's ``t`` of the two groups' mean predictions.

    This reads only the observed data — no model of the missingness, no held-out
    value — so it can disagree with a not-MIWAE fit, which is what it is for (see
    :func:`~ciss_autoimpute.tuning.autotune.direction_outliers`). It also answers to
    data missing at random on correlated columns (the rows that lose a value are then
    different rows, not different values), and says nothing about a column the others
    do not predict. Binary and categorical columns are left out: a learned
    "direction" of a 0/1 column says which level goes missing more, which the fits
    do not learn reliably (on the benchmark's diabetes table five of six trials
    learned the opposite of the data for ``sex``), and their imputations are not
    shifted values.

    Parameters
    ----------
    dataset
        A :class:`~ciss_autoimpute.ClusterDataset` (its held-out cells are treated as
        observed and unknown).
    threshold
        ``|t|`` from which a direction is called (default 3).
    ridge
        Ridge penalty per row on the standardised predictors.
    max_rows
        Larger tables are read on this many rows drawn without replacement (the same
        rows every call); ``None`` reads every row. ``t`` grows with the square root of
        the rows, so a call needs no more.

    Returns
    -------
    pandas.DataFrame
        One row per numeric column with missing cells (indexed like
        :meth:`NotMIWAE.interpret_missing_process
        <ciss_autoimpute.models.families.notmiwae.NotMIWAE.interpret_missing_process>`),
        with columns ``t``, ``direction`` (+1: the missing values look high, -1: low,
        0: no call, ``|t| < threshold`` or too few rows), ``n_missing`` and ``n_observed``.

    Examples
    --------
    >>> from ciss_autoimpute import ClusterDataset
    >>> from ciss_autoimpute.data.diagnostics import missingness_direction_evidence
    >>> missingness_direction_evidence(ClusterDataset(df))  # doctest: +SKIP
                 t  direction  n_missing  n_observed
    feature
    bill_length  22.5         1        171         159
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0:
        raise ValueError(f"threshold must be a positive number (|t| from which a direction is called), got {threshold!r}.")
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge >= 0:
        raise ValueError(f"ridge must be a non-negative number, got {ridge!r}.")
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 4):
        raise ValueError(f"max_rows must be an integer >= 4 or None, got {max_rows!r}.")
    data = getattr(dataset, "data", None)
    if data is None or not hasattr(data, "train_mask"):
        raise TypeError(
            f"dataset must be a ClusterDataset, got {type(dataset).__name__}; wrap the frame in ClusterDataset(df)."
        )
    rows_used = None
    if max_rows is not None and data.n_rows > max_rows:
        # A fixed generator of its own: the same rows every call, no global state touched.
        rows_used = np.sort(np.random.default_rng(0).choice(data.n_rows, size=max_rows, replace=False))
    x = _numpy(data.x, rows_used).astype(np.float64)
    observed = _numpy(data.observed, rows_used)
    train = _numpy(data.train_mask, rows_used)
    layout = data.layout
    column_of = np.asarray(layout.column_of)
    has_missing = ~observed.all(0)
    rows = []
    for j in layout.numeric:
        if not has_missing[j]:
            continue
        others = column_of != column_of[j]
        features = np.hstack([x[:, others], (~observed[:, others & has_missing]).astype(float)])
        fit, gone = train[:, j], ~observed[:, j]
        t, direction = float("nan"), 0
        if fit.sum() > 2 and gone.sum() > 1 and features.shape[1] > 0:
            t = _welch_t(_ridge_predictions(features, x[:, j], fit, ridge), fit, gone)
            if np.isfinite(t) and abs(t) >= threshold:
                direction = 1 if t > 0 else -1
        # A numeric column is one encoded column, labelled by its user column's name.
        rows.append((str(layout.names[column_of[j]]), t, direction, int(gone.sum()), int(fit.sum())))
    frame = pd.DataFrame(rows, columns=["feature", "t", "direction", "n_missing", "n_observed"])
    return frame.set_index("feature")


def data_signs(
    dataset: Any, *, threshold: float = DIRECTION_EVIDENCE_THRESHOLD, evidence: pd.DataFrame | None = None
) -> list[int]:
    """not-MIWAE ``signs`` read from the data: one per column of ``dataset.layout.names``.

    +1 or -1 where :func:`missingness_direction_evidence` calls a direction, 0 (learn
    it) everywhere else — binary and categorical columns, columns without missing
    cells, and columns the evidence does not call. What ``signs="data"`` resolves to.
    ``evidence``: that function's frame for ``dataset`` when the caller already has it
    (its calls are read as they are, and ``threshold`` is not used).
    """
    if evidence is None:
        evidence = missingness_direction_evidence(dataset, threshold=threshold)
    called = evidence["direction"]
    return [int(called.get(str(name), 0)) for name in dataset.data.layout.names]


def _numpy(t: Any, rows: np.ndarray | None) -> np.ndarray:
    """A tensor's rows (all, or ``rows``) as a NumPy array on the CPU."""
    t = t.detach()
    if rows is not None:
        import torch

        t = t.index_select(0, torch.as_tensor(rows, device=t.device))
    return t.cpu().numpy()


def _ridge_predictions(features: np.ndarray, target: np.ndarray, fit: np.ndarray, ridge: float) -> np.ndarray:
    """Ridge fit of ``target`` on standardised ``features`` over the ``fit`` rows; predictions for all rows."""
    a = features[fit]
    centre = a.mean(0)
    scale = a.std(0)
    scale[scale == 0] = 1.0
    a = (a - centre) / scale
    y = target[fit]
    gram = a.T @ a + ridge * len(a) * np.eye(a.shape[1])
    beta = np.linalg.solve(gram, a.T @ (y - y.mean()))
    return ((features - centre) / scale) @ beta + y.mean()


def _welch_t(pred: np.ndarray, fit: np.ndarray, gone: np.ndarray) -> float:
    """Welch's t of the mean prediction on the ``gone`` rows against the ``fit`` rows."""
    a, b = pred[gone], pred[fit]
    se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    if not se > 0:
        return float("nan")
    return float((a.mean() - b.mean()) / se)
