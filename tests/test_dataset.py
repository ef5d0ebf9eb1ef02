"""ClusterDataset: tensors, holdout, clusters, decoding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ciss_autoimpute import ClusterDataset


def _planted(n_per: int = 40, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """4 groups of rows, each missing a different block of columns."""
    rng = np.random.default_rng(seed)
    n = 4 * n_per
    values = rng.normal(size=(n, 8))
    truth = np.repeat(np.arange(4), n_per)
    for g, cols in enumerate([[0, 1], [2, 3], [4, 5], [6, 7]]):
        rows = truth == g
        values[np.ix_(rows, cols)] = np.nan
    df = pd.DataFrame(values, columns=[f"c{j}" for j in range(8)])
    return df, truth


def test_tensors_masks_and_holdout_invariants(numeric_frame):
    original = numeric_frame.copy(deep=True)
    ds = ClusterDataset(numeric_frame, n_clusters=2, val_proportion=0.2, seed=0, device="cpu")
    d = ds.data
    assert d.x.shape == (40, 4) and d.x.dtype == torch.float32
    observed = torch.from_numpy(~numeric_frame.isna().to_numpy())
    assert torch.equal(d.observed, observed)
    # The holdout only takes observed cells, and training never sees them.
    assert not (d.val_mask & ~d.observed).any()
    assert not (d.val_mask & d.train_mask).any()
    assert torch.equal(d.train_mask | d.val_mask, d.observed)
    # Held-out and missing cells hold the replacement value; held-out truth is in x_val.
    assert torch.all(d.x[~d.train_mask] == 0.0)
    assert d.val_mask.sum() > 0
    assert torch.all(d.x_val[~d.val_mask] == 0.0)
    # Caller's frame untouched.
    pd.testing.assert_frame_equal(numeric_frame, original)


def test_holdout_share_per_cluster_and_column():
    df, truth = _planted(n_per=50)
    ds = ClusterDataset(df, clusters=truth, val_proportion=0.2, seed=3, device="cpu")
    val = ds.val_mask_columns
    obs = ~df.isna().to_numpy()
    for c in range(4):
        rows = truth == c
        for j in range(8):
            n_obs = obs[rows, j].sum()
            if n_obs >= 2:
                assert val[rows, j].sum() == max(1, round(0.2 * n_obs))
            assert not (val[rows, j] & ~obs[rows, j]).any()


def test_per_cluster_val_proportion_sequence_and_mapping():
    df, truth = _planted()
    labels = np.array(["a", "b", "c", "d"])[truth]
    ds = ClusterDataset(df, clusters=labels, val_proportion={"a": 0.0, "b": 0.1, "c": 0.2, "d": 0.3}, device="cpu")
    val = ds.val_mask_columns
    assert val[labels == "a"].sum() == 0
    assert val[labels == "d"].sum() > val[labels == "b"].sum()
    ds2 = ClusterDataset(df, clusters=labels, val_proportion=[0.0, 0.1, 0.2, 0.3], device="cpu")
    assert np.array_equal(ds2.val_mask_columns, val)
    with pytest.raises(ValueError, match="one per cluster"):
        ClusterDataset(df, clusters=labels, val_proportion=[0.1, 0.2], device="cpu")
    with pytest.raises(ValueError, match="missing \\['d'\\]"):
        ClusterDataset(df, clusters=labels, val_proportion={"a": 0.1, "b": 0.1, "c": 0.1}, device="cpu")
    with pytest.raises(ValueError, match=r"val_proportion must be a number in \[0, 1\)"):
        ClusterDataset(df, val_proportion=1.5, device="cpu")


def test_columns_ignore_never_held_out_nor_clustered():
    df, truth = _planted()
    df["age"] = np.linspace(20, 80, len(df))
    ds = ClusterDataset(df, columns_ignore=["age"], n_clusters=4, val_proportion=0.3, device="cpu")
    assert ds.val_mask_columns[:, list(df.columns).index("age")].sum() == 0
    with pytest.raises(ValueError, match="columns_ignore names column\\(s\\) \\['nope'\\]"):
        ClusterDataset(df, columns_ignore=["nope"], device="cpu")


def test_same_seed_same_dataset_and_other_seed_differs():
    df, _ = _planted()
    a = ClusterDataset(df, seed=5, device="cpu")
    b = ClusterDataset(df, seed=5, device="cpu")
    c = ClusterDataset(df, seed=6, device="cpu")
    assert np.array_equal(a.clusters, b.clusters)
    assert torch.equal(a.data.val_mask, b.data.val_mask)
    assert not torch.equal(a.data.val_mask, c.data.val_mask)


def test_leiden_finds_planted_patterns_through_dataset():
    from sklearn.metrics import adjusted_rand_score

    df, truth = _planted(n_per=60)
    ds = ClusterDataset(df, seed=0, device="cpu")
    assert adjusted_rand_score(truth, ds.clusters) >= 0.9


def test_user_labels_validated():
    df, truth = _planted()
    with pytest.raises(ValueError, match="clusters"):
        ClusterDataset(df, clusters=truth[:-3], device="cpu")


def test_decode_keeps_observed_cells(mixed_frame):
    ds = ClusterDataset(mixed_frame, n_clusters=1, val_proportion=0.2, device="cpu")
    out = ds.decode(ds.data.x)
    assert list(out.columns) == list(mixed_frame.columns)
    assert out.index.equals(mixed_frame.index)
    assert (out.dtypes == mixed_frame.dtypes).all()
    obs = ~mixed_frame.isna()
    for col in mixed_frame.columns:
        assert out.loc[obs[col], col].tolist() == mixed_frame.loc[obs[col], col].tolist()
    assert not out.isna().any().any()


def test_recluster_keeps_holdout():
    df, _ = _planted()
    ds = ClusterDataset(df, n_clusters=4, device="cpu")
    other = ds.recluster(n_clusters=2)
    assert other.n_clusters == 2 and other.data.n_clusters == 2
    assert torch.equal(other.data.val_mask, ds.data.val_mask)
    assert ds.n_clusters == 4  # the original is unchanged


def test_bad_arguments():
    df, _ = _planted()
    with pytest.raises(ValueError, match="n_clusters must be a positive integer"):
        ClusterDataset(df, n_clusters=0, device="cpu")
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        ClusterDataset(df, seed=-1, device="cpu")
    with pytest.raises(ValueError, match="device='tpu'"):
        ClusterDataset(df, device="tpu")
    with pytest.raises(ValueError, match="clustering: unknown option"):
        ClusterDataset(df, clustering={"resolutio": 1.0}, device="cpu")
