"""Multiple imputation: conditional samplers, Imputer.sample / intervals, Rubin's rules.

The oracle is probabilistic PCA (``LinearGaussianVAE``): its conditional
``p(x_mis | x_obs)`` is Gaussian in closed form, and its encoder can be made wrong on
purpose (shifted and over-confident, as amortised encoders are), which separates the
exact samplers (LAIR, MWG, SIR) from pseudo-Gibbs.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from ciss_autoimpute import Imputer
from ciss_autoimpute.data.layout import FeatureLayout
from ciss_autoimpute.exceptions import NotFittedError, SamplingWarning
from ciss_autoimpute.models.registry import build_model
from ciss_autoimpute.pooling import pool, pool_function
from ciss_autoimpute.sampling import (
    LinearGaussianVAE,
    SamplerConfig,
    _Pool,
    default_method,
    sample_conditional,
    valid_methods,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny tensors: intra-op threads only add hand-off cost on a busy 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------- fixtures
def ppca(shift: float = 0.0, scale: float = 1.0, *, iw: bool = False) -> LinearGaussianVAE:
    """d = 5, two factors with scales 2 and 1, noise 0.4."""
    q, _ = torch.linalg.qr(torch.randn(5, 2, generator=gen(0)))
    w = q * torch.tensor([2.0, 1.0])
    cls = _IWLinear if iw else LinearGaussianVAE
    return cls(w, torch.tensor([0.5, -1.0, 0.0, 2.0, 1.0]), 0.4, encoder_shift=shift, encoder_scale=scale)


class _IWLinear(LinearGaussianVAE):
    """The PPCA oracle presented as an importance-weighted family (so "sir" applies)."""

    importance_weighted = True


def ppca_rows(model: LinearGaussianVAE, n: int = 60, seed: int = 1):
    g = gen(seed)
    z = torch.randn(n, 2, generator=g)
    x = z @ model.w.T + model.mu_x + 0.4 * torch.randn(n, 5, generator=g)
    mask = torch.rand(n, 5, generator=g) > 0.45
    mask[:, 0] = True  # every row keeps some evidence
    clusters = torch.zeros(n, dtype=torch.long)
    # Start from the model's own single imputation, as Imputer.sample does (five rounds
    # of impute-and-refill, like Imputer.transform).
    filled = torch.where(mask, x, torch.zeros(()))
    for _ in range(5):
        filled = torch.where(mask, x, model.impute(filled, mask, clusters))
    return filled, mask, clusters


MIXED = FeatureLayout(
    7, numeric=(0, 1, 2), binary=(3,), categorical=((4, 7),),
    names=("a", "b", "c", "flag", "kind"), column_of=(0, 1, 2, 3, 4, 4, 4),
)


def mixed_batch(n: int = 12):
    g = gen(3)
    x = torch.cat([
        torch.randn(n, 3, generator=g),
        (torch.rand(n, 1, generator=g) > 0.5).float(),
        torch.nn.functional.one_hot(torch.randint(0, 3, (n,), generator=g), 3).float(),
    ], dim=1)
    per_col = torch.rand(n, 5, generator=g) > 0.4
    per_col[0] = False  # a row with nothing observed
    mask = per_col[:, list(MIXED.column_of)]
    return x, mask


SMALL = {"hidden_dims": [8], "latent_dim": 2}


def small_model(family: str):
    params = dict(SMALL)
    if family in ("miwae", "notmiwae"):
        params.update(n_samples=3, n_impute_samples=5)
    return build_model(family, MIXED, 2, params, seed=0).eval()


FAST_OPTIONS = {
    "pseudo_gibbs": {"burn_in": 3},
    "mwg": {"burn_in": 3},
    "lair": {"burn_in": 2, "iterations": 5, "chains": 3, "importance_samples": 2},
    "sir": {"importance_samples": 30},
}


# ---------------------------------------------------------------------------- samplers
@pytest.mark.filterwarnings("ignore:.*gaussian_fixed")  # cissvae's default head; tested below
@pytest.mark.parametrize("family", ["vae", "cissvae", "miwae", "notmiwae"])
def test_draws_keep_observed_cells_and_vary_only_missing_ones(family):
    model = small_model(family)
    x, mask = mixed_batch()
    clusters = (torch.arange(12) % 2).long()
    for method in valid_methods(model):
        out = sample_conditional(model, x, mask, clusters, 6, method=method, generator=gen(0),
                                 **FAST_OPTIONS[method])
        draws = out.draws
        assert draws.shape == (6, 12, 7), method
        assert torch.equal(draws[:, mask], x[mask].expand(6, -1)), method  # bit-identical
        spread = draws.std(0)
        assert (spread[mask] == 0).all()
        assert (spread[~mask] > 0).any(), f"{family}/{method}: missing cells never vary"
        assert torch.isin(draws[..., 3], torch.tensor([0.0, 1.0])).all()  # binary as 0/1
        assert torch.equal(draws[..., 4:7].sum(-1), torch.ones(6, 12))  # one-hot groups
        assert torch.isfinite(draws).all()


@pytest.mark.filterwarnings("ignore:.*gaussian_fixed")
@pytest.mark.parametrize("method", ["lair", "mwg", "pseudo_gibbs"])
def test_same_seed_same_draws(method):
    model = small_model("cissvae")
    x, mask = mixed_batch()
    clusters = (torch.arange(12) % 2).long()

    def run(seed):
        return sample_conditional(model, x, mask, clusters, 4, method=method, generator=gen(seed),
                                  **FAST_OPTIONS[method]).draws

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


# Tolerances: rows x cells pooled, so the averages below are tight. With n_draws = 300
# per row the Monte Carlo error of a standardised mean is ~0.06 per cell (less for the
# average); an exact sampler lands well inside, a sampler with the wrong stationary
# distribution (pseudo-Gibbs with this encoder: mean ~0.7 sd off, variance ~0.6x) far outside.
MEAN_TOL = 0.15  # |mean of (sample mean - exact mean) / exact sd| over missing cells
VAR_TOL = 0.15  # |mean of sample var / exact var - 1| over missing cells


def _moment_errors(model, draws, x, mask):
    mean, var = model.conditional(x, mask)
    miss = ~mask
    d = draws.double()
    z = (d.mean(0) - mean)[miss] / var[miss].sqrt()
    ratio = d.var(0)[miss] / var[miss]
    return float(z.abs().mean()), float((ratio.mean() - 1).abs())


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("lair", {"iterations": 60}),
        ("mwg", {"burn_in": 300}),
    ],
)
def test_exact_samplers_match_the_ppca_conditional(method, options):
    model = ppca(shift=0.7, scale=0.6)  # a wrong, over-confident encoder
    x, mask, clusters = ppca_rows(model)
    draws = sample_conditional(model, x, mask, clusters, 300, method=method, generator=gen(2), **options).draws
    mean_err, var_err = _moment_errors(model, draws, x, mask)
    assert mean_err < MEAN_TOL and var_err < VAR_TOL, (mean_err, var_err)


def test_sir_matches_the_ppca_conditional_with_a_broad_proposal():
    model = ppca(shift=0.3, scale=1.5, iw=True)
    x, mask, clusters = ppca_rows(model)
    out = sample_conditional(model, x, mask, clusters, 300, method="sir", generator=gen(2), importance_samples=2000)
    mean_err, var_err = _moment_errors(model, out.draws, x, mask)
    assert mean_err < MEAN_TOL and var_err < VAR_TOL, (mean_err, var_err)
    assert out.diagnostics["ess_mean"] > 50


def test_pseudo_gibbs_is_exact_only_with_an_exact_encoder():
    model = ppca()
    x, mask, clusters = ppca_rows(model)
    draws = sample_conditional(model, x, mask, clusters, 300, method="pseudo_gibbs", generator=gen(2),
                               burn_in=20).draws
    mean_err, var_err = _moment_errors(model, draws, x, mask)
    assert mean_err < MEAN_TOL and var_err < VAR_TOL, (mean_err, var_err)
    # The tolerance has teeth: the same check fails with the wrong encoder.
    wrong = ppca(shift=0.7, scale=0.6)
    draws = sample_conditional(wrong, x, mask, clusters, 300, method="pseudo_gibbs", generator=gen(2),
                               burn_in=20).draws
    mean_err, var_err = _moment_errors(wrong, draws, x, mask)
    assert mean_err > 3 * MEAN_TOL and var_err > VAR_TOL, (mean_err, var_err)


def test_fixed_noise_head_warns_and_uses_sqrt_beta():
    # CISS-VAE's default head has unit variance as a loss weight; the draws use sqrt(beta).
    model = build_model("cissvae", FeatureLayout.all_numeric(3), 1,
                        {**SMALL, "likelihood": "gaussian_fixed", "beta": 0.04}, seed=0).eval()
    x = torch.zeros(200, 3)
    mask = torch.ones(200, 3, dtype=torch.bool)
    mask[:, 2] = False
    with pytest.warns(SamplingWarning, match=r"'gaussian_fixed' numeric head.* sd = 0\.2 "):
        out = sample_conditional(model, x, mask, torch.zeros(200, dtype=torch.long), 50,
                                 method="pseudo_gibbs", generator=gen(0), burn_in=1)
    # Every row is the same, so the spread of the draws is noise plus latent spread: at least 0.2.
    assert float(out.draws[..., 2].std()) > 0.18


def test_pool_resampling_follows_the_weights():
    # Two batches of proposals whose values are their own ids: after streaming them
    # through, slots must be distributed as the normalised weights over both batches.
    weights = torch.tensor([1.0, 3.0, 0.0, 2.0, 2.0, 8.0])
    ids = torch.arange(6.0).reshape(6, 1, 1)
    pool_ = _Pool(torch.full((1, 1), -1.0), 20000)
    g = gen(0)
    pool_.add(torch.log(weights[:3]).unsqueeze(1), ids[:3], g)
    pool_.add(torch.log(weights[3:]).unsqueeze(1), ids[3:], g)
    freq = torch.bincount(pool_.slots.flatten().long(), minlength=6).double() / 20000
    assert torch.allclose(freq, weights.double() / weights.sum(), atol=0.015)
    assert float(pool_.ess()[0]) == pytest.approx(float(weights.sum() ** 2 / (weights**2).sum()), rel=1e-5)


def test_missingness_model_shifts_the_draws():
    # not-MIWAE with a strong self-masking process ("high values go missing" in column a)
    # must draw larger values for missing a than the same model without it.
    model = small_model("notmiwae")
    x, mask = mixed_batch(40)
    clusters = torch.zeros(40, dtype=torch.long)
    opts = {"chains": 4, "importance_samples": 8, "burn_in": 3, "iterations": 20}

    def mean_missing_a():
        d = sample_conditional(model, x, mask, clusters, 50, method="lair", generator=gen(1), **opts).draws
        return float(d[:, ~mask[:, 0], 0].mean())

    neutral = mean_missing_a()
    with torch.no_grad():
        model.missing.w[0] = 4.0  # logit p(observed) = -4 (x - 0): high x rarely observed
    assert mean_missing_a() > neutral + 0.5


# ---------------------------------------------------------------------------- options and errors
def test_sampler_config_defaults_and_checks():
    cfg = SamplerConfig.resolve("mwg", 4)
    assert (cfg.chains, cfg.burn_in, cfg.iterations) == (4, 100, 101)
    cfg = SamplerConfig.resolve("pseudo_gibbs", 5, chains=2, burn_in=10, thinning=3)
    assert cfg.iterations == 10 + 3 * 3 and cfg.chosen_sweeps() == [19, 16, 13]
    cfg = SamplerConfig.resolve("pseudo_gibbs", 2, chains=1, burn_in=0, iterations=10, thinning=1)
    assert cfg.chosen_sweeps() == [10, 5]  # spread over the kept sweeps, latest first
    with pytest.raises(ValueError, match=r"method 'sir' does not take option\(s\) \['burn_in'\]"):
        SamplerConfig.resolve("sir", 3, burn_in=5)
    with pytest.raises(ValueError, match="'chains' must be an integer >= 1, got 0"):
        SamplerConfig.resolve("lair", 3, chains=0)
    with pytest.raises(ValueError, match=r"fewer than n=10 draws; use iterations >= 10 or more chains"):
        SamplerConfig.resolve("mwg", 10, chains=2, burn_in=5, iterations=8)
    with pytest.raises(ValueError, match="leaves no round after burn_in=10"):
        SamplerConfig.resolve("lair", 3, burn_in=10, iterations=10)


def test_method_errors_name_the_valid_methods():
    vae = small_model("vae")
    assert valid_methods(vae) == ("lair", "mwg", "pseudo_gibbs") and default_method(vae) == "lair"
    assert default_method(small_model("miwae")) == "sir"
    x, mask = mixed_batch()
    clusters = torch.zeros(12, dtype=torch.long)
    with pytest.raises(ValueError, match=r"'sir' is not available for a 'vae' model; choose one of \['lair', 'mwg', 'pseudo_gibbs'\]"):
        sample_conditional(vae, x, mask, clusters, 2, method="sir")
    with pytest.raises(ValueError, match="'gibbs' is not available"):
        sample_conditional(vae, x, mask, clusters, 2, method="gibbs")
    with pytest.raises(TypeError, match="latent-variable family"):
        sample_conditional(object(), x, mask, clusters, 2)
    with pytest.raises(TypeError, match="mask must be a bool"):
        sample_conditional(vae, x, mask.float(), clusters, 2)


# ---------------------------------------------------------------------------- Imputer API
FAST = {"epochs": 6, "max_loops": 1, "epochs_per_loop": 3, "batch_size": 64}


def _data(n: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    df = pd.DataFrame({
        "a": z + 0.2 * rng.normal(size=n),
        "b": 2 * z + 0.3 * rng.normal(size=n),
        "count": pd.array(np.rint(5 + 2 * z).astype(int), dtype="Int64"),
        "group": np.where(z > 0, "hi", "lo").astype(object),
    })
    holes = rng.random((n, 4)) < 0.2
    holes[:, 0] &= np.arange(n) % 2 == 0
    return df.mask(holes)


@pytest.fixture(scope="module")
def fitted():
    df = _data()
    return df, Imputer(model="vae", model_params=SMALL, train_params=FAST, n_clusters=1, device="cpu", seed=0).fit(df)


def test_imputer_sample_copies_long_format_and_seed(fitted):
    df, imp = fitted
    before = df.copy(deep=True)
    copies = imp.sample(df, n=3, method="lair", seed=1, burn_in=2, iterations=6)
    pd.testing.assert_frame_equal(df, before)  # the caller's data is untouched
    obs = df.notna().to_numpy()
    for c in copies:
        assert c.index.equals(df.index) and list(c.columns) == list(df.columns)
        assert dict(c.dtypes) == dict(df.dtypes)
        assert not c.isna().any().any()
        assert (c.to_numpy()[obs] == df.to_numpy()[obs]).all()
    assert not copies[0]["b"].equals(copies[1]["b"])  # draws differ where cells are missing
    again = imp.sample(df, n=3, method="lair", seed=1, burn_in=2, iterations=6)
    for a, b in zip(copies, again):
        pd.testing.assert_frame_equal(a, b)
    long = imp.sample(df, n=3, method="lair", seed=1, burn_in=2, iterations=6, long=True)
    assert list(long.columns) == ["imputation", *df.columns] and len(long) == 3 * len(df)
    pd.testing.assert_frame_equal(long[long["imputation"] == 2].drop(columns="imputation"), copies[1])


def test_imputer_intervals(fitted):
    df, imp = fitted
    iv = imp.intervals(df, level=0.8, n=40, method="pseudo_gibbs", burn_in=5)
    assert list(iv.columns.get_level_values("column").unique()) == ["a", "b", "count"]
    lower = iv.xs("lower", axis=1, level="bound")
    upper = iv.xs("upper", axis=1, level="bound")
    for col in ["a", "b", "count"]:
        observed = df[col].notna().to_numpy()
        values = df[col].to_numpy(dtype=np.float64, na_value=np.nan)
        assert np.array_equal(lower[col].to_numpy()[observed], values[observed])
        assert np.array_equal(upper[col].to_numpy()[observed], values[observed])
        assert (upper[col].to_numpy()[~observed] > lower[col].to_numpy()[~observed]).all()
    assert iv.index.equals(df.index)


def test_imputer_sample_errors(fitted):
    df, imp = fitted
    with pytest.raises(ValueError, match=r"not available for a 'vae' model; choose one of \['lair', 'mwg', 'pseudo_gibbs'\]"):
        imp.sample(df, n=2, method="sir")
    with pytest.raises(ValueError, match=r"n must be an integer >= 1 .* got 0"):
        imp.sample(df, n=0)
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['temperature'\]"):
        imp.sample(df, n=2, method="mwg", temperature=2)
    with pytest.raises(ValueError, match="already has a column named 'imputation'"):
        imp.sample(df.rename(columns={"a": "imputation"}), n=2, long=True)
    with pytest.raises(ValueError, match=r"level must be a number strictly between 0 and 1 .* got 1.5"):
        imp.intervals(df, level=1.5)
    with pytest.raises(NotFittedError, match="not fitted"):
        Imputer().sample(df, n=2)


# ---------------------------------------------------------------------------- Rubin's rules
def test_rubins_rules_hand_computed():
    # m = 3 estimates 1, 2, 3 with squared standard errors 0.5 each:
    # Q = 2, U = 0.5, B = 1, T = 0.5 + 4/3 = 11/6, riv = (4/3) / 0.5 = 8/3,
    # lambda = (4/3) / (11/6) = 8/11, df = 2 / (8/11)^2 = 121/32,
    # fmi = (8/3 + 2 / (121/32 + 3)) / (1 + 8/3).
    p = pool([1.0, 2.0, 3.0], [0.5, 0.5, 0.5])
    assert (p.estimate, p.within, p.between, p.m) == (2.0, 0.5, 1.0, 3)
    assert p.total == pytest.approx(11 / 6)
    assert p.riv == pytest.approx(8 / 3)
    assert p.lambda_ == pytest.approx(8 / 11)
    assert p.df == pytest.approx(121 / 32)
    assert p.fmi == pytest.approx((8 / 3 + 2 / (121 / 32 + 3)) / (11 / 3))
    # Barnard-Rubin with 10 complete-data df: df_obs = 11/13 * 10 * (3/11) = 30/13.
    br = pool([1.0, 2.0, 3.0], [0.5, 0.5, 0.5], dfcom=10)
    assert br.df == pytest.approx((121 / 32) * (30 / 13) / (121 / 32 + 30 / 13))
    lo, hi = p.confint(0.95)
    from scipy import stats
    half = stats.t.ppf(0.975, 121 / 32) * math.sqrt(11 / 6)
    assert (lo, hi) == pytest.approx((2 - half, 2 + half))


def test_pool_vectors_names_and_no_between_variance():
    est = [pd.Series({"x": 1.0, "y": 5.0}), pd.Series({"x": 3.0, "y": 5.0})]
    var = [pd.Series({"x": 1.0, "y": 2.0}), pd.Series({"x": 1.0, "y": 2.0})]
    p = pool(est, var)
    assert p.names == ("x", "y")
    np.testing.assert_allclose(p.estimate, [2.0, 5.0])
    np.testing.assert_allclose(p.between, [2.0, 0.0])
    np.testing.assert_allclose(p.total, [1.0 + 1.5 * 2.0, 2.0])
    assert p.df[1] == np.inf and p.fmi[1] == 0.0 and p.lambda_[1] == 0.0  # nothing was missing for y
    frame = p.to_frame()
    assert list(frame.index) == ["x", "y"] and frame.loc["y", "ci_upper"] == pytest.approx(5 + 1.959964 * math.sqrt(2))
    cov = [np.diag([1.0, 2.0]), np.diag([1.0, 2.0])]  # covariance matrices: diagonals are used
    np.testing.assert_allclose(pool([[1.0, 5.0], [3.0, 5.0]], cov).total, p.total)


def test_pool_function_mean_of_each_copy(fitted):
    df, imp = fitted
    copies = imp.sample(df, n=4, method="pseudo_gibbs", seed=0, burn_in=5)

    def mean_b(frame):
        y = frame["b"].to_numpy(dtype=float)
        return y.mean(), y.var(ddof=1) / len(y)

    p = pool_function(copies, mean_b, dfcom=len(df) - 1)
    means = [c["b"].mean() for c in copies]
    assert p.estimate == pytest.approx(np.mean(means))
    assert p.between == pytest.approx(np.var(means, ddof=1))
    long = imp.sample(df, n=4, method="pseudo_gibbs", seed=0, burn_in=5, long=True)
    assert pool_function(long, mean_b, dfcom=len(df) - 1).estimate == pytest.approx(p.estimate)


def test_pool_errors():
    with pytest.raises(ValueError, match="at least 2 imputations"):
        pool([1.0], [0.1])
    with pytest.raises(ValueError, match="estimates has 2 entries but variances has 3"):
        pool([1.0, 2.0], [0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="variances must be finite and >= 0"):
        pool([1.0, 2.0], [0.1, -0.1])
    with pytest.raises(ValueError, match="the estimate has 2 value"):
        pool([[1.0, 2.0], [1.0, 2.0]], [[0.1], [0.1]])
    with pytest.raises(ValueError, match="dfcom must be a positive number"):
        pool([1.0, 2.0], [0.1, 0.1], dfcom=0)
    with pytest.raises(TypeError, match=r"fn must return a pair \(estimate, variance\)"):
        pool_function([pd.DataFrame({"a": [1.0]})] * 2, lambda f: 1.0)
    with pytest.raises(ValueError, match="'imputation' column"):
        pool_function(pd.DataFrame({"a": [1.0]}), lambda f: (1.0, 0.1))


# ---------------------------------------------------------------------------- command line
def test_cli_impute_multiple(tmp_path):
    import json
    import os
    import subprocess
    import sys

    df = _data(60, seed=2)
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    df.to_csv(src, index=False)
    train = json.dumps({"epochs": 3, "max_loops": 1, "epochs_per_loop": 2})
    proc = subprocess.run(
        [sys.executable, "-m", "ciss_autoimpute.cli", "impute", str(src), "-o", str(out), "--model", "vae",
         "--model-params", json.dumps(SMALL), "--train-params", train, "--multiple", "3", "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # tiny model: threads only contend on a busy machine
    )
    assert proc.returncode == 0, proc.stderr
    assert "drew 3 completed copies" in proc.stderr
    long = pd.read_csv(out)
    assert list(long.columns) == ["imputation", *df.columns] and len(long) == 3 * len(df)
    assert sorted(long["imputation"].unique()) == [1, 2, 3]
    assert not long.isna().any().any()
    original = pd.read_csv(src)
    for _, copy in long.groupby("imputation"):
        copy = copy.drop(columns="imputation").reset_index(drop=True)
        observed = original.notna().to_numpy()
        assert (copy.to_numpy()[observed] == original.to_numpy()[observed]).all()
