"""Variational bounds as small pure functions of log-probabilities.

Every function works elementwise over rows; importance-sample axes are explicit
(``dim``, default 0, i.e. tensors shaped ``[K, n]``). The model families combine
these with their own log-densities; nothing here knows about networks.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "elbo",
    "elbo_analytic",
    "gaussian_kl",
    "gaussian_log_prob",
    "standard_normal_log_prob",
    "iwae_bound",
    "notmiwae_log_weights",
    "self_normalised_weights",
]

_LOG_2PI = math.log(2.0 * math.pi)


def elbo(
    log_px: torch.Tensor,
    log_pz: torch.Tensor,
    log_qz: torch.Tensor,
    beta: float = 1.0,
) -> torch.Tensor:
    """Single-sample Monte Carlo ELBO with a weighted KL term.

    ``log p(x|z) + beta * (log p(z) - log q(z|x))`` elementwise; average over the
    sample axis for a multi-sample estimate. ``beta = 1`` is the usual ELBO.

    Examples
    --------
    >>> float(elbo(torch.tensor(-2.0), torch.tensor(-1.0), torch.tensor(-0.5), beta=0.5))
    -2.25
    """
    return log_px + beta * (log_pz - log_qz)


def elbo_analytic(log_px: torch.Tensor, kl: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """ELBO with the KL divergence computed in closed form: ``log_px - beta * kl``."""
    return log_px - beta * kl


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, I))`` summed over the last axis.

    Equals ``0.5 * sum(mu^2 + exp(logvar) - 1 - logvar)``.
    """
    return 0.5 * (mu * mu + torch.exp(logvar) - 1.0 - logvar).sum(-1)


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``log N(z; mu, diag(exp(logvar)))`` summed over the last axis."""
    return -0.5 * (((z - mu) ** 2) * torch.exp(-logvar) + logvar + _LOG_2PI).sum(-1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` summed over the last axis."""
    return -0.5 * (z * z + _LOG_2PI).sum(-1)


def iwae_bound(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Importance-weighted bound ``log (1/K) sum_k exp(log_w_k)``.

    Parameters
    ----------
    log_w
        Log importance weights with the ``K`` samples along ``dim``.
    dim
        The sample axis.

    Examples
    --------
    >>> float(iwae_bound(torch.log(torch.tensor([1.0, 3.0]))))  # log((1 + 3) / 2)
    0.6931471824645996
    """
    k = log_w.shape[dim]
    return torch.logsumexp(log_w, dim=dim) - math.log(k)


def notmiwae_log_weights(
    log_px_obs: torch.Tensor,
    log_ps_given_x: torch.Tensor,
    log_pz: torch.Tensor,
    log_qz: torch.Tensor,
) -> torch.Tensor:
    """not-MIWAE log importance weights.

    ``log p(x_o|z) + log p(s|x_o, x_m) + log p(z) - log q(z|x_o)``, where ``x_m`` is
    the decoder's draw for the missing cells that went into ``log_ps_given_x``.
    """
    return log_px_obs + log_ps_given_x + log_pz - log_qz


def self_normalised_weights(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Normalised importance weights ``exp(log_w) / sum exp(log_w)`` along ``dim``."""
    return torch.softmax(log_w, dim=dim)
