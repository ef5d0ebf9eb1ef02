"""``ClusterDataset``: the encoded data, its masks, the validation holdout and clusters."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from .checks import check_frame, to_frame
from .layout import EncodedData, FeatureLayout
from .schema import Schema

__all__ = ["ClusterDataset", "ClusteringOptions", "resolve_device"]

logger = logging.getLogger(__name__)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` picks ``cuda`` when available, else ``cpu``; anything else is checked."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a valid torch device; use None (automatic), 'cpu' or 'cuda[:N]'."
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available here; use 'cpu' or None.")
    return dev


@dataclass(frozen=True)
class ClusteringOptions:
    """How rows are clustered on their missingness pattern when no labels are given.

    ``n_clusters`` set means KMeans; ``None`` means Leiden on a ``graph`` ("knn" or
    "snn") of the rows' missingness indicators with (smoothed) Jaccard similarity.
    ``leiden_resolution=None`` takes the clustering module's default for the objective.
    The default objective is modularity: CISS-VAE's CPM with a fixed resolution
    shatters kNN graphs into near-singletons (see
    :func:`~ciss_autoimpute.clustering.cluster_missingness`). Clusters smaller than
    ``min_cluster_size`` are merged; when the silhouette is below ``min_silhouette``
    (or the indicators look MCAR) all rows are pooled — ``min_silhouette=None``
    turns those structure checks off, e.g. to force the KMeans ``n_clusters`` you asked for.
    """

    k_neighbors: int = 15
    leiden_resolution: float | None = None
    leiden_objective: str = "modularity"
    graph: str = "knn"
    min_cluster_size: int | None = None
    min_silhouette: float | None = 0.1

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "k_neighbors": self.k_neighbors,
            "objective": self.leiden_objective,
            "graph": self.graph,
            "min_silhouette": self.min_silhouette,
        }
        if self.leiden_resolution is not None:
            out["resolution"] = self.leiden_resolution
        if self.min_cluster_size is not None:
            out["min_cluster_size"] = self.min_cluster_size
        return out


def _as_clustering_options(value: ClusteringOptions | Mapping[str, Any] | None) -> ClusteringOptions:
    if value is None:
        return ClusteringOptions()
    if isinstance(value, ClusteringOptions):
        return value
    if isinstance(value, Mapping):
        valid = set(ClusteringOptions.__dataclass_fields__)
        unknown = sorted(set(value) - valid)
        if unknown:
            raise ValueError(f"clustering: unknown option(s) {unknown}; valid options are {sorted(valid)}.")
        return ClusteringOptions(**value)
    raise TypeError(
        f"clustering must be a ClusteringOptions, a dict or None, got {type(value).__name__}."
    )


class ClusterDataset:
    """Rows of a table clustered on their missingness pattern, with a validation holdout.

    Parameters
    ----------
    data
        A pandas DataFrame, numpy array or torch tensor; NaN, None and ``pd.NA`` mean missing.
    clusters
        Optional cluster label per row (any hashable values). When given, no clustering runs.
    n_clusters
        Number of KMeans clusters; ``None`` uses Leiden (see ``clustering``).
    val_proportion
        Share of observed cells held out for validation: a float, a sequence with one
        value per cluster (in the order of the sorted labels), or a mapping from cluster
        label to share. Drawn per cluster and per column (a categorical column counts
        once), at least one cell per column and cluster when the column has two or more
        observed cells there. A row's only observed cell is never held out.
    columns_ignore
        Columns left out of clustering and never held out (e.g. complete demographics).
    replacement_value
        Value (on the encoded, standardised scale) put in missing and held-out cells
        before the first training.
    seed
        Seed for clustering and the holdout draw.
    device
        Torch device of the tensors; ``None`` picks CUDA when available.
    column_kinds
        Per-column override of the inferred kind: ``{"col": "numeric" | "binary" | "categorical"}``.
    missingness_proportion_matrix
        Optional rows x features matrix of missingness proportions (e.g. over repeated
        visits) to cluster on instead of the row's own missingness indicators.
    clustering
        :class:`ClusteringOptions` (or a dict of them) for Leiden.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> df = pd.DataFrame(rng.normal(size=(60, 3)), columns=["a", "b", "c"])
    >>> df.loc[:19, "a"] = np.nan
    >>> ds = ClusterDataset(df, n_clusters=2, seed=0, device="cpu")
    >>> ds.n_clusters, ds.data.x.shape
    (2, torch.Size([60, 3]))
    """

    def __init__(
        self,
        data: Any,
        *,
        clusters: Sequence[Any] | np.ndarray | None = None,
        n_clusters: int | None = None,
        val_proportion: float | Sequence[float] | Mapping[Any, float] = 0.1,
        columns_ignore: Sequence[Any] | None = None,
        replacement_value: float = 0.0,
        seed: int = 0,
        device: str | torch.device | None = None,
        column_kinds: Mapping[Any, str] | None = None,
        missingness_proportion_matrix: Any = None,
        clustering: ClusteringOptions | Mapping[str, Any] | None = None,
    ) -> None:
        frame = to_frame(data, argument="data")
        check_frame(frame, column_kinds=column_kinds)
        _check_seed(seed)
        if n_clusters is not None and (isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) or n_clusters < 1):
            raise ValueError(f"n_clusters must be a positive integer or None (Leiden), got {n_clusters!r}.")
        if not isinstance(replacement_value, (int, float)) or isinstance(replacement_value, bool) or not np.isfinite(replacement_value):
            raise ValueError(f"replacement_value must be a finite number, got {replacement_value!r}.")
        options = _as_clustering_options(clustering)
        ignore = _check_columns_ignore(columns_ignore, frame)

        self.seed = int(seed)
        self.replacement_value = float(replacement_value)
        self.columns_ignore = ignore
        self.clustering_options = options
        self.device = resolve_device(device)
        self.schema = Schema.fit(frame, column_kinds)
        self._frame = frame

        values, observed = self.schema.encode(frame)
        missing_cols = self.schema.missing_matrix(frame)  # [n, p] True = missing
        self._values = values
        self._observed = observed
        self._missing_cols = missing_cols
        keep_cols = np.array([c not in ignore for c in frame.columns], dtype=bool)

        # --- clusters
        from ..clustering import cluster_missingness, validate_labels

        self.clustering = None
        if clusters is not None:
            if missingness_proportion_matrix is not None:
                raise ValueError(
                    "Pass either clusters or missingness_proportion_matrix, not both; "
                    "the labels already decide the clusters."
                )
            labels, mapping = validate_labels(clusters, len(frame))
            self.cluster_labels_ = list(mapping)  # user label of cluster 0, 1, ...
        else:
            if missingness_proportion_matrix is not None:
                prop = _proportion_matrix(missingness_proportion_matrix, frame)
                result = cluster_missingness(
                    prop, n_clusters=n_clusters, seed=self.seed, proportion=True, **options.kwargs()
                )
            else:
                result = cluster_missingness(
                    missing_cols[:, keep_cols], n_clusters=n_clusters, seed=self.seed, **options.kwargs()
                )
            self.clustering = result
            labels = np.asarray(result.labels, dtype=np.int64)
            self.cluster_labels_ = list(range(int(labels.max()) + 1))
        self.clusters = labels
        self.n_clusters = int(labels.max()) + 1

        # --- validation holdout (per cluster, per user column)
        props = _per_cluster_proportions(val_proportion, self.cluster_labels_)
        self._val_cols = _draw_holdout(
            observed_cols=~missing_cols,
            labels=labels,
            proportions=props,
            eligible_cols=keep_cols,
            seed=self.seed,
        )
        self.val_proportion = val_proportion
        self.data = self._build_tensors()
        logger.info("%r", self)

    # ------------------------------------------------------------------ building
    def _build_tensors(self) -> EncodedData:
        val = self.schema.encoded_mask(self._val_cols)
        train = self._observed & ~val
        filled = np.where(train, self._values, np.float32(self.replacement_value)).astype(np.float32)
        x_val = np.where(val, self._values, np.float32(0.0)).astype(np.float32)
        dev = self.device
        return EncodedData(
            x=torch.from_numpy(filled).to(dev),
            observed=torch.from_numpy(self._observed.copy()).to(dev),
            train_mask=torch.from_numpy(train).to(dev),
            val_mask=torch.from_numpy(val).to(dev),
            x_val=torch.from_numpy(x_val).to(dev),
            clusters=torch.from_numpy(self.clusters.copy()).to(dev),
            n_clusters=self.n_clusters,
            layout=self.schema.layout,
        )

    # ------------------------------------------------------------------ views
    @property
    def layout(self) -> FeatureLayout:
        return self.schema.layout

    @property
    def index(self) -> pd.Index:
        return self._frame.index

    @property
    def columns(self) -> pd.Index:
        return self._frame.columns

    @property
    def frame(self) -> pd.DataFrame:
        """A copy of the data as given (after conversion to a DataFrame)."""
        return self._frame.copy()

    @property
    def val_mask_columns(self) -> np.ndarray:
        """bool ``[n, p]``: which user cells are held out for validation."""
        return self._val_cols.copy()

    @property
    def missing_mask_columns(self) -> np.ndarray:
        """bool ``[n, p]``: which user cells are missing."""
        return self._missing_cols.copy()

    @property
    def cluster_sizes(self) -> np.ndarray:
        return np.bincount(self.clusters, minlength=self.n_clusters)

    @property
    def n_missing(self) -> int:
        return int(self._missing_cols.sum())

    def __len__(self) -> int:
        return len(self._frame)

    def __repr__(self) -> str:
        return (
            f"ClusterDataset(rows={len(self)}, columns={self._frame.shape[1]}, encoded={self.layout.n_features}, "
            f"clusters={self.n_clusters} sizes={self.cluster_sizes.tolist()}, missing cells={self.n_missing}, "
            f"held-out cells={int(self._val_cols.sum())}, device={self.device})"
        )

    # ------------------------------------------------------------------ operations
    def decode(self, encoded: torch.Tensor | np.ndarray) -> pd.DataFrame:
        """Turn an encoded ``[n, d]`` imputation back into the user's frame.

        Observed cells (held-out ones included) are copied from the data verbatim.
        """
        if isinstance(encoded, torch.Tensor):
            encoded = encoded.detach().cpu().numpy()
        return self.schema.decode(np.asarray(encoded, dtype=np.float32), self._frame)

    def to(self, device: str | torch.device) -> "ClusterDataset":
        """A shallow copy whose tensors live on ``device``."""
        new = object.__new__(ClusterDataset)
        new.__dict__.update(self.__dict__)
        new.device = resolve_device(device)
        new.data = self.data.to(new.device)
        return new

    def with_clusters(self, labels: np.ndarray) -> "ClusterDataset":
        """The same data and holdout with other cluster labels (used when tuning clustering)."""
        from ..clustering import validate_labels

        labels, mapping = validate_labels(labels, len(self))
        new = object.__new__(ClusterDataset)
        new.__dict__.update(self.__dict__)
        new.clusters = labels
        new.n_clusters = int(labels.max()) + 1
        new.cluster_labels_ = list(mapping)
        new.clustering = None
        new.data = replace(
            self.data, clusters=torch.from_numpy(labels.copy()).to(self.device), n_clusters=new.n_clusters
        )
        return new

    def recluster(self, *, n_clusters: int | None = None, seed: int | None = None, **options: Any) -> "ClusterDataset":
        """Cluster again with other options, keeping the data and the holdout.

        ``options`` are :class:`ClusteringOptions` fields (``k_neighbors``,
        ``leiden_resolution``, ...).
        """
        from ..clustering import cluster_missingness

        opts = _as_clustering_options({**self.clustering_options.__dict__, **options})
        keep_cols = np.array([c not in self.columns_ignore for c in self.columns], dtype=bool)
        result = cluster_missingness(
            self._missing_cols[:, keep_cols],
            n_clusters=n_clusters,
            seed=self.seed if seed is None else seed,
            **opts.kwargs(),
        )
        new = self.with_clusters(result.labels)
        new.clustering = result
        new.clustering_options = opts
        return new


# ---------------------------------------------------------------------- helpers
def _check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")


def _check_columns_ignore(columns_ignore: Any, frame: pd.DataFrame) -> frozenset:
    if columns_ignore is None:
        return frozenset()
    if isinstance(columns_ignore, (str, bytes)) or not hasattr(columns_ignore, "__iter__"):
        columns_ignore = [columns_ignore]
    cols = list(columns_ignore)
    unknown = [c for c in cols if c not in frame.columns]
    if unknown:
        raise ValueError(
            f"columns_ignore names column(s) {unknown} that are not in the data; "
            f"available columns are {list(frame.columns)[:20]}."
        )
    if len(set(cols)) == frame.shape[1]:
        raise ValueError("columns_ignore lists every column; leave at least one column to cluster and validate on.")
    return frozenset(cols)


def _proportion_matrix(value: Any, frame: pd.DataFrame) -> np.ndarray:
    if isinstance(value, pd.DataFrame):
        arr = value.to_numpy(dtype=float, na_value=np.nan)
    elif isinstance(value, torch.Tensor):
        arr = value.detach().cpu().numpy().astype(float)
    else:
        try:
            arr = np.asarray(value, dtype=float)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                "missingness_proportion_matrix must be a numeric DataFrame or array of proportions in [0, 1]."
            ) from exc
    if arr.ndim != 2 or arr.shape[0] != len(frame):
        raise ValueError(
            f"missingness_proportion_matrix must have one row per data row ({len(frame)}), got shape {arr.shape}."
        )
    return arr


def _per_cluster_proportions(val_proportion: Any, cluster_labels: list) -> np.ndarray:
    k = len(cluster_labels)

    def check(p: Any, where: str) -> float:
        if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)) or not (0.0 <= float(p) < 1.0):
            raise ValueError(f"val_proportion{where} must be a number in [0, 1), got {p!r}.")
        return float(p)

    if isinstance(val_proportion, Mapping):
        missing = [lab for lab in cluster_labels if lab not in val_proportion]
        extra = [lab for lab in val_proportion if lab not in cluster_labels]
        if missing or extra:
            raise ValueError(
                f"val_proportion as a mapping needs exactly one entry per cluster label {cluster_labels}; "
                f"missing {missing}, unknown {extra}."
            )
        return np.array([check(val_proportion[lab], f"[{lab!r}]") for lab in cluster_labels])
    if isinstance(val_proportion, (list, tuple, np.ndarray, pd.Series)):
        vals = list(val_proportion)
        if len(vals) != k:
            raise ValueError(
                f"val_proportion has {len(vals)} values but there are {k} clusters; give one per cluster "
                "or a single float."
            )
        return np.array([check(v, f"[{i}]") for i, v in enumerate(vals)])
    return np.full(k, check(val_proportion, ""))


def _draw_holdout(
    *,
    observed_cols: np.ndarray,
    labels: np.ndarray,
    proportions: np.ndarray,
    eligible_cols: np.ndarray,
    seed: int,
) -> np.ndarray:
    """Choose held-out cells per cluster and per column, as a bool ``[n, p]`` mask."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7919]))
    n, p = observed_cols.shape
    val = np.zeros((n, p), dtype=bool)
    # A row's last observed cell stays in training so every row keeps some signal.
    per_row = observed_cols[:, eligible_cols].sum(axis=1)
    row_ok = per_row >= 2
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(len(proportions) + 1))
    for c, share in enumerate(proportions):
        if share <= 0:
            continue
        rows_c = order[bounds[c] : bounds[c + 1]]
        for j in np.flatnonzero(eligible_cols):
            obs_rows = rows_c[observed_cols[rows_c, j]]
            if len(obs_rows) < 2:
                continue
            candidates = obs_rows[row_ok[obs_rows]]
            if len(candidates) == 0:
                continue
            k = max(1, int(round(share * len(obs_rows))))
            k = min(k, len(candidates), len(obs_rows) - 1)
            chosen = rng.choice(candidates, size=k, replace=False)
            val[chosen, j] = True
            # Keep the row counts current so a row never loses all its training cells.
            per_row[chosen] -= 1
            row_ok[chosen] = per_row[chosen] >= 2
    return val
