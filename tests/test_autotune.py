"""autotune: SQLite studies, resuming, the dashboard, pruning, failures, seeds, accuracy."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from ciss_autoimpute import ClusterDataset, SearchSpace, autotune
from ciss_autoimpute.exceptions import StorageError
from ciss_autoimpute.tuning import Categorical, Fixed

TINY_TRAIN = {
    "epochs": 6,
    "max_loops": 2,
    "epochs_per_loop": 3,
    "batch_size": 64,
    "patience": 1,
}


def _tiny_space(**train) -> SearchSpace:
    fixed_train = {k: Fixed(v) for k, v in {**TINY_TRAIN, **train}.items()}
    return SearchSpace(
        {
            "vae": {"hidden_dims": Fixed([16]), "latent_dim": Categorical((2, 4))},
            "cissvae": {
                "hidden_dims": Fixed([16]),
                "layer_order_enc": Fixed(["unshared"]),
                "layer_order_dec": Fixed(["shared"]),
                "latent_dim": Categorical((2, 4)),
            },
        },
        train=fixed_train,
    )


def _data(n: int = 120, p: int = 5, rate: float = 0.3, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    load = rng.normal(size=(2, p))
    full = z @ load + 0.2 * rng.normal(size=(n, p))
    mask = rng.random((n, p)) < rate
    mask[mask.all(axis=1), 0] = False
    return pd.DataFrame(np.where(mask, np.nan, full), columns=[f"v{j}" for j in range(p)]), full


@pytest.fixture(scope="module")
def dataset() -> ClusterDataset:
    df, _ = _data()
    return ClusterDataset(df, n_clusters=2, seed=0, device="cpu")


def test_sqlite_study_records_resumes_and_dashboard_serves(tmp_path, dataset):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    res = autotune(_tiny_space(), dataset, n_trials=3, storage=url, study_name="s", show_progress=False)
    assert len(res.study.trials) == 3
    assert res.imputed.shape == dataset.frame.shape and not res.imputed.isna().any().any()
    t = res.study.trials[0]
    for key in ("model", "val_curve", "epochs", "seconds", "peak_rss_mb", "device", "config"):
        assert key in t.user_attrs, key
    assert t.user_attrs["model"] in ("vae", "cissvae")
    assert len(t.user_attrs["val_curve"]) >= 1
    assert "per_cluster_val" in t.user_attrs
    # The best model was stored as an artifact beside the database.
    best = res.study.best_trial
    assert best.user_attrs.get("imputer_artifact_id")
    assert (tmp_path / "studies_artifacts").is_dir()

    # Resume by name: two more trials make five.
    res2 = autotune(_tiny_space(), dataset, n_trials=2, storage=url, study_name="s", show_progress=False)
    assert len(res2.study.trials) == 5
    assert res2.best_value <= res.best_value

    # optuna-dashboard serves the study and its trial attributes.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("optuna-dashboard")
    proc = subprocess.Popen(
        [str(exe), url, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        studies = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    studies = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.2)
        assert studies is not None, "dashboard did not start"
        (summary,) = [s for s in studies["study_summaries"] if s["study_name"] == "s"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}", timeout=5) as r:
            detail = json.loads(r.read())
        assert len(detail["trials"]) == 5
        attrs = {a["key"] for a in detail["trials"][0]["user_attrs"]}
        assert {"model", "val_curve", "seconds"} <= attrs
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _study_with(trials: list[dict], name: str) -> optuna.storages.InMemoryStorage:
    """An in-memory storage holding a study whose first trials are fixed by ``trials``."""
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name=name, direction="minimize")
    for params in trials:
        study.enqueue_trial(params)
    return storage


def _one_family_space(**train) -> SearchSpace:
    return SearchSpace(
        {"vae": {"hidden_dims": Fixed([16]), "latent_dim": Fixed(4), "beta": Fixed(1.0)}},
        train={**{k: Fixed(v) for k, v in TINY_TRAIN.items()}, **train},
    )


def test_pruner_stops_a_bad_configuration_early(dataset):
    # A learning rate of 1e-7 cannot learn: after a good trial has set the bar, the
    # median pruner stops the bad one at its first report (the end of initial training).
    space = _one_family_space(max_loops=Fixed(4), patience=Fixed(4), lr=Categorical((1e-2, 1e-7)))
    storage = _study_with([{"lr": 1e-2}, {"lr": 1e-7}], "prune")
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    res = autotune(space, dataset, n_trials=2, storage=storage, study_name="prune", pruner=pruner,
                   show_progress=False)
    good, bad = res.study.trials
    assert bad.params["lr"] == 1e-7 and good.params["lr"] == 1e-2
    assert bad.state == optuna.trial.TrialState.PRUNED
    assert len(bad.user_attrs["val_curve"]) == 1
    assert good.state == optuna.trial.TrialState.COMPLETE
    assert len(good.user_attrs["val_curve"]) > 1


def test_diverging_trial_fails_alone(dataset):
    space = _one_family_space(grad_clip=Fixed(None), lr=Categorical((1e-2, 1e30)))
    storage = _study_with([{"lr": 1e30}, {"lr": 1e-2}], "diverge")
    res = autotune(space, dataset, n_trials=2, storage=storage, study_name="diverge", show_progress=False)
    bad, good = res.study.trials
    assert bad.state == optuna.trial.TrialState.FAIL
    assert "diverged" in bad.user_attrs["fail_reason"]
    assert good.state == optuna.trial.TrialState.COMPLETE
    assert not res.imputed.isna().any().any()


def test_same_seed_same_best_and_imputations(dataset):
    a = autotune(_tiny_space(), dataset, n_trials=3, seed=3, show_progress=False)
    b = autotune(_tiny_space(), dataset, n_trials=3, seed=3, show_progress=False)
    assert a.best_params == b.best_params
    assert a.best_value == b.best_value
    pd.testing.assert_frame_equal(a.imputed, b.imputed)


def test_storage_errors_are_loud(dataset):
    with pytest.raises(StorageError, match="does not exist"):
        autotune(_tiny_space(), dataset, n_trials=1, storage="sqlite:////no/such/dir/x.db", show_progress=False)
    with pytest.raises(TypeError, match="storage must be"):
        autotune(_tiny_space(), dataset, n_trials=1, storage=3.5, show_progress=False)
    with pytest.raises(ValueError, match="n_trials"):
        autotune(_tiny_space(), dataset, n_trials=0, show_progress=False)


def _nonlinear(n: int, rate: float, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Six columns driven by two latent factors through nonlinear links, MCAR holes."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    full = np.column_stack(
        [z[:, 0], z[:, 0] ** 2, np.sin(2 * z[:, 0]), z[:, 1], z[:, 0] * z[:, 1], np.tanh(2 * z[:, 1])]
    ) + 0.05 * rng.normal(size=(n, 6))
    mask = rng.random(full.shape) < rate
    mask[mask.all(axis=1), 0] = False
    return pd.DataFrame(np.where(mask, np.nan, full), columns=[f"v{j}" for j in range(6)]), full


def test_autotune_beats_iterative_imputer_on_correlated_mcar():
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer

    df, full = _nonlinear(n=400, rate=0.3, seed=1)
    ds = ClusterDataset(df, seed=0, device="cpu")
    res = autotune("quick", ds, n_trials=10, seed=0, show_progress=False)
    miss = df.isna().to_numpy()
    std = full.std(axis=0)
    ours = np.sqrt(np.mean(((res.imputed.to_numpy() - full) / std)[miss] ** 2))
    mice = IterativeImputer(random_state=0, max_iter=10).fit_transform(df.to_numpy())
    theirs = np.sqrt(np.mean(((mice - full) / std)[miss] ** 2))
    assert ours < theirs, (ours, theirs)


def test_resumed_study_does_not_repeat_first_session_configs(tmp_path, dataset):
    url = f"sqlite:///{tmp_path / 'resume.db'}"
    first = autotune(_tiny_space(), dataset, n_trials=2, storage=url, study_name="r", seed=0, show_progress=False)
    assert len(first.study.trials) == 2
    second = autotune(_tiny_space(), dataset, n_trials=2, storage=url, study_name="r", seed=0, show_progress=False)
    old = [t.params for t in second.study.trials[:2]]
    new = [t.params for t in second.study.trials[2:]]
    assert len(new) == 2
    assert new != old


def test_a_trial_failing_for_any_reason_fails_alone(dataset):
    # An activation the model does not know fails that trial alone; the good one completes.
    space = SearchSpace(
        {"vae": {"hidden_dims": Fixed([16]), "latent_dim": Fixed(4), "activation": Categorical(("nope", "relu"))}},
        train={k: Fixed(v) for k, v in TINY_TRAIN.items()},
    )
    storage = _study_with([{"vae.activation": "nope"}, {"vae.activation": "relu"}], "anyfail")
    res = autotune(space, dataset, n_trials=2, storage=storage, study_name="anyfail", show_progress=False)
    bad, good = res.study.trials
    assert bad.state == optuna.trial.TrialState.FAIL
    assert "nope" in bad.user_attrs["fail_reason"]
    assert good.state == optuna.trial.TrialState.COMPLETE
