"""Silhouette of a clustering of missingness patterns, and silhouette-guided merging.

Distances are ``1 - similarity`` with the smoothed Jaccard / Tanimoto similarity of
:mod:`ciss_autoimpute.clustering._patterns`, the same one the graph is built on.
Identical rows are collapsed to one pattern with a count, which makes the
silhouette of *all* rows exact and cheap whenever there are at most ``max_rows``
distinct patterns; otherwise it is estimated on a seeded random subsample of rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._patterns import tanimoto_matrix, unique_rows
from ._validation import as_mask_matrix, check_int, check_seed, validate_labels

__all__ = ["silhouette", "PatternSample", "labelled_sample"]

DEFAULT_MAX_ROWS = 5000
# Candidate partners per cluster (nearest by average distance) in silhouette merging.
_MERGE_CANDIDATES = 3


def _silhouette_from_sums(sums: np.ndarray, sizes: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> float:
    """Row-weighted mean silhouette from per-cluster distance sums.

    ``sums[i, c]`` is the summed distance from pattern ``i`` to all rows of cluster
    ``c`` and ``sizes[c]`` the rows in ``c`` (clusters of size 0 are ignored). As
    in :func:`sklearn.metrics.silhouette_score`, ``a`` excludes the row itself
    (copies of its pattern count, at distance 0) and rows alone in their cluster
    score 0.
    """
    rows = np.arange(len(labels))
    own_size = sizes[labels]
    with np.errstate(invalid="ignore", divide="ignore"):
        a = sums[rows, labels] / (own_size - 1)
        mean_to = sums / sizes
    mean_to[rows, labels] = np.inf
    mean_to[:, sizes == 0] = np.inf
    b = mean_to.min(1)
    top = np.maximum(a, b)
    valid = (own_size > 1) & (top > 0) & np.isfinite(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(valid, (b - a) / np.where(valid, top, 1.0), 0.0)
    return float((s * counts).sum() / counts.sum())


class PatternSample:
    """Distinct patterns (or a row subsample of them) with their distance matrix.

    Built once per clustering and reused by the merging step and the final
    silhouette, so the ``[u, u]`` distance matrix is computed a single time.

    Parameters
    ----------
    patterns, counts, inverse
        From :func:`~ciss_autoimpute.clustering._patterns.unique_rows`.
    seed
        Seeds the row subsample.
    max_rows
        With more distinct patterns than this, ``max_rows`` rows are drawn without
        replacement and only their patterns are used.
    """

    def __init__(
        self,
        patterns: np.ndarray,
        counts: np.ndarray,
        inverse: np.ndarray,
        *,
        seed: int,
        max_rows: int = DEFAULT_MAX_ROWS,
    ) -> None:
        if len(patterns) <= max_rows:
            self.index = np.arange(len(patterns))
            self.counts = counts.astype(np.float64)
            self.exact = True
        else:
            rng = np.random.default_rng(seed)
            rows = rng.choice(len(inverse), size=max_rows, replace=False)
            self.index, sub_counts = np.unique(inverse[rows], return_counts=True)
            self.counts = sub_counts.astype(np.float64)
            self.exact = False
        dist = tanimoto_matrix(patterns[self.index])
        np.subtract(1.0, dist, out=dist)
        self.dist = dist
        self.description = "exact" if self.exact else f"on a {max_rows:,}-row subsample"

    def _sums(self, labels: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
        onehot = np.zeros((len(labels), n_labels), dtype=np.float32)
        onehot[np.arange(len(labels)), labels] = self.counts
        sums = (self.dist @ onehot).astype(np.float64)
        return sums, onehot.sum(0).astype(np.float64)

    def score(self, pattern_labels: np.ndarray) -> float | None:
        """Silhouette of labels given per distinct pattern; ``None`` below two clusters."""
        labels = np.unique(pattern_labels[self.index], return_inverse=True)[1].ravel()
        n_labels = int(labels.max()) + 1
        if n_labels < 2 or self.counts.sum() <= n_labels:
            return None
        sums, sizes = self._sums(labels, n_labels)
        return _silhouette_from_sums(sums, sizes, labels, self.counts)

    def merge(self, pattern_labels: np.ndarray) -> tuple[np.ndarray, int, float | None, float | None]:
        """Greedily merge pairs of clusters while the silhouette rises.

        Community detection sometimes cuts one group of similar patterns into two
        large halves; neither half is small, yet the cut drives the silhouette
        towards 0. At each step every cluster's ``3`` nearest clusters (by average
        distance) are candidate partners; the merge with the highest silhouette is
        taken if it beats the current one, until none does or two clusters remain.

        Returns
        -------
        labels
            New labels per distinct pattern (merged clusters take the smaller id).
        n_merges
        before, after
            Silhouette before and after (``None`` below two clusters).
        """
        old_ids, labels = np.unique(pattern_labels[self.index], return_inverse=True)
        labels = labels.ravel()
        k = len(old_ids)
        if k < 2 or self.counts.sum() <= k:
            return pattern_labels, 0, None, None
        sums, sizes = self._sums(labels, k)
        current = _silhouette_from_sums(sums, sizes, labels, self.counts)
        before = current
        target = np.arange(k)  # sample cluster -> surviving sample cluster
        active = np.ones(k, dtype=bool)
        n_merges = 0
        while active.sum() > 2:
            ids = np.flatnonzero(active)
            onehot = np.zeros((len(labels), k))
            onehot[np.arange(len(labels)), labels] = self.counts
            between = (onehot[:, ids].T @ sums[:, ids]) / np.outer(sizes[ids], sizes[ids])
            np.fill_diagonal(between, np.inf)
            nearest = np.argsort(between, axis=1, kind="stable")[:, : min(_MERGE_CANDIDATES, len(ids) - 1)]
            pairs = {(min(i, j), max(i, j)) for i, row in zip(ids, ids[nearest]) for j in row}
            best = None
            for a, b in sorted(pairs):
                trial_sums = sums.copy()
                trial_sums[:, a] += trial_sums[:, b]
                trial_sums[:, b] = 0.0
                trial_sizes = sizes.copy()
                trial_sizes[a] += trial_sizes[b]
                trial_sizes[b] = 0.0
                trial_labels = np.where(labels == b, a, labels)
                value = _silhouette_from_sums(trial_sums, trial_sizes, trial_labels, self.counts)
                if best is None or value > best[0]:
                    best = (value, a, b, trial_sums, trial_sizes, trial_labels)
            if best is None or best[0] <= current + 1e-6:
                break
            current, a, b, sums, sizes, labels = best
            active[b] = False
            target[target == b] = a
            n_merges += 1
        if n_merges == 0:
            return pattern_labels, 0, before, before
        # Translate the merges to every distinct pattern; clusters absent from a
        # subsample keep their id.
        survivor = {int(o): int(old_ids[target[i]]) for i, o in enumerate(old_ids)}
        present = np.unique(pattern_labels)
        renamed = np.array([survivor.get(int(v), int(v)) for v in present], dtype=np.int64)
        return renamed[np.searchsorted(present, pattern_labels)], n_merges, before, current


def silhouette(
    mask: Any,
    labels: Any,
    seed: int = 0,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    proportion: bool = False,
) -> float | None:
    """Mean silhouette of a clustering of rows by their missingness.

    Parameters
    ----------
    mask
        bool / 0-1 array or DataFrame ``[n, p]`` (True = missing), or a
        missingness-proportion matrix with ``proportion=True``.
    labels
        One cluster label per row (any hashable values).
    seed
        Seeds the row subsample used when there are more than ``max_rows``
        distinct (pattern, label) pairs.
    max_rows
        Largest number of distinct (pattern, label) pairs handled exactly (the
        distance matrix is ``max_rows**2`` floats).
    proportion
        Whether ``mask`` is a missingness-proportion matrix.

    Returns
    -------
    float or None
        In ``[-1, 1]``; ``None`` when there are fewer than two clusters (or every
        row is its own cluster).

    Notes
    -----
    Distance is ``1 -`` the smoothed Jaccard index ``(|a & b| + 1) / (|a | b| + 1)``
    of the rows' sets of missing columns (its Tanimoto generalisation for
    proportions). Rows with the same pattern and label are handled as one weighted
    point, so the result equals :func:`sklearn.metrics.silhouette_score` on all rows
    with that distance while costing only the distinct patterns.

    Examples
    --------
    >>> import numpy as np
    >>> mask = np.array([[1, 1, 0, 0]] * 5 + [[0, 0, 1, 1]] * 5, dtype=bool)
    >>> round(silhouette(mask, [0] * 5 + [1] * 5), 3)
    1.0
    """
    seed = check_seed(seed)
    max_rows = check_int(max_rows, "max_rows", minimum=2)
    values, _ = as_mask_matrix(mask, proportion=proportion)
    codes, _ = validate_labels(labels, values.shape[0], name="labels")
    patterns, inverse, _ = unique_rows(values)
    sample, pair_labels = labelled_sample(patterns, inverse, codes, seed=seed, max_rows=max_rows)
    return sample.score(pair_labels)


def labelled_sample(
    patterns: np.ndarray,
    inverse: np.ndarray,
    codes: np.ndarray,
    *,
    seed: int,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> tuple[PatternSample, np.ndarray]:
    """A :class:`PatternSample` for row labels that may split a pattern over clusters.

    User labels need not follow patterns, so the sample is built on distinct
    (pattern, label) pairs, which keeps the silhouette exact.

    Returns
    -------
    sample
    labels
        The label of each (pattern, label) pair, to pass to ``sample.score``.
    """
    n_labels = int(codes.max()) + 1
    pairs, pair_of_row, pair_counts = np.unique(inverse * n_labels + codes, return_inverse=True, return_counts=True)
    sample = PatternSample(
        patterns[pairs // n_labels], pair_counts, pair_of_row.ravel(), seed=seed, max_rows=max_rows
    )
    return sample, pairs % n_labels
