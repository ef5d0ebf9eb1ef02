"""not-MIWAE (Ipsen, Mattei & Frellsen, 2021): MIWAE plus a model of the missingness.

The bound is ``log (1/K) sum_k p(x_obs|z_k) p(s|x_obs, x_mis_k) p(z_k) / q(z_k|x)``
where ``x_mis_k ~ p(x_mis|z_k)`` is drawn by the decoder and ``s`` is the
observation indicator. Modelling ``p(s|x)`` lets the model correct for values that
go missing *because of* their value (missing not at random).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from ...data.layout import FeatureLayout
from ...tuning.params import Categorical, Param
from ..bounds import notmiwae_log_weights
from ..layers import MLP, ClusterLinear
from ..likelihoods import float_mask, zero_unobserved
from ..registry import register_model
from ._common import check_choice, check_int
from .miwae import MIWAE

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["NotMIWAE", "MissingProcess", "MISSING_PROCESSES", "encoded_labels"]

#: The models of ``p(s|x)``.
MISSING_PROCESSES: tuple[str, ...] = ("selfmasking", "selfmasking_known_signs", "linear", "nonlinear")
_SELF_MASKING = ("selfmasking", "selfmasking_known_signs")


def encoded_labels(layout: FeatureLayout) -> list[str]:
    """A readable label per encoded column: the user's column name, and
    ``name[k]`` for level ``k`` of a categorical group."""
    labels = [str(layout.names[layout.column_of[j]]) for j in range(layout.n_features)]
    for start, stop in layout.categorical:
        for k, j in enumerate(range(start, stop)):
            labels[j] = f"{labels[j]}[{k}]"
    return labels


def _units(layout: FeatureLayout) -> tuple[list[int], list[int]]:
    """(user column of each encoded column, first encoded column of each user column)."""
    d, n_cols = layout.n_features, layout.n_columns
    col_of = list(layout.column_of)
    if len(col_of) != d or any(not 0 <= c < n_cols for c in col_of):
        raise ValueError(
            f"notmiwae needs layout.column_of to map each of the {d} encoded columns to one of the "
            f"{n_cols} user columns, got {col_of!r}."
        )
    first = [-1] * n_cols
    for j in range(d - 1, -1, -1):
        first[col_of[j]] = j
    if -1 in first:
        missing = [layout.names[u] for u, f in enumerate(first) if f < 0]
        raise ValueError(f"notmiwae: user columns {missing} have no encoded column in the layout.")
    return col_of, first


class MissingProcess(nn.Module):
    """``p(s|x)``: one Bernoulli per user column (a categorical group counts once).

    Parameters
    ----------
    layout
        Encoded schema; ``column_of`` groups encoded columns into user columns.
    kind
        ``"selfmasking"``: ``logit p(s_u = 1|x) = sum_{j in u} -W_j (x_j - b_j)``;
        ``"selfmasking_known_signs"``: the same with ``W_j = sign_j * softplus(w_j)``
        so the direction is fixed (a column with sign 0 keeps a free slope ``W_j = w_j``);
        ``"linear"``: a linear map of the whole row;
        ``"nonlinear"``: a one-hidden-layer tanh network of the whole row.
    signs
        Per-user-column ``+1`` (high values go missing), ``-1`` (low values go
        missing) or ``0`` (unknown: learn the direction); used by
        ``"selfmasking_known_signs"`` only. ``None`` means all ``+1``.
    hidden_dim
        Hidden width of the ``"nonlinear"`` process.

    Notes
    -----
    Self-masking weights start at zero (``w = 0`` for known signs), so training
    starts without favouring a direction; the linear and nonlinear maps are drawn
    from the model's generator.
    """

    def __init__(
        self,
        layout: FeatureLayout,
        kind: str,
        signs: list[float] | None = None,
        hidden_dim: int = 32,
    ) -> None:
        super().__init__()
        col_of, first = _units(layout)
        d, n_units = layout.n_features, layout.n_columns
        self.kind = kind
        self.n_units = n_units
        self.register_buffer("unit_of", torch.tensor(col_of, dtype=torch.long), persistent=False)
        self.register_buffer("unit_first", torch.tensor(first, dtype=torch.long), persistent=False)
        # One encoded column per user column (no categorical groups): the unit maps are
        # the identity and the per-sample gather / index_add can be skipped.
        self._units_identity = list(col_of) == list(range(d)) and n_units == d
        if kind in _SELF_MASKING:
            self.w = nn.Parameter(torch.zeros(d))
            self.b = nn.Parameter(torch.zeros(d))
            per_col = [1.0] * d if signs is None else [float(signs[c]) for c in col_of]
            self.register_buffer("signs", torch.tensor(per_col), persistent=False)
            # Columns of unknown direction (sign 0) keep a free slope; None when there are none.
            free = self.signs == 0
            self.register_buffer("free", free if bool(free.any()) else None, persistent=False)
        elif kind == "linear":
            self.net = ClusterLinear(d, n_units, float_output=True)
        elif kind == "nonlinear":
            self.hidden = MLP(d, [hidden_dim], activation="tanh")
            self.net = ClusterLinear(hidden_dim, n_units, float_output=True)
        else:  # pragma: no cover - checked by the model
            raise ValueError(f"Unknown missing_process {kind!r}; choose one of {list(MISSING_PROCESSES)}.")

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Self-masking weights to zero; linear / nonlinear maps drawn from ``generator``."""
        if self.kind in _SELF_MASKING:
            with torch.no_grad():
                self.w.zero_()
                self.b.zero_()
            return
        if self.kind == "nonlinear":
            self.hidden.reset_parameters(generator)
        self.net.reset_parameters(generator)

    def slopes(self) -> torch.Tensor:
        """Self-masking slopes ``W`` per encoded column (``W > 0``: high values go missing)."""
        if self.kind == "selfmasking":
            return self.w
        if self.kind == "selfmasking_known_signs":
            fixed = self.signs * F.softplus(self.w)
            return fixed if self.free is None else torch.where(self.free, self.w, fixed)
        raise ValueError(f"The {self.kind!r} missing process has no self-masking slopes.")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``logit p(s_u = 1 | x)`` per user column ``[..., n, n_units]`` for ``x [..., n, d]``."""
        if self.kind in _SELF_MASKING:
            per_col = -self.slopes() * (x - self.b)
            if self._units_identity:
                return per_col
            out = per_col.new_zeros((*per_col.shape[:-1], self.n_units))
            return out.index_add(-1, self.unit_of, per_col)
        if self.kind == "linear":
            return self.net(x)
        return self.net(self.hidden(x))

    def observed_units(self, mask: torch.Tensor) -> torch.Tensor:
        """Observation indicator per user column, read at each unit's first encoded column."""
        if self._units_identity:
            return mask
        return mask.index_select(-1, self.unit_first)

    def log_prob(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``log p(s|x)`` summed per row ``[..., n]``; ``s`` is ``mask`` per user column."""
        if self.kind in _SELF_MASKING and self._units_identity and x.dtype == self.b.dtype:
            sign = float_mask(mask, x.dtype).mul(2.0).sub_(1.0)  # +1 observed, -1 missing
            return _SelfMaskingLogProb.apply(x, self.b, self.slopes() * sign)
        logits = self.logits(x)
        s = float_mask(self.observed_units(mask), logits.dtype).expand_as(logits)
        return -F.binary_cross_entropy_with_logits(logits, s, reduction="none").sum(-1)


class _SelfMaskingLogProb(torch.autograd.Function):
    """Row sums of ``log p(s|x)`` for a self-masking process, as one autograd node.

    With ``l = W * (b - x)``, each cell's term ``s * l - softplus(l)`` equals
    ``-softplus(c * (x - b))`` with ``c = W * (2 s - 1)`` (``log sigmoid(l)`` when
    observed, ``log sigmoid(-l)`` when missing). Inputs: ``x [..., n, d]``, ``b [d]``,
    ``c [n, d]`` (small: the caller forms it from ``W`` and ``s``, so autograd carries
    its gradient on to ``W``). The forward keeps ``x - b`` and ``sigmoid(c * (x - b))``;
    about half the passes over the ``[K, n, d]`` samples of the elementwise version
    (shift, scale, log-sigmoid, their backward ops).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        centred = x - b
        scaled = centred * c
        out = F.softplus(scaled).sum(-1).neg_()
        ctx.save_for_backward(centred, torch.sigmoid(scaled, out=scaled), c)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        centred, sig, c = ctx.saved_tensors
        need_x, need_b, need_c = ctx.needs_input_grad
        # d(-softplus(u))/du = -sigmoid(u), u = c * (x - b).
        weighted = sig * grad.unsqueeze(-1)
        samples = tuple(range(weighted.dim() - 2))  # leading sample axes, if any

        def per_row(t: torch.Tensor) -> torch.Tensor:
            """``t [..., n, d]`` summed over the sample axes (``sum(())`` would sum everything)."""
            return t.sum(samples) if samples else t

        grad_x = weighted * c.neg() if need_x else None
        grad_c = per_row(weighted * centred).neg_() if need_c else None
        grad_b = (per_row(weighted) * c).sum(0) if need_b else None
        return grad_x, grad_b, grad_c


@register_model
class NotMIWAE(MIWAE):
    """MIWAE with an explicit missing-data model, for data missing not at random.

    Parameters
    ----------
    layout, n_clusters, seed
        As for :class:`~ciss_autoimpute.models.families.miwae.MIWAE`.
    **params
        The MIWAE parameters plus ``missing_process`` (one of
        :data:`MISSING_PROCESSES`, see :class:`MissingProcess`), ``signs`` (``None``,
        one ``+1``/``-1``/``0`` per user column in ``layout.names`` order, or
        ``"data"``, for ``"selfmasking_known_signs"``; ignored by the other processes) and
        ``missing_hidden_dim`` (hidden width of the ``"nonlinear"`` process).

    Notes
    -----
    * ``s`` is the ``observed`` tensor passed to :meth:`loss`, :meth:`impute` and
      :meth:`sample_imputations` (per user column), or ``mask`` when it is ``None``.
      The :class:`~ciss_autoimpute.training.Trainer` passes the cells observed in the
      data, so a cell held out for validation counts as observed (``s = 1``) while its
      value stays hidden from the likelihood (it is drawn, like a missing one). Were it
      counted as missing, the holdout — a random share of ordinary observed values —
      would teach ``p(s|x)`` that ordinary values go missing too, and the holdout would
      be scored with imputations meant for truly missing cells.
    * In the bound the missing cells of ``x`` are the decoder's draws (numeric draws
      are reparameterised; binary / categorical draws pass no gradient to the
      decoder) and the observed cells are the data.
    * :meth:`impute` is the self-normalised importance estimate
      ``sum_k w_k x_k`` over the *drawn* rows ``x_k``: the weights depend on the drawn
      values through ``p(s|x_k)``, so averaging the decoder means instead would miss
      the shift the missing process implies.
    * :meth:`sample_imputations` resamples those same draws with probabilities
      ``w_k`` (sampling importance resampling). Because ``p(s|x)`` is evaluated at
      the draws, they always carry the head's noise (unit variance for
      ``"gaussian_fixed"``).
    * :meth:`interpret_missing_process` and :meth:`compute_missing_sensitivity`
      describe the learned ``p(s|x)`` on the standardised scale.
    * Search-space meta keys: ``num_hidden_layers`` + ``hidden_dim`` (-> ``hidden_dims``).
      ``"selfmasking_known_signs"`` is left out of the default space because it
      needs the user's ``signs``.
    * ``signs="data"`` takes each column's sign from the observed data when
      :class:`~ciss_autoimpute.Imputer` (or ``run_imputation``, ``autotune``) fits:
      the direction :func:`~ciss_autoimpute.data.diagnostics.missingness_direction_evidence`
      calls, and 0 (learned) for the columns it does not call. The fitted model keeps
      the resolved list; :func:`~ciss_autoimpute.models.registry.build_model` needs the
      list itself.
    """

    name = "notmiwae"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {
            **super().default_params(),
            "missing_process": "selfmasking",
            "signs": None,
            "missing_hidden_dim": 32,
        }

    @classmethod
    def search_space(cls) -> dict[str, Param]:
        return {
            **super().search_space(),
            "missing_process": Categorical(("selfmasking", "linear", "nonlinear")),
        }

    @classmethod
    def _check_params(cls, p: dict[str, Any]) -> dict[str, Any]:
        out = super()._check_params(p)
        out["missing_process"] = check_choice(cls.name, "missing_process", p["missing_process"], MISSING_PROCESSES)
        out["missing_hidden_dim"] = check_int(cls.name, "missing_hidden_dim", p["missing_hidden_dim"])
        signs = p["signs"]
        if signs is not None and not (isinstance(signs, str) and signs == "data"):
            if isinstance(signs, (str, bytes)) or not isinstance(signs, (list, tuple)):
                raise ValueError(
                    f"notmiwae: parameter 'signs' must be None, 'data' or a list of +1/-1/0, got {signs!r}."
                )
            bad = [v for v in signs if isinstance(v, bool) or v not in (1, -1, 0)]
            if bad:
                raise ValueError(
                    f"notmiwae: parameter 'signs' must hold +1 (high values go missing), -1 (low values "
                    f"go missing) or 0 (unknown: learn it), got {list(signs)!r}."
                )
            out["signs"] = [int(v) for v in signs]
        return out

    def _build_extra(self) -> None:
        signs = self.params["signs"]
        if signs == "data":
            raise ValueError(
                "notmiwae: signs='data' is read from the data when an Imputer (or run_imputation / autotune) fits; "
                "to build the model directly, pass one +1/-1/0 per column (see "
                "ciss_autoimpute.data.diagnostics.data_signs)."
            )
        if signs is not None and len(signs) != self.layout.n_columns:
            raise ValueError(
                f"notmiwae: 'signs' has {len(signs)} entries but the data has {self.layout.n_columns} columns "
                f"{list(self.layout.names)}; give one +1/-1 per column."
            )
        self.missing = MissingProcess(
            self.layout, self.params["missing_process"], signs, self.params["missing_hidden_dim"]
        )
        #: Encoded columns that had a missing cell in some training batch (kept with the weights).
        self.register_buffer("missing_seen", torch.zeros(self.layout.n_features, dtype=torch.bool))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:  # type: ignore[override]
        # Files saved before the buffer existed: nothing is known, so every column counts as seen.
        key = prefix + "missing_seen"
        if key not in state_dict:
            state_dict[key] = torch.ones_like(self.missing_seen)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _reset_extra(self, generator: torch.Generator) -> None:
        self.missing.reset_parameters(generator)

    models_missingness = True

    def missingness_log_prob(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``log p(s | x)`` of the learned missing process, per row ``[..., n]``."""
        return self.missing.log_prob(x, mask)

    # ------------------------------------------------------------------ bound pieces
    def _log_weights(
        self, s: dict[str, torch.Tensor], x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        drawn = self.likelihood.sample(s["raw"], generator, params=s["params"])
        # where(mask, x, drawn) as float arithmetic: the same values and gradient (exact,
        # since x_obs is 0 and drawn is multiplied by 0 where the other applies), but a
        # bool-mask where over [K, n, d] is ~10x slower on CPU than the multiply-add.
        keep = float_mask(mask, drawn.dtype)
        x_obs = zero_unobserved(x, keep)
        s["x_full"] = torch.addcmul(x_obs, drawn, 1.0 - keep)
        # p(s|x) reads the cells observed in the data: a held-out cell is hidden from the
        # likelihood (its value is drawn like a missing one) but was observed, s = 1.
        s["log_ps"] = self.missing.log_prob(s["x_full"], s["observed"])
        if self.training and torch.is_grad_enabled():
            # Which columns the missing process saw go missing: the others have no data for it.
            self.missing_seen |= ~s["observed"].all(0)
        return notmiwae_log_weights(s["log_px"], s["log_ps"], s["log_pz"], s["log_qz"])

    def _point_values(self, s: dict[str, torch.Tensor]) -> torch.Tensor:
        return s["x_full"]

    def _draws(self, s: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        return s["x_full"]

    def _parts(self, s: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        parts = super()._parts(s)
        parts["nll_missing"] = -s["log_ps"].mean().detach()
        return parts

    # ------------------------------------------------------------------ interpretation
    def interpret_missing_process(self) -> pd.DataFrame:
        """The learned self-masking mechanism, one row per encoded column.

        Returns
        -------
        pandas.DataFrame
            Indexed by feature (``name``, or ``name[k]`` for level ``k`` of a
            categorical column) with columns ``direction`` (``"high values
            missing"`` when ``W > 0``, else ``"low values missing"``; ``"never
            missing"`` for a column without a missing cell in the training data,
            whose slope and threshold were learned from nothing), ``strength``
            (``|W|``), ``threshold`` (``b``, on the standardised scale: the value
            at which the column's own term is zero), ``had_missing`` (whether
            the column had missing cells in training) and ``learned`` (whether the
            direction was learned: every column under ``"selfmasking"``; under
            ``"selfmasking_known_signs"`` only the columns given sign 0, the others
            keep the sign they were given).

        Raises
        ------
        ValueError
            For the ``"linear"`` and ``"nonlinear"`` processes, which have no
            per-feature slope; use :meth:`compute_missing_sensitivity`.
        """
        import pandas as pd

        kind = self.params["missing_process"]
        if kind not in _SELF_MASKING:
            raise ValueError(
                f"interpret_missing_process describes self-masking processes, this model uses {kind!r}; "
                "call compute_missing_sensitivity(x) instead."
            )
        with torch.no_grad():
            w = self.missing.slopes().detach().cpu().double()
            b = self.missing.b.detach().cpu().double()
            seen = self.missing_seen.detach().cpu().tolist()
            if kind == "selfmasking_known_signs":
                learned = (self.missing.signs == 0).cpu().tolist()
            else:
                learned = [True] * len(seen)
        frame = pd.DataFrame(
            {
                "direction": [
                    ("high values missing" if v > 0 else "low values missing") if had else "never missing"
                    for v, had in zip(w.tolist(), seen)
                ],
                "strength": w.abs().numpy(),
                "threshold": b.numpy(),
                "had_missing": seen,
                "learned": learned,
            },
            index=pd.Index(encoded_labels(self.layout), name="feature"),
        )
        return frame

    def compute_missing_sensitivity(self, x: Any) -> pd.DataFrame:
        """Mean absolute sensitivity of each column's missingness logit to each input.

        Parameters
        ----------
        x
            Encoded rows ``[n, d]`` (tensor or array; e.g. the imputed data).

        Returns
        -------
        pandas.DataFrame
            ``[user columns x encoded columns]``: entry ``(j, i)`` is the mean over
            rows of ``|d logit p(s_j = 1|x) / d x_i|``. Self-masking processes give
            ``|W_i|`` on the column's own entries and zero elsewhere.
        """
        import pandas as pd

        d = self.layout.n_features
        param = next(self.parameters())
        xt = torch.as_tensor(x, dtype=param.dtype, device=param.device) if not isinstance(x, torch.Tensor) else x
        if xt.dim() != 2 or xt.shape[1] != d or xt.shape[0] == 0:
            raise ValueError(f"x must have shape [n >= 1, {d}] (encoded rows), got {tuple(xt.shape)}.")
        xt = xt.detach().to(device=param.device, dtype=param.dtype).clone().requires_grad_(True)
        rows = []
        with torch.enable_grad():
            logits = self.missing.logits(xt)
            for u in range(self.missing.n_units):
                (grad,) = torch.autograd.grad(logits[:, u].sum(), xt, retain_graph=True)
                rows.append(grad.abs().mean(0))
        values = torch.stack(rows).detach().cpu().double().numpy()
        return pd.DataFrame(
            values,
            index=pd.Index([str(n) for n in self.layout.names], name="missingness of"),
            columns=pd.Index(encoded_labels(self.layout), name="input"),
        )
