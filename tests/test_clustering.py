"""Tests for ciss_autoimpute.clustering (missingness-pattern clustering)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score, silhouette_score

from ciss_autoimpute.clustering import (
    ClusteringResult,
    MissingnessAssigner,
    cluster_missingness,
    default_min_cluster_size,
    silhouette,
    user_clustering,
    validate_labels,
)
from ciss_autoimpute.clustering._patterns import tanimoto_topk, unique_rows
from ciss_autoimpute.clustering.silhouette import PatternSample
from ciss_autoimpute.exceptions import ClusteringFallbackWarning, ModelFileError, NotFittedError

N_COLS = 20


def planted(n_per_group=60, n_groups=4, noise=0.02, seed=0):
    """Group g misses columns [4g, 4g+4) (plus random noise flips elsewhere)."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(n_groups), n_per_group)
    mask = np.zeros((len(truth), N_COLS), dtype=bool)
    for g in range(n_groups):
        mask[truth == g, 4 * g : 4 * g + 4] = True
    mask ^= rng.random(mask.shape) < noise
    return mask, truth


def smoothed_jaccard_distance(a, b):
    inter = np.logical_and(a, b).sum()
    union = np.logical_or(a, b).sum()
    return 1.0 - (inter + 1.0) / (union + 1.0)


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ClusteringFallbackWarning)
        return fn(*args, **kwargs)


# ------------------------------------------------------------------ recovery
@pytest.mark.parametrize("graph", ["knn", "snn"])
@pytest.mark.parametrize("objective", ["modularity", "CPM"])
def test_leiden_recovers_planted_patterns(graph, objective):
    mask, truth = planted()
    result = quiet(cluster_missingness, mask, graph=graph, objective=objective, seed=0)
    assert isinstance(result, ClusteringResult)
    assert result.method == "leiden"
    assert result.n_clusters == 4
    assert adjusted_rand_score(truth, result.labels) >= 0.9
    assert result.labels.dtype == np.int64
    assert set(result.labels.tolist()) == set(range(result.n_clusters))
    assert result.sizes.sum() == len(mask)
    assert np.all(np.diff(result.sizes) <= 0)  # largest cluster first
    assert np.array_equal(np.bincount(result.labels), result.sizes)
    assert result.silhouette is not None and result.silhouette > 0.5


def test_kmeans_recovers_planted_patterns():
    mask, truth = planted()
    result = cluster_missingness(mask, n_clusters=4, seed=0)
    assert result.method == "kmeans"
    assert result.n_clusters == 4
    assert adjusted_rand_score(truth, result.labels) >= 0.9


def test_same_seed_same_labels_and_input_untouched():
    mask, _ = planted(noise=0.08, seed=3)
    before = mask.copy()
    for kwargs in ({}, {"graph": "snn", "objective": "CPM"}, {"n_clusters": 3}):
        a = quiet(cluster_missingness, mask, seed=7, **kwargs)
        b = quiet(cluster_missingness, mask, seed=7, **kwargs)
        assert np.array_equal(a.labels, b.labels)
        assert a.notes == b.notes
    assert np.array_equal(mask, before)


def test_row_order_does_not_change_the_partition():
    mask, truth = planted(noise=0.05, seed=4)
    perm = np.random.default_rng(0).permutation(len(mask))
    a = quiet(cluster_missingness, mask, seed=0)
    b = quiet(cluster_missingness, mask[perm], seed=0)
    assert adjusted_rand_score(a.labels[perm], b.labels) == 1.0


def test_dataframe_input_and_graph_cap():
    mask, truth = planted(noise=0.1, seed=5)
    frame = pd.DataFrame(mask.astype(int), columns=[f"c{j}" for j in range(N_COLS)])
    n_patterns = len(unique_rows(mask)[0])
    assert n_patterns > 60
    # Only 60 patterns in the graph: the others join by neighbour vote.
    result = quiet(cluster_missingness, frame, max_graph_patterns=60, seed=0)
    assert "max_graph_patterns=60" in result.notes
    assert adjusted_rand_score(truth, result.labels) >= 0.9


def test_proportion_matrix_recovers_planted_groups():
    rng = np.random.default_rng(1)
    truth = np.repeat(np.arange(3), 50)
    prop = rng.uniform(0.0, 0.15, size=(150, 12))
    for g in range(3):
        prop[truth == g, 4 * g : 4 * g + 4] = rng.uniform(0.6, 1.0, size=(50, 4))
    result = quiet(cluster_missingness, prop, proportion=True, seed=0)
    assert result.method == "leiden"
    assert adjusted_rand_score(truth, result.labels) >= 0.9
    km = cluster_missingness(prop, proportion=True, n_clusters=3, seed=0)
    assert adjusted_rand_score(truth, km.labels) >= 0.9
    # The assigner works on proportions too, and survives JSON.
    assigner = MissingnessAssigner.from_dict(json.loads(json.dumps(result.assigner.to_dict())))
    assert np.array_equal(assigner.predict(prop), result.labels)


# ----------------------------------------------------------------- fallbacks
def test_mcar_mask_is_pooled_with_warning():
    rng = np.random.default_rng(0)
    mask = rng.random((300, N_COLS)) < 0.3
    with pytest.warns(ClusteringFallbackWarning, match="Pooled all 300 rows"):
        result = cluster_missingness(mask, seed=0)
    assert result.n_clusters == 1
    assert result.method == "pooled"
    assert np.all(result.labels == 0)
    assert result.silhouette is None
    assert "MCAR" in result.notes
    assert np.all(result.assigner.predict(mask[:5]) == 0)


def test_low_silhouette_pools_with_warning():
    mask, _ = planted()
    with pytest.warns(ClusteringFallbackWarning, match="below min_silhouette"):
        result = cluster_missingness(mask, min_silhouette=0.99, seed=0)
    assert result.n_clusters == 1 and result.method == "pooled"


@pytest.mark.parametrize(
    "mask, reason",
    [
        (np.zeros((50, 5), dtype=bool), "no cell is missing"),
        (np.tile([True, False, True], (50, 1)), "one missingness pattern"),
        (np.zeros((50, 0), dtype=bool), "no columns"),
    ],
)
def test_trivial_masks_give_one_cluster(mask, reason):
    with pytest.warns(ClusteringFallbackWarning, match=reason):
        result = cluster_missingness(mask)
    assert result.n_clusters == 1 and np.all(result.labels == 0)
    assert result.sizes.tolist() == [50]


def test_tiny_clusters_are_merged_into_nearest_large_cluster():
    mask, truth = planted(n_per_group=60, n_groups=3, noise=0.0)
    # Five rows missing a block no group misses: Leiden gives them their own community.
    tiny = np.zeros((5, N_COLS), dtype=bool)
    tiny[:, 16:20] = True
    with pytest.warns(ClusteringFallbackWarning, match="Merged 1 cluster.* smaller than min_cluster_size=20"):
        result = cluster_missingness(np.vstack([mask, tiny]), min_cluster_size=20, seed=0)
    assert "found 4 communities" in result.notes
    assert result.n_clusters == 3 and result.sizes.min() >= 20
    # KMeans isolates rows that also miss two of group 0's columns; merging sends
    # them to group 0, whose mean profile is nearest.
    tiny[:, 0:2] = True
    with pytest.warns(ClusteringFallbackWarning, match="smaller than min_cluster_size=20"):
        result = cluster_missingness(np.vstack([mask, tiny]), n_clusters=4, min_cluster_size=20, seed=0)
    assert result.n_clusters == 3 and result.sizes.min() >= 20
    assert np.all(result.labels[-5:] == result.labels[0])
    # Too few rows for two clusters of the minimum size -> pooled.
    with pytest.warns(ClusteringFallbackWarning, match="cannot form two clusters"):
        small = cluster_missingness(np.vstack([mask[:20], mask[60:75]]), min_cluster_size=20)
    assert small.n_clusters == 1


def test_kmeans_with_more_clusters_than_patterns_warns():
    mask = np.repeat(np.array([[1, 0, 0], [0, 1, 1]], dtype=bool), 30, axis=0)
    with pytest.warns(ClusteringFallbackWarning, match="only 2 distinct"):
        result = cluster_missingness(mask, n_clusters=3, min_cluster_size=5)
    assert result.n_clusters == 2


def test_silhouette_merge_rejoins_a_split_group():
    mask, truth = planted(n_per_group=60, n_groups=2, noise=0.05, seed=2)
    patterns, inverse, counts = unique_rows(mask)
    first_row = np.zeros(len(patterns), dtype=np.int64)
    first_row[inverse] = np.arange(len(mask))
    # Group 0's patterns cut into two arbitrary halves (labels 0 and 2).
    labels = truth[first_row].copy()
    group0 = np.flatnonzero(labels == 0)
    labels[group0[::2]] = 2
    sample = PatternSample(patterns, counts, inverse, seed=0)
    merged, n_merges, before, after = sample.merge(labels)
    assert n_merges == 1 and after > before
    assert adjusted_rand_score(truth, merged[inverse]) == 1.0


def test_default_min_cluster_size():
    assert default_min_cluster_size(100) == 20
    assert default_min_cluster_size(100_000) == 1000


# ------------------------------------------------------------------ assigner
def test_assigner_predicts_training_labels_and_round_trips():
    mask, truth = planted(noise=0.05, seed=6)
    result = quiet(cluster_missingness, mask, seed=0)
    predicted = result.assigner.predict(mask)
    assert np.mean(predicted == result.labels) >= 0.95
    state = json.loads(json.dumps(result.assigner.to_dict()))
    restored = MissingnessAssigner.from_dict(state)
    rng = np.random.default_rng(9)
    fresh, _ = planted(noise=0.15, seed=11)
    fresh = fresh[rng.permutation(len(fresh))]
    assert np.array_equal(restored.predict(fresh), result.assigner.predict(fresh))
    assert np.array_equal(restored.predict(mask), predicted)
    # New rows with a clean planted pattern go to that group's cluster.
    clean = np.zeros((4, N_COLS), dtype=bool)
    for g in range(4):
        clean[g, 4 * g : 4 * g + 4] = True
    expected = [np.bincount(result.labels[truth == g]).argmax() for g in range(4)]
    assert restored.predict(clean).tolist() == expected


def test_assigner_uses_pattern_majority_for_user_labels():
    mask = np.array([[1, 0, 0]] * 5 + [[0, 1, 1]] * 4, dtype=bool)
    labels = ["a", "a", "a", "b", "a", "b", "b", "b", "b"]
    assigner = MissingnessAssigner().fit(mask, labels)
    assert assigner.predict(mask).tolist() == [0] * 5 + [1] * 4
    # Unseen pattern: nearest by smoothed Jaccard wins; all-observed row goes somewhere valid.
    assert assigner.predict(np.array([[1, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=bool)).tolist()[:2] == [0, 1]


def test_user_clustering_keeps_the_callers_clusters():
    mask, truth = planted(noise=0.05, seed=8)
    names = np.array(["d", "c", "b", "a"])[truth]  # sorted names reverse the group order
    result = user_clustering(mask, names.tolist())
    assert result.method == "user"
    assert result.user_labels == ("a", "b", "c", "d")
    assert np.array_equal(result.labels, 3 - truth)
    assert result.sizes.tolist() == [60, 60, 60, 60]
    assert result.silhouette == pytest.approx(silhouette(mask, names))
    assert np.mean(result.assigner.predict(mask) == result.labels) >= 0.95
    with pytest.raises(ValueError, match="clusters has 3 labels but the data has 240 rows"):
        user_clustering(mask, ["a", "b", "c"])


def test_assigner_errors():
    with pytest.raises(NotFittedError, match="not fitted"):
        MissingnessAssigner().predict(np.zeros((2, 3), dtype=bool))
    assigner = MissingnessAssigner().fit(np.eye(3, dtype=bool), [0, 1, 1])
    with pytest.raises(ValueError, match="mask has 4 columns but the assigner was fitted on 3"):
        assigner.predict(np.zeros((2, 4), dtype=bool))
    with pytest.raises(ModelFileError, match="not a saved MissingnessAssigner"):
        MissingnessAssigner.from_dict({"format": "something else"})
    state = assigner.to_dict()
    state["labels"] = [0, 5, 1]
    with pytest.raises(ModelFileError, match="inconsistent"):
        MissingnessAssigner.from_dict(state)


# ---------------------------------------------------------------- silhouette
def test_silhouette_matches_sklearn_on_expanded_rows():
    rng = np.random.default_rng(0)
    mask = rng.random((80, 6)) < 0.4
    labels = rng.integers(0, 3, 80)
    dist = np.array([[smoothed_jaccard_distance(a, b) for b in mask] for a in mask])
    expected = silhouette_score(dist, labels, metric="precomputed")
    assert silhouette(mask, labels) == pytest.approx(expected, abs=1e-5)
    # Subsampled estimate stays close and is reproducible.
    a = silhouette(mask, labels, max_rows=60, seed=1)
    assert a == silhouette(mask, labels, max_rows=60, seed=1)
    assert silhouette(mask, np.zeros(80, dtype=int)) is None


def test_topk_matches_brute_force():
    rng = np.random.default_rng(0)
    patterns, _, _ = unique_rows(rng.random((300, 9)) < 0.4)
    idx, sim = tanimoto_topk(patterns, patterns, 5, exclude_self=True)
    brute = np.array([[1 - smoothed_jaccard_distance(a, b) for b in patterns] for a in patterns])
    np.fill_diagonal(brute, -1)
    assert np.allclose(sim, -np.sort(-brute, axis=1)[:, :5])
    assert np.allclose(sim, np.take_along_axis(brute, idx, axis=1))


# ------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"objective": "louvain"}, ValueError, "objective must be 'CPM' or 'modularity', got 'louvain'"),
        ({"graph": "full"}, ValueError, "graph must be 'knn' or 'snn'"),
        ({"resolution": 0}, ValueError, "resolution must be a finite number > 0, got 0"),
        ({"k_neighbors": 0}, ValueError, "k_neighbors must be >= 1, got 0"),
        ({"k_neighbors": 2.5}, TypeError, "k_neighbors must be an integer"),
        ({"seed": -1}, ValueError, "seed must be >= 0"),
        ({"n_clusters": 500}, ValueError, "n_clusters=500 exceeds the number of rows"),
        ({"min_silhouette": 2.0}, ValueError, "min_silhouette must be a number in"),
    ],
)
def test_bad_options_raise(kwargs, error, match):
    mask, _ = planted()
    with pytest.raises(error, match=match):
        cluster_missingness(mask, **kwargs)


@pytest.mark.parametrize(
    "mask, kwargs, error, match",
    [
        (np.array([[0.0, np.nan]]), {}, ValueError, "contains NaN"),
        (np.array([[0, 2]]), {}, ValueError, "must be 0/1 or bool.*got 2 at row 0.*proportion=True"),
        (np.zeros(5, dtype=bool), {}, ValueError, "must be 2-D"),
        (np.zeros((0, 3), dtype=bool), {}, ValueError, "has no rows"),
        (np.array([[0.5, 1.2]]), {"proportion": True}, ValueError, r"in \[0, 1\], got 1.2"),
        (pd.DataFrame({"age": [1, 2], "name": ["a", "b"]}), {}, TypeError, "column 'name'"),
        (np.array([["a", "b"]]), {}, TypeError, "bool or numeric 0/1"),
    ],
)
def test_bad_masks_raise(mask, kwargs, error, match):
    with pytest.raises(error, match=match):
        cluster_missingness(mask, **kwargs)


@pytest.mark.parametrize(
    "labels, match",
    [
        ([0, 1], "clusters has 2 labels but the data has 4 rows"),
        ([0, 1, np.nan, 1], "clusters has a missing label .* at position 2"),
        ([0, 1, None, 1], "clusters has a missing label"),
        ([0.0, 1.5, 1.0, 0.0], "clusters must hold integer or string labels, got 1.5"),
        ([[0], [1], [1, 2], [0]], "clusters must hold hashable labels"),
        (np.zeros((4, 2)), "clusters must be 1-D"),
    ],
)
def test_validate_labels_rejects_bad_labels(labels, match):
    with pytest.raises(ValueError, match=match):
        validate_labels(labels, 4)


def test_validate_labels_relabels_any_hashable():
    labels, mapping = validate_labels(["b", "a", "b", "c"], 4)
    assert labels.tolist() == [1, 0, 1, 2] and mapping == {"a": 0, "b": 1, "c": 2}
    labels, mapping = validate_labels(np.array([10, 3, 3, 10]), 4)
    assert labels.dtype == np.int64 and labels.tolist() == [1, 0, 0, 1] and mapping == {3: 0, 10: 1}
    labels, _ = validate_labels(pd.Series([2.0, 2.0, 5.0, 5.0]), 4)
    assert labels.tolist() == [0, 0, 1, 1]
    labels, mapping = validate_labels([1, "x", 1, "x"], 4)  # mixed types: first-appearance order
    assert labels.tolist() == [0, 1, 0, 1] and mapping == {1: 0, "x": 1}
    with pytest.raises(ValueError, match="fewer than 2 rows .*label 'c' has 1"):
        validate_labels(["a", "a", "b", "b", "c"], 5, min_cluster_size=2)
    with pytest.raises(TypeError, match="clusters must be a sequence"):
        validate_labels(None, 4)
