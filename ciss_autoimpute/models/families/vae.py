"""Plain VAE for imputation: Gaussian encoder, masked mixed-type likelihood, beta-ELBO."""

from __future__ import annotations

from typing import Any

import torch

from ...data.layout import FeatureLayout
from ...tuning.params import Categorical, Float, Param
from ..base import LossOutput
from ..bounds import elbo_analytic, gaussian_kl
from ..layers import ClusterIndex
from ..registry import register_model
from ._common import (
    LatentModel,
    check_float,
    check_n,
    common_space,
    default_generator,
    keep_observed,
    unsort_rows,
)

__all__ = ["VAE"]


@register_model
class VAE(LatentModel):
    """Variational autoencoder trained on the observed cells only.

    The encoder reads the (refilled) encoded row ``x``; the decoder's likelihood
    (:class:`~ciss_autoimpute.models.likelihoods.MixedLikelihood`) is evaluated only
    where ``mask`` is true. The loss is the mean over rows of
    ``-(log p(x_obs | z) - beta * KL(q(z|x) || N(0, I)))`` with one reparameterised
    draw of ``z`` and the KL in closed form.

    Parameters
    ----------
    layout
        Encoded schema.
    n_clusters
        Number of missingness clusters (a VAE shares every layer, so clusters only
        need to be valid ids).
    seed
        Seed of the generator all weights are drawn from.
    **params
        See :meth:`default_params`: ``hidden_dims`` (encoder widths; the decoder uses
        them reversed), ``latent_dim``, ``likelihood`` (``"gaussian"``,
        ``"gaussian_fixed"``, ``"student_t"``), ``activation``, ``beta`` (KL weight).

    Notes
    -----
    * :meth:`impute` returns the decoder mean at the posterior mean ``z = mu(x)``:
      numeric means, binary probabilities, categorical class probabilities.
    * :meth:`sample_imputations` draws ``z ~ q(z|x)`` and then the missing cells from
      ``p(x|z)`` (binary 0/1, categorical one-hot). With the ``"gaussian_fixed"``
      head the unit variance is a loss weight, not a fitted noise level, so numeric
      cells get the decoder mean at the drawn ``z`` instead of an added unit noise.
    * ``beta`` is also exposed as the attribute ``model.beta`` (the trainer may
      change it for the refit loops).
    * Search-space meta keys: ``num_hidden_layers`` + ``hidden_dim`` (-> ``hidden_dims``).

    Examples
    --------
    >>> from ciss_autoimpute.data.layout import FeatureLayout
    >>> model = VAE(FeatureLayout.all_numeric(3), hidden_dims=[8], latent_dim=2)
    >>> x = torch.zeros(4, 3); mask = torch.ones(4, 3, dtype=torch.bool)
    >>> model.impute(x, mask, torch.zeros(4, dtype=torch.long)).shape
    torch.Size([4, 3])
    """

    name = "vae"
    _groups_rows = True

    def __init__(self, layout: FeatureLayout, n_clusters: int = 1, *, seed: int = 0, **params: Any) -> None:
        super().__init__(layout, n_clusters, seed=seed, **params)
        self.beta = self.params["beta"]

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {
            "hidden_dims": [128, 64],
            "latent_dim": 16,
            "likelihood": "gaussian",
            "activation": "relu",
            "beta": 1.0,
        }

    @classmethod
    def search_space(cls) -> dict[str, Param]:
        return {
            **common_space(),
            "likelihood": Categorical(("gaussian", "gaussian_fixed", "student_t")),
            "beta": Float(0.01, 1.0, log=True),
        }

    @classmethod
    def _check_params(cls, p: dict[str, Any]) -> dict[str, Any]:
        out = super()._check_params(p)
        out["beta"] = check_float(cls.name, "beta", p["beta"])
        return out

    # ------------------------------------------------------------------ bound
    def loss(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        clusters: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> LossOutput:
        self.check_batch(x, mask, clusters)
        g = default_generator(x.device, generator)
        if isinstance(clusters, ClusterIndex) and clusters.is_padded:
            # The Trainer's epoch layout: x and mask come already in these padded blocks.
            blocks = index = clusters
            order = None
        else:
            # Rows sorted by cluster once for all cluster-specific layers (no-op when all
            # are shared); the loss is a mean over rows, so their order does not matter.
            x, mask, index, order = self.group_rows(x, mask, clusters)
            # Clusters of about equal size in the batch: equal padded blocks, one batched
            # product per cluster-specific layer; the padding rows are left out of the means.
            blocks = self.padded_blocks(index, x.device)
            if blocks is not None:
                x, mask, index = blocks.pad(x), blocks.pad(mask), blocks
        mu, logvar = self.encode(x, index)
        z = self.reparameterise(mu, logvar, g, order=order, blocks=blocks)
        log_px = self.likelihood.log_prob(self.decode(z, index), x, mask)
        kl = gaussian_kl(mu, logvar)
        bound = elbo_analytic(log_px, kl, float(self.beta))
        mean = torch.mean if blocks is None else blocks.row_mean
        # The parts are reports: averaged outside the graph.
        return LossOutput(
            loss=-mean(bound),
            parts={"nll": -mean(log_px.detach()), "kl": mean(kl.detach())},
        )

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
        xs, _, index, order = self.group_rows(x, mask, clusters)
        mu, _ = self.encode(xs, index)
        return unsort_rows(self.likelihood.mean(self.decode(mu, index)), order)

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
        xs, _, index, order = self.group_rows(x, mask, clusters)
        mu, logvar = self.encode(xs, index)
        z = self.reparameterise(mu, logvar, g, n_samples=n, order=order)
        # Back to the caller's row order before drawing, so each row gets its own noise.
        raw = unsort_rows(self.decode(z, index), order)
        draws = self.likelihood.sample(raw, g, numeric_noise=self.likelihood.learns_scale)
        return keep_observed(x, mask, draws)
