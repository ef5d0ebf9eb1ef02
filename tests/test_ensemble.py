"""Ensembles of trials: greedy selection on the holdout, the EnsembleImputer, and autotune's use of them."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

from ciss_autoimpute import ClusterDataset, Imputer, SearchSpace, autotune
from ciss_autoimpute.data.layout import EncodedData, FeatureLayout
from ciss_autoimpute.ensemble import EnsembleImputer, select_ensemble
from ciss_autoimpute.exceptions import ModelFileError, NotFittedError
from ciss_autoimpute.training.metrics import validation_score

pytestmark = [
    pytest.mark.filterwarnings("ignore::ciss_autoimpute.exceptions.ClusteringFallbackWarning"),
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
]


def _holdout_data(truth: torch.Tensor) -> EncodedData:
    n, d = truth.shape
    val = torch.ones(n, d, dtype=torch.bool)
    return EncodedData(
        x=torch.zeros(n, d), observed=val, train_mask=~val, val_mask=val, x_val=truth,
        clusters=torch.zeros(n, dtype=torch.long), n_clusters=1, layout=FeatureLayout.all_numeric(d),
    )


# ---------------------------------------------------------------------------- selection
def test_selection_averages_errors_that_cancel_and_drops_a_useless_candidate():
    rng = np.random.default_rng(0)
    truth = torch.from_numpy(rng.normal(size=(200, 2))).float()
    data = _holdout_data(truth)
    flat = truth.flatten()
    noise_a = torch.from_numpy(rng.normal(size=flat.shape)).float()
    noise_b = torch.from_numpy(rng.normal(size=flat.shape)).float()
    a, b = flat + 0.5 * noise_a, flat + 0.5 * noise_b  # independent errors: the average halves their variance
    junk = torch.zeros_like(flat) + 3.0  # far off everywhere
    sel = select_ensemble([junk, a, b], data, rounds=10)
    assert sel.counts[0] == 0
    assert sel.members == [1, 2]
    assert sel.weights[1] == pytest.approx(sel.weights[2], abs=0.21)
    assert sum(sel.weights) == pytest.approx(1.0)
    # The bag's score is the metric of its weighted average, and beats either member.
    avg = sum(w * p for w, p in zip(sel.weights, [junk, a, b]))
    x = data.x.clone()
    x[data.val_mask] = avg
    assert sel.score == pytest.approx(validation_score(x, data).total, rel=1e-5)
    assert sel.score < 0.85 * sel.single_score
    assert sel.path[0] == sel.single_score and min(sel.path) == pytest.approx(sel.score)


def test_selection_keeps_the_single_best_when_mixing_does_not_help():
    truth = torch.linspace(-2, 2, 50).reshape(25, 2)
    data = _holdout_data(truth)
    exact = truth.flatten().clone()
    worse = exact + 1.0
    sel = select_ensemble([worse, exact], data, rounds=5)
    assert sel.members == [1] and sel.weights == [0.0, 1.0]
    assert sel.score == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    ("preds", "rounds", "message"),
    [
        ([], 5, "holdout_predictions is empty"),
        ([torch.zeros(3)], 5, r"1-D tensor of the 8 held-out cells"),
        ([torch.zeros(8)], 0, "rounds must be an integer >= 1"),
    ],
)
def test_selection_refuses_bad_input(preds, rounds, message):
    data = _holdout_data(torch.zeros(4, 2))
    with pytest.raises(ValueError, match=message):
        select_ensemble(preds, data, rounds=rounds)


# ---------------------------------------------------------------------------- EnsembleImputer
def _frame(n=120, seed=0, curved=True):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    df = pd.DataFrame({
        "a": a,
        "b": 2.0 * a + 0.3 * rng.normal(size=n),
        "e": (np.sin(2 * a) + 0.1 * rng.normal(size=n)) if curved else a + 0.3 * rng.normal(size=n),
        "c": pd.Categorical(np.where(a > 0.5, "hi", np.where(a < -0.5, "lo", "mid"))),
    })
    for i, col in enumerate(df.columns):
        df.loc[rng.random(n) < 0.2, col] = np.nan if i < 3 else pd.NA
    return df


@pytest.fixture(scope="module")
def members():
    df = _frame()
    knn = Imputer(model="knn", model_params={"n_neighbors": 5}, seed=1, device="cpu").fit(df.iloc[:90])
    mice = Imputer(model="mice", model_params={"max_iter": 3}, seed=1, device="cpu").fit(df.iloc[:90])
    return df, knn, mice


def test_transform_is_the_weighted_average_on_the_encoded_scale(members):
    df, knn, mice = members
    ens = EnsembleImputer([knn, mice], [1.0, 3.0])
    assert ens.weights_ == [0.25, 0.75]
    new = df.iloc[90:]
    out = ens.transform(new)
    assert not out.isna().any().any()
    pd.testing.assert_index_equal(out.index, new.index)
    assert list(out.dtypes) == list(new.dtypes)
    a, b = knn.transform(new), mice.transform(new)
    num = ["a", "b", "e"]
    np.testing.assert_allclose(out[num].to_numpy(float), 0.25 * a[num].to_numpy(float) + 0.75 * b[num].to_numpy(float),
                               rtol=1e-5, atol=1e-5)
    observed = new.notna()
    for col in new.columns:
        assert (out.loc[observed[col], col] == new.loc[observed[col], col]).all(), col
    # The category is the one with the highest averaged probability.
    values, obs = knn.schema_.encode(new)
    pk = knn._impute_encoded(new, values, obs, None).numpy()
    pm = mice._impute_encoded(new, values, obs, None).numpy()
    spec = next(s for s in knn.schema_.specs if s.name == "c")
    block = slice(spec.start, spec.stop)
    expected = np.array([str(v) for v in spec.levels])[np.argmax(0.25 * pk[:, block] + 0.75 * pm[:, block], axis=1)]
    miss = new["c"].isna().to_numpy()
    assert miss.any()
    assert list(out.loc[miss, "c"].astype(str)) == list(expected[miss])


def test_save_and_load_round_trip_and_integrity(members, tmp_path):
    df, knn, mice = members
    ens = EnsembleImputer([knn, mice], [0.6, 0.4], trial_numbers=[3, 7])
    ens.best_score_ = 0.5
    path = ens.save(tmp_path / "ens.pt")
    payload = torch.load(path, weights_only=True)  # JSON and tensors only
    assert payload["format"] == "ciss_autoimpute.ensemble"
    loaded = Imputer.load(path)
    assert isinstance(loaded, EnsembleImputer)
    assert loaded.weights_ == pytest.approx([0.6, 0.4]) and loaded.trial_numbers_ == [3, 7]
    assert loaded.best_score_ == 0.5
    pd.testing.assert_frame_equal(loaded.transform(df), ens.transform(df))
    payload["meta"] = payload["meta"].replace("0.6", "0.9")
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(ModelFileError, match="does not match its checksum"):
        Imputer.load(tmp_path / "tampered.pt")
    knn.save(tmp_path / "single.pt")
    with pytest.raises(ModelFileError, match="holds a single Imputer"):
        EnsembleImputer.load(tmp_path / "single.pt")


def test_sample_draws_each_copy_from_one_member(members):
    df, knn, mice = members
    ens = EnsembleImputer([knn, mice], [0.5, 0.5])
    new = df.iloc[90:]
    copies = ens.sample(new, n=6, seed=3)
    assert len(copies) == 6 and all(not c.isna().any().any() for c in copies)
    again = ens.sample(new, n=6, seed=3)
    for c, d in zip(copies, again):
        pd.testing.assert_frame_equal(c, d)
    # Every copy is a draw of one member: knn's donors are observed values of the training rows.
    donors = df.iloc[:90]["a"].dropna().to_numpy()
    miss = new["a"].isna().to_numpy()
    # float32 encoding: a donor comes back within ~1e-6 of its value.
    # (A knn draw may also fall back to another rule for a row without a donor, so count
    # a copy as knn's when most of its cells are donor values; MICE's normal draws never are.)
    from_knn = [float(np.mean(np.min(np.abs(c.loc[miss, "a"].to_numpy()[:, None] - donors), axis=1) < 1e-5)) > 0.5
                for c in copies]
    assert 0 < sum(from_knn) < 6
    ivals = ens.intervals(new, level=0.8, n=10, seed=0)
    assert (ivals.xs("lower", axis=1, level="bound") <= ivals.xs("upper", axis=1, level="bound")).all().all()
    with pytest.raises(ValueError, match="leave method=None"):
        ens.sample(new, n=2, method="lair")


def test_members_must_be_fitted_on_the_same_data(members):
    df, knn, _ = members
    other = Imputer(model="mean", device="cpu").fit(df[["a", "b", "e"]])
    with pytest.raises(ValueError, match=r"members\[1\] was fitted on other columns"):
        EnsembleImputer([knn, other], [0.5, 0.5])
    with pytest.raises(ValueError, match="weights must be 2 finite non-negative"):
        EnsembleImputer([knn, knn], [0.5, -0.5])
    unfitted = EnsembleImputer([Imputer(model="mean")], [1.0])
    with pytest.raises(NotFittedError, match=r"call fit\(X\) first"):
        unfitted.transform(df)


def test_fit_refits_clones_of_the_members_and_keeps_the_weights(members):
    from sklearn.base import clone
    from sklearn.pipeline import make_pipeline

    df, knn, mice = members
    ens = EnsembleImputer([knn, mice], [0.25, 0.75], trial_numbers=[4, 9])
    ens.fit_imputed_ = "from the tuning data"
    refit = ens.fit(df)
    assert refit is ens and not hasattr(ens, "fit_imputed_")
    assert ens.members_[0] is not knn and ens.weights_ == [0.25, 0.75]
    # Each member is its configuration refit on all 120 rows, not the 90-row fit passed in.
    expected = Imputer(**knn.get_params()).fit(df)
    pd.testing.assert_frame_equal(ens.members_[0].transform(df), expected.transform(df))
    # scikit-learn machinery: clone gives unfitted members; a pipeline fits and transforms.
    fresh = clone(ens)
    with pytest.raises(NotFittedError):
        fresh.transform(df)
    out = make_pipeline(fresh).fit_transform(df)
    pd.testing.assert_frame_equal(out, ens.transform(df))


# ---------------------------------------------------------------------------- autotune
def test_autotune_returns_an_ensemble_that_beats_its_best_trial_on_the_holdout():
    df = _frame(n=200, seed=1)
    ds = ClusterDataset(df, n_clusters=1, val_proportion=0.2, seed=0, device="cpu")
    space = SearchSpace({"mean": {}, "knn": {}, "mice": {}})
    tuned = autotune(space, ds, n_trials=3, seed=0, show_progress=False)
    assert isinstance(tuned.imputer, EnsembleImputer)
    assert tuned.ensemble_value < tuned.best_value
    assert len(tuned.ensemble_weights) >= 2 and sum(tuned.ensemble_weights.values()) == pytest.approx(1.0)
    assert tuned.study.user_attrs["ensemble"]["value"] == pytest.approx(tuned.ensemble_value)
    # The completed frame is the weighted average of the members' imputations of the missing cells.
    members = {t: m for t, m in zip(tuned.imputer.trial_numbers_, tuned.imputer.members_)}
    num = ["a", "b", "e"]
    # Closed-form members are refit on every observed cell, so transform() on the training
    # data gives exactly what the trial kept for its missing cells.
    expected = sum(w * members[t].transform(df)[num].to_numpy(float) for t, w in tuned.ensemble_weights.items())
    np.testing.assert_allclose(tuned.imputed[num].to_numpy(float), expected, rtol=1e-5, atol=1e-5)
    observed = df.notna()
    for col in df.columns:
        assert (tuned.imputed.loc[observed[col], col] == df.loc[observed[col], col]).all(), col
    # Kept predictions are released once the ensemble is built.
    assert not any(hasattr(m, "predictions_") for m in tuned.imputer.members_)

    single = autotune(space, ds, n_trials=3, seed=0, show_progress=False, ensemble=0)
    assert isinstance(single.imputer, Imputer) and single.ensemble_weights == {} and single.ensemble_value is None
    assert single.best_value == tuned.best_value


@pytest.mark.parametrize("bad", [-1, 2.5, "8", True])
def test_autotune_refuses_a_bad_ensemble_size(bad):
    with pytest.raises(ValueError, match="ensemble must be a non-negative integer"):
        autotune(SearchSpace({"mean": {}}), _frame(), n_trials=1, ensemble=bad, show_progress=False)


def test_cli_tune_saves_the_ensemble_and_can_turn_it_off(tmp_path):
    import json

    from test_cli import assert_ok, assert_usage_error, run_cli

    csv = tmp_path / "data.csv"
    # Linear columns: KNN and MICE come close on the CLI's default holdout, and a mix beats both.
    _frame(n=200, seed=1, curved=False).to_csv(csv, index=False)
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"families": {"mean": {}, "knn": {}, "mice": {}}}))
    proc = run_cli("tune", csv, "--space", space, "--trials", 3, "--save-model", tmp_path / "ens.pt",
                   "-o", tmp_path / "out.csv", "--device", "cpu")
    assert_ok(proc)
    assert "; ensemble (#" in proc.stderr
    # `impute` (model auto) says what it used.
    auto = run_cli("impute", csv, "-o", tmp_path / "auto.csv", "--trials", 3, "--time-budget", 60, "--device", "cpu")
    assert_ok(auto)
    assert re.search(r"rows with an ensemble of \w+ \d\.\d\d(, \w+ \d\.\d\d)+ \(validation", auto.stderr)
    loaded = Imputer.load(tmp_path / "ens.pt")
    assert isinstance(loaded, EnsembleImputer) and len(loaded.members_) >= 2
    out = pd.read_csv(tmp_path / "out.csv")
    assert not out.isna().any().any()
    # The report names the members and their weights.
    assert_ok(run_cli("tune", csv, "--space", space, "--trials", 3, "--report", tmp_path / "rep", "--device", "cpu"))
    index = (tmp_path / "rep" / "index.md").read_text()
    assert "## Ensemble" in index and "| knn |" in index

    proc = run_cli("tune", csv, "--space", space, "--trials", 3, "--ensemble", 0, "--save-model",
                   tmp_path / "one.pt", "--device", "cpu")
    assert_ok(proc)
    assert "ensemble" not in proc.stderr
    assert isinstance(Imputer.load(tmp_path / "one.pt"), Imputer)
    assert_usage_error(run_cli("tune", csv, "--ensemble", -1), "non-negative integer")
