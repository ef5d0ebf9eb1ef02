"""Search spaces, presets, storage resolution and ``autotune``.

Names are imported on first use so that, e.g., resolving a storage URL does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SearchSpace": ".search_space",
    "TrialConfig": ".search_space",
    "Float": ".params",
    "Int": ".params",
    "Categorical": ".params",
    "Fixed": ".params",
    "as_param": ".params",
    "autotune": ".autotune",
    "TuneResult": ".autotune",
    "PruningCallback": ".autotune",
    "make_objective": ".autotune",
    "default_sampler": ".autotune",
    "default_pruner": ".autotune",
    "direction_outliers": ".autotune",
    "resolve_storage": ".storage",
    "mask_url": ".storage",
    "available_presets": ".presets",
    "load_best_imputer": ".workers",
    "data_fingerprint": ".workers",
    "StudyTarget": ".workers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
