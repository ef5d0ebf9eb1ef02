"""ciss_autoimpute: missing-data imputation with deep generative models tuned by Optuna.

The public names are imported lazily so ``import ciss_autoimpute`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ClusterDataset": "ciss_autoimpute.data.dataset",
    "ClusteringOptions": "ciss_autoimpute.data.dataset",
    "Schema": "ciss_autoimpute.data.schema",
    "make_missing": "ciss_autoimpute.data.masks",
    "missingness_direction_evidence": "ciss_autoimpute.data.diagnostics",
    "cluster_missingness": "ciss_autoimpute.clustering",
    "available_models": "ciss_autoimpute.models.registry",
    "build_model": "ciss_autoimpute.models.registry",
    "register_model": "ciss_autoimpute.models.registry",
    "Trainer": "ciss_autoimpute.training",
    "TrainConfig": "ciss_autoimpute.training",
    "RefitConfig": "ciss_autoimpute.training",
    "SearchSpace": "ciss_autoimpute.tuning",
    # From the defining module: once the submodule ciss_autoimpute.tuning.autotune is
    # imported (run_imputation does), the package attribute of that name is the module.
    "autotune": "ciss_autoimpute.tuning.autotune",
    "TuneResult": "ciss_autoimpute.tuning.autotune",
    "Imputer": "ciss_autoimpute.imputer",
    "EnsembleImputer": "ciss_autoimpute.ensemble",
    "run_imputation": "ciss_autoimpute.api",
    "ImputationResult": "ciss_autoimpute.api",
    "pool": "ciss_autoimpute.pooling",
    "pool_function": "ciss_autoimpute.pooling",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ciss_autoimpute' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
