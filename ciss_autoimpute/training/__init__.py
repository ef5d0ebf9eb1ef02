"""Training: one Trainer (initial training + impute-refit loop), callbacks, the validation metric.

>>> from ciss_autoimpute.training import Trainer, TrainConfig, RefitConfig
"""

from .callbacks import Callback, History, ProgressLogger, TimeBudget, history_frame
from .config import AUTO_BATCH_SIZE, PRECISIONS, RefitConfig, TrainConfig, configs_from_dict, resolve_batch_size
from .metrics import MetricWeights, ValidationScore, held_out_counts, score_imputations, validation_score
from .trainer import Trainer, TrainResult, impute_all, precision_context, resolve_device

__all__ = [
    "Trainer",
    "TrainResult",
    "TrainConfig",
    "RefitConfig",
    "configs_from_dict",
    "resolve_batch_size",
    "AUTO_BATCH_SIZE",
    "PRECISIONS",
    "precision_context",
    "impute_all",
    "resolve_device",
    "Callback",
    "History",
    "ProgressLogger",
    "TimeBudget",
    "history_frame",
    "MetricWeights",
    "ValidationScore",
    "validation_score",
    "score_imputations",
    "held_out_counts",
]
