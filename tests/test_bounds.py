"""The bounds against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ciss_autoimpute.models.bounds import (
    elbo,
    elbo_analytic,
    gaussian_kl,
    gaussian_log_prob,
    iwae_bound,
    notmiwae_log_weights,
    self_normalised_weights,
    standard_normal_log_prob,
)

T = torch.tensor


def close(a, b):
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), rtol=1e-6, atol=1e-6)


def test_elbo_weights_the_kl_term():
    # -2 + 0.5 * (-1 - (-0.5)) = -2.25 ; with beta = 1: -2 - 0.5 = -2.5
    close(elbo(T(-2.0), T(-1.0), T(-0.5), beta=0.5), -2.25)
    close(elbo(T([-2.0, -1.0]), T([-1.0, -3.0]), T([-0.5, -1.0])), [-2.5, -3.0])
    close(elbo_analytic(T([-3.0]), T([2.0]), beta=0.1), [-3.2])


def test_gaussian_kl_closed_form():
    # KL = 0.5 * sum(mu^2 + var - 1 - log var): dims (1, var 1) and (0, var 2)
    expected = 0.5 * ((1 + 1 - 1 - 0) + (0 + 2 - 1 - math.log(2)))
    close(gaussian_kl(T([[1.0, 0.0]]), T([[0.0, math.log(2.0)]])), [expected])
    close(gaussian_kl(T([[0.0, 0.0]]), T([[0.0, 0.0]])), [0.0])


def test_gaussian_log_densities():
    log2pi = math.log(2 * math.pi)
    # N(2; 0, 4) = -0.5 * (4/4 + log 4 + log 2 pi); N(1; 0, 1) = -0.5 * (1 + log 2 pi)
    expected = -0.5 * (1 + math.log(4) + log2pi) - 0.5 * (1 + log2pi)
    close(gaussian_log_prob(T([2.0, 1.0]), T([0.0, 0.0]), T([math.log(4.0), 0.0])), expected)
    close(standard_normal_log_prob(T([[1.0, -2.0]])), [-0.5 * (1 + 4) - log2pi])


def test_iwae_bound_is_log_mean_weight():
    # Row 0: weights 1 and 3 -> log(2); row 1: weights e^-1, e^-2 -> log((e^-1 + e^-2) / 2)
    log_w = T([[0.0, -1.0], [math.log(3.0), -2.0]])  # [K=2, n=2]
    expected = [math.log(2.0), math.log((math.exp(-1) + math.exp(-2)) / 2)]
    close(iwae_bound(log_w), expected)
    close(iwae_bound(log_w.T, dim=1), expected)
    # One sample: the bound is the log weight itself.
    close(iwae_bound(T([[-4.0, 2.0]])), [-4.0, 2.0])


def test_iwae_bound_is_stable_for_large_log_weights():
    log_w = T([[-1000.0], [-1000.0 + math.log(3.0)]], dtype=torch.float64)
    close(iwae_bound(log_w), [-1000.0 + math.log(2.0)])


def test_iwae_bound_tightens_the_elbo():
    log_w = T([[-1.0, -5.0], [-3.0, -0.5], [-2.0, -2.0]])
    assert (iwae_bound(log_w) >= log_w.mean(0)).all()


def test_notmiwae_log_weights_add_up():
    out = notmiwae_log_weights(T([-1.0, -2.0]), T([-0.5, -0.25]), T([-3.0, -1.0]), T([-2.0, -0.5]))
    close(out, [-1.0 - 0.5 - 3.0 + 2.0, -2.0 - 0.25 - 1.0 + 0.5])


def test_self_normalised_weights():
    w = self_normalised_weights(T([[math.log(1.0), 0.0], [math.log(3.0), 0.0]]))
    close(w, [[0.25, 0.5], [0.75, 0.5]])
    big = self_normalised_weights(T([1000.0, 1000.0 + math.log(3.0)], dtype=torch.float64))
    close(big, [0.25, 0.75])


@pytest.mark.parametrize("k", [1, 5])
def test_bounds_keep_gradients(k):
    log_w = torch.zeros(k, 3, requires_grad=True)
    iwae_bound(log_w).sum().backward()
    close(log_w.grad, torch.full((k, 3), 1.0 / k))
