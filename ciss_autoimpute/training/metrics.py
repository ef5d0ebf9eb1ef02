r"""The validation metric: how well imputations recover held-out observed cells.

One number has to rank models over numeric, binary and categorical columns, so every
kind of cell is put on the scale of a squared error of a standardised numeric value,
where imputing the column mean scores 1 on average:

* numeric cell ``j`` (standardised encoding): :math:`e = (\hat x_j - x_j)^2`;
* binary cell ``j`` (probability of 1): :math:`e = 4\,(\hat p_j - y_j)^2`, four times
  the Brier score, so an uninformed guess :math:`\hat p = 0.5` scores 1;
* categorical group ``g`` with columns ``a..b`` (class probabilities, one-hot truth):
  :math:`e = 4 \cdot \tfrac12 \sum_{k=a}^{b-1} (\hat p_k - y_k)^2`, four times the
  Brier score of the group (halved so it lies in ``[0, 1]``). A group counts once,
  whatever its number of classes; a two-class group scores exactly like a binary cell.

Predicted probabilities are clipped to ``[0, 1]`` first. With weights
:math:`w_{num}, w_{bin}, w_{cat}` (:class:`MetricWeights`), :math:`E_t` the sum of
:math:`e` over held-out units of kind ``t`` and :math:`N_t` their number,

.. math::

    \text{total} = \sqrt{\frac{w_{num} E_{num} + w_{bin} E_{bin} + w_{cat} E_{cat}}
                              {w_{num} N_{num} + w_{bin} N_{bin} + w_{cat} N_{cat}}}

a weighted root-mean-square error. Lower is better; 0 is perfect; around 1 is no
better than mean imputation / coin flipping. ``per_cluster`` applies the same formula
to the held-out units of each cluster's rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.layout import EncodedData, FeatureLayout

__all__ = ["MetricWeights", "ValidationScore", "validation_score", "score_imputations", "held_out_counts"]

#: Brier scores are multiplied by this so an uninformed 50/50 guess scores 1, like a
#: mean-imputed standardised numeric cell.
BRIER_SCALE = 4.0


@dataclass(frozen=True)
class MetricWeights:
    """Relative weight of each kind of held-out cell in the combined score.

    Parameters
    ----------
    numeric, binary, categorical
        Non-negative weights; at least one must be positive. Default 1 each, so every
        held-out unit (numeric cell, binary cell, categorical group) counts equally.
    """

    numeric: float = 1.0
    binary: float = 1.0
    categorical: float = 1.0

    def __post_init__(self) -> None:
        for name in ("numeric", "binary", "categorical"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise TypeError(f"MetricWeights.{name} must be a finite number, got {value!r}.")
            if value < 0:
                raise ValueError(f"MetricWeights.{name} must be >= 0, got {value!r}; pass 0 to ignore that kind.")
        if self.numeric == 0 and self.binary == 0 and self.categorical == 0:
            raise ValueError("MetricWeights needs at least one positive weight, got all zero; pass e.g. numeric=1.")


@dataclass(frozen=True)
class ValidationScore:
    """The validation metric of one set of imputations (lower is better).

    Attributes
    ----------
    total
        Combined weighted RMSE (see the module docstring); ``nan`` when nothing was
        held out (or every present kind has weight 0).
    per_cluster
        ``{cluster id: total over that cluster's held-out units}``, only for clusters
        with held-out units.
    numeric_rmse
        RMSE over held-out numeric cells on the standardised scale, or ``None``.
    binary_brier, binary_error
        Mean Brier score and error rate (threshold 0.5, ``p >= 0.5`` predicts 1) over
        held-out binary cells, or ``None``.
    categorical_brier, categorical_error
        Mean halved Brier score and argmax error rate over held-out categorical
        groups, or ``None``.
    n_numeric, n_binary, n_categorical
        Number of held-out numeric cells, binary cells and categorical groups.
    """

    total: float
    per_cluster: dict[int, float] = field(default_factory=dict)
    numeric_rmse: float | None = None
    binary_brier: float | None = None
    binary_error: float | None = None
    categorical_brier: float | None = None
    categorical_error: float | None = None
    n_numeric: int = 0
    n_binary: int = 0
    n_categorical: int = 0

    @property
    def n_cells(self) -> int:
        """Scored units: numeric cells + binary cells + categorical groups."""
        return self.n_numeric + self.n_binary + self.n_categorical

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (for history records and Optuna user attributes)."""
        return {
            "val": self.total,
            "per_cluster": dict(self.per_cluster),
            "numeric_rmse": self.numeric_rmse,
            "binary_brier": self.binary_brier,
            "binary_error": self.binary_error,
            "categorical_brier": self.categorical_brier,
            "categorical_error": self.categorical_error,
            "n_cells": self.n_cells,
            "n_numeric": self.n_numeric,
            "n_binary": self.n_binary,
            "n_categorical": self.n_categorical,
        }


def held_out_counts(mask: torch.Tensor, layout: FeatureLayout) -> dict[str, int]:
    """Number of scored units of each kind under ``mask`` (a categorical group counts once)."""
    counts = {"numeric": 0, "binary": 0, "categorical": 0}
    if layout.numeric:
        counts["numeric"] = int(mask[:, list(layout.numeric)].sum())
    if layout.binary:
        counts["binary"] = int(mask[:, list(layout.binary)].sum())
    if layout.categorical:
        counts["categorical"] = int(mask[:, [a for a, _ in layout.categorical]].sum())
    return counts


def _mean(total: torch.Tensor, count: int) -> float | None:
    return float(total) / count if count else None


def score_imputations(
    imputed: torch.Tensor,
    truth: torch.Tensor,
    mask: torch.Tensor,
    layout: FeatureLayout,
    *,
    clusters: torch.Tensor | None = None,
    n_clusters: int | None = None,
    weights: MetricWeights = MetricWeights(),
) -> ValidationScore:
    """Score ``imputed`` against ``truth`` on the cells where ``mask`` is true.

    The general form behind :func:`validation_score`; also usable for artificially
    masked cells with known ground truth.

    Parameters
    ----------
    imputed
        float ``[n, d]`` in the encoded space (probabilities for binary and categorical
        columns).
    truth
        float ``[n, d]``: true encoded values (read only where ``mask`` is true).
    mask
        bool ``[n, d]``: cells to score. Columns of a categorical group must agree.
    layout
        Which encoded columns are numeric, binary and categorical.
    clusters
        int64 ``[n]`` cluster ids for the per-cluster breakdown, or ``None`` for none.
    n_clusters
        Number of clusters (default ``clusters.max() + 1``).
    weights
        Relative weight of each kind of unit.

    Returns
    -------
    ValidationScore
    """
    if not isinstance(imputed, torch.Tensor):
        raise TypeError(f"imputed must be a torch.Tensor, got {type(imputed).__name__}.")
    if not isinstance(weights, MetricWeights):
        raise TypeError(f"weights must be a MetricWeights, got {type(weights).__name__}.")
    n, d = truth.shape
    if tuple(imputed.shape) != (n, d):
        raise ValueError(
            f"imputed has shape {tuple(imputed.shape)} but the data is {(n, d)}; "
            "pass one encoded row per data row."
        )
    if d != layout.n_features:
        raise ValueError(f"The layout describes {layout.n_features} encoded columns but the data has {d}.")
    device = truth.device
    # Gather the scored cells first and upcast only those to float64 (the sums must not
    # lose digits over thousands of small squared errors). Upcasting the whole [n, d]
    # matrices would allocate ~2 GB of temporaries at 1M x 50 for the ~7 % of cells a
    # holdout typically holds.
    imp = imputed.detach()
    if imp.device != device:
        imp = imp.to(device)
    mask = mask.to(device=device, dtype=torch.bool)
    f64 = torch.float64

    row_err = torch.zeros(n, dtype=f64, device=device)  # weighted error per row
    row_cnt = torch.zeros(n, dtype=f64, device=device)  # weighted units per row
    row_units = torch.zeros(n, dtype=f64, device=device)  # unweighted units per row
    out: dict[str, Any] = {}

    def cells(columns: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows, imputed and true values (float64) of the scored cells of ``columns``,
        and the number of scored cells per row."""
        cols = torch.as_tensor(columns, device=device)
        rows, j = mask.index_select(1, cols).nonzero(as_tuple=True)
        col = cols[j]
        per_row = torch.bincount(rows, minlength=n).to(f64)
        return rows, imp[rows, col].to(f64), truth[rows, col].to(f64), per_row

    def row_sum(rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n, dtype=f64, device=device).index_add_(0, rows, values)

    if layout.numeric:
        rows, p, y, per_row = cells(layout.numeric)
        sq = (p - y).square()
        count = rows.numel()
        row_err += weights.numeric * row_sum(rows, sq)
        row_cnt += weights.numeric * per_row
        row_units += per_row
        mean_sq = _mean(sq.sum(), count)
        out["numeric_rmse"] = math.sqrt(mean_sq) if mean_sq is not None else None
        out["n_numeric"] = count

    if layout.binary:
        rows, p, y, per_row = cells(layout.binary)
        p = p.clamp(0.0, 1.0)
        brier = (p - y).square()
        wrong = ((p >= 0.5).to(f64) != y).to(f64)
        count = rows.numel()
        row_err += weights.binary * BRIER_SCALE * row_sum(rows, brier)
        row_cnt += weights.binary * per_row
        row_units += per_row
        out["binary_brier"] = _mean(brier.sum(), count)
        out["binary_error"] = _mean(wrong.sum(), count)
        out["n_binary"] = count

    if layout.categorical:
        brier_sum = torch.zeros((), dtype=f64, device=device)
        wrong_sum = torch.zeros((), dtype=f64, device=device)
        count = 0
        # One iteration per categorical *column* (not per row): a handful at most.
        for a, b in layout.categorical:
            rows = mask[:, a].nonzero(as_tuple=True)[0]
            p = imp[rows, a:b].to(f64).clamp(0.0, 1.0)
            y = truth[rows, a:b].to(f64)
            brier = 0.5 * (p - y).square().sum(1)
            wrong = (p.argmax(1) != y.argmax(1)).to(f64)
            per_row = row_sum(rows, torch.ones_like(brier))
            row_err += weights.categorical * BRIER_SCALE * row_sum(rows, brier)
            row_cnt += weights.categorical * per_row
            row_units += per_row
            brier_sum += brier.sum()
            wrong_sum += wrong.sum()
            count += rows.numel()
        out["categorical_brier"] = _mean(brier_sum, count)
        out["categorical_error"] = _mean(wrong_sum, count)
        out["n_categorical"] = count

    def combined(err: torch.Tensor, cnt: torch.Tensor) -> float:
        c = float(cnt)
        return math.sqrt(float(err) / c) if c > 0 else math.nan

    total = combined(row_err.sum(), row_cnt.sum())

    per_cluster: dict[int, float] = {}
    if clusters is not None:
        clusters = clusters.to(device=device, dtype=torch.long)
        if clusters.shape != (n,):
            raise ValueError(f"clusters must have shape ({n},), got {tuple(clusters.shape)}.")
        k = int(n_clusters) if n_clusters is not None else (int(clusters.max()) + 1 if n else 0)
        err_c = torch.zeros(k, dtype=torch.float64, device=device).index_add_(0, clusters, row_err)
        cnt_c = torch.zeros(k, dtype=torch.float64, device=device).index_add_(0, clusters, row_cnt)
        units_c = torch.zeros(k, dtype=torch.float64, device=device).index_add_(0, clusters, row_units)
        for c, (e, w, u) in enumerate(zip(err_c.tolist(), cnt_c.tolist(), units_c.tolist())):
            if u > 0:
                per_cluster[c] = math.sqrt(e / w) if w > 0 else math.nan

    return ValidationScore(total=total, per_cluster=per_cluster, **out)


def validation_score(
    imputed: torch.Tensor,
    data: EncodedData,
    *,
    weights: MetricWeights = MetricWeights(),
) -> ValidationScore:
    """Score imputations on the validation holdout of ``data`` (lower is better).

    Compares ``imputed`` with ``data.x_val`` on ``data.val_mask`` cells, using the
    formulas of :mod:`ciss_autoimpute.training.metrics`: per held-out unit a squared
    error on the standardised scale (numeric) or 4 x Brier score (binary cell,
    categorical group), combined as
    ``total = sqrt(sum_t w_t * E_t / sum_t w_t * N_t)``, with a per-cluster breakdown.

    Parameters
    ----------
    imputed
        float ``[n, d]`` encoded imputations (probabilities for binary/categorical).
    data
        The encoded data holding the holdout (``val_mask``, ``x_val``, ``clusters``).
    weights
        Relative weight of numeric, binary and categorical units.

    Returns
    -------
    ValidationScore

    Examples
    --------
    >>> import torch
    >>> from ciss_autoimpute.data.layout import EncodedData, FeatureLayout
    >>> x_val = torch.tensor([[1.0], [0.0]])
    >>> val = torch.tensor([[True], [False]])
    >>> data = EncodedData(
    ...     x=torch.zeros(2, 1), observed=torch.ones(2, 1, dtype=torch.bool),
    ...     train_mask=~val, val_mask=val, x_val=x_val,
    ...     clusters=torch.zeros(2, dtype=torch.long), n_clusters=1,
    ...     layout=FeatureLayout.all_numeric(1))
    >>> validation_score(torch.tensor([[0.5], [9.0]]), data).total
    0.5
    """
    if not isinstance(data, EncodedData):
        raise TypeError(f"data must be an EncodedData, got {type(data).__name__}.")
    return score_imputations(
        imputed,
        data.x_val,
        data.val_mask,
        data.layout,
        clusters=data.clusters,
        n_clusters=data.n_clusters,
        weights=weights,
    )
