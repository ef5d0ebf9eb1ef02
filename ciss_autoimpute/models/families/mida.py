"""MIDA (Gondara & Wang, 2018): multiple imputation with denoising autoencoders."""

from __future__ import annotations

from typing import Any

import torch

from ...data.layout import FeatureLayout
from ...tuning.params import Categorical, Float, Int, Param
from ..base import ImputationModel, LossOutput
from ..layers import ACTIVATIONS, MLP, ClusterLinear
from ..likelihoods import MixedLikelihood
from ..registry import register_model
from ._common import check_choice, check_float, check_int, check_n, default_generator, keep_observed

__all__ = ["MIDA"]

#: Numeric heads MIDA accepts: the paper's squared error, or a learned per-cell scale.
MIDA_HEADS = ("gaussian_fixed", "gaussian")


@register_model
class MIDA(ImputationModel):
    """Overcomplete denoising autoencoder for imputation.

    The encoder has ``n_layers`` layers, each ``theta`` units wider than the one
    before (``d + theta``, ``d + 2 theta``, ...; ``d`` encoded columns); the decoder
    mirrors it back down to ``d + theta`` and an output layer emits the likelihood's
    parameters. In training the input row is corrupted by dropout with rate
    ``dropout`` (cells zeroed, the rest scaled by ``1 / (1 - dropout)``; masks drawn
    from the trainer's generator); the loss is the negative log-likelihood of the
    *observed* cells under the layout's
    :class:`~ciss_autoimpute.models.likelihoods.MixedLikelihood` (``"gaussian_fixed"``:
    half the squared error, as in the paper; binary and categorical cells:
    cross-entropy), averaged over rows.

    Parameters
    ----------
    layout
        Encoded schema.
    n_clusters
        Number of missingness clusters (every layer is shared; ids only need to be valid).
    seed
        Seed of the generator all weights are drawn from.
    **params
        See :meth:`default_params`: ``theta`` (units added per layer, paper: 7),
        ``n_layers`` (encoder layers, paper: 3), ``dropout`` (input corruption rate,
        paper: 0.5), ``activation`` (paper: tanh), ``likelihood`` (numeric head,
        ``"gaussian_fixed"`` or ``"gaussian"``).

    Notes
    -----
    * The corruption is active only in training mode (``model.train()``): in eval
      mode :meth:`loss` reads the clean row. :meth:`impute` never corrupts: it is
      the decoder's expected value for the clean row (numeric means, binary
      probabilities, categorical class probabilities).
    * :meth:`sample_imputations` draws by Monte-Carlo dropout (Gal & Ghahramani,
      2016): each draw corrupts the row with a fresh dropout mask, decodes it and
      draws binary cells as 0/1 and categorical groups as one-hot vectors from the
      decoder's probabilities. Numeric cells take the decoder mean with the
      ``"gaussian_fixed"`` head (its unit variance is a loss weight, not a noise
      level) and a draw with the learned scale with ``"gaussian"``. The spread comes
      from the corruption only, so it is a heuristic, not a posterior; the
      conditional samplers of :mod:`ciss_autoimpute.sampling` need a
      latent-variable family and reject MIDA.
    * MIDA does not read the mask: the missing cells hold the filler (the column's
      replacement value at first, then the model's own imputations during the
      impute-refit loop), as in the paper's mean-initialised inputs.

    References
    ----------
    Gondara & Wang (2018), MIDA: Multiple imputation using denoising autoencoders,
    PAKDD.

    Examples
    --------
    >>> from ciss_autoimpute.data.layout import FeatureLayout
    >>> model = MIDA(FeatureLayout.all_numeric(3), theta=2, n_layers=2)
    >>> model.widths
    [5, 7]
    >>> x = torch.zeros(4, 3); mask = torch.ones(4, 3, dtype=torch.bool)
    >>> model.impute(x, mask, torch.zeros(4, dtype=torch.long)).shape
    torch.Size([4, 3])
    """

    name = "mida"
    accepts_cluster_index = True  # clusters only need to be valid ids here

    def __init__(self, layout: FeatureLayout, n_clusters: int = 1, *, seed: int = 0, **params: Any) -> None:
        super().__init__()
        self._setup(layout, n_clusters, seed, params)
        p = self.params
        d = layout.n_features
        self.likelihood = MixedLikelihood(layout, p["likelihood"])
        #: Encoder widths; the decoder uses them reversed, minus the widest.
        self.widths = [d + p["theta"] * (i + 1) for i in range(p["n_layers"])]
        self.encoder = MLP(d, self.widths, activation=p["activation"])
        dec_widths = self.widths[-2::-1]
        self.decoder = MLP(self.widths[-1], dec_widths, activation=p["activation"])
        self.output = ClusterLinear(self.decoder.out_features, self.likelihood.n_params, float_output=True)
        self.reset_parameters(self.seed)

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {
            "theta": 7,
            "n_layers": 3,
            "dropout": 0.5,
            "activation": "tanh",
            "likelihood": "gaussian_fixed",
        }

    @classmethod
    def search_space(cls) -> dict[str, Param]:
        return {
            "theta": Int(3, 15),
            "n_layers": Int(1, 4),
            "dropout": Float(0.1, 0.6),
            "activation": Categorical(("tanh", "relu", "elu")),
            "likelihood": Categorical(MIDA_HEADS),
        }

    @classmethod
    def _check_params(cls, p: dict[str, Any]) -> dict[str, Any]:
        name = cls.name
        out = dict(p)
        out["theta"] = check_int(name, "theta", p["theta"])
        out["n_layers"] = check_int(name, "n_layers", p["n_layers"])
        out["dropout"] = check_float(name, "dropout", p["dropout"])
        if not out["dropout"] < 1.0:
            raise ValueError(
                f"{name}: parameter 'dropout' must be in [0, 1), got {p['dropout']!r}; "
                "it is the share of input cells zeroed in training (the paper uses 0.5)."
            )
        out["activation"] = check_choice(name, "activation", p["activation"], ACTIVATIONS)
        out["likelihood"] = check_choice(name, "likelihood", p["likelihood"], MIDA_HEADS)
        return out

    def reset_parameters(self, seed: int) -> None:
        """Re-draw every weight from ``torch.Generator().manual_seed(seed)``, encoder first."""
        g = torch.Generator().manual_seed(int(seed))
        for layer in (self.encoder, self.decoder, self.output):
            layer.reset_parameters(g)

    # ------------------------------------------------------------------ network
    def corrupt(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Inverted dropout of ``x`` ``[..., n, d]`` with masks from ``generator``."""
        rate = self.params["dropout"]
        if rate == 0.0:
            return x
        keep = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) >= rate
        return torch.where(keep, x / (1.0 - rate), torch.zeros((), dtype=x.dtype, device=x.device))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Raw likelihood parameters ``[..., n, n_params]`` of the rows ``x`` (no corruption)."""
        return self.output(self.decoder(self.encoder(x)))

    # ------------------------------------------------------------------ loss
    def loss(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        clusters: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> LossOutput:
        """Negative log-likelihood of the observed cells, from the corrupted row in training mode."""
        self.check_batch(x, mask, clusters)
        x_in = self.corrupt(x, default_generator(x.device, generator)) if self.training else x
        log_px = self.likelihood.log_prob(self.reconstruct(x_in), x, mask)
        nll = -log_px.mean()
        return LossOutput(loss=nll, parts={"nll": nll.detach()})

    # ------------------------------------------------------------------ imputation
    @torch.no_grad()
    def impute(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        clusters: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        self.check_batch(x, mask, clusters)
        return self.likelihood.mean(self.reconstruct(x))

    @torch.no_grad()
    def sample_imputations(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        clusters: torch.Tensor,
        n: int,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        self.check_batch(x, mask, clusters)
        check_n(n)
        g = default_generator(x.device, generator)
        raw = self.reconstruct(self.corrupt(x.expand(n, *x.shape), g))
        draws = self.likelihood.sample(raw, g, numeric_noise=self.likelihood.learns_scale)
        return keep_observed(x, mask, draws)
