"""Input checks, schema and encoding, ``ClusterDataset`` and mask generators."""

from .checks import check_frame, check_same_columns, to_frame
from .diagnostics import missingness_direction_evidence
from .layout import EncodedData, FeatureLayout
from .masks import MECHANISMS, make_missing
from .schema import Schema

__all__ = [
    "EncodedData",
    "FeatureLayout",
    "MECHANISMS",
    "Schema",
    "check_frame",
    "check_same_columns",
    "make_missing",
    "missingness_direction_evidence",
    "to_frame",
]
