"""Likelihood heads, the four model families and the registry.

The family tests run over every registered family on a tiny mixed layout (two
numeric, one binary and one three-level categorical column) with two clusters.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from ciss_autoimpute.data.layout import FeatureLayout
from ciss_autoimpute.models.base import ImputationModel, LossOutput
from ciss_autoimpute.models.families._common import LatentModel
from ciss_autoimpute.models.families.cissvae import layer_order
from ciss_autoimpute.models.families.vae import VAE
from ciss_autoimpute.models.layers import ClusterIndex, block_layout
from ciss_autoimpute.models.likelihoods import DF_MIN, MixedLikelihood, standard_gamma
from ciss_autoimpute.models.registry import available_models, build_model, get_model_class, register_model
from ciss_autoimpute.tuning.params import Categorical, Fixed, Float, Int

LAYOUT = FeatureLayout(
    n_features=6,
    numeric=(0, 1),
    binary=(2,),
    categorical=((3, 6),),
    names=("a", "b", "flag", "colour"),
    column_of=(0, 1, 2, 3, 3, 3),
)
#: The latent-variable families (encoder, latent_dim, ELBO-type loss). GAIN and MIDA are
#: tested in test_gain_mida.py, the classical ones in test_classical.py, and every family
#: by test_conformance.py.
FAMILIES = [f for f in available_models() if issubclass(get_model_class(f), LatentModel)]
META_KEYS = {
    "num_hidden_layers",
    "hidden_dim",
    "num_shared_encode",
    "num_shared_decode",
    "encoder_shared_placement",
    "decoder_shared_placement",
}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def small_params(family, **extra):
    params = {"hidden_dims": [16, 8], "latent_dim": 3}
    if "n_samples" in get_model_class(family).default_params():
        params.update(n_samples=5, n_impute_samples=16)
    params.update(extra)
    return params


def mixed_batch(n=120, seed=0):
    """Two latent factors drive every column; ~25% of cells missing, groups share a mask."""
    g = gen(seed)
    z = torch.randn(n, 2, generator=g)
    num = z @ torch.tensor([[1.0, 0.5], [-0.5, 1.0]]) + 0.2 * torch.randn(n, 2, generator=g)
    flag = (z[:, :1] + 0.3 * torch.randn(n, 1, generator=g) > 0).float()
    colour = torch.nn.functional.one_hot((z @ torch.tensor([[2.0, 0.0, -2.0], [0.0, 1.0, 0.0]])).argmax(1), 3).float()
    full = torch.cat([num, flag, colour], dim=1)
    mask = torch.rand(n, 6, generator=g) > 0.25
    mask[:, 4:6] = mask[:, 3:4]
    x = torch.where(mask, full, torch.zeros(()))
    clusters = (~mask[:, 0]).long()
    return x, mask, clusters, full


def build(family, seed=0, n_clusters=2, **extra):
    return build_model(family, LAYOUT, n_clusters, small_params(family, **extra), seed=seed)


def check_mixed_output(out):
    """Binary in [0, 1], categorical groups are distributions, nothing NaN."""
    assert torch.isfinite(out).all()
    assert ((out[..., 2] >= 0) & (out[..., 2] <= 1)).all()
    cat = out[..., 3:6]
    assert (cat >= 0).all() and (cat <= 1).all()
    torch.testing.assert_close(cat.sum(-1), torch.ones(cat.shape[:-1]))


# ============================================================================ likelihoods
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _raw(head, mean=(0.0, 0.0), log_scale=None, df_raw=None, bin_logit=0.0, cat=(0.0, 0.0, 0.0)):
    parts = [list(mean)]
    if log_scale is not None:
        parts.append(list(log_scale))
    if df_raw is not None:
        parts.append(list(df_raw))
    parts += [[bin_logit], list(cat)]
    raw = torch.tensor([sum(parts, [])])
    assert raw.shape[-1] == head.n_params
    return raw


def test_parameter_widths_per_head():
    assert MixedLikelihood(LAYOUT, "gaussian_fixed").n_params == 2 + 1 + 3
    assert MixedLikelihood(LAYOUT, "gaussian").n_params == 4 + 1 + 3
    assert MixedLikelihood(LAYOUT, "student_t").n_params == 6 + 1 + 3


def test_log_prob_hand_values_all_observed():
    x = torch.tensor([[1.0, -1.0, 1.0, 0.0, 0.0, 1.0]])
    mask = torch.ones(1, 6, dtype=torch.bool)
    # Categorical logits (0, log 2, log 3): probabilities 1/6, 2/6, 3/6; the row is level 2.
    cat = (0.0, math.log(2.0), math.log(3.0))
    bern = math.log(1 / (1 + math.exp(-2.0)))  # x = 1 with logit 2

    fixed = MixedLikelihood(LAYOUT, "gaussian_fixed")
    expected = 2 * (-0.5 - HALF_LOG_2PI) + bern + math.log(0.5)
    torch.testing.assert_close(fixed.log_prob(_raw(fixed, bin_logit=2.0, cat=cat), x, mask), torch.tensor([expected]))

    gauss = MixedLikelihood(LAYOUT, "gaussian")
    # scale 2 for column a: -0.5 * (1/2)^2 - log 2 - 0.5 log 2 pi; scale 1 for b.
    expected = (-0.125 - math.log(2.0) - HALF_LOG_2PI) + (-0.5 - HALF_LOG_2PI) + bern + math.log(0.5)
    raw = _raw(gauss, log_scale=(math.log(2.0), 0.0), bin_logit=2.0, cat=cat)
    torch.testing.assert_close(gauss.log_prob(raw, x, mask), torch.tensor([expected]))


def test_student_t_matches_torch_distribution():
    head = MixedLikelihood(LAYOUT, "student_t")
    x = torch.tensor([[0.7, -2.0, 0.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False, False, False, False]])
    raw = _raw(head, mean=(0.2, 0.5), log_scale=(0.3, -0.4), df_raw=(0.0, 1.5))
    df = DF_MIN + torch.nn.functional.softplus(torch.tensor([0.0, 1.5]))
    ref = torch.distributions.StudentT(df, torch.tensor([0.2, 0.5]), torch.exp(torch.tensor([0.3, -0.4])))
    expected = ref.log_prob(torch.tensor([0.7, -2.0])).sum()
    torch.testing.assert_close(head.log_prob(raw, x, mask), expected.reshape(1))


def test_masked_cells_do_not_count_and_a_group_counts_once():
    head = MixedLikelihood(LAYOUT, "gaussian_fixed")
    raw = _raw(head, bin_logit=0.0)
    x = torch.tensor([[float("nan"), 0.0, float("nan"), 1.0, 0.0, 0.0]], requires_grad=True)
    # Only column b and the categorical group are observed.
    mask = torch.tensor([[False, True, False, True, True, True]])
    lp = head.log_prob(raw, x, mask)
    torch.testing.assert_close(lp, torch.tensor([-HALF_LOG_2PI + math.log(1 / 3)]))
    lp.sum().backward()
    assert torch.isfinite(x.grad).all()  # NaN fillers do not poison gradients
    nothing = torch.zeros(1, 6, dtype=torch.bool)
    torch.testing.assert_close(head.log_prob(raw, x.detach(), nothing), torch.zeros(1))


def test_log_prob_broadcasts_over_sample_dims():
    head = MixedLikelihood(LAYOUT, "gaussian")
    x, mask, _, _ = mixed_batch(10)
    raw = torch.randn(4, 10, head.n_params, generator=gen(1))
    lp = head.log_prob(raw, x, mask)
    assert lp.shape == (4, 10)
    for k in range(4):
        torch.testing.assert_close(lp[k], head.log_prob(raw[k], x, mask))


def test_mean_gives_means_and_probabilities():
    head = MixedLikelihood(LAYOUT, "gaussian")
    raw = _raw(head, mean=(1.5, -0.5), log_scale=(0.0, 0.0), bin_logit=0.0, cat=(0.0, math.log(2.0), math.log(3.0)))
    torch.testing.assert_close(head.mean(raw), torch.tensor([[1.5, -0.5, 0.5, 1 / 6, 2 / 6, 3 / 6]]))
    assert head.mean(torch.zeros(3, 5, head.n_params)).shape == (3, 5, 6)


def test_samples_follow_the_distributions():
    head = MixedLikelihood(LAYOUT, "gaussian")
    n = 20000
    raw = _raw(head, mean=(2.0, -1.0), log_scale=(math.log(0.5), 0.0), bin_logit=math.log(3.0),
               cat=(0.0, math.log(2.0), math.log(3.0))).expand(n, -1)
    draws = head.sample(raw, gen(0))
    assert draws.shape == (n, 6)
    assert abs(draws[:, 0].mean() - 2.0) < 0.02 and abs(draws[:, 0].std() - 0.5) < 0.02
    assert set(draws[:, 2].unique().tolist()) <= {0.0, 1.0}
    assert abs(draws[:, 2].mean() - 0.75) < 0.02  # sigmoid(log 3)
    cat = draws[:, 3:6]
    assert torch.equal(cat.sum(1), torch.ones(n)) and set(cat.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(cat.mean(0), torch.tensor([1 / 6, 2 / 6, 3 / 6]), atol=0.02, rtol=0)
    # Same generator state, same draws; no numeric noise -> the mean.
    assert torch.equal(head.sample(raw[:50], gen(3)), head.sample(raw[:50], gen(3)))
    assert torch.equal(head.sample(raw[:5], gen(0), numeric_noise=False)[:, :2], raw[:5, :2])


def test_student_t_samples_and_gamma_draws():
    alpha = torch.full((20000,), 2.5)
    g = standard_gamma(alpha, gen(0))
    assert abs(g.mean() - 2.5) < 0.05 and abs(g.var() - 2.5) < 0.15  # Gamma(a, 1): mean = var = a
    with pytest.raises(ValueError, match="alpha >= 1"):
        standard_gamma(torch.tensor([0.5]), gen(0))
    head = MixedLikelihood(LAYOUT, "student_t")
    # df = 3 + softplus(raw); pick raw so df = 6: variance df / (df - 2) = 1.5
    df_raw = math.log(math.exp(3.0) - 1.0)
    raw = _raw(head, mean=(1.0, 0.0), log_scale=(0.0, 0.0), df_raw=(df_raw, df_raw)).expand(40000, -1)
    draws = head.sample(raw, gen(1))[:, 0]
    assert abs(draws.mean() - 1.0) < 0.03 and abs(draws.var() - 1.5) < 0.1


def test_bad_layouts_and_heads_raise():
    with pytest.raises(ValueError, match="Unknown likelihood 'poisson'"):
        MixedLikelihood(LAYOUT, "poisson")
    overlapping = FeatureLayout(3, numeric=(0, 1), binary=(1,), names=("a", "b"), column_of=(0, 1, 1))
    with pytest.raises(ValueError, match="exactly one kind"):
        MixedLikelihood(overlapping, "gaussian")


# ============================================================================ every family
def test_builtin_families_are_registered():
    assert {"vae", "cissvae", "miwae", "notmiwae"} <= set(FAMILIES)
    for family in FAMILIES:
        cls = get_model_class(family)
        assert issubclass(cls, ImputationModel) and cls.name == family


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_is_finite_and_backpropagates(family):
    model = build(family)
    x, mask, clusters, _ = mixed_batch()
    out = model.loss(x, mask, clusters, generator=gen(1))
    assert isinstance(out, LossOutput) and out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert all(v.dim() == 0 and not v.requires_grad and torch.isfinite(v) for v in out.parts.values())
    assert "nll" in out.parts
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert sum(float(gr.abs().sum()) for gr in grads) > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_a_few_adam_steps_reduce_the_loss(family):
    model = build(family)
    x, mask, clusters, _ = mixed_batch()

    def avg_loss():
        with torch.no_grad():
            return sum(float(model.loss(x, mask, clusters, generator=gen(100 + i)).loss) for i in range(4)) / 4

    before = avg_loss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = gen(5)
    for _ in range(40):
        opt.zero_grad()
        model.loss(x, mask, clusters, generator=g).loss.backward()
        opt.step()
    after = avg_loss()
    assert after < before - 0.3, (before, after)


@pytest.mark.parametrize("family", FAMILIES)
def test_impute_shape_and_ranges(family):
    model = build(family)
    x, mask, clusters, _ = mixed_batch()
    out = model.impute(x, mask, clusters, generator=gen(2))
    assert out.shape == x.shape and out.dtype == x.dtype and not out.requires_grad
    check_mixed_output(out)


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_imputations_are_draws(family):
    model = build(family)
    x, mask, clusters, _ = mixed_batch()
    draws = model.sample_imputations(x, mask, clusters, 4, generator=gen(3))
    assert draws.shape == (4, *x.shape)
    check_mixed_output(draws)
    assert set(draws[..., 2].unique().tolist()) <= {0.0, 1.0}
    assert set(draws[..., 3:6].unique().tolist()) <= {0.0, 1.0}
    # Observed cells as given; the draws differ between imputations.
    assert torch.equal(draws[:, mask], x[mask].expand(4, -1))
    assert not torch.equal(draws[0], draws[1])
    with pytest.raises(ValueError, match="positive integer, got 0"):
        model.sample_imputations(x, mask, clusters, 0)


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_model_and_no_global_rng(family):
    x, mask, clusters, _ = mixed_batch()
    state = torch.random.get_rng_state()
    a, b, c = build(family, seed=3), build(family, seed=3), build(family, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert torch.equal(a.loss(x, mask, clusters, generator=gen(1)).loss, b.loss(x, mask, clusters, generator=gen(1)).loss)
    assert torch.equal(a.impute(x, mask, clusters, generator=gen(1)), b.impute(x, mask, clusters, generator=gen(1)))
    assert torch.equal(
        a.sample_imputations(x, mask, clusters, 2, generator=gen(1)),
        b.sample_imputations(x, mask, clusters, 2, generator=gen(1)),
    )
    # Without a generator the model seeds its own: still deterministic.
    assert torch.equal(a.loss(x, mask, clusters).loss, a.loss(x, mask, clusters).loss)
    assert torch.equal(a.sample_imputations(x, mask, clusters, 2), a.sample_imputations(x, mask, clusters, 2))
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("family", FAMILIES)
def test_state_round_trips_through_config(family):
    model = build(family, seed=1)
    x, mask, clusters, _ = mixed_batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for i in range(5):
        opt.zero_grad()
        model.loss(x, mask, clusters, generator=gen(i)).loss.backward()
        opt.step()
    cfg = json.loads(json.dumps(model.config()))
    assert cfg["name"] == family and cfg["n_clusters"] == 2
    cls = get_model_class(cfg["name"])
    rebuilt = cls(FeatureLayout.from_dict(cfg["layout"]), cfg["n_clusters"], seed=999, **cfg["params"])
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.config() == cfg
    assert torch.equal(model.impute(x, mask, clusters, generator=gen(7)), rebuilt.impute(x, mask, clusters, generator=gen(7)))


@pytest.mark.parametrize("family", FAMILIES)
def test_default_params_and_search_space(family):
    cls = get_model_class(family)
    defaults = cls.default_params()
    assert json.loads(json.dumps(defaults)) == defaults
    model = build_model(family, LAYOUT, 2)
    assert set(model.params) == set(defaults)
    space = cls.search_space()
    assert set(space) <= set(defaults) | META_KEYS, set(space) - set(defaults) - META_KEYS
    assert "num_hidden_layers" in space and "hidden_dim" in space
    # Every value the space can produce for a real parameter builds a model.
    for key, param in space.items():
        if key in META_KEYS:
            continue
        assert isinstance(param, (Float, Int, Categorical, Fixed))
        values = param.choices if isinstance(param, Categorical) else (
            [param.value] if isinstance(param, Fixed) else [param.low, param.high]
        )
        for value in values:
            build(family, **{key: value})


@pytest.mark.parametrize("family", FAMILIES)
def test_unknown_parameter_lists_the_accepted_ones(family):
    with pytest.raises(ValueError, match=r"Unknown parameter\(s\) \['hiden_dims'\].*accepts \[.*'latent_dim'"):
        build_model(family, LAYOUT, 2, {"hiden_dims": [8]})


@pytest.mark.parametrize(
    "family, params, message",
    [
        ("vae", {"hidden_dims": []}, "'hidden_dims' must be a non-empty list"),
        ("vae", {"hidden_dims": [8, 0]}, "'hidden_dims' must hold positive integers"),
        ("vae", {"latent_dim": 2.5}, "'latent_dim' must be an integer >= 1, got 2.5"),
        ("vae", {"likelihood": "poisson"}, "'likelihood' must be one of .*'gaussian'.*got 'poisson'"),
        ("vae", {"activation": "swish"}, "'activation' must be one of .*got 'swish'"),
        ("vae", {"beta": -1.0}, "'beta' must be a number >= 0.0, got -1.0"),
        ("cissvae", {"layer_order_enc": ["s"]}, "layer_order_enc has 1 entries .* 2 hidden layers"),
        ("cissvae", {"layer_order_dec": ["s", "q"]}, "layer_order_dec entries must be"),
        ("cissvae", {"latent_shared": "yes"}, "'latent_shared' must be True or False"),
        ("miwae", {"n_samples": 0}, "'n_samples' must be an integer >= 1, got 0"),
        ("notmiwae", {"missing_process": "magic"}, "'missing_process' must be one of .*got 'magic'"),
        ("notmiwae", {"signs": [1, 2, 1, 1]}, "'signs' must hold \\+1 .*got \\[1, 2, 1, 1\\]"),
        ("notmiwae", {"signs": [1, -1]}, "'signs' has 2 entries but the data has 4 columns"),
    ],
)
def test_bad_parameters_raise(family, params, message):
    with pytest.raises(ValueError, match=message):
        build(family, **params)


@pytest.mark.parametrize("family", FAMILIES)
def test_bad_batches_raise(family):
    model = build(family)
    x, mask, clusters, _ = mixed_batch(8)
    with pytest.raises(ValueError, match=r"x must have shape \[n, 6\]"):
        model.loss(x[:, :5], mask[:, :5], clusters)
    with pytest.raises(TypeError, match="mask must be a bool"):
        model.impute(x, mask.float(), clusters)
    with pytest.raises(ValueError, match="clusters holds ids 0..2 but the model was built with n_clusters=2"):
        model.impute(x, mask, torch.tensor([0, 1, 2, 0, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match=r"clusters must have shape \[8\]"):
        model.impute(x, mask, clusters[:4])
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        model.loss(x, mask, clusters, generator=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_bad_constructor_arguments_raise(family):
    cls = get_model_class(family)
    with pytest.raises(TypeError, match="layout must be a FeatureLayout, got dict"):
        cls(LAYOUT.to_dict())
    with pytest.raises(ValueError, match="n_clusters must be a positive integer, got 0"):
        cls(LAYOUT, 0)
    with pytest.raises(TypeError, match="seed must be an integer, got 'a'"):
        cls(LAYOUT, 1, seed="a")


@pytest.mark.parametrize("family", [f for f in FAMILIES if get_model_class(f).importance_weighted])
def test_importance_weighted_imputation_in_row_chunks(family, monkeypatch):
    from ciss_autoimpute.models.families import _common

    model = build(family)
    x, mask, clusters, _ = mixed_batch(50)
    # 16 importance samples per row and a budget of 160 row-samples: chunks of 10 rows.
    monkeypatch.setattr(_common, "ROW_SAMPLE_BUDGET", 160)
    assert len(model._chunks(50, 16)) == 5
    out = model.impute(x, mask, clusters, generator=gen(0))
    assert out.shape == x.shape
    check_mixed_output(out)
    draws = model.sample_imputations(x, mask, clusters, 3, generator=gen(0))
    assert draws.shape == (3, 50, 6) and torch.equal(draws[:, mask], x[mask].expand(3, -1))
    check_mixed_output(draws)


def test_registry_rejects_duplicates_and_unknown_names():
    class AnotherVAE(VAE):
        name = "vae"

    with pytest.raises(ValueError, match="'vae' is already registered \\(VAE\\)"):
        register_model(AnotherVAE)
    assert get_model_class("vae") is VAE

    class Nameless(VAE):
        name = ""

    with pytest.raises(ValueError, match="needs a non-empty class attribute 'name'"):
        register_model(Nameless)
    with pytest.raises(ValueError, match="Unknown model 'gan'; available models are \\[.*'cissvae'"):
        build_model("gan", LAYOUT)


# ============================================================================ VAE / CISS-VAE
def test_vae_beta_attribute_weights_the_kl():
    model = build("vae", beta=1.0)
    x, mask, clusters, _ = mixed_batch()
    full = model.loss(x, mask, clusters, generator=gen(0))
    torch.testing.assert_close(full.loss, full.parts["nll"] + full.parts["kl"])
    model.beta = 0.0  # the trainer may change beta for the refit loops
    no_kl = model.loss(x, mask, clusters, generator=gen(0))
    torch.testing.assert_close(no_kl.loss, no_kl.parts["nll"])


def test_cissvae_with_one_cluster_is_a_vae():
    x, mask, _, _ = mixed_batch()
    one = torch.zeros(x.shape[0], dtype=torch.long)
    ciss = build("cissvae", n_clusters=1, likelihood="gaussian", beta=1.0, seed=2)
    vae = build("vae", n_clusters=1, likelihood="gaussian", beta=1.0, seed=2)
    sc, sv = ciss.state_dict(), vae.state_dict()
    assert sc.keys() == sv.keys() and all(torch.equal(sc[k], sv[k]) for k in sc)
    assert torch.equal(ciss.loss(x, mask, one, generator=gen(0)).loss, vae.loss(x, mask, one, generator=gen(0)).loss)


def test_cissvae_defaults_follow_the_package_architecture():
    # Architecture as in the CISS-VAE package; the loss defaults to a learned noise
    # scale and beta=1 (the package's masked MSE with beta=0.001 imputed worse).
    model = build_model("cissvae", LAYOUT, 3)
    assert model.params["likelihood"] == "gaussian" and model.params["beta"] == 1.0
    package = build_model("cissvae", LAYOUT, 3, {"likelihood": "gaussian_fixed", "beta": 0.001})
    assert package.likelihood.n_params < model.likelihood.n_params  # no per-cell scale
    assert model.params["layer_order_enc"] == ["unshared", "unshared"]
    assert model.params["layer_order_dec"] == ["shared", "shared"]
    assert model.encoder.blocks[0].weight.shape == (3, 6, 128)  # one weight per cluster
    assert model.decoder.blocks[0].weight.shape == (64, 16)  # shared


def test_cissvae_cluster_ids_select_the_weights():
    x, mask, _, _ = mixed_batch(20)
    zeros, ones = torch.zeros(20, dtype=torch.long), torch.ones(20, dtype=torch.long)
    unshared = build("cissvae", layer_order_enc=["u", "s"], layer_order_dec=["s", "u"])
    assert not torch.allclose(unshared.impute(x, mask, zeros), unshared.impute(x, mask, ones))
    shared = build("cissvae", layer_order_enc=["s", "s"], layer_order_dec=["s", "s"],
                   latent_shared=True, output_shared=True)
    assert torch.equal(shared.impute(x, mask, zeros), shared.impute(x, mask, ones))
    assert shared.params["layer_order_enc"] == ["shared", "shared"]


def test_layer_order_placements():
    assert layer_order(4, 1, "at_end") == ["unshared"] * 3 + ["shared"]
    assert layer_order(4, 2, "at_start") == ["shared", "shared", "unshared", "unshared"]
    assert layer_order(5, 2, "alternating") == ["shared", "unshared", "shared", "unshared", "unshared"]
    assert layer_order(4, 3, "alternating") == ["shared", "unshared", "shared", "shared"]
    assert layer_order(3, 0, "random", seed=1) == ["unshared"] * 3
    rand = [layer_order(6, 2, "random", seed=s) for s in range(8)]
    assert all(r.count("shared") == 2 and len(r) == 6 for r in rand)
    assert rand[0] == layer_order(6, 2, "random", seed=0)
    assert len({tuple(r) for r in rand}) > 1
    with pytest.raises(ValueError, match="n_shared=3 exceeds n_layers=2"):
        layer_order(2, 3, "at_end")
    with pytest.raises(ValueError, match="unknown placement 'middle'"):
        layer_order(2, 1, "middle")


# ============================================================================ not-MIWAE
def test_known_signs_fix_the_direction():
    model = build("notmiwae", missing_process="selfmasking_known_signs", signs=[1, -1, 1, -1])
    table = model.interpret_missing_process()
    assert list(table.index) == ["a", "b", "flag", "colour[0]", "colour[1]", "colour[2]"]
    assert list(table.columns) == ["direction", "strength", "threshold", "had_missing", "learned"]
    # Every sign was given (none is 0): no direction is learned.
    assert not table["learned"].any()
    # Before training no column has been seen missing: no direction is claimed.
    assert set(table["direction"]) == {"never missing"} and not table["had_missing"].any()
    # softplus(0) = log 2 at the start.
    assert table["strength"].tolist() == pytest.approx([math.log(2.0)] * 6)
    # Training cannot flip a known sign.
    x, mask, clusters, _ = mixed_batch()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for i in range(20):
        opt.zero_grad()
        model.loss(x, mask, clusters, generator=gen(i)).loss.backward()
        opt.step()
    table = model.interpret_missing_process()
    assert table["had_missing"].all()
    assert list(table["direction"][:3]) == ["high values missing", "low values missing", "high values missing"]


def test_missing_sensitivity_of_the_processes():
    x, mask, _, _ = mixed_batch(30)
    selfm = build("notmiwae", missing_process="selfmasking")
    with torch.no_grad():
        selfm.missing.w.copy_(torch.tensor([0.5, -2.0, 1.0, 0.1, 0.2, 0.3]))
    sens = selfm.compute_missing_sensitivity(x)
    assert list(sens.index) == ["a", "b", "flag", "colour"] and sens.shape == (4, 6)
    expected = torch.zeros(4, 6, dtype=torch.float64)
    for j, (u, w) in enumerate(zip([0, 1, 2, 3, 3, 3], [0.5, 2.0, 1.0, 0.1, 0.2, 0.3])):
        expected[u, j] = w
    torch.testing.assert_close(torch.tensor(sens.to_numpy()), expected)

    linear = build("notmiwae", missing_process="linear")
    sens = linear.compute_missing_sensitivity(x.numpy())
    torch.testing.assert_close(torch.tensor(sens.to_numpy()), linear.missing.net.weight.detach().abs().double())
    with pytest.raises(ValueError, match="describes self-masking processes, this model uses 'linear'"):
        linear.interpret_missing_process()
    nonlinear = build("notmiwae", missing_process="nonlinear")
    assert nonlinear.compute_missing_sensitivity(x).shape == (4, 6)
    with pytest.raises(ValueError, match=r"x must have shape \[n >= 1, 6\]"):
        nonlinear.compute_missing_sensitivity(x[:, :3])


@pytest.mark.parametrize("kind", ["selfmasking", "selfmasking_known_signs"])
@pytest.mark.parametrize("samples", [(), (3,)])
def test_self_masking_log_prob_matches_the_bernoulli_formula_in_value_and_gradient(kind, samples):
    # Numeric columns only: log p(s|x) runs as one fused node (_SelfMaskingLogProb). It must
    # equal -BCE-with-logits of l = W (b - x) summed per row, with the same gradients.
    from ciss_autoimpute.models.families.notmiwae import MissingProcess, _SelfMaskingLogProb

    g = gen(7)
    process = MissingProcess(FeatureLayout.all_numeric(4), kind, signs=[1, -1, 1, -1]).double()
    with torch.no_grad():
        process.w.copy_(torch.randn(4, generator=g, dtype=torch.float64))
        process.b.copy_(torch.randn(4, generator=g, dtype=torch.float64))
    x = (3 * torch.randn(*samples, 9, 4, generator=g, dtype=torch.float64)).requires_grad_(True)
    s = torch.rand(9, 4, generator=g) > 0.4
    got = process.log_prob(x, s)
    assert got.shape == (*samples, 9) and got.grad_fn is not None and "SelfMasking" in type(got.grad_fn).__name__
    logits = process.slopes() * (process.b - x)
    want = -torch.nn.functional.binary_cross_entropy_with_logits(
        logits, s.double().expand_as(logits), reduction="none").sum(-1)
    torch.testing.assert_close(got, want)
    upstream = torch.randn(got.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad(got, (x, process.w, process.b), upstream)
    expected = torch.autograd.grad(want, (x, process.w, process.b), upstream)
    for a, e in zip(grads, expected):
        torch.testing.assert_close(a, e)
    c = process.slopes().detach() * (2 * s.double() - 1)
    inputs = (x, process.b.detach().clone().requires_grad_(True), c.requires_grad_(True))
    assert torch.autograd.gradcheck(_SelfMaskingLogProb.apply, inputs)


def _self_masked_gaussians(n=2000, seed=0):
    """Four correlated Gaussians; above-mean values of x0 and x1 go missing with prob. 0.8.

    Returns the data standardised on the observed cells (as the schema would), the
    observed mask and the true standardised values.
    """
    g = gen(seed)
    cov = torch.full((4, 4), 0.7) + 0.3 * torch.eye(4)
    full = torch.randn(n, 4, generator=g) @ torch.linalg.cholesky(cov).T
    observed = torch.ones(n, 4, dtype=torch.bool)
    for j in (0, 1):
        observed[:, j] = ~((full[:, j] > 0) & (torch.rand(n, generator=g) < 0.8))
    mean = torch.stack([full[observed[:, j], j].mean() for j in range(4)])
    std = torch.stack([full[observed[:, j], j].std() for j in range(4)])
    truth = (full - mean) / std
    return torch.where(observed, truth, torch.zeros(())), observed, truth


def _fit_plain(family, x, mask, params, steps=300, batch=256, seed=0):
    model = build_model(family, FeatureLayout.all_numeric(4), 1, params, seed=seed)
    clusters = torch.zeros(x.shape[0], dtype=torch.long)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = gen(seed)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        opt.zero_grad()
        model.loss(x[idx], mask[idx], clusters[idx], generator=g).loss.backward()
        opt.step()
    return model, model.impute(x, mask, clusters, generator=gen(1))


def test_notmiwae_corrects_self_masking_that_miwae_cannot():
    x, observed, truth = _self_masked_gaussians()
    params = {"hidden_dims": [32, 32], "latent_dim": 3, "n_samples": 10}
    missing = ~observed

    def rmse(imp):
        return float(((imp - truth)[missing] ** 2).mean().sqrt())

    _, miwae_imp = _fit_plain("miwae", x, observed, params)
    notmiwae, notmiwae_imp = _fit_plain("notmiwae", x, observed, {**params, "missing_process": "selfmasking"})
    mean_rmse = rmse(torch.zeros_like(x))
    # The missing values are the high ones: the MAR model stays near the observed
    # (low) values, the self-masking model moves towards the truth.
    assert rmse(notmiwae_imp) < 0.9 * rmse(miwae_imp) < 0.9 * mean_rmse, (rmse(notmiwae_imp), rmse(miwae_imp), mean_rmse)
    assert (notmiwae_imp[missing] - truth[missing]).mean() > (miwae_imp[missing] - truth[missing]).mean()
    table = notmiwae.interpret_missing_process()
    assert list(table.loc[["x0", "x1"], "direction"]) == ["high values missing"] * 2
    assert (table.loc[["x0", "x1"], "strength"] > 0.5).all()


# ============================================================================ speed paths
def _unsorted_vae_loss(model, x, mask, clusters, generator):
    """The VAE bound computed without sorting rows (each layer routes its own rows)."""
    from ciss_autoimpute.models.bounds import elbo_analytic, gaussian_kl

    index = model.cluster_index(clusters)
    mu, logvar = model.encode(x, index)
    z = model.reparameterise(mu, logvar, generator)
    log_px = model.likelihood.log_prob(model.decode(z, index), x, mask)
    return -elbo_analytic(log_px, gaussian_kl(mu, logvar), model.beta).mean()


def test_cissvae_sorts_rows_by_cluster_without_changing_results():
    x, mask, _, _ = mixed_batch(60)
    clusters = torch.arange(60) % 3  # interleaved, so sorting really permutes the rows
    model = build("cissvae", n_clusters=3, likelihood="gaussian", seed=4)
    xs, ms, index, order = model.group_rows(x, mask, clusters)
    assert index.is_grouped and index.counts == (20, 20, 20)
    assert torch.equal(clusters.index_select(0, order), index.clusters)
    assert torch.equal(xs, x.index_select(0, order)) and torch.equal(ms, mask.index_select(0, order))
    # Same loss and gradients as the unsorted computation with the same random draws.
    loss = model.loss(x, mask, clusters, generator=gen(7)).loss
    grads = torch.autograd.grad(loss, list(model.parameters()))
    reference = _unsorted_vae_loss(model, x, mask, clusters, gen(7))
    ref_grads = torch.autograd.grad(reference, list(model.parameters()))
    torch.testing.assert_close(loss, reference)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)
    # Row-wise outputs come back in the caller's order: permuting the input permutes them.
    perm = torch.randperm(60, generator=gen(1))
    imputed = model.impute(x, mask, clusters)
    torch.testing.assert_close(model.impute(x[perm], mask[perm], clusters[perm]), imputed[perm])
    draws = model.sample_imputations(x, mask, clusters, 2, generator=gen(3))
    index = model.cluster_index(clusters)
    mu, logvar = model.encode(x, index)
    z = model.reparameterise(mu, logvar, gen(3), n_samples=2)
    g = gen(3)
    torch.randn((2, *mu.shape), generator=g)  # the draw of z, already replayed above
    expected = model.likelihood.sample(model.decode(z, index.expand(2)), g)
    torch.testing.assert_close(draws, torch.where(mask, x, expected))
    # A model with only shared layers skips the sort altogether.
    vae = build("vae", n_clusters=3)
    assert vae.group_rows(x, mask, clusters)[2:] == (None, None)


@pytest.mark.parametrize("head", ["gaussian", "gaussian_fixed"])
def test_fused_gaussian_log_prob_matches_the_elementwise_formula(head):
    # All-numeric layouts take a fused path with a hand-written backward; check its
    # values and gradients against the per-cell units (autograd), with sample dims and
    # numeric columns listed out of order.
    layout = FeatureLayout(3, numeric=(2, 0, 1), binary=(), categorical=(), names=("a", "b", "c"),
                           column_of=(0, 1, 2))
    lik = MixedLikelihood(layout, head)
    g = gen(5)
    raw = (3.0 * torch.randn(4, 10, lik.n_params, generator=g)).requires_grad_()  # some scales clamp
    x = torch.randn(10, 3, generator=g)
    mask = torch.rand(10, 3, generator=g) > 0.4
    x = torch.where(mask, x, torch.full((), float("nan")))  # unobserved filler must not leak
    weights = torch.randn(4, 10, generator=g)
    fused = lik.log_prob(raw, x, mask)
    (grad_fused,) = torch.autograd.grad((fused * weights).sum(), raw)
    units = lik.log_prob_units(raw, x, mask)["numeric"].sum(-1)
    (grad_units,) = torch.autograd.grad((units * weights).sum(), raw)
    assert torch.isfinite(fused).all() and torch.isfinite(grad_fused).all()
    torch.testing.assert_close(fused, units)
    torch.testing.assert_close(grad_fused, grad_units)
    # Hand value: one observed cell of column 2 (parameter 0), mean 1, log-scale 0.5.
    one = torch.zeros(1, lik.n_params)
    one[0, 0] = 1.0
    if head == "gaussian":
        one[0, 3] = 0.5
    cell = torch.tensor([[0.0, 0.0, 2.0]])
    observed = torch.tensor([[False, False, True]])
    scale = math.exp(0.5) if head == "gaussian" else 1.0
    expected = -0.5 * (1.0 / scale) ** 2 - math.log(scale) - HALF_LOG_2PI
    assert lik.log_prob(one, cell, observed).item() == pytest.approx(expected, rel=1e-6)


def test_cissvae_takes_a_cluster_sorted_batch_as_it_is_with_the_same_imputations():
    # The Trainer sorts training batches by cluster for cissvae (sorts_batches_by_cluster):
    # group_rows then permutes nothing, and the results are those of the unsorted batch.
    model = build("cissvae", n_clusters=2)
    assert model.sorts_batches_by_cluster and not build("vae").sorts_batches_by_cluster
    assert not build("cissvae", n_clusters=1).sorts_batches_by_cluster
    x, mask, clusters, _ = mixed_batch()
    order = torch.argsort(clusters, stable=True)
    xs, ms, cs = x[order], mask[order], clusters[order]
    same_x, same_mask, index, none = model.group_rows(xs, ms, cs)
    assert none is None and same_x is xs and same_mask is ms and index.is_grouped
    assert index.counts == tuple(torch.bincount(clusters, minlength=2).tolist())
    _, _, _, perm = model.group_rows(x, mask, clusters)
    assert torch.equal(perm, order)
    torch.testing.assert_close(model.impute(xs, ms, cs), model.impute(x, mask, clusters)[order])
    assert torch.isfinite(model.loss(xs, ms, cs, generator=gen()).loss)


TRAINABLE = [f for f in available_models() if get_model_class(f).trainable]


@pytest.mark.parametrize("family", TRAINABLE)
def test_a_cluster_index_of_the_batch_gives_the_same_results_as_the_ids(family):
    # The Trainer passes training batches as a ClusterIndex (grouped by cluster for the
    # families that sort their batches) so that a step reads nothing back from the device.
    # Losses (values and gradients) and imputations must be those of the plain ids.
    assert get_model_class(family).accepts_cluster_index
    x, mask, _, _ = mixed_batch(60)
    clusters = torch.arange(60) % 3
    order = torch.argsort(clusters, stable=True)
    x, mask, clusters = x[order], mask[order], clusters[order]  # sorted, as the Trainer sorts
    params = small_params(family) if issubclass(get_model_class(family), LatentModel) else {}
    model = build_model(family, LAYOUT, 3, params, seed=2)
    indexes = [ClusterIndex(clusters, 3), ClusterIndex.grouped((20, 20, 20), 3, clusters),
               ClusterIndex.grouped((20, 20, 20), 3)]
    loss = model.loss(x, mask, clusters, generator=gen(7)).loss
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    imputed = model.impute(x, mask, clusters, generator=gen(8))
    for index in indexes:
        out = model.loss(x, mask, index, generator=gen(7)).loss
        assert torch.equal(out, loss)
        for a, b in zip(torch.autograd.grad(out, list(model.parameters()), allow_unused=True), grads):
            assert (a is None and b is None) or torch.equal(a, b)
        assert torch.equal(model.impute(x, mask, index, generator=gen(8)), imputed)
        draws = model.sample_imputations(x, mask, index, 2, generator=gen(9))
        assert torch.equal(draws, model.sample_imputations(x, mask, clusters, 2, generator=gen(9)))


def test_a_cluster_index_is_checked_against_the_batch_and_the_model():
    x, mask, clusters, _ = mixed_batch(8)
    model = build("cissvae", n_clusters=2)
    with pytest.raises(ValueError, match="ranges over 3 clusters but the model was built with n_clusters=2"):
        model.loss(x, mask, ClusterIndex(clusters, 3))
    with pytest.raises(ValueError, match="describes 5 rows but x has 8"):
        model.loss(x, mask, ClusterIndex.grouped((2, 3), 2))
    with pytest.raises(ValueError, match="describes 4 rows but x has 8"):
        model.impute(x, mask, ClusterIndex(clusters[:4], 2))
    # Families that do not take an index say what they want.
    mean = build_model("mean", LAYOUT, 2, {})
    assert not mean.accepts_cluster_index
    with pytest.raises(TypeError, match=r"clusters must be an int64 torch.Tensor \[n\], got ClusterIndex"):
        mean.check_batch(x, mask, ClusterIndex(clusters, 2))


def test_gaussian_head_split_is_one_node_with_the_sliced_values_and_gradients():
    # All-numeric data with a learned scale: split() returns (mean, clamped log-scale) from one
    # autograd node whose backward concatenates the two gradients once. Values and gradients
    # must be those of slicing raw and clamping the second half with hardtanh.
    from ciss_autoimpute.models.likelihoods import LOG_SCALE_MAX, LOG_SCALE_MIN, _GaussianHead

    head = MixedLikelihood(FeatureLayout.all_numeric(3), "gaussian")
    g = gen(5)
    raw = (6 * torch.randn(2, 7, 6, generator=g, dtype=torch.float64)).requires_grad_(True)
    assert (raw[..., 3:] < LOG_SCALE_MIN).any() and (raw[..., 3:] > LOG_SCALE_MAX).any()  # clamps bite
    p = head.split(raw)
    assert "GaussianHead" in type(p["mean"].grad_fn).__name__
    torch.testing.assert_close(p["mean"], raw[..., :3])
    torch.testing.assert_close(p["log_scale"], raw[..., 3:].clamp(LOG_SCALE_MIN, LOG_SCALE_MAX))
    up_mean, up_scale = torch.randn(2, 7, 3, generator=g, dtype=torch.float64), torch.randn(2, 7, 3, generator=g,
                                                                                            dtype=torch.float64)
    (got,) = torch.autograd.grad((p["mean"] * up_mean).sum() + (p["log_scale"] * up_scale).sum(), raw)
    sliced = raw[..., :3], torch.nn.functional.hardtanh(raw[..., 3:], LOG_SCALE_MIN, LOG_SCALE_MAX)
    (want,) = torch.autograd.grad((sliced[0] * up_mean).sum() + (sliced[1] * up_scale).sum(), raw)
    torch.testing.assert_close(got, want)
    # Only one block used: the other gets a zero gradient.
    (only_mean,) = torch.autograd.grad(head.split(raw)["mean"].sum(), raw)
    assert torch.equal(only_mean[..., 3:], torch.zeros(2, 7, 3, dtype=torch.float64))
    inside = (0.5 * torch.randn(4, 6, generator=g, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda r: _GaussianHead.apply(r, 3), (inside,))
    # Without gradients (imputation) the blocks stay plain slices.
    with torch.no_grad():
        assert head.split(raw)["mean"]._base is raw
    # The bound is unchanged by handing log_prob the blocks it would split itself.
    x, mask = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.rand(7, 3, generator=g) > 0.3
    torch.testing.assert_close(head.log_prob(raw, x, mask, params=head.split(raw)), head.log_prob(raw, x, mask))


def test_interpretation_marks_columns_never_missing_in_training():
    # Only x0 and x1 ever go missing here; x2 and x3 never do, so their slope and threshold
    # are learned from nothing: interpret_missing_process says so instead of naming a direction.
    x, observed, _ = _self_masked_gaussians(n=400)
    model, _ = _fit_plain("notmiwae", x, observed, {"hidden_dims": [16], "latent_dim": 2, "n_samples": 3}, steps=30)
    table = model.interpret_missing_process()
    assert table["had_missing"].tolist() == [True, True, False, False]
    assert list(table["direction"][2:]) == ["never missing", "never missing"]
    assert set(table["direction"][:2]) <= {"high values missing", "low values missing"}
    # The record travels with the weights; in eval mode the loss does not change it.
    state = model.state_dict()
    assert state["missing_seen"].tolist() == [True, True, False, False]
    model.eval()
    model.loss(x, torch.zeros_like(observed), torch.zeros(x.shape[0], dtype=torch.long), generator=gen())
    assert model.missing_seen.tolist() == [True, True, False, False]
    fresh = build_model("notmiwae", FeatureLayout.all_numeric(4), 1, {"hidden_dims": [16], "latent_dim": 2,
                                                                      "n_samples": 3})
    fresh.load_state_dict(state)
    assert fresh.interpret_missing_process()["had_missing"].tolist() == [True, True, False, False]
    # A file saved before the record existed loads with every column counted as seen.
    older = {k: v for k, v in state.items() if k != "missing_seen"}
    fresh.load_state_dict(older)
    assert fresh.missing_seen.all()


def _blocks_calls(monkeypatch):
    """Count the cluster-specific layer calls that run on padded cluster blocks."""
    from ciss_autoimpute.models.layers import ClusterLinear

    calls = []
    forward_blocks = ClusterLinear._forward_blocks

    def spy(self, x, index):
        calls.append(index.block)
        return forward_blocks(self, x, index)

    monkeypatch.setattr(ClusterLinear, "_forward_blocks", spy)
    return calls


def test_cissvae_trains_on_padded_cluster_blocks_with_the_segment_paths_values(monkeypatch):
    # Clusters of about equal size in a batch: the loss lays the rows out in equal blocks and
    # every cluster-specific layer runs one batched product. The loss, its parts and the
    # gradients must be those of the per-segment path (max_padding=None) up to rounding, with the
    # same noise per real row; the padding rows count nowhere.
    calls = _blocks_calls(monkeypatch)
    x, mask, _, _ = mixed_batch(60)
    clusters = torch.tensor([0, 1, 2] * 20)  # 20 rows each, unsorted: the loss groups them
    clusters[:3] = 2  # 22 / 19 / 19 rows: blocks of 22, 66 rows for 60 (10 % padding)
    model = build("cissvae", n_clusters=3, seed=3)
    assert model.max_padding == 0.2
    out = model.loss(x, mask, clusters, generator=gen(5))
    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    assert calls == [22] * 4  # two encoder layers, the latent and the output layer
    model.max_padding = None
    ref = model.loss(x, mask, clusters, generator=gen(5))
    ref_grads = torch.autograd.grad(ref.loss, list(model.parameters()))
    assert len(calls) == 4
    torch.testing.assert_close(out.loss, ref.loss)
    for k in ref.parts:
        torch.testing.assert_close(out.parts[k], ref.parts[k])
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # Too unequal for the default fifth of padding (50 / 5 / 5 rows): the segment products.
    model.max_padding = 0.2
    unequal = torch.zeros(60, dtype=torch.long)
    unequal[:5], unequal[5:10] = 1, 2
    model.loss(x, mask, unequal, generator=gen(5))
    assert len(calls) == 4
    # Under CPU autocast (precision="bf16-mixed") oneDNN compiles per shape: no blocks either.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.loss(x, mask, clusters, generator=gen(5))
    assert len(calls) == 4
    # Imputation and draws are no-gradient passes over whole chunks: segments, as before.
    model.impute(x, mask, clusters)
    model.sample_imputations(x, mask, clusters, 2, generator=gen(6))
    assert len(calls) == 4


def test_cissvae_loss_takes_a_batch_laid_out_in_blocks_by_the_caller(monkeypatch):
    # The Trainer lays a whole epoch out at once (block_layout) and hands the loss each batch
    # already padded, with an index of its blocks: loss, parts and gradients must be those of
    # the loss padding the grouped batch itself, and the padding rows must count nowhere.
    calls = _blocks_calls(monkeypatch)
    x, mask, _, _ = mixed_batch(60)
    counts = [22, 19, 19]
    grouped = ClusterIndex.grouped(counts, 3)
    model = build("cissvae", n_clusters=3, seed=3)
    assert model.batch_padding(torch.device("cpu")) == 0.2
    ref = model.loss(x, mask, grouped, generator=gen(5))
    ref_grads = torch.autograd.grad(ref.loss, list(model.parameters()))
    layout = block_layout([counts], model.max_padding)
    index = layout.index(0, counts)
    assert index.is_padded and layout.lengths == [66]
    rows = layout.local
    out = model.loss(x[rows], mask[rows], index, generator=gen(5))
    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    assert calls == [22] * 8  # the four cluster-specific layers, twice
    torch.testing.assert_close(out.loss, ref.loss)
    for k in ref.parts:
        torch.testing.assert_close(out.parts[k], ref.parts[k])
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # Whatever the padding rows (the copies ending blocks 1 and 2) hold, the loss does not change.
    is_copy = torch.zeros(66, dtype=torch.bool)
    is_copy[22 + 19:44] = is_copy[44 + 19:] = True
    noisy = x[rows].clone()
    noisy[is_copy] = 1e3
    torch.testing.assert_close(model.loss(noisy, mask[rows], index, generator=gen(5)).loss, ref.loss)
    # The index must describe the rows it is given.
    with pytest.raises(ValueError, match="describes 66 rows"):
        model.loss(x, mask, index, generator=gen(5))
    # Families whose loss does not lay rows out in blocks say so.
    assert build("cissvae", n_clusters=1).batch_padding(torch.device("cpu")) is None
    assert build("vae").batch_padding(torch.device("cpu")) is None
    assert build("miwae", n_clusters=3).batch_padding(torch.device("cpu")) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.batch_padding(torch.device("cpu")) is None


def test_padded_blocks_draw_the_same_noise_per_row():
    # The reparameterisation draws noise for the real rows (in the caller's order) and pads it
    # like them: the same generator state gives every real row the noise it gets unpadded.
    g = gen(4)
    mu, logvar = torch.randn(7, 3, generator=g), torch.zeros(7, 3)
    index = ClusterIndex.grouped((3, 4), 2)
    blocks = index.padded_blocks(1.0)
    plain = LatentModel.reparameterise(mu, logvar, gen(9))
    padded = LatentModel.reparameterise(blocks.pad(mu), blocks.pad(logvar), gen(9), blocks=blocks)
    assert torch.equal(padded, blocks.pad(plain))
    order = torch.tensor([6, 0, 1, 2, 3, 4, 5])
    assert torch.equal(
        LatentModel.reparameterise(blocks.pad(mu), blocks.pad(logvar), gen(9), order=order, blocks=blocks),
        blocks.pad(LatentModel.reparameterise(mu, logvar, gen(9), order=order)),
    )
