"""Search spaces, presets, storage resolution and ``autotune``."""

from .autotune import PruningCallback, TuneResult, autotune, make_objective
from .params import Categorical, Fixed, Float, Int, as_param
from .search_space import SearchSpace, TrialConfig
from .storage import mask_url, resolve_storage

__all__ = [
    "SearchSpace",
    "TrialConfig",
    "Float",
    "Int",
    "Categorical",
    "Fixed",
    "as_param",
    "autotune",
    "TuneResult",
    "PruningCallback",
    "make_objective",
    "resolve_storage",
    "mask_url",
]
