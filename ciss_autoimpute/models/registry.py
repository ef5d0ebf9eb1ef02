"""Explicit registry of model families."""

from __future__ import annotations

from typing import Any

from ..data.layout import FeatureLayout
from .base import ImputationModel

__all__ = ["register_model", "get_model_class", "available_models", "build_model"]

_REGISTRY: dict[str, type[ImputationModel]] = {}


def register_model(cls: type[ImputationModel]) -> type[ImputationModel]:
    """Class decorator adding a family under ``cls.name``; duplicates raise ``ValueError``."""
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a non-empty class attribute 'name' to be registered.")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(
            f"A model named {name!r} is already registered ({_REGISTRY[name].__name__}); pick another name."
        )
    _REGISTRY[name] = cls
    return cls


def _ensure_builtin() -> None:
    # Importing the package registers the built-in families exactly once.
    from . import families  # noqa: F401


def available_models() -> list[str]:
    """Names of the registered families, sorted."""
    _ensure_builtin()
    return sorted(_REGISTRY)


def get_model_class(name: str) -> type[ImputationModel]:
    """The family registered as ``name``; unknown names raise ``ValueError``."""
    _ensure_builtin()
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"Unknown model {name!r}; available models are {sorted(_REGISTRY)}.")
    return _REGISTRY[name]


def build_model(
    name: str,
    layout: FeatureLayout,
    n_clusters: int = 1,
    params: dict[str, Any] | None = None,
    *,
    seed: int = 0,
) -> ImputationModel:
    """Build family ``name`` with ``params`` (defaults for anything left out)."""
    cls = get_model_class(name)
    return cls(layout, n_clusters, seed=seed, **(params or {}))
