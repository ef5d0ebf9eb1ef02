"""The encoded-space contract shared by the data layer, the models and the trainer.

Everything downstream of the schema works on an *encoded* float matrix: numeric
columns standardised, binary columns as 0/1, categorical columns as one-hot groups.
:class:`FeatureLayout` says which encoded columns are which; :class:`EncodedData`
bundles the tensors a model is trained and validated on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

__all__ = ["FeatureLayout", "EncodedData"]


@dataclass(frozen=True)
class FeatureLayout:
    """Where each kind of feature sits in the encoded matrix.

    Attributes
    ----------
    n_features
        Width of the encoded matrix.
    numeric
        Encoded column indices of numeric features (standardised values).
    binary
        Encoded column indices of binary features (0/1).
    categorical
        ``(start, stop)`` encoded column ranges, one per categorical feature (one-hot).
    names
        The user's column names, in the user's order.
    column_of
        For each encoded column, the index into ``names`` of the user column it encodes.
    """

    n_features: int
    numeric: tuple[int, ...] = ()
    binary: tuple[int, ...] = ()
    categorical: tuple[tuple[int, int], ...] = ()
    names: tuple[str, ...] = ()
    column_of: tuple[int, ...] = ()

    @classmethod
    def all_numeric(cls, n_features: int, names: tuple[str, ...] | None = None) -> "FeatureLayout":
        """A layout of ``n_features`` numeric columns (handy for tests and raw tensors)."""
        names = tuple(names) if names is not None else tuple(f"x{i}" for i in range(n_features))
        return cls(
            n_features=n_features,
            numeric=tuple(range(n_features)),
            names=names,
            column_of=tuple(range(n_features)),
        )

    @property
    def n_columns(self) -> int:
        """Number of user columns (a categorical group counts once)."""
        return len(self.names)

    def to_dict(self) -> dict:
        return {
            "n_features": self.n_features,
            "numeric": list(self.numeric),
            "binary": list(self.binary),
            "categorical": [list(g) for g in self.categorical],
            "names": [str(n) for n in self.names],
            "column_of": list(self.column_of),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureLayout":
        return cls(
            n_features=int(d["n_features"]),
            numeric=tuple(int(i) for i in d["numeric"]),
            binary=tuple(int(i) for i in d["binary"]),
            categorical=tuple((int(a), int(b)) for a, b in d["categorical"]),
            names=tuple(d["names"]),
            column_of=tuple(int(i) for i in d["column_of"]),
        )


@dataclass
class EncodedData:
    """Tensors a model trains and validates on (all on one device).

    Masks are per encoded column; all columns of a categorical group share a value.

    Attributes
    ----------
    x
        float32 ``[n, d]``. Encoded values where ``train_mask`` is true; every other
        cell (missing, or held out for validation) holds the replacement value, so
        held-out values are never visible to training.
    observed
        bool ``[n, d]``: the cell was observed in the user's data.
    train_mask
        bool ``[n, d]``: observed and not held out. The only cells training may read.
    val_mask
        bool ``[n, d]``: observed cells held out for validation.
    x_val
        float32 ``[n, d]``: the true encoded values at ``val_mask`` cells, 0 elsewhere.
    clusters
        int64 ``[n]``: cluster id of each row, in ``0 .. n_clusters - 1``.
    n_clusters
        Number of clusters.
    layout
        The :class:`FeatureLayout` of the encoded columns.
    """

    x: torch.Tensor
    observed: torch.Tensor
    train_mask: torch.Tensor
    val_mask: torch.Tensor
    x_val: torch.Tensor
    clusters: torch.Tensor
    n_clusters: int
    layout: FeatureLayout

    @property
    def n_rows(self) -> int:
        return int(self.x.shape[0])

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device: str | torch.device) -> "EncodedData":
        """A copy with every tensor on ``device``."""
        return replace(
            self,
            x=self.x.to(device),
            observed=self.observed.to(device),
            train_mask=self.train_mask.to(device),
            val_mask=self.val_mask.to(device),
            x_val=self.x_val.to(device),
            clusters=self.clusters.to(device),
        )
