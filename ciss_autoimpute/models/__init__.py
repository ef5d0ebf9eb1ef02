"""Model families, their layers, likelihood heads and bounds, and the registry.

Models own their layers, likelihood and bound; training loops live in
:mod:`ciss_autoimpute.training`.
"""

from .base import ImputationModel, LossOutput
from .registry import available_models, build_model, get_model_class, register_model

__all__ = [
    "ImputationModel",
    "LossOutput",
    "available_models",
    "build_model",
    "get_model_class",
    "register_model",
]
