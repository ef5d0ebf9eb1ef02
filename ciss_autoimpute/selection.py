"""A self-masking correction for imputers that assume the missingness ignorable.

A family that models ``p(x)`` alone (every family but not-MIWAE, the classical ones
included) imputes a missing cell by its conditional mean given the row's other cells,
as if the cell had gone missing at random. When high (or low) values are the ones that
went missing, that mean is too low (too high). :class:`SelfMaskingCorrection` fixes the
imputations afterwards with a selection model per numeric column, fitted on what the
fit already produced:

* the model's prediction ``mu`` of the column and its spread ``sigma``: the true value
  given the rest of the row is taken as ``N(mu, sigma^2)``;
* a self-masking missing process ``P(missing | x) = pi * Phi(c (x - b))``: values above
  ``b`` go missing when ``c > 0`` (below it when ``c < 0``), ``|c|`` says how sharply, and
  ``pi`` is the largest probability of going missing.

``(pi, c, b, sigma)`` maximise the likelihood of what is known: for a missing cell,
``P(missing) = pi * Phi(c (mu - b) / sqrt(1 + c^2 sigma^2))``; for an observed cell,
its value's density times ``1 - P(missing | x)``. The held-out validation cells give
observed values with predictions made without them (weighted up to stand for every
observed cell); the missing cells give their predictions. The corrected imputation is
the mean of ``N(mu, sigma^2)`` weighted by ``P(missing | x)``, which is closed-form (the
mean of an extended skew-normal): ``mu + sigma^2 c / s * phi(t) / Phi(t)`` with
``s = sqrt(1 + c^2 sigma^2)`` and ``t = c (mu - b) / s``.

The Gaussian spread is what makes the process identifiable, so a column whose
prediction errors are far from Gaussian (a mass of zeros, a few discrete values) can
fit a process that is not there. ``"selfmasking_data"`` therefore corrects only the
columns where :func:`~ciss_autoimpute.data.diagnostics.missingness_direction_evidence`,
which reads only the observed data, calls the same direction; ``"selfmasking"``
corrects every numeric column with missing cells, for data known to be self-masked.
Neither can tell MNAR from MAR on its own: see ``docs/guide/mnar.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

__all__ = ["SelfMaskingCorrection", "MNAR_CORRECTIONS", "MIN_HOLDOUT_CELLS"]

#: Values of ``TrainConfig.mnar_correction``.
MNAR_CORRECTIONS: tuple[str, ...] = ("none", "selfmasking", "selfmasking_data")

#: A column needs this many held-out cells for its process to be fitted.
MIN_HOLDOUT_CELLS = 10

#: Cells read per column and per term when fitting (an even spread of them above it).
_MAX_FIT_CELLS = 20_000

# Box of the search, on the standardised scale: c in [-30, 30] (30 is a step for any
# practical purpose), b in [-5, 5], log sigma in [-5, 2], logit pi in [-8, 8].
_BOUNDS = [(-8.0, 8.0), (-30.0, 30.0), (-5.0, 5.0), (-5.0, 2.0)]


def _spread(idx: np.ndarray, cap: int) -> np.ndarray:
    """At most ``cap`` of ``idx``, evenly spaced (deterministic)."""
    if idx.size <= cap:
        return idx
    return idx[np.linspace(0, idx.size - 1, cap).round().astype(np.int64)]


def _neg_log_lik(theta: np.ndarray, mu_m: np.ndarray, mu_o: np.ndarray, x_o: np.ndarray,
                 w_m: float, w_o: float) -> float:
    from scipy.special import log_ndtr, ndtr

    logit_pi, c, b, log_sig = theta
    log_pi = -np.logaddexp(0.0, -logit_pi)
    sig = np.exp(log_sig)
    s = np.sqrt(1.0 + c * c * sig * sig)
    missing = log_pi + log_ndtr(c * (mu_m - b) / s)
    p_obs = np.exp(log_pi) * ndtr(c * (x_o - b))
    r = (x_o - mu_o) / sig
    observed = -0.5 * r * r - log_sig - 0.5 * np.log(2 * np.pi) + np.log1p(-np.minimum(p_obs, 1 - 1e-12))
    return -(w_m * missing.sum() + w_o * observed.sum())


def _fit_column(mu_m: np.ndarray, mu_o: np.ndarray, x_o: np.ndarray, w_m: float, w_o: float) -> np.ndarray:
    """``(logit pi, c, b, log sigma)`` of one column: the best of three starts (high, low, flat)."""
    from scipy import optimize

    resid = float(np.std(x_o - mu_o))
    log_sig0 = float(np.clip(np.log(max(resid, 1e-3)), -5.0, 2.0))
    best = None
    for c0 in (2.0, -2.0, 0.0):
        res = optimize.minimize(
            _neg_log_lik, np.array([0.0, c0, 0.0, log_sig0]), args=(mu_m, mu_o, x_o, w_m, w_o),
            method="L-BFGS-B", bounds=_BOUNDS,
        )
        if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best = res
    if best is None:
        return np.array([0.0, 0.0, 0.0, log_sig0])
    return np.asarray(best.x, dtype=np.float64)


@dataclass
class SelfMaskingCorrection:
    """A fitted per-column self-masking correction (see the module's docstring).

    Attributes
    ----------
    mode
        ``"selfmasking"`` or ``"selfmasking_data"``.
    columns
        Encoded (numeric) column indices that are corrected.
    names
        Their user column names.
    max_prob, slope, threshold, scale
        ``pi``, ``c``, ``b`` and ``sigma`` of each corrected column (``b`` and ``sigma``
        on the standardised scale of the encoded data).
    report
        One record per numeric column with missing cells: the fitted process and
        whether it is applied, or why not (``"no call from the data"``, ``"direction
        differs from the data"``, ``"too few held-out cells"``).
    """

    mode: str
    columns: tuple[int, ...] = ()
    names: tuple[str, ...] = ()
    max_prob: tuple[float, ...] = ()
    slope: tuple[float, ...] = ()
    threshold: tuple[float, ...] = ()
    scale: tuple[float, ...] = ()
    report: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def fit(cls, mode: str, data: Any, imputed: torch.Tensor, scored: torch.Tensor,
            evidence: pd.DataFrame | None = None) -> "SelfMaskingCorrection":
        """Fit the process of every numeric column with missing cells.

        Parameters
        ----------
        mode
            ``"selfmasking"`` or ``"selfmasking_data"``.
        data
            The :class:`~ciss_autoimpute.data.layout.EncodedData` the model was fitted on.
        imputed
            Encoded imputations with every observed cell visible (the fit's missing cells).
        scored
            Encoded imputations made with the held-out cells hidden (their predictions).
        evidence
            :func:`~ciss_autoimpute.data.diagnostics.missingness_direction_evidence` of the
            data; needed for ``"selfmasking_data"``.
        """
        if mode not in MNAR_CORRECTIONS[1:]:
            raise ValueError(f"mode must be one of {list(MNAR_CORRECTIONS[1:])}, got {mode!r}.")
        if mode == "selfmasking_data" and evidence is None:
            raise ValueError("mode 'selfmasking_data' needs the data's direction evidence.")
        layout = data.layout
        observed = data.observed.detach().cpu().numpy()
        held = data.val_mask.detach().cpu().numpy()

        def column(t: torch.Tensor, j: int, rows: np.ndarray) -> np.ndarray:
            # One column's cells at a time: no float64 copy of the whole matrix.
            return t[:, j].detach().cpu().double().numpy()[rows]
        kept: dict[str, list] = {k: [] for k in ("columns", "names", "max_prob", "slope", "threshold", "scale")}
        report = []
        for j in layout.numeric:
            gone = np.flatnonzero(~observed[:, j])
            if gone.size == 0:
                continue
            name = str(layout.names[layout.column_of[j]])
            ho = np.flatnonzero(held[:, j])
            rec: dict[str, Any] = {"feature": name, "n_missing": int(gone.size), "n_held_out": int(ho.size)}
            if ho.size < MIN_HOLDOUT_CELLS:
                rec.update(applied=False, reason="too few held-out cells")
                report.append(rec)
                continue
            m_rows, o_rows = _spread(gone, _MAX_FIT_CELLS), _spread(ho, _MAX_FIT_CELLS)
            w_m = gone.size / m_rows.size
            w_o = int(observed[:, j].sum()) / o_rows.size
            theta = _fit_column(column(imputed, j, m_rows), column(scored, j, o_rows),
                                column(data.x_val, j, o_rows), w_m, w_o)
            pi, c, b, sig = 1.0 / (1.0 + np.exp(-theta[0])), theta[1], theta[2], float(np.exp(theta[3]))
            rec.update(max_prob=float(pi), slope=float(c), threshold=float(b), scale=sig)
            applied, reason = True, ""
            if mode == "selfmasking_data":
                called = int(evidence["direction"].get(name, 0)) if name in evidence.index else 0
                if called == 0:
                    applied, reason = False, "no call from the data"
                elif called != int(np.sign(c)):
                    applied, reason = False, "direction differs from the data"
            if applied and c == 0.0:
                applied, reason = False, "no dependence on the value"
            rec.update(applied=applied, reason=reason)
            report.append(rec)
            if applied:
                for k, v in zip(kept, (j, name, pi, c, b, sig)):
                    kept[k].append(float(v) if k not in ("columns", "names") else v)
        return cls(mode=mode, report=report, **{k: tuple(v) for k, v in kept.items()})

    # ------------------------------------------------------------------ use
    def shift(self, x: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
        """What the correction adds to ``x`` (encoded imputations): zero except on ``missing`` cells of corrected columns."""
        delta = torch.zeros_like(x)
        if not self.columns:
            return delta
        cols = torch.as_tensor(self.columns, device=x.device)
        mu = x[:, cols].double()
        c = torch.as_tensor(self.slope, dtype=torch.float64, device=x.device)
        b = torch.as_tensor(self.threshold, dtype=torch.float64, device=x.device)
        sig = torch.as_tensor(self.scale, dtype=torch.float64, device=x.device)
        s = torch.sqrt(1.0 + c * c * sig * sig)
        t = c * (mu - b) / s
        normal = torch.distributions.Normal(torch.zeros((), dtype=torch.float64, device=x.device), 1.0)
        # phi(t) / Phi(t), stable far in the lower tail (where it tends to -t).
        ratio = torch.exp(normal.log_prob(t) - torch.special.log_ndtr(t))
        add = (sig * sig * c / s) * ratio
        delta[:, cols] = torch.where(missing[:, cols], add, torch.zeros_like(add)).to(x.dtype)
        return delta

    def apply(self, x: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
        """``x`` with its ``missing`` cells corrected (a new tensor; observed cells untouched)."""
        return x + self.shift(x, missing)

    def describe(self, schema: Any = None) -> pd.DataFrame:
        """The fitted process per numeric column with missing cells, as a DataFrame.

        Columns: ``direction`` (``"high values missing"`` / ``"low values missing"``),
        ``strength`` (``|c|``, per standard deviation), ``threshold`` (``b``; in the
        column's units when ``schema`` is given, else standardised), ``max_prob``
        (``pi``), ``scale`` (``sigma``, standardised), ``applied`` and ``reason``.
        """
        rows = []
        for rec in self.report:
            row = {"feature": rec["feature"], "n_missing": rec["n_missing"], "n_held_out": rec["n_held_out"]}
            if "slope" in rec:
                thr = rec["threshold"]
                if schema is not None:
                    centre, spread = _numeric_scale(schema, rec["feature"])
                    thr = centre + spread * thr
                row.update(direction="high values missing" if rec["slope"] > 0 else
                           ("low values missing" if rec["slope"] < 0 else "none"),
                           strength=abs(rec["slope"]), threshold=thr, max_prob=rec["max_prob"], scale=rec["scale"])
            row.update(applied=rec["applied"], reason=rec["reason"])
            rows.append(row)
        cols = ["feature", "direction", "strength", "threshold", "max_prob", "scale", "n_missing", "n_held_out",
                "applied", "reason"]
        return pd.DataFrame(rows, columns=cols).set_index("feature")

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "columns": [int(c) for c in self.columns],
            "names": list(self.names),
            "max_prob": list(self.max_prob),
            "slope": list(self.slope),
            "threshold": list(self.threshold),
            "scale": list(self.scale),
            "report": [dict(r) for r in self.report],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SelfMaskingCorrection":
        return cls(
            mode=str(d["mode"]),
            columns=tuple(int(c) for c in d["columns"]),
            names=tuple(str(n) for n in d["names"]),
            max_prob=tuple(float(v) for v in d["max_prob"]),
            slope=tuple(float(v) for v in d["slope"]),
            threshold=tuple(float(v) for v in d["threshold"]),
            scale=tuple(float(v) for v in d["scale"]),
            report=[dict(r) for r in d.get("report", [])],
        )


def _numeric_scale(schema: Any, name: str) -> tuple[float, float]:
    """Centre and spread the schema standardised numeric column ``name`` with."""
    for spec in schema.specs:
        if str(spec.name) == name:
            return float(spec.mean), float(spec.std)
    raise KeyError(f"no column {name!r} in the schema")
