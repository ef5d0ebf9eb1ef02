"""``em``: a multivariate normal fitted by expectation-maximisation, imputing conditional means.

The classical likelihood-based imputer (Dempster, Laird & Rubin 1977; the ``norm`` and
Amelia packages in R): the rows are modelled as draws of one ``N(mu, Sigma)`` over the
encoded columns, ``mu`` and ``Sigma`` are estimated from the incomplete data by EM, and
a missing cell is imputed with its conditional mean given the row's observed cells.
When the data are Gaussian (and missing at random) that conditional mean is the best
imputation any method can give in squared error; on real tables it is a strong linear
baseline that uses every observed cell of a row at once, where MICE regresses column by
column on its own earlier imputations.

Fitting (on the cells the Trainer lets the model read)
-------------------------------------------------------
* Start: ``mu`` = observed column means, ``Sigma`` = diagonal of observed variances.
* E-step, per row with missing cells ``m`` and observed cells ``o``: with the precision
  ``Lambda = Sigma^-1``, ``E[x_m | x_o] = mu_m - Lambda_mm^-1 Lambda_mo (x_o - mu_o)``
  and ``Cov[x_m | x_o] = Lambda_mm^-1``. Rows are handled in batches of matrices
  padded with the identity on the observed block, so one batched Cholesky solve serves
  rows with different missing sets.
* M-step: ``mu`` = mean of the completed rows; ``Sigma`` = their covariance plus the
  mean conditional covariance (the part the imputations alone would under-state),
  plus ``ridge`` on the diagonal.
* Stop when no entry of ``mu`` or ``Sigma`` moves by more than ``tol`` or after
  ``max_iter`` rounds.

Binary and one-hot columns are treated as numeric 0/1 columns (a linear probability
model, as ``mice`` does): their conditional means are clipped to ``[0, 1]`` and a
categorical group is renormalised to sum to one. One-hot groups make ``Sigma``
singular; the ridge keeps it invertible.

Cost: one ``d x d`` Cholesky factorisation per row with missing cells per round, so
``O(rounds x rows x d^3)``. Seconds for thousands of rows and tens of columns; for wide
data (hundreds of columns) prefer the other families.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...exceptions import NotFittedError
from ...tuning.params import Float, Param
from ..registry import register_model
from ._common import check_float, check_int
from .classical import ClassicalModel, _holed

__all__ = ["GaussianEMFamily"]

#: Elements of one ``[rows, d, d]`` work array of a batched Cholesky call (float64: 128 MB).
_CHUNK_ELEMENTS = 1 << 24


def _row_chunk(d: int) -> int:
    """Rows per batched solve: at most 2048, fewer for wide data."""
    return max(1, min(2048, _CHUNK_ELEMENTS // max(1, d * d)))


def _inverse(cov: torch.Tensor) -> torch.Tensor:
    """The inverse of a symmetric positive-definite matrix, through its Cholesky factor."""
    return torch.cholesky_inverse(torch.linalg.cholesky(cov))


def _conditionals(
    holed: torch.Tensor, mu: torch.Tensor, precision: torch.Tensor, *, want_cov: bool = False,
    want_factor: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Conditional means of the NaN cells of ``holed [n, d]`` under ``N(mu, precision^-1)``.

    Returns ``(completed [n, d], cov_sum [d, d] or None, factor [n, d, d] or None)``:
    the rows with NaN cells replaced by their conditional means; with ``want_cov`` the
    sum over rows of the conditional covariances (zero outside each row's missing
    block); with ``want_factor`` each row's Cholesky factor ``L`` of the
    identity-padded ``Lambda_mm`` (``L^-T z`` with ``z ~ N(0, I)`` has the conditional
    covariance on the missing block and zero elsewhere once masked).
    """
    n, d = holed.shape
    missing = torch.isnan(holed)
    completed = holed.clone()
    cov_sum = holed.new_zeros(d, d) if want_cov else None
    factor = holed.new_zeros(n, d, d) if want_factor else None
    rows = torch.nonzero(missing.any(1)).flatten()
    eye = torch.eye(d, dtype=holed.dtype, device=holed.device)
    chunk = _row_chunk(d)
    for start in range(0, rows.numel(), chunk):
        idx = rows[start:start + chunk]
        miss = missing[idx].to(holed.dtype)  # [b, d], 1 where missing
        obs = 1.0 - miss
        pair = miss.unsqueeze(2) * miss.unsqueeze(1)
        # Lambda on the missing block, the identity on the observed one: one factorisation
        # gives Lambda_mm^-1 on the missing block for every row of the batch.
        padded = precision * pair + torch.diag_embed(obs)
        chol = torch.linalg.cholesky(padded)
        centred = torch.nan_to_num(holed[idx] - mu) * obs
        rhs = (centred @ precision) * miss  # Lambda_mo (x_o - mu_o), on the missing cells
        shift = torch.cholesky_solve(rhs.unsqueeze(2), chol).squeeze(2)
        completed[idx] = torch.where(missing[idx], mu - shift, holed[idx])
        if cov_sum is not None:
            cov_sum += (torch.cholesky_inverse(chol) * pair).sum(0)
        if factor is not None:
            factor[idx] = chol
    if factor is not None:
        complete_rows = ~missing.any(1)
        factor[complete_rows] = eye
    return completed, cov_sum, factor


@register_model
class GaussianEMFamily(ClassicalModel):
    """Multivariate normal imputation: ``N(mu, Sigma)`` fitted by EM, conditional-mean imputations.

    Parameters
    ----------
    **params
        ``ridge`` (added to the diagonal of ``Sigma`` on the standardised scale, default
        ``1e-3``; larger values shrink the imputations towards the column means),
        ``max_iter`` (EM rounds, default 100) and ``tol`` (largest change of an entry
        of ``mu`` or ``Sigma`` that counts as converged, default ``1e-5``).

    Notes
    -----
    See the module notes for the algorithm. Missingness clusters are ignored (one
    normal for all rows). The fitted state is ``mu`` and ``Sigma`` (buffers
    ``em_mean`` and ``em_cov``, float64) and the number of rounds run
    (``em_rounds``); a saved model holds no training rows.
    :meth:`sample_imputations` draws numeric cells from the conditional normal (jointly
    within a row) and binary / categorical cells from their clipped conditional means.

    Examples
    --------
    >>> from ciss_autoimpute.data.layout import FeatureLayout
    >>> g = torch.Generator().manual_seed(0)
    >>> z = torch.randn(400, 1, generator=g)
    >>> x = torch.cat([z, 2 * z + 0.1 * torch.randn(400, 1, generator=g)], 1)
    >>> mask = torch.ones(400, 2, dtype=torch.bool); mask[::4, 1] = False
    >>> m = GaussianEMFamily(FeatureLayout.all_numeric(2)).fit(x, mask, torch.zeros(400, dtype=torch.long))
    >>> imputed = m.impute(x, mask, torch.zeros(400, dtype=torch.long))
    >>> bool(((imputed - x)[::4, 1].abs() < 0.5).all())
    True
    """

    name = "em"
    relative_cost = 1

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"ridge": 1e-3, "max_iter": 100, "tol": 1e-5}

    @classmethod
    def search_space(cls) -> dict[str, Param]:
        return {"ridge": Float(1e-4, 1.0, log=True)}

    @classmethod
    def _check_params(cls, p: dict[str, Any]) -> dict[str, Any]:
        return {
            "ridge": check_float(cls.name, "ridge", p["ridge"], strict=True, allow_numpy=True),
            "max_iter": check_int(cls.name, "max_iter", p["max_iter"], allow_numpy=True),
            "tol": check_float(cls.name, "tol", p["tol"], strict=True, allow_numpy=True),
        }

    # -------------------------------------------------------------- state
    def _register_state_buffers(self) -> None:
        self.register_buffer("em_mean", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("em_cov", torch.zeros(0, 0, dtype=torch.float64))
        self.register_buffer("em_rounds", torch.zeros((), dtype=torch.int64))

    @property
    def is_fitted(self) -> bool:
        return int(self.em_mean.shape[0]) == self.layout.n_features

    def estimator(self) -> torch.Tensor:
        """The precision ``Sigma^-1`` (float64, CPU): what imputation needs of the fitted state.

        Cached like the other classical families' estimators: rebuilt from the buffers
        after :meth:`fit` or a load that changed them.
        """
        if not self.is_fitted:
            raise NotFittedError("The 'em' model is not fitted; train it with Trainer.fit (or Imputer.fit) first.")
        if self._estimator is None:
            self._estimator = _inverse(self.em_cov.detach().cpu())
        return self._estimator

    def _fit_state(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        holed = torch.from_numpy(_holed(x, mask))
        n, d = holed.shape
        p = self.params
        observed = ~torch.isnan(holed)
        counts = observed.sum(0)
        mu = torch.nan_to_num(holed).sum(0) / counts.clamp_min(1)
        var = (torch.nan_to_num(holed - mu) ** 2).sum(0) / (counts - 1).clamp_min(1)
        # Columns with fewer than two readable cells: unit variance (the standardised scale).
        var = torch.where(counts >= 2, var, torch.ones_like(var)).clamp_min(1e-6)
        ridge = torch.eye(d, dtype=holed.dtype) * p["ridge"]
        cov = torch.diag(var) + ridge
        rounds = 0
        for rounds in range(1, p["max_iter"] + 1):
            completed, cov_sum, _ = _conditionals(holed, mu, _inverse(cov), want_cov=True)
            new_mu = completed.mean(0)
            centred = completed - new_mu
            new_cov = (centred.T @ centred + cov_sum) / n + ridge
            new_cov = 0.5 * (new_cov + new_cov.T)
            change = max(float((new_mu - mu).abs().max()), float((new_cov - cov).abs().max()))
            mu, cov = new_mu, new_cov
            if change <= p["tol"]:
                break
        self.em_mean = mu.to(x.device)
        self.em_cov = cov.to(x.device)
        self.em_rounds = torch.tensor(rounds, dtype=torch.int64, device=x.device)

    # -------------------------------------------------------------- imputation
    def _impute_matrix(self, holed: np.ndarray) -> np.ndarray:
        completed, _, _ = _conditionals(torch.from_numpy(holed), self.em_mean.detach().cpu(), self.estimator())
        return self._finish(completed.numpy())

    def _sample_matrix(self, holed: np.ndarray, filled: np.ndarray, n: int, g: torch.Generator) -> torch.Tensor:
        holed_t = torch.from_numpy(holed)
        rows, d = holed_t.shape
        z = torch.randn((n, rows, d), generator=g, device=g.device, dtype=torch.float64).cpu()
        numeric = torch.zeros(d, dtype=torch.bool)
        numeric[list(self.layout.numeric)] = True
        noise = torch.empty_like(z)
        mu, precision = self.em_mean.detach().cpu(), self.estimator()
        step = _row_chunk(d)
        for start in range(0, rows, step):
            part = slice(start, start + step)
            _, _, factor = _conditionals(holed_t[part], mu, precision, want_factor=True)
            assert factor is not None
            # L^-T z has covariance (L L^T)^-1 = Lambda_mm^-1 on each row's missing block.
            solved = torch.linalg.solve_triangular(factor.mT.unsqueeze(0), z[:, part].unsqueeze(-1), upper=True)
            noise[:, part] = solved.squeeze(-1) * (torch.isnan(holed_t[part]) & numeric)
        base = torch.from_numpy(filled).unsqueeze(0) + noise
        return self._draw_discrete(base.to(g.device), g)
