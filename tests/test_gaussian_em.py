"""The ``em`` family: a multivariate normal fitted by EM, imputing conditional means."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ciss_autoimpute import Imputer
from ciss_autoimpute.data.layout import FeatureLayout
from ciss_autoimpute.exceptions import NotFittedError
from ciss_autoimpute.models.families.gaussian_em import GaussianEMFamily
from ciss_autoimpute.models.registry import build_model

SIGMA = torch.tensor([[1.0, 0.8, 0.3, 0.0], [0.8, 1.0, 0.5, 0.2], [0.3, 0.5, 1.0, 0.6], [0.0, 0.2, 0.6, 1.0]],
                     dtype=torch.float64)
MU = torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64)


def _gaussian(n=3000, miss=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    full = MU + torch.randn(n, 4, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(SIGMA).T
    mask = torch.rand(n, 4, generator=g) > miss
    mask[torch.arange(n), torch.randint(0, 4, (n,), generator=g)] = True  # no empty rows
    return full, mask


def _oracle(full, mask, mu=MU, sigma=SIGMA):
    """Exact conditional means under the true normal, row by row."""
    out = full.clone()
    for i in range(full.shape[0]):
        m, o = ~mask[i], mask[i]
        if m.any():
            s_mo, s_oo = sigma[m][:, o], sigma[o][:, o]
            out[i, m] = mu[m] + s_mo @ torch.linalg.solve(s_oo, full[i, o] - mu[o])
    return out


def _fit(full, mask, **params):
    model = GaussianEMFamily(FeatureLayout.all_numeric(full.shape[1]), seed=0, **params)
    clusters = torch.zeros(full.shape[0], dtype=torch.long)
    return model.fit(full.float(), mask, clusters), clusters


def test_em_recovers_the_normal_and_imputes_like_the_exact_conditional_mean():
    full, mask = _gaussian()
    model, clusters = _fit(full, mask)
    assert 1 < int(model.em_rounds) < 100  # converged before the cap
    torch.testing.assert_close(model.em_mean, MU, atol=0.06, rtol=0)
    torch.testing.assert_close(model.em_cov, SIGMA, atol=0.08, rtol=0)
    imputed = model.impute(full.float(), mask, clusters).double()
    hidden = ~mask
    rmse = lambda est: float(((est - full)[hidden] ** 2).mean().sqrt())  # noqa: E731
    oracle = rmse(_oracle(full, mask))
    assert rmse(imputed) <= 1.01 * oracle
    # Mean imputation is far worse on these correlated columns.
    assert rmse(torch.where(mask, full, MU)) > 1.3 * oracle
    assert torch.equal(imputed[mask], full.float()[mask].double())


def test_complete_data_gives_the_sample_moments_in_one_round():
    full, _ = _gaussian(n=500)
    mask = torch.ones_like(full, dtype=torch.bool)
    model, _ = _fit(full, mask, ridge=0.01)
    x = full.float().double()
    centred = x - x.mean(0)
    torch.testing.assert_close(model.em_mean, x.mean(0))
    torch.testing.assert_close(model.em_cov, centred.T @ centred / 500 + 0.01 * torch.eye(4, dtype=torch.float64))
    # Round 1 moves the diagonal start to the sample covariance; round 2 finds nothing to change.
    assert int(model.em_rounds) == 2


def test_draws_follow_the_conditional_normal():
    # Two columns with correlation 0.8: x1 | x0 ~ N(0.8 x0, 1 - 0.64).
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4000, 2, generator=g, dtype=torch.float64)
    full = torch.stack([z[:, 0], 0.8 * z[:, 0] + 0.6 * z[:, 1]], 1)
    mask = torch.ones_like(full, dtype=torch.bool)
    mask[:2000, 1] = False
    model, clusters = _fit(full, mask, ridge=1e-6)
    draws = model.sample_imputations(full.float(), mask, clusters, 400, generator=torch.Generator().manual_seed(1))
    assert draws.shape == (400, 4000, 2)
    assert torch.equal(draws[:, mask].double(), full.float()[mask].double().expand(400, -1))
    cell = draws[:, :2000, 1].double()
    centred = cell - model.impute(full.float(), mask, clusters)[:2000, 1].double()
    assert abs(float(centred.mean())) < 0.01
    assert float(centred.var()) == pytest.approx(0.36, rel=0.05)
    # Same generator seed, same draws.
    again = model.sample_imputations(full.float(), mask, clusters, 400, generator=torch.Generator().manual_seed(1))
    assert torch.equal(draws, again)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_mixed_columns_get_probabilities_and_the_imputer_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    latent = rng.normal(size=n)
    frame = pd.DataFrame({
        "a": latent + 0.3 * rng.normal(size=n),
        "b": 2 * latent + 0.5 * rng.normal(size=n),
        "flag": (latent + 0.5 * rng.normal(size=n) > 0),
        "colour": pd.Categorical(np.where(latent > 0.5, "red", np.where(latent < -0.5, "blue", "green"))),
    })
    holed = frame.mask(rng.random(frame.shape) < 0.25)
    before = holed.copy()
    imp = Imputer(model="em", seed=0).fit(holed)
    out = imp.transform(holed)
    pd.testing.assert_frame_equal(holed, before)  # the input is untouched
    assert not out.isna().any().any()
    assert list(out.dtypes) == list(holed.dtypes)
    assert out["colour"].isin(["red", "green", "blue"]).all() and out["flag"].isin([True, False]).all()
    # The binary column is imputed from its (clipped) conditional probability: rows whose
    # latent value is high get True far more often than rows whose latent value is low.
    hidden_flag = holed["flag"].isna()
    high, low = out.loc[hidden_flag & (latent > 1), "flag"], out.loc[hidden_flag & (latent < -1), "flag"]
    assert high.mean() > 0.8 and low.mean() < 0.2
    observed = holed.notna()
    for column in frame.columns:
        assert (out.loc[observed[column], column] == holed.loc[observed[column], column]).all()
    path = tmp_path / "em.cai"
    imp.save(path)
    loaded = Imputer.load(path)
    pd.testing.assert_frame_equal(loaded.transform(holed), out)
    state = loaded.model_.state_dict()
    assert set(state) == {"fit_seed", "em_mean", "em_cov", "em_rounds"}  # no training rows saved


@pytest.mark.parametrize(
    "params, match",
    [
        ({"ridge": 0.0}, "'ridge' must be a finite number > 0"),
        ({"ridge": float("nan")}, "'ridge' must be a finite number > 0"),
        ({"tol": -1.0}, "'tol' must be a finite number > 0"),
        ({"max_iter": 0}, "max_iter"),
        ({"rounds": 3}, "Unknown parameter"),
    ],
)
def test_bad_parameters_are_refused(params, match):
    with pytest.raises(ValueError, match=match):
        build_model("em", FeatureLayout.all_numeric(3), 1, params)


def test_imputing_before_fitting_says_how_to_fit():
    model = GaussianEMFamily(FeatureLayout.all_numeric(2))
    x = torch.zeros(3, 2)
    with pytest.raises(NotFittedError, match="train it with Trainer.fit"):
        model.impute(x, torch.ones(3, 2, dtype=torch.bool), torch.zeros(3, dtype=torch.long))


def test_row_chunks_do_not_change_the_result(monkeypatch):
    # Wide data is solved in chunks of rows (bounded work arrays): the chunking must not show.
    from ciss_autoimpute.models.families import gaussian_em

    full, mask = _gaussian(n=300)
    model, clusters = _fit(full, mask)
    x = full.float()
    whole = model.impute(x, mask, clusters), model.sample_imputations(x, mask, clusters, 3,
                                                                       generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(gaussian_em, "_CHUNK_ELEMENTS", 16 * 7)  # 7 rows per chunk
    assert gaussian_em._row_chunk(4) == 7
    chunked = model.impute(x, mask, clusters), model.sample_imputations(x, mask, clusters, 3,
                                                                         generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(chunked[0], whole[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked[1], whole[1], rtol=0, atol=1e-6)
