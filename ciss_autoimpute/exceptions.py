"""Exception and warning classes raised by ciss_autoimpute."""

from __future__ import annotations

from sklearn.exceptions import NotFittedError as _SklearnNotFittedError

__all__ = [
    "CissAutoimputeWarning",
    "NothingMissingWarning",
    "ClusteringFallbackWarning",
    "SamplingWarning",
    "TrainingDivergedError",
    "StorageError",
    "NotFittedError",
    "ModelFileError",
]


class CissAutoimputeWarning(UserWarning):
    """Base class of every warning this package emits."""


class NothingMissingWarning(CissAutoimputeWarning):
    """The data has no missing cell; it is returned unchanged."""


class ClusteringFallbackWarning(CissAutoimputeWarning):
    """Clustering merged small clusters or pooled all rows into one cluster."""


class SamplingWarning(CissAutoimputeWarning):
    """Multiple imputations may be poorly calibrated (e.g. a fixed-variance likelihood)."""


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the run was stopped."""


class StorageError(ValueError):
    """An Optuna storage could not be resolved or reached."""


class NotFittedError(_SklearnNotFittedError):
    """An estimator was used before ``fit``."""


class ModelFileError(ValueError):
    """A saved model file is unreadable, tampered with, or from another version."""
