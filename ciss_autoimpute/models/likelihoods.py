"""Likelihood heads over a mixed-type schema.

The decoder emits one flat vector of distribution parameters per row;
:class:`MixedLikelihood` knows how that vector maps onto the encoded columns of a
:class:`~ciss_autoimpute.data.layout.FeatureLayout`:

* numeric columns — a mean, plus, depending on the numeric head,

  - ``"gaussian"``: a per-cell log-scale (clamped to
    ``[LOG_SCALE_MIN, LOG_SCALE_MAX]`` so the density cannot collapse),
  - ``"gaussian_fixed"``: nothing else; unit variance, so the negative
    log-likelihood is half the masked squared error plus a constant (CISS-VAE's
    MSE loss),
  - ``"student_t"``: a per-cell log-scale (clamped as above) and degrees of freedom
    ``3 + softplus(raw)`` (so the variance stays finite);

* binary columns — one logit (Bernoulli);
* categorical groups — one logit per level, normalised within the group.

Raw parameters are laid out as ``[numeric means | numeric log-scales | numeric
df | binary logits | categorical logits]`` (absent blocks are empty). Every method
accepts leading sample dimensions: ``raw [..., n, n_params]``, ``x``/``mask``
``[n, d]`` (or already ``[..., n, d]``).

Masks are per encoded column. A categorical group's columns share one mask value and
the group contributes one term to the log-likelihood.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..data.layout import FeatureLayout

__all__ = [
    "NUMERIC_HEADS",
    "LOG_SCALE_MIN",
    "LOG_SCALE_MAX",
    "DF_MIN",
    "MixedLikelihood",
    "standard_gamma",
]

#: Names of the numeric heads.
NUMERIC_HEADS: tuple[str, ...] = ("gaussian", "gaussian_fixed", "student_t")
#: Bounds of a numeric log-scale (data are standardised: scale in ~[0.018, 55]).
LOG_SCALE_MIN = -4.0
LOG_SCALE_MAX = 4.0
#: Smallest Student-t degrees of freedom (keeps the variance finite).
DF_MIN = 3.0

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def float_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A float copy of ``mask`` (1 where true, 0 elsewhere).

    A bool mask is converted through a ``uint8`` view: the same values, but this
    torch build converts bool to float slowly on CPU (1000 x 50: 30 us against 5.6 us
    through ``uint8``; 4000 x 50: 115 us against 16 us).
    """
    if mask.dtype == torch.bool:
        return mask.view(torch.uint8).to(dtype)
    return mask.to(dtype)


def zero_unobserved(x: torch.Tensor, mask_f: torch.Tensor) -> torch.Tensor:
    """``x`` where the float mask ``mask_f`` is 1, zero where it is 0.

    ``mask_f`` may have another floating dtype than ``x``; it is cast (0 and 1 are
    exact in every float dtype).

    The values of ``torch.where(mask, x, 0)`` whenever the observed cells are finite
    (which every caller guarantees; the Trainer rejects non-finite data), while
    filler values in unobserved cells never reach the maths, even NaN or infinite
    ones. ``where`` with a bool condition is slow on CPU in this torch build
    (1000 x 50: 39 us, 4000 x 50: 460 us); the multiply plus ``nan_to_num`` costs
    17 us and 46 us. An unobserved cell may come out as ``-0.0``; it is only ever
    multiplied by a zero mask afterwards.
    """
    if mask_f.dtype != x.dtype:
        mask_f = mask_f.to(x.dtype)
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).mul_(mask_f)


def _check_layout(layout: FeatureLayout) -> None:
    """Every encoded column must be exactly one of numeric / binary / one categorical level."""
    if not isinstance(layout, FeatureLayout):
        raise TypeError(f"layout must be a FeatureLayout, got {type(layout).__name__}.")
    d = layout.n_features
    seen: list[int] = list(layout.numeric) + list(layout.binary)
    for start, stop in layout.categorical:
        if not 0 <= start < stop <= d or stop - start < 2:
            raise ValueError(
                f"layout.categorical range ({start}, {stop}) is invalid for {d} encoded columns; "
                "each group needs at least two one-hot columns inside the matrix."
            )
        seen.extend(range(start, stop))
    if sorted(seen) != list(range(d)):
        raise ValueError(
            f"layout must assign each of its {d} encoded columns to exactly one kind "
            f"(numeric {list(layout.numeric)}, binary {list(layout.binary)}, "
            f"categorical {list(layout.categorical)}); fix the FeatureLayout."
        )


def standard_gamma(alpha: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw ``Gamma(alpha, 1)`` for ``alpha >= 1`` using only ``generator``.

    Marsaglia and Tsang's squeeze-free rejection sampler, vectorised: each round
    proposes for the cells still pending (acceptance is above 95 % for
    ``alpha >= 1``), so a few rounds suffice. No gradient flows through the draw.

    Parameters
    ----------
    alpha
        Shape parameters, every entry ``>= 1``.
    generator
        The random source.

    Returns
    -------
    torch.Tensor
        Draws with the shape of ``alpha``.
    """
    alpha = alpha.detach()
    if alpha.numel() and float(alpha.min()) < 1.0:
        raise ValueError(f"standard_gamma needs alpha >= 1, got a minimum of {float(alpha.min())}.")
    flat = alpha.reshape(-1)
    d = flat - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.empty_like(flat)
    pending = torch.arange(flat.numel(), device=flat.device)
    while pending.numel():
        dd, cc = d[pending], c[pending]
        z = torch.randn(dd.shape, generator=generator, device=dd.device, dtype=dd.dtype)
        u = torch.rand(dd.shape, generator=generator, device=dd.device, dtype=dd.dtype)
        v = (1.0 + cc * z) ** 3
        safe_v = v.clamp_min(1e-30)
        ok = (v > 0) & (torch.log(u) < 0.5 * z * z + dd - dd * safe_v + dd * torch.log(safe_v))
        out[pending[ok]] = (dd * v)[ok]
        pending = pending[~ok]
    return out.reshape(alpha.shape)


class _GaussianRowLogLik(torch.autograd.Function):
    """Masked Gaussian log-density summed per row, with a closed-form backward.

    ``forward(mean, log_scale, x, mask)`` returns ``sum_j mask_j * log N(x_j; mean_j,
    exp(log_scale_j)^2)`` over the last axis (``log_scale`` None: unit variance), the
    same values as the elementwise formula in :meth:`MixedLikelihood.log_prob_units`.
    Gradients flow to ``mean`` and ``log_scale`` only: with ``r = (x - mean) /
    scale``, ``d/d mean = mask * r / scale`` and ``d/d log_scale = mask * (r^2 - 1)``.
    """

    @staticmethod
    def forward(ctx, mean, log_scale, x, mask):  # type: ignore[override]
        if log_scale is None:
            r = x - mean
            lp = (r * r).mul_(-0.5).sub_(_HALF_LOG_2PI)
            inv_scale = None
        else:
            inv_scale = torch.exp(-log_scale)
            r = (x - mean) * inv_scale
            lp = (r * r).mul_(-0.5).sub_(log_scale).sub_(_HALF_LOG_2PI)
        ctx.save_for_backward(r, inv_scale, mask)
        ctx.shapes = (mean.shape, None if log_scale is None else log_scale.shape)
        return (lp * mask).sum(-1)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        r, inv_scale, mask = ctx.saved_tensors
        mean_shape, scale_shape = ctx.shapes
        g = grad.unsqueeze(-1) * mask
        g_r = g * r
        d_mean = g_r if inv_scale is None else g_r * inv_scale
        d_scale = None
        if inv_scale is not None and ctx.needs_input_grad[1]:
            d_scale = torch.addcmul(-g, g_r, r)
            if d_scale.shape != scale_shape:
                d_scale = d_scale.sum_to_size(scale_shape)
        if d_mean.shape != mean_shape:
            d_mean = d_mean.sum_to_size(mean_shape)
        return (d_mean if ctx.needs_input_grad[0] else None), d_scale, None, None


class _GaussianHead(torch.autograd.Function):
    """``raw [..., 2 * n]`` -> (``mean``, clamped ``log_scale``), each ``[..., n]``, as one node.

    The same values as slicing ``raw`` and clamping the second half with ``hardtanh``.
    Autograd would give each slice a backward that zero-fills a gradient of ``raw``'s
    full shape and copies its part in, then add the two; here the two gradients are
    concatenated once. A model that reads the blocks twice (not-MIWAE: the likelihood
    and the draws) would otherwise pay that twice per block.
    """

    @staticmethod
    def forward(ctx, raw: torch.Tensor, n: int):  # type: ignore[override]
        raw_scale = raw[..., n:]
        ctx.save_for_backward(raw_scale)
        return raw[..., :n].clone(), F.hardtanh(raw_scale, LOG_SCALE_MIN, LOG_SCALE_MAX)

    @staticmethod
    def backward(ctx, grad_mean: torch.Tensor | None, grad_scale: torch.Tensor | None):  # type: ignore[override]
        (raw_scale,) = ctx.saved_tensors
        if grad_mean is None:
            grad_mean = torch.zeros_like(raw_scale)
        if grad_scale is None:
            grad_scale = torch.zeros_like(raw_scale)
        else:
            grad_scale = torch.ops.aten.hardtanh_backward(grad_scale, raw_scale, LOG_SCALE_MIN, LOG_SCALE_MAX)
        return torch.cat([grad_mean, grad_scale], dim=-1), None


def _group_firsts(layout: FeatureLayout) -> list[int]:
    """First encoded column of each categorical group."""
    return [start for start, _ in layout.categorical]


def _selector(columns: list[int]) -> slice | None:
    """A slice selecting ``columns`` when they form one increasing run, else None."""
    if not columns:
        return slice(0, 0)
    start = columns[0]
    if columns == list(range(start, start + len(columns))):
        return slice(start, start + len(columns))
    return None


class MixedLikelihood(nn.Module):
    """The observation model of every family: numeric, binary and categorical heads.

    Parameters
    ----------
    layout
        The encoded schema.
    numeric
        Numeric head: ``"gaussian"`` (learned per-cell scale), ``"gaussian_fixed"``
        (unit variance; masked MSE) or ``"student_t"`` (learned scale and df).

    Attributes
    ----------
    n_params
        Width of the raw parameter vector the decoder must emit.

    Examples
    --------
    >>> layout = FeatureLayout(4, numeric=(0,), binary=(1,), categorical=((2, 4),),
    ...                        names=("a", "b", "c"), column_of=(0, 1, 2, 2))
    >>> head = MixedLikelihood(layout, "gaussian_fixed")
    >>> head.n_params
    4
    >>> x = torch.tensor([[0.5, 1.0, 0.0, 1.0]])
    >>> head.log_prob(torch.zeros(1, 4), x, torch.ones(1, 4, dtype=torch.bool)).shape
    torch.Size([1])
    """

    def __init__(self, layout: FeatureLayout, numeric: str = "gaussian") -> None:
        super().__init__()
        _check_layout(layout)
        if numeric not in NUMERIC_HEADS:
            raise ValueError(f"Unknown likelihood {numeric!r}; choose one of {list(NUMERIC_HEADS)}.")
        self.layout = layout
        self.numeric = numeric
        n_num, n_bin = len(layout.numeric), len(layout.binary)
        cat_cols = [j for start, stop in layout.categorical for j in range(start, stop)]
        n_cat = len(cat_cols)
        self.n_num, self.n_bin, self.n_cat = n_num, n_bin, n_cat
        self.n_groups = len(layout.categorical)
        per_numeric = {"gaussian": 2, "gaussian_fixed": 1, "student_t": 3}[numeric]
        self.n_params = per_numeric * n_num + n_bin + n_cat
        # Numeric columns with a learned Gaussian scale only: split() runs as one node.
        self._gaussian_only = numeric == "gaussian" and not n_bin and not n_cat
        self._per_numeric = per_numeric

        def buf(name: str, values: list[int]) -> None:
            self.register_buffer(name, torch.tensor(values, dtype=torch.long), persistent=False)

        buf("numeric_idx", list(layout.numeric))
        buf("binary_idx", list(layout.binary))
        buf("cat_idx", cat_cols)
        # Encoded column j sits at position to_encoded[j] of [numeric | binary | categorical].
        block_order = list(layout.numeric) + list(layout.binary) + cat_cols
        to_encoded = [0] * layout.n_features
        for pos, j in enumerate(block_order):
            to_encoded[j] = pos
        buf("to_encoded", to_encoded)
        # Column selection is the hot path of every loss: a slice (a view) when the
        # columns form one run, index_select otherwise. Advanced indexing on the last
        # axis is far slower on CPU (4096 x 50: ~940 us against ~70 us for index_select).
        self._num_cols = _selector(list(layout.numeric))
        self._bin_cols = _selector(list(layout.binary))
        self._cat_cols = _selector(cat_cols)
        self._group_first_cols = _selector(_group_firsts(layout))
        # The reorder is skipped when the layout already lists numeric, binary and
        # categorical columns in that order (always so for all-numeric data).
        self._reorder_needed = to_encoded != list(range(layout.n_features))
        # Padded [groups, max levels] view of the categorical block; pads point at an
        # extra -inf column (index n_cat) so a softmax over a padded row ignores them.
        max_levels = max((stop - start for start, stop in layout.categorical), default=0)
        pad_index, flat_pos, group_first, member = [], [], [], []
        offset = 0
        for g, (start, stop) in enumerate(layout.categorical):
            levels = stop - start
            pad_index.append(list(range(offset, offset + levels)) + [n_cat] * (max_levels - levels))
            flat_pos.extend(g * max_levels + k for k in range(levels))
            group_first.append(start)
            member.extend([g] * levels)
            offset += levels
        self.max_levels = max_levels
        self.register_buffer(
            "cat_pad_index",
            torch.tensor(pad_index, dtype=torch.long).reshape(len(pad_index), max_levels),
            persistent=False,
        )
        buf("cat_flat_pos", flat_pos)
        buf("cat_group_first", group_first)
        buf("cat_member", member)

    # ------------------------------------------------------------------ parsing
    def split(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named parameter blocks of ``raw [..., n, n_params]``.

        Keys: ``mean``, ``log_scale`` (gaussian, student_t), ``df`` (student_t),
        ``bin_logit``, ``cat_logit``.
        """
        if raw.shape[-1] != self.n_params:
            raise ValueError(
                f"raw decoder output has {raw.shape[-1]} parameters per row, the likelihood needs {self.n_params}."
            )
        n_num = self.n_num
        if self._gaussian_only and raw.requires_grad and torch.is_grad_enabled():
            mean, log_scale = _GaussianHead.apply(raw, n_num)
            empty = raw.new_zeros((*raw.shape[:-1], 0))
            return {"mean": mean, "log_scale": log_scale, "bin_logit": empty, "cat_logit": empty}
        out: dict[str, torch.Tensor] = {"mean": raw[..., :n_num]}
        pos = n_num
        if self.numeric in ("gaussian", "student_t"):
            # hardtanh is clamp with a one-kernel backward (clamp's needs several bool ops);
            # the two differ only in the gradient at exactly the bounds.
            out["log_scale"] = F.hardtanh(raw[..., pos : pos + n_num], LOG_SCALE_MIN, LOG_SCALE_MAX)
            pos += n_num
        if self.numeric == "student_t":
            out["df"] = DF_MIN + F.softplus(raw[..., pos : pos + n_num])
            pos += n_num
        out["bin_logit"] = raw[..., pos : pos + self.n_bin]
        pos += self.n_bin
        out["cat_logit"] = raw[..., pos : pos + self.n_cat]
        return out

    def _padded(self, cat_logit: torch.Tensor) -> torch.Tensor:
        """``[..., n_cat]`` -> ``[..., groups, max_levels]`` with ``-inf`` padding."""
        pad = cat_logit.new_full((*cat_logit.shape[:-1], 1), float("-inf"))
        return torch.cat([cat_logit, pad], dim=-1)[..., self.cat_pad_index]

    def _unpad(self, padded: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`_padded` (drops the padding)."""
        return padded.flatten(-2)[..., self.cat_flat_pos]

    def cat_log_probs(self, cat_logit: torch.Tensor) -> torch.Tensor:
        """Log-softmax of the categorical logits within each group, ``[..., n_cat]``."""
        if self.n_cat == 0:
            return cat_logit
        return self._unpad(torch.log_softmax(self._padded(cat_logit), dim=-1))

    def _to_encoded(self, num: torch.Tensor, binary: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        """Blocks ``[numeric | binary | categorical]`` -> encoded column order."""
        blocks = [b for b in (num, binary, cat) if b.shape[-1]]
        if len(blocks) > 1:
            joined = torch.cat(blocks, dim=-1)
        else:
            # One kind of column only: no concatenation; contiguous so the result never
            # aliases the decoder output.
            joined = (blocks[0] if blocks else num).contiguous()
        if not self._reorder_needed:
            return joined
        return joined.index_select(-1, self.to_encoded)

    def _take(self, t: torch.Tensor, which: str) -> torch.Tensor:
        """The columns ``which`` (``"numeric"``, ``"binary"``, ``"categorical"``,
        ``"group_first"``) of ``t [..., d]``."""
        sel = {
            "numeric": self._num_cols,
            "binary": self._bin_cols,
            "categorical": self._cat_cols,
            "group_first": self._group_first_cols,
        }[which]
        if isinstance(sel, slice):
            return t[..., sel]
        buffer = {
            "numeric": self.numeric_idx,
            "binary": self.binary_idx,
            "categorical": self.cat_idx,
            "group_first": self.cat_group_first,
        }[which]
        return t.index_select(-1, buffer)

    # ------------------------------------------------------------------ log-likelihood
    def log_prob_units(
        self, raw: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, *, params: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Masked per-cell log-likelihoods: ``numeric [..., n, n_num]``,
        ``binary [..., n, n_bin]``, ``categorical [..., n, n_groups]`` (0 where not observed).

        ``params``: ``split(raw)`` when the caller already has it (it is not recomputed).
        """
        p = self.split(raw) if params is None else params
        mask = mask.bool()
        # Masking multiplies by a float copy of the mask: the same values as multiplying by
        # the bool mask, but elementwise ops mixing bool and float are several times slower
        # on CPU (measured 10.8 us against 2.8 us on 256 x 50, 175 us against 33 us on
        # [20, 256, 50]).
        mask_f = float_mask(mask, raw.dtype)
        # Filler values in unobserved cells must not reach the maths (NaN-safe gradients).
        x = zero_unobserved(x, mask_f)
        out = {}

        m_num = self._take(mask_f, "numeric")
        x_num = self._take(x, "numeric")
        mu = p["mean"]
        if self.numeric == "gaussian_fixed":
            lp = -0.5 * (x_num - mu) ** 2 - _HALF_LOG_2PI
        elif self.numeric == "gaussian":
            log_s = p["log_scale"]
            lp = -0.5 * ((x_num - mu) * torch.exp(-log_s)) ** 2 - log_s - _HALF_LOG_2PI
        else:
            log_s, df = p["log_scale"], p["df"]
            u = (x_num - mu) * torch.exp(-log_s)
            lp = (
                torch.lgamma(0.5 * (df + 1.0))
                - torch.lgamma(0.5 * df)
                - 0.5 * torch.log(df * math.pi)
                - log_s
                - 0.5 * (df + 1.0) * torch.log1p(u * u / df)
            )
        out["numeric"] = lp * m_num

        logit = p["bin_logit"]
        if self.n_bin:
            m_bin = self._take(mask_f, "binary")
            x_bin = self._take(x, "binary").expand_as(logit)
            out["binary"] = -F.binary_cross_entropy_with_logits(logit, x_bin, reduction="none") * m_bin
        else:
            # No binary columns: skip the empty ops (and their backward) altogether.
            out["binary"] = raw.new_zeros((*raw.shape[:-1], 0))

        if self.n_groups:
            logp = self.cat_log_probs(p["cat_logit"])
            x_cat = self._take(x, "categorical")
            # Sum each group's one-hot * log-prob: a scatter over the group index.
            per_col = x_cat * logp
            groups = per_col.new_zeros((*per_col.shape[:-1], self.n_groups))
            groups = groups.index_add(-1, self.cat_member, per_col)
            out["categorical"] = groups * self._take(mask_f, "group_first")
        else:
            out["categorical"] = raw.new_zeros((*raw.shape[:-1], 0))
        return out

    def log_prob(
        self, raw: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, *, params: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Log-likelihood of the cells where ``mask`` is true, summed per row: ``[..., n]``.

        A categorical group counts once (its mask is read at its first column).
        ``params``: ``split(raw)`` when the caller already has it.
        """
        if self.numeric != "student_t" and not x.requires_grad and not self.n_bin and not self.n_groups:
            # All-numeric Gaussian data (the common case): one fused op with a hand-written
            # backward instead of ~10 small elementwise ops and their autograd nodes.
            p = self.split(raw) if params is None else params
            mask_f = float_mask(mask.bool(), raw.dtype)
            x = zero_unobserved(x, mask_f)
            x_num = self._take(x, "numeric")
            m_num = self._take(mask_f, "numeric")
            return _GaussianRowLogLik.apply(p["mean"], p.get("log_scale"), x_num, m_num)
        parts = self.log_prob_units(raw, x, mask, params=params)
        total = parts["numeric"].sum(-1)
        # Empty blocks add exactly zero; leaving them out saves ops, not accuracy.
        if self.n_bin:
            total = total + parts["binary"].sum(-1)
        if self.n_groups:
            total = total + parts["categorical"].sum(-1)
        return total

    # ------------------------------------------------------------------ summaries and draws
    def mean(self, raw: torch.Tensor) -> torch.Tensor:
        """Expected value per encoded column ``[..., n, d]``: numeric mean, P(binary = 1),
        categorical class probabilities."""
        p = self.split(raw)
        cat = torch.exp(self.cat_log_probs(p["cat_logit"]))
        return self._to_encoded(p["mean"], torch.sigmoid(p["bin_logit"]), cat)

    def clip_probabilities(self, values: torch.Tensor) -> torch.Tensor:
        """``values [..., d]`` with binary and categorical columns clamped to ``[0, 1]``.

        Weighted averages of probabilities or draws can overshoot by rounding.
        """
        idx = torch.cat([self.binary_idx, self.cat_idx])
        if idx.numel() == 0:
            return values
        return values.index_copy(-1, idx, values.index_select(-1, idx).clamp(0.0, 1.0))

    @property
    def learns_scale(self) -> bool:
        """False for ``"gaussian_fixed"``, whose unit variance is a loss weight, not a noise scale.

        Families draw numeric cells with noise only when this is true
        (``sample(..., numeric_noise=likelihood.learns_scale)``).
        """
        return self.numeric != "gaussian_fixed"

    def sample(
        self,
        raw: torch.Tensor,
        generator: torch.Generator,
        *,
        numeric_noise: bool = True,
        params: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """One draw per row ``[..., n, d]``: numeric values, binary 0/1, categorical one-hot.

        Numeric draws are reparameterised (differentiable in the mean and scale);
        binary and categorical draws carry no gradient. With ``numeric_noise=False``
        numeric cells get the mean instead of a draw. ``params``: ``split(raw)`` when the
        caller already has it.
        """
        p = self.split(raw) if params is None else params
        mu = p["mean"]
        dev, dt = raw.device, raw.dtype
        if not numeric_noise:
            num = mu
        else:
            eps = torch.randn(mu.shape, generator=generator, device=dev, dtype=dt)
            if self.numeric == "gaussian_fixed":
                num = mu + eps
            elif self.numeric == "gaussian":
                num = mu + torch.exp(p["log_scale"]) * eps
            else:
                df = p["df"].detach()
                # t = z * sqrt(df / chi2_df) and chi2_df = 2 * Gamma(df / 2).
                gam = standard_gamma(0.5 * df, generator)
                num = mu + torch.exp(p["log_scale"]) * eps * torch.sqrt(df / (2.0 * gam))
        logit = p["bin_logit"].detach()
        u = torch.rand(logit.shape, generator=generator, device=dev, dtype=dt)
        binary = (u < torch.sigmoid(logit)).to(dt)
        if self.n_groups:
            padded = self._padded(p["cat_logit"].detach())
            uc = torch.rand(padded.shape, generator=generator, device=dev, dtype=dt)
            uc = uc.clamp(torch.finfo(dt).tiny, 1.0 - torch.finfo(dt).eps)
            # Gumbel-max: argmax of logits + Gumbel noise is a draw from the softmax.
            choice = torch.argmax(padded - torch.log(-torch.log(uc)), dim=-1)
            onehot = F.one_hot(choice, num_classes=self.max_levels).to(dt)
            cat = self._unpad(onehot)
        else:
            cat = p["cat_logit"].detach()
        return self._to_encoded(num, binary, cat)
