"""Typed search-space parameters.

Each parameter validates itself when built, samples itself from an Optuna trial
and round-trips exactly through a JSON-compatible dict. The CISS-VAE shorthand
(scalar = fixed, list = choice, 2- or 3-tuple = range) is accepted by
:func:`as_param` as an input convenience only; it is never what is stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Union

__all__ = ["Float", "Int", "Categorical", "Fixed", "Param", "as_param", "param_from_dict"]

_PRIMITIVE = (type(None), bool, int, float, str)


def _freeze(value: Any) -> Any:
    """Lists become tuples (recursively) so values compare equal after a JSON trip."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return {k: _freeze(v) for k, v in value.items()}
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    if isinstance(value, dict):
        return {k: _thaw(v) for k, v in value.items()}
    return value


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class Float:
    """A float in ``[low, high]``, optionally on a log scale or with a step."""

    low: float
    high: float
    log: bool = False
    step: float | None = None

    def __post_init__(self) -> None:
        if not (_is_number(self.low) and _is_number(self.high)):
            raise TypeError(f"Float bounds must be finite numbers, got low={self.low!r}, high={self.high!r}.")
        if self.low > self.high:
            raise ValueError(f"Float needs low <= high, got low={self.low!r}, high={self.high!r}; swap them.")
        if self.log and self.low <= 0:
            raise ValueError(f"Float(log=True) needs low > 0, got low={self.low!r}; use a positive lower bound.")
        if self.step is not None:
            if not _is_number(self.step) or self.step <= 0:
                raise ValueError(f"Float step must be a positive number, got {self.step!r}.")
            if self.log:
                raise ValueError("Float cannot have both log=True and a step; drop one of them.")
        object.__setattr__(self, "low", float(self.low))
        object.__setattr__(self, "high", float(self.high))
        if self.step is not None:
            object.__setattr__(self, "step", float(self.step))

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)

    def to_dict(self) -> dict:
        return {"type": "float", "low": self.low, "high": self.high, "log": self.log, "step": self.step}


@dataclass(frozen=True)
class Int:
    """An integer in ``[low, high]`` with a step, optionally on a log scale."""

    low: int
    high: int
    step: int = 1
    log: bool = False

    def __post_init__(self) -> None:
        for label, v in (("low", self.low), ("high", self.high), ("step", self.step)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"Int {label} must be an integer, got {v!r}.")
        if self.low > self.high:
            raise ValueError(f"Int needs low <= high, got low={self.low}, high={self.high}; swap them.")
        if self.step < 1:
            raise ValueError(f"Int step must be >= 1, got {self.step}.")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("Int(log=True) needs low >= 1 and step == 1.")

    def suggest(self, trial: Any, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def to_dict(self) -> dict:
        return {"type": "int", "low": self.low, "high": self.high, "step": self.step, "log": self.log}


@dataclass(frozen=True)
class Categorical:
    """One of a fixed set of choices (None, bool, int, float or str)."""

    choices: tuple = field(default=())

    def __post_init__(self) -> None:
        choices = self.choices
        if isinstance(choices, (str, bytes)) or not hasattr(choices, "__iter__"):
            raise TypeError(f"Categorical choices must be a list or tuple, got {choices!r}.")
        choices = tuple(choices)
        if not choices:
            raise ValueError("Categorical needs at least one choice.")
        bad = [c for c in choices if not isinstance(c, _PRIMITIVE)]
        if bad:
            raise TypeError(
                f"Categorical choices must be None, bool, int, float or str (what Optuna stores), got {bad[0]!r}; "
                "encode structured choices as strings."
            )
        if len(set(map(repr, choices))) != len(choices):
            raise ValueError(f"Categorical choices must be distinct, got {list(choices)!r}.")
        object.__setattr__(self, "choices", choices)

    def suggest(self, trial: Any, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.choices))

    def to_dict(self) -> dict:
        return {"type": "categorical", "choices": list(self.choices)}


@dataclass(frozen=True)
class Fixed:
    """A value that is not tuned (any JSON-compatible value)."""

    value: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", _freeze(self.value))

    def suggest(self, trial: Any, name: str) -> Any:
        return _thaw(self.value)

    def to_dict(self) -> dict:
        return {"type": "fixed", "value": _thaw(self.value)}


Param = Union[Float, Int, Categorical, Fixed]
_TYPES = {"float": Float, "int": Int, "categorical": Categorical, "fixed": Fixed}


def param_from_dict(d: dict) -> Param:
    """Rebuild a parameter from :meth:`to_dict` output."""
    if not isinstance(d, dict) or "type" not in d:
        raise ValueError(f"A parameter must be a dict with a 'type' key, got {d!r}.")
    kind = d["type"]
    if kind not in _TYPES:
        raise ValueError(f"Unknown parameter type {kind!r}; expected one of {sorted(_TYPES)}.")
    kwargs = {k: v for k, v in d.items() if k != "type"}
    if kind == "categorical":
        kwargs["choices"] = tuple(kwargs.get("choices", ()))
    try:
        return _TYPES[kind](**kwargs)
    except TypeError as exc:
        raise ValueError(f"Bad fields for a {kind!r} parameter: {d!r} ({exc}).") from exc


def as_param(value: Any, *, name: str = "parameter") -> Param:
    """Turn a typed parameter or CISS-VAE shorthand into a typed parameter.

    ``Float``/``Int``/``Categorical``/``Fixed`` pass through; a dict with ``type`` is
    parsed; a list is a choice; a 2-tuple ``(low, high)`` or 3-tuple
    ``(low, high, step)`` is a range (``Int`` when all are ints, else ``Float``);
    anything else is fixed.
    """
    if isinstance(value, (Float, Int, Categorical, Fixed)):
        return value
    if isinstance(value, dict) and "type" in value:
        return param_from_dict(value)
    if isinstance(value, list):
        return Categorical(tuple(value))
    if isinstance(value, tuple):
        if len(value) not in (2, 3) or not all(_is_number(v) for v in value):
            raise ValueError(
                f"{name}: a tuple means a range (low, high) or (low, high, step) of numbers, got {value!r}; "
                "use a list for a set of choices."
            )
        if all(isinstance(v, int) for v in value):
            return Int(*value)
        low, high, *step = value
        return Float(low, high, step=step[0] if step else None)
    return Fixed(value)
