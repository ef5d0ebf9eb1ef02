"""The classical families (mean, knn, mice, missforest): oracles against scikit-learn,
the closed-form path of the Trainer, persistence, sampling, and their place in autotune."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from sklearn.ensemble import RandomForestRegressor
from sklearn.experimental import enable_iterative_imputer  # noqa: F401
from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer
from sklearn.linear_model import BayesianRidge
from test_conformance import mixed_set, numeric_set

from ciss_autoimpute import ClusterDataset, Imputer, SearchSpace, autotune
from ciss_autoimpute.models.registry import build_model
from ciss_autoimpute.sampling import sample_conditional
from ciss_autoimpute.training import Callback, RefitConfig, TrainConfig, Trainer
from ciss_autoimpute.training.metrics import validation_score
from ciss_autoimpute.tuning.autotune import WARM_START_ATTR, enqueue_warm_start, warm_start_params

CLASSICAL = ("mean", "knn", "mice", "missforest")
#: Small forests keep the file fast; the oracle uses the very same settings.
PARAMS = {
    "mean": {},
    "knn": {"n_neighbors": 7, "weights": "distance"},
    "mice": {"max_iter": 4},
    "missforest": {"n_estimators": 10, "max_depth": 6, "max_features": "sqrt", "max_iter": 2},
}


def _fit(family, data, seed=3, **params):
    model = build_model(family, data.layout, data.n_clusters, {**PARAMS[family], **params}, seed=seed)
    return Trainer(model, TrainConfig(), RefitConfig(max_loops=1), seed=0, device="cpu").fit(data)


def _sklearn_reference(family, X, lo, hi, seed=3):
    p = PARAMS[family]
    if family == "mean":
        return SimpleImputer(strategy="mean").fit_transform(X)
    if family == "knn":
        return KNNImputer(n_neighbors=p["n_neighbors"], weights=p["weights"]).fit_transform(X)
    if family == "mice":
        est = BayesianRidge()
    else:
        est = RandomForestRegressor(n_estimators=p["n_estimators"], max_depth=p["max_depth"],
                                    max_features=p["max_features"], random_state=seed)
    return IterativeImputer(
        estimator=est, max_iter=p["max_iter"], random_state=seed, min_value=lo, max_value=hi
    ).fit_transform(X)


# ---------------------------------------------------------------------------- oracles
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("family", CLASSICAL)
def test_reproduces_scikit_learn_on_the_same_holdout(family):
    data, _ = mixed_set()
    result = _fit(family, data)
    lo = np.r_[[-np.inf] * 3, [0.0] * 5]
    hi = np.r_[[np.inf] * 3, [1.0] * 5]

    def reference(X):
        ref = _sklearn_reference(family, X, lo, hi)
        # The documented finishing step: one-hot shares clipped and divided by their sum.
        cat = np.clip(ref[:, 5:8], 0, 1)
        ref[:, 5:8] = cat / cat.sum(1, keepdims=True)
        return ref

    # The score: scikit-learn on the training cells only (NaN on missing and held-out cells).
    train = data.train_mask.numpy()
    ref_train = reference(np.where(train, data.x.double().numpy(), np.nan))
    scored = torch.where(data.train_mask, data.x, torch.from_numpy(ref_train).float())
    expected = validation_score(scored, data)
    assert result.best_score.total == pytest.approx(expected.total, rel=1e-5, abs=1e-6)
    # The model kept: refit on every observed cell, the holdout's values included.
    x_all = torch.where(data.val_mask, data.x_val, data.x).double().numpy()
    observed = data.observed.numpy()
    ref_all = reference(np.where(observed, x_all, np.nan))
    ours = result.imputed.double().numpy()
    np.testing.assert_allclose(ours[~observed], ref_all[~observed], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ours[observed], x_all[observed].astype(np.float32))
    if family != "mean":  # the refit changed something (the mean of a column can stay put)
        assert not np.allclose(ours[~observed], ref_train[~observed], rtol=1e-5, atol=1e-6)


def test_mean_decodes_to_mean_and_mode():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({
        "x": rng.normal(size=60),
        "c": pd.Categorical(rng.choice(["a", "b", "c"], size=60, p=[0.2, 0.5, 0.3])),
    })
    holed = df.copy()
    holed.loc[::6, "x"] = np.nan
    holed.loc[1::6, "c"] = np.nan
    imp = Imputer(model="mean", val_proportion=0.0, train_params={"max_loops": 0}, device="cpu", n_clusters=1)
    out = imp.fit_transform(holed)
    np.testing.assert_allclose(out.loc[::6, "x"], holed["x"].mean(), rtol=1e-6)
    assert (out.loc[1::6, "c"] == holed["c"].mode()[0]).all()


# ---------------------------------------------------------------------------- trainer path
class _Hooks(Callback):
    def __init__(self):
        self.calls = []

    def on_fit_start(self, trainer, data):
        self.calls.append("start")

    def on_epoch_end(self, trainer, record):
        self.calls.append("epoch")

    def on_loop_end(self, trainer, record):
        self.calls.append(("loop", record["loop"], record["epochs"], record["lr"]))

    def on_fit_end(self, trainer, result):
        self.calls.append("end")


def test_trainer_fits_once_scores_the_holdout_and_runs_the_callbacks():
    data, _ = numeric_set()
    hooks = _Hooks()
    model = build_model("knn", data.layout, data.n_clusters)
    result = Trainer(model, TrainConfig(epochs=50), RefitConfig(max_loops=5), callbacks=[hooks], seed=0,
                     device="cpu").fit(data)
    assert hooks.calls == ["start", ("loop", 0, 0, None), "end"]
    assert result.epoch_history == [] and result.n_epochs == 0 and result.best_loop == 0
    assert result.stop_reason == "closed_form" and len(result.loop_history) == 1
    assert result.best_score.total == pytest.approx(result.loop_history[0]["val"])
    assert torch.equal(result.imputed[data.train_mask], data.x[data.train_mask])
    with pytest.raises(TypeError, match="fitted in closed form and has no loss"):
        model.loss(data.x, data.train_mask, data.clusters)


@pytest.mark.parametrize(
    "family, params, message",
    [
        ("knn", {"n_neighbors": 0}, "'n_neighbors' must be an integer >= 1, got 0"),
        ("knn", {"weights": "gaussian"}, r"'weights' must be one of \['distance', 'uniform'\], got 'gaussian'"),
        ("mice", {"max_iter": 2.5}, "'max_iter' must be an integer >= 1, got 2.5"),
        ("missforest", {"n_estimators": -3}, "'n_estimators' must be an integer >= 1, got -3"),
        ("missforest", {"max_depth": 0}, "'max_depth' must be an integer >= 1, got 0"),
        ("missforest", {"max_features": 2.0}, r"'max_features' must be 'sqrt', 'log2' or a fraction in \(0, 1\]"),
        ("mean", {"k": 3}, r"Unknown parameter\(s\) \['k'\] for model 'mean'; it accepts \[\]"),
    ],
)
def test_bad_params_raise(family, params, message):
    data, _ = numeric_set(n=20)
    with pytest.raises(ValueError, match=message):
        build_model(family, data.layout, 1, params)
    with pytest.raises(ValueError, match=message):
        # Checked before any clustering or fitting (these 4 rows would be refused later).
        Imputer(model=family, model_params=params).fit(pd.DataFrame({"a": [1.0, np.nan, 3.0, 4.0]}))


def test_imputing_before_fit_raises():
    data, _ = numeric_set(n=20)
    model = build_model("mice", data.layout, data.n_clusters)
    with pytest.raises(ValueError, match="not fitted"):
        model.impute(data.x, data.train_mask, data.clusters)


# ---------------------------------------------------------------------------- persistence
def _frame(n=120, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    df = pd.DataFrame({
        "a": a,
        "b": np.where(a > 0, 2.0, -1.0) + 0.1 * rng.normal(size=n),
        "c": pd.Categorical(np.where(a > 0.5, "hi", np.where(a < -0.5, "lo", "mid"))),
        "d": pd.array(a > 0, dtype="boolean"),
    })
    for i, col in enumerate(df.columns):
        df.loc[rng.random(n) < 0.2, col] = np.nan if i < 2 else pd.NA
    return df


@pytest.mark.filterwarnings("ignore::ciss_autoimpute.exceptions.ClusteringFallbackWarning")
@pytest.mark.parametrize("family", CLASSICAL)
def test_save_load_transform_is_identical_and_new_rows_work(family, tmp_path):
    df = _frame()
    imp = Imputer(model=family, model_params=PARAMS[family], seed=5, device="cpu").fit(df.iloc[:90])
    new_rows = df.iloc[90:]
    before = imp.transform(new_rows)
    assert not before.isna().any().any()
    observed = new_rows.notna()
    pd.testing.assert_frame_equal(before[observed.all(axis=1)], new_rows[observed.all(axis=1)])
    path = imp.save(tmp_path / f"{family}.pt")
    payload = torch.load(path, weights_only=True)  # tensors and JSON only: no pickle
    assert isinstance(payload["config"], str)
    loaded = Imputer.load(path)
    pd.testing.assert_frame_equal(loaded.transform(new_rows), before)
    pd.testing.assert_frame_equal(loaded.transform(df.iloc[:90]), imp.transform(df.iloc[:90]))
    assert int(loaded.model_.fit_seed) == 5


# ---------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("family", CLASSICAL)
def test_sample_imputations_are_seeded_draws(family):
    data, _ = mixed_set(n=120)
    model = _fit(family, data).model
    x, mask, clusters = data.x, data.train_mask, data.clusters

    def draw(seed):
        return model.sample_imputations(x, mask, clusters, 3, generator=torch.Generator().manual_seed(seed))

    draws = draw(0)
    assert draws.shape == (3, *x.shape)
    assert torch.equal(draws[:, mask], x[mask].expand(3, -1))
    assert set(draws[..., 3:8].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(draws[..., 5:8].sum(-1), torch.ones(draws.shape[:2]))
    assert not torch.equal(draws[0], draws[1])
    assert torch.equal(draws, draw(0))
    with pytest.raises(ValueError, match="positive integer, got 0"):
        model.sample_imputations(x, mask, clusters, 0)


def test_knn_draws_are_donors_that_average_to_the_imputation():
    data, _ = numeric_set(n=150)
    model = _fit("knn", data, weights="uniform", n_neighbors=4).model
    # The model kept was refit on every observed cell, the holdout's values included.
    x = torch.where(data.val_mask, data.x_val, data.x)
    mask, clusters = data.observed, data.clusters
    draws = model.sample_imputations(x, mask, clusters, 400, generator=torch.Generator().manual_seed(1))
    single = model.impute(x, mask, clusters)
    miss = ~mask
    # Every drawn value is some training row's observed value of that column.
    col = torch.nonzero(miss)[0, 1]
    donors = set(x[mask[:, col], col].tolist())
    assert set(draws[:, miss[:, col], col].flatten().tolist()) <= donors
    # Uniform draws among the 4 neighbours average to their mean (the KNN imputation).
    gap = (draws.mean(0) - single)[miss].abs()
    assert float(gap.median()) < 0.1, float(gap.median())


def test_latent_samplers_refuse_the_classical_families():
    data, _ = numeric_set(n=60)
    model = _fit("mice", data).model
    with pytest.raises(TypeError, match="must be a trained latent-variable family .* got MICEFamily"):
        sample_conditional(model, data.x, data.train_mask, data.clusters, 2, method="mwg")
    imp = Imputer(model="mean", device="cpu").fit(_frame(60))
    with pytest.raises(ValueError, match="method='lair' needs a latent-variable model .* 'mean' family"):
        imp.sample(_frame(60), n=2, method="lair")
    with pytest.raises(ValueError, match=r"sampler options \['chains'\] apply to the latent-variable samplers"):
        imp.sample(_frame(60), n=2, chains=3)
    copies = imp.sample(_frame(60), n=2, seed=0)
    assert len(copies) == 2 and not copies[0].isna().any().any()


# ---------------------------------------------------------------------------- autotune
def test_presets_hold_the_classical_families_with_small_spaces():
    default, quick = SearchSpace.preset("default"), SearchSpace.preset("quick")
    for space in (default, quick):
        assert set(CLASSICAL) <= set(space.family_names)
    assert default.families["knn"]["n_neighbors"].low == 3 and default.families["knn"]["n_neighbors"].high == 30
    assert quick.families["missforest"]["max_iter"].high <= 4
    # Closed-form trials sample no training or clustering options.
    config = SearchSpace(["mice"], clustering={"n_clusters": (1, 3)}).sample(optuna.trial.FixedTrial({"mice.max_iter": 4}))
    assert config.model_params == {"max_iter": 4} and config.train_params == {} and config.clustering_params == {}
    assert warm_start_params(default)["missforest"] == {
        "model": "missforest", "missforest.max_depth": None, "missforest.max_features": "sqrt",
        "missforest.max_iter": 5, "missforest.n_estimators": 100,
    }
    # Trained families only when named (a study of several deep families would spend
    # one long trial on each) or when the space holds nothing else.
    assert "vae" not in warm_start_params(default)
    vae = warm_start_params(default, families=["vae"])["vae"]
    replayed = default.sample(optuna.trial.FixedTrial(vae))
    assert replayed.model_params == default.fixed_config("vae").model_params
    assert replayed.model_params["hidden_dims"] == [128, 64]  # the depth and widths, not the first choices
    assert replayed.train_params == default.fixed_config("vae").train_params
    # A default the sampler cannot replay (cissvae's layer order, built from meta
    # parameters) is refused when named and skipped when not.
    cissvae = SearchSpace.preset("cissvae")
    with pytest.raises(ValueError, match="cannot replay 'cissvae''s default configuration"):
        warm_start_params(cissvae, families=["cissvae"])
    assert warm_start_params(cissvae) == {}


def _step_data(n=240, seed=0):
    """Step functions of two uniform inputs: trees' home ground, hard for linear and distance models."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(-1, 1, size=(n, 2))
    df = pd.DataFrame({
        "u0": u[:, 0], "u1": u[:, 1],
        "s0": 3.0 * (u[:, 0] > 0) + 0.05 * rng.normal(size=n),
        "s1": 2.0 * np.floor(2 * u[:, 1]) + 0.05 * rng.normal(size=n),
        "s2": 3.0 * ((u[:, 0] > 0) & (u[:, 1] > 0)) + 0.05 * rng.normal(size=n),
        "s3": 3.0 * (u[:, 0] > 0.5) - 2.0 * (u[:, 1] < -0.5) + 0.05 * rng.normal(size=n),
    })
    return df.mask(rng.random(df.shape) < 0.2)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_default_preset_study_picks_missforest_where_it_wins():
    ds = ClusterDataset(_step_data(), n_clusters=1, val_proportion=0.15, seed=0, device="cpu")
    default = SearchSpace.preset("default")
    # Every family of the default preset is present; deep training and forests are shrunk for speed.
    families = {name: {} for name in default.family_names}
    families["missforest"] = {"n_estimators": 20, "max_iter": 3}
    space = SearchSpace(families, train={"epochs": 5, "max_loops": 1, "epochs_per_loop": 2, "batch_size": 128})
    tuned = autotune(space, ds, n_trials=7, seed=0, show_progress=False)
    assert tuned.best_config["model"] == "missforest"
    trials = tuned.trials
    first = trials.sort_values("number").head(5)
    # Warm start: the classical defaults first, cheapest first (ties by name), never pruned.
    assert list(first["user_attrs_model"]) == ["mean", "em", "knn", "mice", "missforest"]
    assert (first["state"] == "COMPLETE").all()
    assert list(first["user_attrs_warm_start"]) == ["mean", "em", "knn", "mice", "missforest"]
    # The trials table shows how each family fared; the deep ones lose here.
    by_family = trials[trials["state"] == "COMPLETE"].groupby("user_attrs_model")["value"].min()
    assert by_family.idxmin() == "missforest" and by_family["missforest"] < by_family["mean"] * 0.7
    assert len(set(trials["user_attrs_model"])) >= 6
    assert not tuned.imputed.isna().any().any()


def test_warm_start_is_not_repeated_on_resume_or_by_a_second_worker(tmp_path):
    df = _step_data(n=80)
    ds = ClusterDataset(df, n_clusters=1, seed=0, device="cpu")
    space = SearchSpace(["knn", "mean"])
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    autotune(space, ds, n_trials=2, storage=storage, study_name="s", show_progress=False)
    tuned = autotune(space, ds, n_trials=1, storage=storage, study_name="s", show_progress=False)
    marked = [t.user_attrs.get(WARM_START_ATTR) for t in tuned.study.trials]
    assert sorted(m for m in marked if m) == ["knn", "mean"] and len(marked) == 3
    # Two workers racing on a new study may both queue a family: the later trial steps aside.
    study = tuned.study
    assert enqueue_warm_start(study, space) == []
    study.enqueue_trial({"model": "mean"}, user_attrs={WARM_START_ATTR: "mean"})
    tuned = autotune(space, ds, n_trials=1, storage=storage, study_name="s", show_progress=False)
    dup = tuned.study.trials[-1]
    assert dup.state == optuna.trial.TrialState.FAIL
    assert "already runs the default configuration of 'mean'" in dup.user_attrs["fail_reason"]
    fresh = autotune(space, ds, n_trials=1, show_progress=False, warm_start=False)
    assert WARM_START_ATTR not in fresh.study.trials[0].user_attrs
    # A run shorter than the list of families queues the cheapest and leaves nothing waiting.
    short = autotune(SearchSpace(["missforest", "knn", "mean"]), ds, n_trials=2, show_progress=False)
    assert [t.user_attrs[WARM_START_ATTR] for t in short.study.trials] == ["mean", "knn"]
    with pytest.raises(TypeError, match="warm_start must be True or False, got 'yes'"):
        autotune(space, ds, n_trials=1, show_progress=False, warm_start="yes")


def test_a_single_trained_family_study_starts_from_its_defaults():
    ds = ClusterDataset(_step_data(n=80), n_clusters=1, seed=0, device="cpu")
    space = SearchSpace({"vae": {"latent_dim": (2, 16), "beta": (0.1, 2.0)}},
                        train={"epochs": 3, "max_loops": 1, "epochs_per_loop": 2})
    tuned = autotune(space, ds, n_trials=2, seed=0, show_progress=False)
    first, second = sorted(tuned.study.trials, key=lambda t: t.number)
    assert first.user_attrs[WARM_START_ATTR] == "vae" and WARM_START_ATTR not in second.user_attrs
    # The family's defaults, architecture included.
    assert {k: first.params[k] for k in ("vae.latent_dim", "vae.beta", "vae.num_hidden_layers",
                                          "vae.hidden_dim_0", "vae.hidden_dim_1")} == {
        "vae.latent_dim": 16, "vae.beta": 1.0, "vae.num_hidden_layers": 2, "vae.hidden_dim_0": 128,
        "vae.hidden_dim_1": 64}
    assert first.state == optuna.trial.TrialState.COMPLETE


def test_cli_impute_with_missforest(tmp_path):
    from ciss_autoimpute.cli import main

    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    _step_data(n=60).to_csv(src, index=False)
    code = main(["impute", str(src), "-o", str(dst), "--model", "missforest", "--seed", "0"])
    assert code in (0, None)
    out = pd.read_csv(dst)
    assert out.shape == (60, 6) and not out.isna().any().any()
