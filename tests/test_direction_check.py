"""autotune's direction check: trials whose learned self-masking direction contradicts the
one the observed data calls are left out of the returned model."""

from __future__ import annotations

import logging
import warnings
import sys

import numpy as np
import optuna
import pandas as pd
import pytest

from ciss_autoimpute import ClusterDataset, SearchSpace, autotune, missingness_direction_evidence, run_imputation
from ciss_autoimpute.tuning import Fixed, direction_outliers
from ciss_autoimpute.tuning.autotune import DIRECTIONS_ATTR, learned_directions

TINY_TRAIN = {"epochs": 6, "max_loops": 2, "epochs_per_loop": 3, "batch_size": 64, "patience": 1}


def test_outliers_are_the_trials_against_a_called_direction():
    learned = {0: {"a": 1, "b": 1, "c": -1}, 1: {"a": -1, "b": -1}, 2: {"b": 1}}
    # a is called +1, b not called (0), c called +1; d names no trial.
    assert direction_outliers(learned, {"a": 1, "b": 0, "c": 1, "d": -1}) == {0: ["c"], 1: ["a"]}
    assert direction_outliers(learned, {}) == {}


def test_outliers_refuse_a_direction_that_is_not_a_sign():
    with pytest.raises(ValueError, match=r"direction of 'a' in trial 0 must be \+1 or -1, got 0"):
        direction_outliers({0: {"a": 0}}, {"a": 1})
    with pytest.raises(ValueError, match=r"reference direction of 'a' must be \+1, -1 or 0, got 2"):
        direction_outliers({0: {"a": 1}}, {"a": 2})


def _self_masked(direction: int, n: int = 400, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """x0..x2 correlated, x3 independent; x0 loses its high (direction +1) or low (-1) values."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    full = np.column_stack([z + 0.4 * rng.normal(size=n), z + 0.4 * rng.normal(size=n),
                            -z + 0.4 * rng.normal(size=n), rng.normal(size=n)])
    holed = full.copy()
    gone = (direction * full[:, 0] > 0.3) & (rng.random(n) < 0.7)
    holed[gone, 0] = np.nan
    holed[rng.random(n) < 0.1, 3] = np.nan  # MCAR
    return pd.DataFrame(holed, columns=["x0", "x1", "x2", "x3"]), full


@pytest.mark.parametrize("direction", [1, -1])
def test_the_observed_data_calls_the_planted_direction(direction):
    df, _ = _self_masked(direction)
    before = df.copy()
    ds = ClusterDataset(df, n_clusters=1, seed=0, device="cpu")
    evidence = missingness_direction_evidence(ds)
    assert list(evidence.index) == ["x0", "x3"]  # the columns with missing cells
    assert evidence.loc["x0", "direction"] == direction and direction * evidence.loc["x0", "t"] > 10
    # x3 is MCAR and unrelated to the rest: no call.
    assert evidence.loc["x3", "direction"] == 0 and abs(evidence.loc["x3", "t"]) < 3
    assert evidence.loc["x0", "n_missing"] == int(df["x0"].isna().sum())
    pd.testing.assert_frame_equal(df, before)
    # The threshold is the caller's: a huge one calls nothing.
    assert (missingness_direction_evidence(ds, threshold=1e6)["direction"] == 0).all()
    # A large table is read on a fixed subsample of rows: the same call twice, same answer.
    sub = missingness_direction_evidence(ds, max_rows=200)
    pd.testing.assert_frame_equal(sub, missingness_direction_evidence(ds, max_rows=200))
    assert sub.loc["x0", "n_missing"] + sub.loc["x0", "n_observed"] <= 200 < len(df)
    assert sub.loc["x0", "direction"] == direction


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((pd.DataFrame({"a": [1.0]}),), {}, TypeError, "dataset must be a ClusterDataset, got DataFrame"),
        ((None,), {"threshold": 0}, ValueError, "threshold must be a positive number"),
        ((None,), {"ridge": -1.0}, ValueError, "ridge must be a non-negative number"),
        ((None,), {"max_rows": 2}, ValueError, "max_rows must be an integer >= 4 or None"),
    ],
)
def test_direction_evidence_refuses_bad_input(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        missingness_direction_evidence(*args, **kwargs)


def test_a_self_masking_trial_records_the_directions_it_learned():
    rng = np.random.default_rng(1)
    n = 200
    z = rng.normal(size=(n, 1))
    full = np.hstack([z + 0.3 * rng.normal(size=(n, 1)), -z + 0.3 * rng.normal(size=(n, 1)), rng.normal(size=(n, 1))])
    holed = full.copy()
    holed[full[:, 0] > 0.5, 0] = np.nan  # high values of x0 go missing; x1 and x2 complete
    df = pd.DataFrame(holed, columns=["x0", "x1", "x2"])
    ds = ClusterDataset(df, n_clusters=1, seed=0, device="cpu")
    train = {k: Fixed(v) for k, v in TINY_TRAIN.items()}
    space = SearchSpace({"notmiwae": {"hidden_dims": Fixed([16]), "latent_dim": Fixed(2),
                                      "missing_process": Fixed("selfmasking")}}, train=train)
    tuned = autotune(space, ds, n_trials=1, seed=0, show_progress=False, ensemble=0)
    (trial,) = tuned.study.trials
    recorded = trial.user_attrs[DIRECTIONS_ATTR]
    frame = tuned.imputer.model_.interpret_missing_process()
    # Only the column that had missing cells is listed, with the sign of its learned slope.
    assert list(recorded) == ["x0"]
    assert recorded["x0"] == (1 if frame.loc["x0", "direction"] == "high values missing" else -1)
    assert learned_directions(tuned.imputer) == recorded
    # x0 is missing where it is high, and x1 (complete) predicts it: the data calls +1,
    # which the trial learned too.
    record = tuned.study.user_attrs["direction_check"]
    assert record["from_data"]["x0"] > 3 and record["directions"] == {"x0": 1}
    assert record["outliers"] == {} and record["trials"] == 1 and recorded["x0"] == 1
    # Processes without a per-column slope record nothing.
    linear = SearchSpace({"notmiwae": {"hidden_dims": Fixed([16]), "latent_dim": Fixed(2),
                                       "missing_process": Fixed("linear")}}, train=train)
    tuned = autotune(linear, ds, n_trials=1, seed=0, show_progress=False, ensemble=0)
    assert DIRECTIONS_ATTR not in tuned.study.trials[0].user_attrs
    assert "direction_check" not in tuned.study.user_attrs


@pytest.fixture
def em_learned_the_wrong_direction(monkeypatch):
    """Plant directions: the ``em`` trial "learned" -1 on x0, every other trial +1."""
    # The module itself: the package's name ``autotune`` is the function.
    module = sys.modules["ciss_autoimpute.tuning.autotune"]
    monkeypatch.setattr(module, "learned_directions", lambda imputer: {"x0": -1 if imputer.model == "em" else 1})


def _high_masked_dataset() -> ClusterDataset:
    df, _ = _self_masked(1, n=300)
    return ClusterDataset(df, n_clusters=1, seed=0, device="cpu")


@pytest.mark.parametrize("ensemble", [0, 8])
def test_a_trial_against_the_data_is_left_out(em_learned_the_wrong_direction, ensemble, caplog):
    ds = _high_masked_dataset()
    with caplog.at_level(logging.INFO, logger="ciss_autoimpute.tuning.autotune"):
        tuned = autotune(SearchSpace(["mean", "em", "knn"]), ds, n_trials=3, seed=0, show_progress=False,
                         ensemble=ensemble)
    by_model = {t.user_attrs["model"]: t for t in tuned.study.trials}
    # The planted outlier is the holdout's best: without the check it would be returned.
    assert tuned.study.best_trial.number == by_model["em"].number
    assert tuned.best_config["model"] != "em"
    kept = min((by_model["mean"], by_model["knn"]), key=lambda t: t.value)
    assert tuned.best_config == kept.user_attrs["config"] and tuned.best_value == kept.value
    assert by_model["em"].number not in tuned.ensemble_weights
    record = tuned.study.user_attrs["direction_check"]
    assert record["directions"] == {"x0": 1} and record["from_data"]["x0"] > 3 and record["trials"] == 3
    assert record["outliers"] == {str(by_model["em"].number): ["x0"]}
    assert "left out of the selection" in caplog.text
    # The returned imputations are the kept model's (or the ensemble's), observed cells untouched.
    observed = ds.frame.notna().to_numpy()
    assert tuned.imputed.notna().all().all()
    np.testing.assert_array_equal(tuned.imputed.to_numpy()[observed], ds.frame.to_numpy()[observed])
    if not tuned.ensemble_weights:
        alone = tuned.imputer.transform(ds.frame)
        np.testing.assert_allclose(tuned.imputed.to_numpy(), alone.to_numpy(), rtol=1e-5, atol=1e-5)
    # The objective kept its best trial that agrees with the data beside the holdout's
    # best, so the chosen one is returned as fitted, never refit.
    assert "refitting its configuration once" not in caplog.text


def test_load_best_imputer_passes_over_a_trial_against_the_data(em_learned_the_wrong_direction, tmp_path):
    from ciss_autoimpute.tuning import load_best_imputer

    ds = _high_masked_dataset()
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    tuned = autotune(SearchSpace(["mean", "em", "knn"]), ds, n_trials=3, seed=0, show_progress=False, ensemble=0,
                     storage=storage, study_name="s", artifact_dir=tmp_path / "artifacts")
    by_model = {t.user_attrs["model"]: t for t in tuned.study.trials}
    assert tuned.study.best_trial.number == by_model["em"].number  # the holdout's best opposes the data
    # The best trial that agrees with the data left its artifact too, and is what loads.
    chosen = by_model[tuned.best_config["model"]]
    assert chosen.user_attrs.get("imputer_artifact_id") and tuned.best_config["model"] != "em"
    loaded = load_best_imputer(storage, "s", device="cpu")
    assert loaded.model == tuned.best_config["model"]
    np.testing.assert_allclose(loaded.transform(ds.frame).to_numpy(), tuned.imputer.transform(ds.frame).to_numpy(),
                               rtol=1e-6)
    # Without the check: the holdout's best.
    assert load_best_imputer(storage, "s", device="cpu", direction_check=False).model == "em"
    with pytest.raises(TypeError, match="direction_check must be True or False, got 1"):
        load_best_imputer(storage, "s", direction_check=1)


def test_a_trial_is_kept_when_the_data_calls_nothing(em_learned_the_wrong_direction):
    # x0 lost its values at random: the data calls no direction, so nothing is left out.
    rng = np.random.default_rng(3)
    df, _ = _self_masked(1, n=300)
    df["x0"] = _self_masked(1, n=300)[1][:, 0]
    df.loc[rng.random(300) < 0.3, "x0"] = np.nan
    ds = ClusterDataset(df, n_clusters=1, seed=0, device="cpu")
    tuned = autotune(SearchSpace(["mean", "em", "knn"]), ds, n_trials=3, seed=0, show_progress=False)
    record = tuned.study.user_attrs["direction_check"]
    assert record["directions"] == {} and record["outliers"] == {}
    assert tuned.best_config == tuned.study.best_trial.user_attrs["config"]


def test_the_check_can_be_turned_off(em_learned_the_wrong_direction):
    ds = _high_masked_dataset()
    tuned = autotune(SearchSpace(["mean", "em", "knn"]), ds, n_trials=3, seed=0, show_progress=False,
                     direction_check=False)
    assert tuned.best_config["model"] == "em"
    assert "direction_check" not in tuned.study.user_attrs
    with pytest.raises(TypeError, match="direction_check must be True or False, got 'no'"):
        autotune(SearchSpace(["mean"]), ds, n_trials=1, show_progress=False, direction_check="no")


def test_cli_tune_records_the_check_and_can_turn_it_off(tmp_path):
    import json

    from test_cli import assert_ok, run_cli

    df, _ = _self_masked(1, n=200)
    csv = tmp_path / "data.csv"
    df.to_csv(csv, index=False)
    space = SearchSpace({"notmiwae": {"hidden_dims": Fixed([8]), "latent_dim": Fixed(2),
                                      "missing_process": Fixed("selfmasking")}},
                        train={k: Fixed(v) for k, v in TINY_TRAIN.items()})
    space_file = tmp_path / "space.json"
    space_file.write_text(json.dumps(space.to_dict()))
    attrs = {}
    for name, extra in (("on", ()), ("off", ("--no-direction-check",))):
        storage = f"sqlite:///{tmp_path / (name + '.db')}"
        proc = run_cli("tune", csv, "--space", space_file, "--trials", 1, "--storage", storage, "--study", "s",
                       "--device", "cpu", "--quiet", *extra)
        assert_ok(proc)
        attrs[name] = optuna.load_study(study_name="s", storage=storage).user_attrs
    assert attrs["on"]["direction_check"]["directions"] == {"x0": 1}  # called by the data
    assert "direction_check" not in attrs["off"]


def test_run_imputation_warns_when_a_fit_contradicts_the_data(monkeypatch):
    from ciss_autoimpute import run_imputation

    df, _ = _self_masked(1, n=200)
    small = {"hidden_dims": [8], "latent_dim": 2, "n_samples": 5, "n_impute_samples": 5}
    train = {"epochs": 4, "max_loops": 1, "epochs_per_loop": 2}
    module = sys.modules["ciss_autoimpute.tuning.autotune"]
    # A real fit: it warns exactly when what it learned for x0 contradicts the data's +1
    # (this tiny fit learns -1 with seed 0).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_imputation(df, model="notmiwae", model_params=small, train_params=train, device="cpu")
    ours = [w for w in caught if "not-MIWAE learned" in str(w.message)]
    assert len(ours) == (learned_directions(res.imputer)["x0"] != 1)
    # Other families learn no direction: no check, no warning.
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="not-MIWAE learned")
        run_imputation(df, model="em", device="cpu")
    # A fit that learned the opposite is named, with the signs that would fix it.
    monkeypatch.setattr(module, "learned_directions",
                        lambda imputer, given=False: {"x0": -1, "x3": 1}
                        if imputer.model == "notmiwae" and not given else {})
    with pytest.warns(UserWarning, match=r"opposite to what the observed data shows for x0 \(learned low values "
                                         r"missing, data t = \+\d+\.\d\).*'signs': \[1, 1, 1, 1\]"):
        run_imputation(df, model="notmiwae", model_params=small, train_params=train, device="cpu")


def test_given_signs_are_not_learned_directions_and_a_wrong_one_is_pointed_out():
    from ciss_autoimpute import run_imputation

    df, _ = _self_masked(1, n=200)  # x0 loses its high values; x3 MCAR
    small = {"hidden_dims": [8], "latent_dim": 2, "n_samples": 5, "n_impute_samples": 5,
             "missing_process": "selfmasking_known_signs"}
    train = {"epochs": 4, "max_loops": 1, "epochs_per_loop": 2}
    # The user says x0 loses its *low* values (wrong) and leaves x3 to be learned (0).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_imputation(df, model="notmiwae", model_params={**small, "signs": [-1, 0, 0, 0]},
                             train_params=train, device="cpu")
    frame = res.imputer.model_.interpret_missing_process()
    assert frame["learned"].tolist() == [False, True, True, True]
    assert frame.loc["x0", "direction"] == "low values missing"  # the sign it was given
    # x0's sign was given, not learned: the direction check does not count it as learned.
    assert "x0" not in learned_directions(res.imputer)
    assert learned_directions(res.imputer, given=True) == {"x0": -1}
    messages = [str(w.message) for w in caught]
    given = [m for m in messages if "signs passed to not-MIWAE contradict" in m]
    assert len(given) == 1 and "x0 (given low values missing, data t = +" in given[0]
    assert "points to high values" in given[0]
    assert not any("not-MIWAE learned" in m and "x0" in m for m in messages)
    # The right sign: nothing to point out.
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="the signs passed")
        run_imputation(df, model="notmiwae", model_params={**small, "signs": [1, 0, 0, 0]},
                       train_params=train, device="cpu")
    # Under "selfmasking" every column is learned.
    free = run_imputation(df, model="notmiwae", model_params={k: v for k, v in small.items()
                                                               if k != "missing_process"},
                          train_params=train, device="cpu")
    assert free.imputer.model_.interpret_missing_process()["learned"].all()


def test_run_imputation_reads_the_direction_evidence_once(evidence_reads):
    """signs="data" and the contradiction warning after the fit share one reading of the data."""
    df, _ = _self_masked(-1, n=300)
    params = {"missing_process": "selfmasking_known_signs", "signs": "data", "hidden_dims": [8],
              "latent_dim": 2, "n_samples": 5, "n_impute_samples": 5}
    res = run_imputation(df, model="notmiwae", model_params=params, train_params=TINY_TRAIN, device="cpu")
    assert res.imputer.model_.params["signs"][0] == -1  # read from the data ...
    assert len(evidence_reads) == 1  # ... once, though the warning check read it again before


def test_signs_from_the_data_fix_the_called_directions_and_learn_the_rest(tmp_path):
    from ciss_autoimpute import Imputer, build_model
    from ciss_autoimpute.data.diagnostics import data_signs

    df, full = _self_masked(-1, n=300)  # x0 loses its low values; x3 MCAR
    before = df.copy()
    params = {"missing_process": "selfmasking_known_signs", "signs": "data", "hidden_dims": [8],
              "latent_dim": 2, "n_samples": 5, "n_impute_samples": 5}
    imp = Imputer(model="notmiwae", model_params=params, train_params=TINY_TRAIN, seed=0, device="cpu")
    out = imp.fit_transform(df)
    pd.testing.assert_frame_equal(df, before)
    assert imp.model_params["signs"] == "data"  # the estimator's parameter is left as given
    ds = ClusterDataset(df, seed=0, device="cpu")
    assert data_signs(ds) == [-1, 0, 0, 0] == imp.model_.params["signs"]
    frame = imp.model_.interpret_missing_process()
    assert frame.loc["x0", "direction"] == "low values missing"
    # x3 (sign 0) has a free slope: it may point either way, and starts at zero like "selfmasking".
    free = imp.model_.missing.free.tolist()
    assert free == [False, True, True, True]
    # Saved and loaded with the resolved signs: same imputations of the same rows.
    imp.save(tmp_path / "m.pt")
    again = Imputer.load(tmp_path / "m.pt")
    assert again.model_.params["signs"] == [-1, 0, 0, 0]
    np.testing.assert_allclose(again.transform(df).to_numpy(), imp.transform(df).to_numpy(), rtol=1e-6)
    assert out.notna().all().all()
    # Building the model directly needs the list.
    with pytest.raises(ValueError, match="signs='data' is read from the data when an Imputer"):
        build_model("notmiwae", ds.layout, 1, params, seed=0)
    with pytest.raises(ValueError, match=r"must hold \+1 .*, -1 .* or 0"):
        build_model("notmiwae", ds.layout, 1, {**params, "signs": [2, 0, 0, 0]}, seed=0)


def test_the_evidence_script_reads_the_benchmark_masks_right(capsys):
    """scripts/direction_evidence.py: every call on the benchmark's self-masking masks is right."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "direction_evidence.py"
    spec = importlib.util.spec_from_file_location("direction_evidence_script", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--mechanisms", "mnar", "mcar", "--seeds", "0"]) == 0
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in capsys.readouterr().out.splitlines() if line.startswith("| mn") or line.startswith("| mc")}
    read, called, wrong = (int(v) for v in rows["mnar"][:3])
    assert wrong == 0 and called >= 0.9 * read  # the right direction, nearly everywhere
    assert int(rows["mcar"][1]) <= 2  # MCAR: (almost) nothing called
