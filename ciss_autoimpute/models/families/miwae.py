"""MIWAE (Mattei & Frellsen, 2019): an importance-weighted autoencoder fitted on observed cells."""

from __future__ import annotations

from typing import Any

import torch

from ...tuning.params import Categorical, Param
from ..base import LossOutput
from ..bounds import (
    gaussian_log_prob,
    iwae_bound,
    self_normalised_weights,
    standard_normal_log_prob,
)
from ..registry import register_model
from ._common import LatentModel, check_int, check_n, common_space, default_generator, keep_observed

__all__ = ["MIWAE"]


@register_model
class MIWAE(LatentModel):
    """Missing-data importance-weighted autoencoder.

    The loss is the mean over rows of the negative importance-weighted bound
    ``log (1/K) sum_k p(x_obs|z_k) p(z_k) / q(z_k|x)`` with ``K = n_samples`` draws
    ``z_k ~ q(z|x)``; only cells where ``mask`` is true enter ``p(x_obs|z)``.

    Parameters
    ----------
    layout, n_clusters, seed
        As for :class:`~ciss_autoimpute.models.families.vae.VAE` (every layer is
        shared; clusters only need to be valid ids).
    **params
        ``hidden_dims``, ``latent_dim``, ``likelihood``, ``activation`` as for the VAE;
        ``n_samples`` (importance samples ``K`` in the bound) and
        ``n_impute_samples`` (importance samples used by :meth:`impute` and
        :meth:`sample_imputations`).

    Notes
    -----
    * The encoder reads the row as given: the replacement value at first, then the
      model's own imputations during the impute-refit loop. Any proposal that is a
      function of the observed data keeps the bound valid.
    * :meth:`impute` is the self-normalised importance estimate of
      ``E[x_mis | x_obs]``: ``sum_k w_k E[x | z_k]`` with ``w_k`` proportional to
      ``p(x_obs|z_k) p(z_k) / q(z_k|x)``, ``n_impute_samples`` draws.
    * :meth:`sample_imputations` is sampling importance resampling: for each row it
      draws ``n_impute_samples`` pairs ``(z_k, x_k ~ p(x|z_k))`` and picks ``n`` of
      them with replacement, with probabilities ``w_k`` (``torch.multinomial`` with
      the generator). With the ``"gaussian_fixed"`` head numeric cells take the
      decoder mean at the picked ``z_k`` (its unit variance is a loss weight).
    * Rows are processed in chunks so ``rows x samples`` stays bounded.
    * Search-space meta keys: ``num_hidden_layers`` + ``hidden_dim`` (-> ``hidden_dims``).
    """

    name = "miwae"
    importance_weighted = True

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {
            "hidden_dims": [128, 64],
            "latent_dim": 16,
            "likelihood": "gaussian",
            "activation": "relu",
            "n_samples": 20,
            "n_impute_samples": 100,
        }

    @classmethod
    def search_space(cls) -> dict[str, Param]:
        return {
            **common_space(),
            "likelihood": Categorical(("gaussian", "gaussian_fixed", "student_t")),
            "n_samples": Categorical((10, 20, 50)),
        }

    @classmethod
    def _check_params(cls, p: dict[str, Any]) -> dict[str, Any]:
        out = super()._check_params(p)
        out["n_samples"] = check_int(cls.name, "n_samples", p["n_samples"])
        out["n_impute_samples"] = check_int(cls.name, "n_impute_samples", p["n_impute_samples"])
        return out

    # ------------------------------------------------------------------ importance samples
    def importance_samples(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        clusters: torch.Tensor,
        n_samples: int,
        generator: torch.Generator,
        observed: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``n_samples`` importance samples per row.

        Returns a dict with ``raw [K, n, n_params]`` (decoder output), ``params`` (its
        :meth:`~ciss_autoimpute.models.likelihoods.MixedLikelihood.split`), ``log_px``,
        ``log_pz``, ``log_qz`` and ``log_w`` (each ``[K, n]``), plus whatever the
        family adds in :meth:`_log_weights`. ``observed`` (cells observed in the data,
        held-out ones included; ``None`` means ``mask``) is kept as ``s["observed"]``
        for families that model the missingness; MIWAE ignores it.
        """
        index = self.cluster_index(clusters)
        mu, logvar = self.encode(x, index)
        z = self.reparameterise(mu, logvar, generator, n_samples=n_samples)
        raw = self.decode(z, None if index is None else index.expand(n_samples))
        # Split once: not-MIWAE's draws read the same blocks as the likelihood.
        params = self.likelihood.split(raw)
        s = {
            "raw": raw,
            "params": params,
            "log_px": self.likelihood.log_prob(raw, x, mask, params=params),
            "log_pz": standard_normal_log_prob(z),
            "log_qz": gaussian_log_prob(z, mu, logvar),
            "observed": mask if observed is None else observed,
        }
        s["log_w"] = self._log_weights(s, x, mask, generator)
        return s

    def _log_weights(
        self, s: dict[str, torch.Tensor], x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        return s["log_px"] + s["log_pz"] - s["log_qz"]

    def _point_values(self, s: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-sample values averaged by :meth:`impute`: the decoder means ``[K, n, d]``."""
        return self.likelihood.mean(s["raw"])

    def _draws(self, s: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        """Per-sample draws resampled by :meth:`sample_imputations` ``[K, n, d]``."""
        return self.likelihood.sample(
            s["raw"], generator, numeric_noise=self.likelihood.learns_scale, params=s["params"]
        )

    @staticmethod
    def _check_observed(observed: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor | None:
        """``observed`` checked against ``mask`` (same shape, bool, a superset of it)."""
        if observed is None:
            return None
        if not isinstance(observed, torch.Tensor) or observed.dtype != torch.bool or observed.shape != mask.shape:
            raise ValueError(
                f"observed must be a bool tensor shaped like mask {tuple(mask.shape)}, got "
                f"{type(observed).__name__} {tuple(getattr(observed, 'shape', ()))}; pass None to use mask."
            )
        return observed

    # ------------------------------------------------------------------ bound
    def loss(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        clusters: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        observed: torch.Tensor | None = None,
    ) -> LossOutput:
        self.check_batch(x, mask, clusters)
        g = default_generator(x.device, generator)
        s = self.importance_samples(x, mask, clusters, self.params["n_samples"], g, self._check_observed(observed, mask))
        bound = iwae_bound(s["log_w"], dim=0)
        return LossOutput(loss=-bound.mean(), parts=self._parts(s))

    def _parts(self, s: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            "nll": -s["log_px"].mean().detach(),
            "kl": (s["log_qz"] - s["log_pz"]).mean().detach(),
        }

    # ------------------------------------------------------------------ imputation
    @torch.no_grad()
    def impute(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        clusters: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        observed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self.check_batch(x, mask, clusters)
        clusters = self.cluster_ids(clusters)  # sliced into chunks below
        g = default_generator(x.device, generator)
        k = self.params["n_impute_samples"]
        obs = self._check_observed(observed, mask)

        def chunk(sl: slice) -> torch.Tensor:
            s = self.importance_samples(x[sl], mask[sl], clusters[sl], k, g, None if obs is None else obs[sl])
            w = self_normalised_weights(s["log_w"], dim=0)
            return self.likelihood.clip_probabilities((w.unsqueeze(-1) * self._point_values(s)).sum(0))

        return self._map_chunks(chunk, x.shape[0], k, dim=0)

    @torch.no_grad()
    def sample_imputations(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        clusters: torch.Tensor,
        n: int,
        *,
        generator: torch.Generator | None = None,
        observed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self.check_batch(x, mask, clusters)
        clusters = self.cluster_ids(clusters)  # sliced into chunks below
        check_n(n)
        g = default_generator(x.device, generator)
        k = self.params["n_impute_samples"]
        d = x.shape[1]
        obs = self._check_observed(observed, mask)

        def chunk(sl: slice) -> torch.Tensor:
            s = self.importance_samples(x[sl], mask[sl], clusters[sl], k, g, None if obs is None else obs[sl])
            draws = self._draws(s, g)  # [K, rows, d]
            w = self_normalised_weights(s["log_w"], dim=0).T  # [rows, K]
            if w.shape[0] == 0:
                return draws.new_zeros((n, 0, d))
            picks = torch.multinomial(w, n, replacement=True, generator=g)  # [rows, n]
            chosen = draws.permute(1, 0, 2).gather(1, picks.unsqueeze(-1).expand(-1, -1, d))
            return chosen.permute(1, 0, 2)

        draws = self._map_chunks(chunk, x.shape[0], k, dim=1)
        return keep_observed(x, mask, draws)

