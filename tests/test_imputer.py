"""The scikit-learn Imputer: fit/transform, cloning, pipelines, persistence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline

from ciss_autoimpute import Imputer
from ciss_autoimpute.exceptions import ModelFileError, NotFittedError

FAST = {"epochs": 8, "max_loops": 2, "epochs_per_loop": 4, "batch_size": 64}


def _correlated(n: int = 160, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    full = np.column_stack([z[:, 0], z[:, 0] + 0.1 * rng.normal(size=n), z[:, 1], z[:, 1] - z[:, 0]])
    df_full = pd.DataFrame(full, columns=["a", "b", "c", "d"])
    holes = df_full.mask(rng.random(full.shape) < 0.25)
    holes.iloc[:, 0] = holes.iloc[:, 0].fillna(df_full.iloc[:, 0]).where(rng.random(n) > 0.1)
    return holes, df_full


def test_fit_transform_keeps_observed_and_fills_all():
    df, _ = _correlated()
    before = df.copy(deep=True)
    imp = Imputer(model="vae", train_params=FAST, seed=0, device="cpu")
    out = imp.fit_transform(df)
    pd.testing.assert_frame_equal(df, before)
    assert not out.isna().any().any()
    obs = df.notna().to_numpy()
    assert np.array_equal(out.to_numpy()[obs], df.to_numpy()[obs])
    assert out.index.equals(df.index) and list(out.columns) == list(df.columns)
    assert hasattr(imp, "model_") and imp.n_features_in_ == 4
    assert list(imp.feature_names_in_) == ["a", "b", "c", "d"]


def test_transform_new_rows_and_types():
    df, _ = _correlated()
    imp = Imputer(model="cissvae", n_clusters=2, train_params=FAST, device="cpu").fit(df)
    new = df.iloc[:10].copy()
    out = imp.transform(new)
    assert not out.isna().any().any()
    arr = imp.transform(new.to_numpy())
    assert isinstance(arr, np.ndarray) and arr.shape == (10, 4)
    np.testing.assert_allclose(arr, out.to_numpy())
    ten = imp.transform(torch.tensor(new.to_numpy(), dtype=torch.float32))
    assert isinstance(ten, torch.Tensor) and not torch.isnan(ten).any()
    with pytest.raises(ValueError, match="column"):
        imp.transform(new[["a", "b", "c"]])


def test_not_fitted_error():
    with pytest.raises(NotFittedError, match="not fitted"):
        Imputer().transform(np.zeros((3, 2)))


def test_bad_params_raise_at_fit_before_training():
    df, _ = _correlated()
    with pytest.raises(ValueError, match="Unknown model 'nope'"):
        Imputer(model="nope").fit(df)
    with pytest.raises(ValueError, match="Unknown parameter"):
        Imputer(model="vae", model_params={"latnt_dim": 3}).fit(df)
    with pytest.raises(ValueError, match="transform_iterations"):
        Imputer(transform_iterations=0).fit(df)


def test_clone_and_pipeline():
    df, full = _correlated()
    imp = Imputer(model="vae", train_params=FAST, seed=1, device="cpu")
    twin = clone(imp)
    assert twin.get_params() == imp.get_params()
    twin.set_params(seed=2)
    assert imp.seed == 1
    y = full["a"].to_numpy()
    pipe = make_pipeline(Imputer(model="vae", train_params=FAST, device="cpu"), LinearRegression())
    pipe.fit(df.drop(columns="a"), y)
    pred = pipe.predict(df.drop(columns="a"))
    assert pred.shape == (len(df),) and np.isfinite(pred).all()


def test_same_seed_same_result():
    df, _ = _correlated()
    a = Imputer(model="miwae", train_params=FAST, seed=4, device="cpu").fit_transform(df)
    b = Imputer(model="miwae", train_params=FAST, seed=4, device="cpu").fit_transform(df)
    pd.testing.assert_frame_equal(a, b)


def test_save_load_round_trip(tmp_path, mixed_frame):
    imp = Imputer(model="cissvae", n_clusters=1, train_params=FAST, device="cpu").fit(mixed_frame)
    path = imp.save(tmp_path / "imp.pt")
    back = Imputer.load(path)
    pd.testing.assert_frame_equal(back.transform(mixed_frame), imp.transform(mixed_frame))
    assert back.get_params() == imp.get_params()


def test_load_rejects_tampered_and_foreign_files(tmp_path):
    df, _ = _correlated()
    imp = Imputer(model="vae", train_params=FAST, device="cpu").fit(df)
    path = imp.save(tmp_path / "imp.pt")
    payload = torch.load(path, weights_only=True)
    key = next(iter(payload["state_dict"]))
    payload["state_dict"][key] = payload["state_dict"][key] + 1.0
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(ModelFileError, match="checksum"):
        Imputer.load(tmp_path / "tampered.pt")
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(ModelFileError, match="format 99"):
        Imputer.load(tmp_path / "future.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="not a readable"):
        Imputer.load(tmp_path / "junk.pt")


def test_sample_draws_vary_only_in_missing_cells():
    df, _ = _correlated()
    imp = Imputer(model="miwae", train_params=FAST, device="cpu").fit(df)
    draws = imp.sample(df.iloc[:30], n=3, seed=0, importance_samples=100)
    assert len(draws) == 3
    obs = df.iloc[:30].notna().to_numpy()
    for d in draws:
        assert np.array_equal(d.to_numpy()[obs], df.iloc[:30].to_numpy()[obs])
    assert not np.allclose(draws[0].to_numpy()[~obs], draws[1].to_numpy()[~obs])
