"""Assign new rows to missingness clusters learned on training rows."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..exceptions import ModelFileError
from ._patterns import match_rows, tanimoto_topk, unique_rows
from ._validation import as_mask_matrix, check_int, validate_labels

__all__ = ["MissingnessAssigner"]

_FORMAT = "ciss_autoimpute.MissingnessAssigner"
_VERSION = 1


def vote(
    index: np.ndarray,
    similarity: np.ndarray,
    ref_labels: np.ndarray,
    ref_counts: np.ndarray,
    n_clusters: int,
) -> np.ndarray:
    """Majority vote of neighbours, each weighted by similarity x its number of rows.

    Returns the winning label per query row, or -1 when every neighbour has weight 0
    (no neighbours at all). Ties go to the smaller label.
    """
    m, k = index.shape
    if k == 0:
        return np.full(m, -1, dtype=np.int64)
    weight = similarity * ref_counts[index]
    flat = (np.arange(m)[:, None] * n_clusters + ref_labels[index]).ravel()
    scores = np.bincount(flat, weights=weight.ravel(), minlength=m * n_clusters).reshape(m, n_clusters)
    best = scores.argmax(1).astype(np.int64)
    best[scores.max(1) <= 0] = -1
    return best


def centroids_of(patterns: np.ndarray, weights: np.ndarray, labels: np.ndarray, n_labels: int) -> np.ndarray:
    """Weighted mean pattern per label (``float64 [n_labels, p]``), via one sparse product."""
    from scipy import sparse

    member = sparse.csr_matrix(
        (np.asarray(weights, dtype=np.float64), (labels, np.arange(len(labels)))), shape=(n_labels, len(labels))
    )
    totals = np.asarray(member.sum(1)).ravel()
    return np.asarray(member @ patterns.astype(np.float64)) / totals[:, None]


def nearest_centroid(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (squared Euclidean distance) for every row."""
    x = np.asarray(values, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    d = (x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
    return d.argmin(1).astype(np.int64)


class MissingnessAssigner:
    """Assign rows to missingness clusters from their pattern of missing cells.

    A row whose exact pattern was seen in training gets that pattern's label (the
    majority label of the training rows with that pattern). Any other row gets the
    similarity-weighted majority label of its ``k_neighbors`` most similar stored
    training patterns (smoothed Jaccard, each pattern weighted by its number of
    training rows).

    Parameters
    ----------
    k_neighbors
        Neighbours voting for an unseen pattern.
    max_patterns
        Most distinct training patterns kept (the most frequent ones); bounds the
        memory and the size of :meth:`to_dict`. Training rows whose pattern was not
        kept are assigned by the vote.

    Attributes
    ----------
    n_clusters_ : int
    n_features_ : int
    proportion_ : bool
        Whether the assigner works on missingness-proportion matrices.
    patterns_ : ndarray ``[u, p]``
        Stored training patterns (bool, or float for proportions).
    labels_ : ndarray ``int64 [u]``
    counts_ : ndarray ``int64 [u]``
        Training rows per stored pattern.
    centroids_ : ndarray ``float64 [n_clusters, p]``
        Mean missingness profile per cluster.

    Examples
    --------
    >>> import numpy as np
    >>> mask = np.array([[1, 1, 0, 0]] * 4 + [[0, 0, 1, 1]] * 4, dtype=bool)
    >>> assigner = MissingnessAssigner().fit(mask, [0] * 4 + [1] * 4)
    >>> assigner.predict(np.array([[1, 1, 1, 0], [0, 0, 0, 1]], dtype=bool)).tolist()
    [0, 1]
    """

    def __init__(self, *, k_neighbors: int = 15, max_patterns: int = 20_000) -> None:
        self.k_neighbors = k_neighbors
        self.max_patterns = max_patterns

    # ------------------------------------------------------------------ fitting
    def fit(self, mask: Any, labels: Any, *, proportion: bool = False) -> "MissingnessAssigner":
        """Learn pattern -> cluster from training rows and their labels.

        Parameters
        ----------
        mask
            Training mask ``[n, p]`` (True = missing) or proportion matrix.
        labels
            One cluster label per training row (relabelled ``0..k-1`` as in
            :func:`validate_labels`).
        proportion
            Whether ``mask`` is a missingness-proportion matrix.

        Returns
        -------
        self
        """
        self._check_params()
        values, _ = as_mask_matrix(mask, proportion=proportion)
        codes, _ = validate_labels(labels, values.shape[0])
        n_clusters = int(codes.max()) + 1
        patterns, inverse, counts = unique_rows(values)
        from scipy import sparse

        # Rows per (pattern, label) (duplicates are summed on conversion); each
        # pattern takes its rows' majority label, ties going to the smaller label.
        table = sparse.coo_matrix(
            (np.ones(len(codes)), (inverse, codes)), shape=(len(patterns), n_clusters)
        ).tocsr()
        pattern_labels = np.asarray(table.argmax(axis=1)).ravel().astype(np.int64)
        sizes = np.asarray(table.sum(0)).ravel()
        centroids = np.asarray(table.T @ patterns.astype(np.float64)) / sizes[:, None]
        return self._set_state(patterns, pattern_labels, counts, centroids, proportion=bool(proportion))

    def _check_params(self) -> None:
        check_int(self.k_neighbors, "k_neighbors", minimum=1)
        check_int(self.max_patterns, "max_patterns", minimum=1)

    def _set_state(
        self,
        patterns: np.ndarray,
        labels: np.ndarray,
        counts: np.ndarray,
        centroids: np.ndarray,
        *,
        proportion: bool,
    ) -> "MissingnessAssigner":
        """Store the fitted state, keeping at most ``max_patterns`` most frequent patterns."""
        n_clusters = len(centroids)
        if n_clusters == 1:
            # Everything goes to cluster 0: no pattern needs remembering.
            keep = np.zeros(0, dtype=np.int64)
        elif len(patterns) > self.max_patterns:
            keep = np.sort(np.argsort(-counts, kind="stable")[: self.max_patterns])
        else:
            keep = np.arange(len(patterns))
        self.patterns_ = patterns[keep].copy()
        self.labels_ = np.asarray(labels, dtype=np.int64)[keep].copy()
        self.counts_ = np.asarray(counts, dtype=np.int64)[keep].copy()
        self.centroids_ = np.asarray(centroids, dtype=np.float64).copy()
        self.n_clusters_ = int(n_clusters)
        self.n_features_ = int(centroids.shape[1])
        self.proportion_ = bool(proportion)
        return self

    def _check_fitted(self) -> None:
        from ..exceptions import NotFittedError

        if not hasattr(self, "n_clusters_"):
            raise NotFittedError("This MissingnessAssigner is not fitted yet; call fit(mask, labels) first.")

    # --------------------------------------------------------------- predicting
    def predict(self, mask: Any) -> np.ndarray:
        """Cluster label of every row of ``mask``.

        Parameters
        ----------
        mask
            ``[m, p]`` mask (or proportion matrix, if the assigner was fitted on
            one) with the same columns as in training.

        Returns
        -------
        ``int64 [m]`` labels in ``0..n_clusters_-1``.
        """
        self._check_fitted()
        values, _ = as_mask_matrix(mask, proportion=self.proportion_)
        if values.shape[1] != self.n_features_:
            raise ValueError(
                f"mask has {values.shape[1]} columns but the assigner was fitted on {self.n_features_}; "
                "pass the same columns (in the same order) as in training."
            )
        if self.n_clusters_ == 1:
            return np.zeros(values.shape[0], dtype=np.int64)
        patterns, inverse, _ = unique_rows(values)
        labels = np.full(len(patterns), -1, dtype=np.int64)
        if len(self.patterns_):
            where = match_rows(self.patterns_, patterns)
            labels[where >= 0] = self.labels_[where[where >= 0]]
            unseen = np.flatnonzero(where < 0)
            if unseen.size:
                idx, sim = tanimoto_topk(patterns[unseen], self.patterns_, self.k_neighbors)
                labels[unseen] = vote(idx, sim, self.labels_, self.counts_.astype(np.float64), self.n_clusters_)
        left = np.flatnonzero(labels < 0)
        if left.size:
            labels[left] = nearest_centroid(patterns[left], self.centroids_)
        return labels[inverse]

    # ------------------------------------------------------------ serialising
    def to_dict(self) -> dict:
        """JSON-ready state; :meth:`from_dict` restores identical predictions.

        Bool patterns are stored as hex strings of their packed bits; proportions as
        lists of floats (Python's JSON writes floats exactly).
        """
        self._check_fitted()
        if self.proportion_:
            patterns: list = [[float(v) for v in row] for row in self.patterns_]
        else:
            packed = np.packbits(self.patterns_, axis=1)
            patterns = [row.tobytes().hex() for row in packed]
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "k_neighbors": int(self.k_neighbors),
            "max_patterns": int(self.max_patterns),
            "n_clusters": self.n_clusters_,
            "n_features": self.n_features_,
            "proportion": self.proportion_,
            "patterns": patterns,
            "labels": self.labels_.tolist(),
            "counts": self.counts_.tolist(),
            "centroids": self.centroids_.tolist(),
        }

    @classmethod
    def from_dict(cls, state: dict) -> "MissingnessAssigner":
        """Rebuild an assigner saved with :meth:`to_dict`.

        Raises
        ------
        ModelFileError
            The dictionary is not an assigner state or is inconsistent.
        """
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ModelFileError(
                f"state is not a saved MissingnessAssigner (format {got!r}); "
                "pass the dictionary written by MissingnessAssigner.to_dict()."
            )
        if state.get("version") != _VERSION:
            raise ModelFileError(
                f"MissingnessAssigner state has version {state.get('version')!r}, this package reads version "
                f"{_VERSION}; re-fit the assigner with this version."
            )
        try:
            p = int(state["n_features"])
            n_clusters = int(state["n_clusters"])
            proportion = bool(state["proportion"])
            labels = np.asarray(state["labels"], dtype=np.int64)
            counts = np.asarray(state["counts"], dtype=np.int64)
            centroids = np.asarray(state["centroids"], dtype=np.float64).reshape(n_clusters, p)
            if proportion:
                patterns = np.asarray(state["patterns"], dtype=np.float64).reshape(len(labels), p)
            else:
                raw = np.frombuffer(bytes.fromhex("".join(state["patterns"])), dtype=np.uint8)
                width = (p + 7) // 8
                packed = raw.reshape(len(labels), width)
                patterns = np.unpackbits(packed, axis=1, count=p).astype(bool) if p else np.zeros((len(labels), 0), bool)
            obj = cls(k_neighbors=int(state["k_neighbors"]), max_patterns=int(state["max_patterns"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"MissingnessAssigner state is damaged ({exc}); re-fit and save it again.") from None
        if len(counts) != len(labels) or (len(labels) and (labels.min() < 0 or labels.max() >= n_clusters)):
            raise ModelFileError("MissingnessAssigner state is inconsistent (labels/counts); re-fit and save it again.")
        obj.patterns_ = patterns
        obj.labels_ = labels
        obj.counts_ = counts
        obj.centroids_ = centroids
        obj.n_clusters_ = n_clusters
        obj.n_features_ = p
        obj.proportion_ = proportion
        return obj

    def __repr__(self) -> str:
        if hasattr(self, "n_clusters_"):
            return (
                f"MissingnessAssigner(n_clusters={self.n_clusters_}, n_features={self.n_features_}, "
                f"patterns={len(self.patterns_)})"
            )
        return f"MissingnessAssigner(k_neighbors={self.k_neighbors}, max_patterns={self.max_patterns})"
