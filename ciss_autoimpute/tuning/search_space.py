"""The tuning search space: which model families, which of their parameters, which training options.

A :class:`SearchSpace` holds typed parameters (:mod:`ciss_autoimpute.tuning.params`)
in three groups:

* ``families`` — one space per model family. The family is sampled first (an
  Optuna categorical named ``"model"``), then only that family's parameters, each
  named with the family as prefix (``"cissvae.latent_dim"``), so the conditional
  space stays clean for ``TPESampler(multivariate=True, group=True)``.
* ``train`` — flat :class:`~ciss_autoimpute.training.config.TrainConfig` /
  :class:`~ciss_autoimpute.training.config.RefitConfig` fields, shared by all families.
* ``clustering`` — ``n_clusters``, ``leiden_resolution``, ``k_neighbors``.

A family space may use *meta keys* that are not model parameters; they are
translated into real parameters when a trial is sampled:

``num_hidden_layers`` + ``hidden_dim`` (+ optional per-layer ``hidden_dim_<i>``)
    become ``hidden_dims``; layer ``i`` is only sampled when ``i < num_hidden_layers``.
``num_shared_encode`` / ``num_shared_decode`` + ``encoder_shared_placement`` /
``decoder_shared_placement``
    become ``layer_order_enc`` / ``layer_order_dec`` (families that have layer orders,
    i.e. CISS-VAE).

The space round-trips exactly through JSON (and YAML when PyYAML is importable):
``SearchSpace.from_dict(json.loads(json.dumps(s.to_dict()))) == s``.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..training.config import AUTO_BATCH_MIN, RefitConfig, TrainConfig, configs_from_dict
from .params import Categorical, Fixed, Float, Int, Param, _thaw, as_param, param_from_dict

__all__ = [
    "SearchSpace",
    "TrialConfig",
    "TRAIN_PARAM_NAMES",
    "CLUSTERING_PARAM_NAMES",
    "default_train_space",
]

#: Flat training option names (fields of TrainConfig and RefitConfig).
TRAIN_PARAM_NAMES: tuple[str, ...] = tuple(
    sorted({f.name for f in fields(TrainConfig)} | {f.name for f in fields(RefitConfig)})
)

#: Clustering option names a space may tune.
CLUSTERING_PARAM_NAMES: tuple[str, ...] = ("k_neighbors", "leiden_resolution", "n_clusters")

_FORMAT = "ciss_autoimpute.SearchSpace"
_VERSION = 1
_TOP_KEYS = frozenset(
    {
        "format",
        "version",
        "families",
        "train",
        "clustering",
        "evaluate_all_orders",
        "max_exhaustive_orders",
        "constant_layer_size",
    }
)

# Meta keys: what the user writes in a family space in place of a structured parameter.
_DEPTH = "num_hidden_layers"
_WIDTH = "hidden_dim"
_WIDTH_I = re.compile(r"hidden_dim_(0|[1-9][0-9]*)$")
_SIDES = {
    # side: (real parameter, number-of-shared meta key, placement meta key)
    "enc": ("layer_order_enc", "num_shared_encode", "encoder_shared_placement"),
    "dec": ("layer_order_dec", "num_shared_decode", "decoder_shared_placement"),
}
# Parameters whose value is a list: a list given for them is the value, never a set of choices.
_LIST_VALUED = frozenset({"hidden_dims", "layer_order_enc", "layer_order_dec", "signs"})
_MISSING = object()


# ---------------------------------------------------------------------------- helpers
def _registry():
    # Imported lazily: the registry pulls in torch and the model families.
    from ..models import registry

    return registry


def _layer_order(n_layers: int, n_shared: int, placement: str, seed: int) -> list:
    # Imported lazily: the family module imports tuning.params, so a module-level import would be circular.
    from ..models.families.cissvae import layer_order

    return list(layer_order(n_layers, n_shared, placement, seed))


def _placements() -> tuple[str, ...]:
    from ..models.families.cissvae import PLACEMENTS

    return tuple(PLACEMENTS)


def _order_tokens() -> tuple[Any, Any]:
    """(shared, unshared) tokens the layer orders are spelled with."""
    return _layer_order(1, 1, "at_start", 0)[0], _layer_order(1, 0, "at_start", 0)[0]


def _exhaustive_orders(n_layers: int, n_shared: int, cap: int) -> list[str]:
    """Every distinct order of ``n_shared`` shared ('S') among ``n_layers`` layers, sorted.

    When there are more than ``cap``, an evenly spaced subset of the sorted list is kept
    (deterministic, and it keeps both extremes: all shared first and all shared last).
    """
    orders = sorted(
        "".join("S" if i in pos else "U" for i in range(n_layers))
        for pos in map(set, itertools.combinations(range(n_layers), n_shared))
    )
    if len(orders) > cap:
        if cap == 1:
            return orders[:1]
        idx = sorted({round(i * (len(orders) - 1) / (cap - 1)) for i in range(cap)})
        orders = [orders[i] for i in idx]
    return orders


def _param_max(p: Param) -> Any:
    if isinstance(p, Fixed):
        return p.value
    if isinstance(p, (Int, Float)):
        return p.high
    return max(c for c in p.choices)


def _candidates(p: Param) -> list[Any]:
    """Values to validate a parameter with: every choice, or both ends of a range."""
    if isinstance(p, Fixed):
        return [_thaw(p.value)]
    if isinstance(p, Categorical):
        return list(p.choices)
    return [p.low, p.high]


def _same(a: Any, b: Any) -> bool:
    # True == 1 in Python; a default of True must not match an int choice 1.
    return type(a) is type(b) and a == b


def _in_domain(p: Param, v: Any) -> bool:
    if isinstance(p, Fixed):
        return False
    if isinstance(p, Categorical):
        return any(_same(v, c) for c in p.choices)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return False
    if isinstance(p, Int):
        return isinstance(v, int) and p.low <= v <= p.high and (v - p.low) % p.step == 0
    if not p.low <= v <= p.high:
        return False
    if p.step is None:
        return True
    k = (v - p.low) / p.step
    return abs(k - round(k)) < 1e-9


def _midpoint(p: Param) -> Any:
    """The value :meth:`SearchSpace.fixed_config` uses when there is no usable default."""
    if isinstance(p, Fixed):
        return _thaw(p.value)
    if isinstance(p, Categorical):
        return p.choices[0]
    if isinstance(p, Int):
        if p.log:
            return min(p.high, max(p.low, round(math.sqrt(p.low * p.high))))
        return p.low + p.step * (((p.high - p.low) // p.step) // 2)
    if p.log:
        return math.sqrt(p.low * p.high)
    mid = (p.low + p.high) / 2
    if p.step is not None:
        mid = min(p.high, p.low + round((mid - p.low) / p.step) * p.step)
    return mid


def _fixed_pick(p: Param, default: Any = _MISSING) -> Any:
    if isinstance(p, Fixed):
        return _midpoint(p)
    if default is not _MISSING and _in_domain(p, default):
        return default
    return _midpoint(p)


def _coerce(value: Any, *, name: str, list_valued: bool = False) -> Param:
    """Typed parameter from a typed value, a JSON dict or CISS-VAE shorthand."""
    if isinstance(value, Mapping) and not isinstance(value, (Float, Int, Categorical, Fixed)):
        if "type" not in value:
            raise ValueError(
                f"{name}: a parameter given as a dict needs a 'type' key ('float', 'int', 'categorical' or "
                f"'fixed'), got {dict(value)!r}; wrap a fixed dict value as Fixed({{...}})."
            )
        try:
            p = param_from_dict(dict(value))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: {exc}") from exc
    elif list_valued and isinstance(value, (list, tuple)):
        # A list-valued parameter (hidden_dims, layer orders) given as a list is that list,
        # not a set of choices: choices cannot hold lists anyway.
        p = Fixed(list(value))
    else:
        try:
            p = as_param(value, name=name)
        except (TypeError, ValueError) as exc:
            msg = str(exc)
            raise type(exc)(msg if msg.startswith(name) else f"{name}: {msg}") from exc
    try:
        json.dumps(p.to_dict(), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{name}: {p!r} is not JSON-compatible ({exc}); use None, bool, int, float, str or lists of them."
        ) from exc
    return p


def _check_values(name: str, p: Param, check: Callable[[Any], None]) -> None:
    for v in _candidates(p):
        try:
            check(v)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{name}: value {v!r} of {p!r} is invalid: {exc}") from exc


def _check_int_values(where: str, p: Param, minimum: int) -> None:
    for v in _candidates(p):
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError(f"{where} must take integers >= {minimum}, got {v!r} in {p!r}.")


def _is_list_valued(name: str, defaults: Mapping[str, Any]) -> bool:
    return name in _LIST_VALUED or isinstance(defaults.get(name), (list, tuple))


def _sorted_params(d: Mapping[str, Param]) -> dict[str, Param]:
    return {k: d[k] for k in sorted(d)}


# ---------------------------------------------------------------------------- TrialConfig
@dataclass(frozen=True)
class TrialConfig:
    """One concrete configuration drawn from a :class:`SearchSpace`.

    Parameters
    ----------
    model
        Registered family name.
    model_params
        Keyword arguments for :func:`~ciss_autoimpute.models.registry.build_model`
        (real parameter names of that family only; meta keys are already translated).
    train_params
        Flat training options for
        :func:`~ciss_autoimpute.training.config.configs_from_dict`.
    clustering_params
        Clustering options (``n_clusters``, ``leiden_resolution``, ``k_neighbors``).

    Examples
    --------
    >>> c = TrialConfig("vae", {"latent_dim": 8}, {"lr": 1e-3}, {})
    >>> TrialConfig.from_dict(c.to_dict()) == c
    True
    """

    model: str
    model_params: dict[str, Any] = field(default_factory=dict)
    train_params: dict[str, Any] = field(default_factory=dict)
    clustering_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise TypeError(f"TrialConfig.model must be a non-empty string, got {self.model!r}.")
        for name in ("model_params", "train_params", "clustering_params"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise TypeError(f"TrialConfig.{name} must be a dict, got {type(value).__name__}.")
            # Own copies: a config must not change when the caller's dict does.
            object.__setattr__(self, name, copy.deepcopy(dict(value)))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict (deep copy)."""
        return {
            "model": self.model,
            "model_params": copy.deepcopy(self.model_params),
            "train_params": copy.deepcopy(self.train_params),
            "clustering_params": copy.deepcopy(self.clustering_params),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrialConfig:
        """Rebuild from :meth:`to_dict` output."""
        if not isinstance(d, Mapping):
            raise TypeError(f"TrialConfig.from_dict expects a dict, got {type(d).__name__}.")
        valid = {"model", "model_params", "train_params", "clustering_params"}
        unknown = sorted(set(d) - valid)
        if unknown or "model" not in d:
            raise ValueError(
                f"TrialConfig.from_dict: unknown key(s) {unknown} or missing 'model'; valid keys are {sorted(valid)}."
            )
        return cls(
            d["model"],
            d.get("model_params", {}),
            d.get("train_params", {}),
            d.get("clustering_params", {}),
        )

    def train_configs(self) -> tuple[TrainConfig, RefitConfig]:
        """``train_params`` as validated :class:`TrainConfig` and :class:`RefitConfig`."""
        return configs_from_dict(dict(self.train_params))


# ---------------------------------------------------------------------------- SearchSpace
def default_train_space() -> dict[str, Param]:
    """Moderate training ranges for CPU-sized tabular data (the ``default`` preset's).

    Initial training 100-400 epochs of Adam with a log-uniform learning rate in
    ``[1e-4, 1e-2]``, a mild per-epoch decay, three batch sizes, then up to 10 refit
    loops of 20-100 epochs stopped after 2 loops without improvement.
    """
    return {
        "epochs": Int(100, 400, step=50),
        "lr": Float(1e-4, 1e-2, log=True),
        "decay_factor": Float(0.99, 1.0),
        "batch_size": Categorical((64, 128, 256)),
        "max_loops": Fixed(10),
        "patience": Fixed(2),
        "epochs_per_loop": Int(20, 100, step=20),
    }


class SearchSpace:
    """What :func:`~ciss_autoimpute.tuning.autotune` may try: families, their parameters, training options.

    Parameters
    ----------
    families
        ``None`` for every registered family with its own
        :meth:`~ciss_autoimpute.models.base.ImputationModel.search_space`; a sequence
        of family names for those families' own spaces; or a mapping
        ``{family: {param: Param or shorthand}}`` whose entries override or extend
        the family's own space (``None`` or ``{}`` keeps it as is). Valid names are the
        family's :meth:`default_params` plus the meta keys described in the module
        docstring. Setting ``hidden_dims`` replaces the family's depth/width meta keys
        and vice versa; likewise ``layer_order_enc``/``_dec`` and the shared-layer
        meta keys.
    train
        ``{TrainConfig/RefitConfig field: Param or shorthand}``, shared by all
        families. ``None`` means :func:`default_train_space`; ``{}`` tunes nothing
        (the config defaults apply). ``lr_refit`` is only sampled when
        ``reset_lr_refit`` is True in that trial.
    clustering
        ``{"n_clusters" | "leiden_resolution" | "k_neighbors": Param or shorthand}``;
        default ``{}`` (the dataset's clustering is used as it is).
        ``leiden_resolution`` and ``k_neighbors`` are only sampled when
        ``n_clusters`` is ``None`` (Leiden) in that trial or not tuned.
        Closed-form families (``trainable = False``: ``mean``, ``em``, ``knn``, ``mice``,
        ``missforest``) sample neither training nor clustering options: they have no
        epochs and pool all rows.
    evaluate_all_orders
        For families with shared layers: instead of sampling a placement
        (``at_start``/``at_end``/``alternating``/``random``), sample the order itself
        from every distinct order of shared ('S') and unshared ('U') layers, e.g.
        ``"SUU"``, for the trial's depth and number of shared layers.
    max_exhaustive_orders
        Cap on that number of orders; beyond it an evenly spaced subset of the sorted
        orders is kept. Default 100.
    constant_layer_size
        Sample one width for all hidden layers (``<family>.hidden_dim``) instead of
        one per layer (``<family>.hidden_dim_<i>``).

    Notes
    -----
    Shorthand (an input convenience only; it is stored typed): a scalar is
    :class:`Fixed`, a list is :class:`Categorical`, a 2- or 3-tuple of numbers is a
    range (:class:`Int` if all are ints, else :class:`Float`). For list-valued
    parameters (``hidden_dims``, layer orders) a list or tuple is the fixed value.

    Layer orders are built with
    :func:`ciss_autoimpute.models.families.cissvae.layer_order`. When
    ``num_shared_encode``/``num_shared_decode`` exceeds the sampled depth it is
    clamped to the depth (all layers shared); a missing placement means ``at_end``.
    The ``random`` placement is seeded by the trial number (encoder ``2 * number``,
    decoder ``2 * number + 1``), so a trial's order can be reproduced from its number.
    Without shared-layer meta keys a family keeps its own default order.

    Examples
    --------
    >>> space = SearchSpace(
    ...     {"vae": {"latent_dim": (2, 16), "num_hidden_layers": (1, 3), "hidden_dim": [32, 64]}},
    ...     train={"lr": Float(1e-4, 1e-2, log=True), "epochs": 50},
    ... )
    >>> space.train["epochs"]
    Fixed(value=50)
    >>> SearchSpace.from_json(space.to_json()) == space
    True
    """

    def __init__(
        self,
        families: Mapping[str, Mapping[str, Any] | None] | Sequence[str] | None = None,
        *,
        train: Mapping[str, Any] | None = None,
        clustering: Mapping[str, Any] | None = None,
        evaluate_all_orders: bool = False,
        max_exhaustive_orders: int = 100,
        constant_layer_size: bool = False,
    ) -> None:
        for label, flag in (("evaluate_all_orders", evaluate_all_orders), ("constant_layer_size", constant_layer_size)):
            if not isinstance(flag, bool):
                raise TypeError(f"{label} must be True or False, got {flag!r}.")
        if isinstance(max_exhaustive_orders, bool) or not isinstance(max_exhaustive_orders, int):
            raise TypeError(f"max_exhaustive_orders must be an integer, got {max_exhaustive_orders!r}.")
        if max_exhaustive_orders < 1:
            raise ValueError(
                f"max_exhaustive_orders must be >= 1, got {max_exhaustive_orders}; pass e.g. 100."
            )
        self._evaluate_all_orders = evaluate_all_orders
        self._max_exhaustive_orders = max_exhaustive_orders
        self._constant_layer_size = constant_layer_size
        self._families = self._build_families(families)
        self._train = self._build_train(default_train_space() if train is None else train)
        self._clustering = self._build_clustering({} if clustering is None else clustering)

    # ------------------------------------------------------------ construction
    @staticmethod
    def _normalise_families(
        families: Mapping[str, Mapping[str, Any] | None] | Sequence[str] | None,
    ) -> dict[str, Mapping[str, Any]]:
        reg = _registry()
        available = reg.available_models()
        if families is None:
            requested: dict[str, Mapping[str, Any]] = {name: {} for name in available}
        elif isinstance(families, Mapping):
            requested = {}
            for name, override in families.items():
                if override is None:
                    override = {}
                if not isinstance(override, Mapping):
                    raise TypeError(
                        f"families[{name!r}] must be a dict of parameters or None, got {type(override).__name__}; "
                        "pass e.g. {'latent_dim': (2, 16)}."
                    )
                requested[name] = override
        elif isinstance(families, (str, bytes)) or not isinstance(families, Sequence):
            raise TypeError(
                f"families must be None, a list of family names or a dict of family spaces, got {families!r}; "
                f"e.g. families={available!r}."
            )
        else:
            requested = {}
            for name in families:
                if name in requested:
                    raise ValueError(f"families lists {name!r} twice; give each family once.")
                requested[name] = {}
        if not requested:
            raise ValueError(f"families is empty; give at least one of {available}.")
        unknown = [n for n in requested if not isinstance(n, str) or n not in available]
        if unknown:
            raise ValueError(f"Unknown model family {unknown[0]!r}; available models are {available}.")
        return requested

    def _build_families(self, families: Any) -> dict[str, dict[str, Param]]:
        reg = _registry()
        out: dict[str, dict[str, Param]] = {}
        for name, override in sorted(self._normalise_families(families).items()):
            cls = reg.get_model_class(name)
            defaults = cls.default_params()
            base_raw = cls.search_space()
            base = {
                k: _coerce(v, name=f"{name}.search_space()[{k!r}]", list_valued=_is_list_valued(k, defaults))
                for k, v in base_raw.items()
            }
            user = {
                k: _coerce(v, name=f"families[{name!r}][{k!r}]", list_valued=_is_list_valued(k, defaults))
                for k, v in override.items()
            }
            self._check_names(name, defaults, user, source=f"families[{name!r}]")
            self._check_names(name, defaults, base, source=f"{cls.__name__}.search_space()")
            self._check_conflicts(name, user, source=f"families[{name!r}]")
            merged = dict(base)
            # A user's structural choice replaces the family's other way of saying the same thing.
            if any(self._is_depth_key(k) for k in user):
                merged.pop("hidden_dims", None)
            if "hidden_dims" in user:
                for k in [k for k in merged if self._is_depth_key(k)]:
                    del merged[k]
            for real, n_key, p_key in _SIDES.values():
                if n_key in user or p_key in user:
                    merged.pop(real, None)
                if real in user:
                    merged.pop(n_key, None)
                    merged.pop(p_key, None)
            merged.update(user)
            self._check_conflicts(name, merged, source=f"{cls.__name__}.search_space()")
            out[name] = _sorted_params(self._check_family(name, defaults, merged, set(user)))
        return out

    @staticmethod
    def _is_depth_key(key: str) -> bool:
        return key in (_DEPTH, _WIDTH) or bool(_WIDTH_I.match(key))

    @classmethod
    def _valid_names(cls, defaults: Mapping[str, Any]) -> list[str]:
        names = set(defaults)
        if "hidden_dims" in defaults:
            names |= {_DEPTH, _WIDTH, "hidden_dim_<i>"}
        for real, n_key, p_key in _SIDES.values():
            if real in defaults:
                names |= {n_key, p_key}
        return sorted(names)

    @classmethod
    def _check_names(
        cls, family: str, defaults: Mapping[str, Any], params: Mapping[str, Param], *, source: str
    ) -> None:
        valid = set(cls._valid_names(defaults))
        unknown = [
            k for k in params
            if k not in valid and not (_WIDTH_I.match(k) and "hidden_dims" in defaults)
        ]
        if unknown:
            raise ValueError(
                f"{source}: unknown parameter(s) {sorted(unknown)} for model {family!r}; "
                f"valid names are {sorted(valid)}."
            )

    @classmethod
    def _check_conflicts(cls, family: str, params: Mapping[str, Param], *, source: str) -> None:
        depth_keys = sorted(k for k in params if cls._is_depth_key(k))
        if "hidden_dims" in params and depth_keys:
            raise ValueError(
                f"{source}: 'hidden_dims' conflicts with {depth_keys} for model {family!r}; give either "
                "hidden_dims (a fixed list) or num_hidden_layers + hidden_dim, not both."
            )
        for real, n_key, p_key in _SIDES.values():
            meta = sorted(k for k in (n_key, p_key) if k in params)
            if real in params and meta:
                raise ValueError(
                    f"{source}: {real!r} conflicts with {meta} for model {family!r}; give either {real} "
                    f"(a fixed list) or {n_key} + {p_key}, not both."
                )

    def _check_family(
        self, family: str, defaults: Mapping[str, Any], params: dict[str, Param], user_keys: set[str]
    ) -> dict[str, Param]:
        where = f"families[{family!r}]"
        params = dict(params)
        for k, p in params.items():
            if k in defaults and _is_list_valued(k, defaults) and not isinstance(p, Fixed):
                raise ValueError(
                    f"{where}[{k!r}] is list-valued and can only be Fixed, got {p!r}; "
                    + (
                        "tune num_hidden_layers and hidden_dim instead."
                        if k == "hidden_dims"
                        else "tune the number and placement of shared layers instead."
                        if k in ("layer_order_enc", "layer_order_dec")
                        else "give one fixed list."
                    )
                )
            if k in defaults and _is_list_valued(k, defaults) and not isinstance(p.value, tuple):
                # not-MIWAE's signs may also be "data": read from the data when a trial fits.
                if not (p.value is None and defaults[k] is None) and not (k == "signs" and p.value == "data"):
                    raise ValueError(f"{where}[{k!r}] must be a list, got {p.value!r}.")
        if "hidden_dims" in params:
            bad = [w for w in params["hidden_dims"].value if isinstance(w, bool) or not isinstance(w, int) or w < 1]
            if bad:
                raise ValueError(f"{where}['hidden_dims'] must hold integers >= 1, got {bad[0]!r}.")
        has_widths = any(k == _WIDTH or _WIDTH_I.match(k) for k in params)
        if "hidden_dims" in defaults and (_DEPTH in params or has_widths):
            default_dims = defaults["hidden_dims"]
            if _DEPTH not in params:
                if not isinstance(default_dims, list):
                    raise ValueError(f"{where}: hidden_dim needs num_hidden_layers (e.g. Int(1, 3)).")
                params[_DEPTH] = Fixed(len(default_dims))
            depth = params[_DEPTH]
            _check_int_values(f"{where}[{_DEPTH!r}]", depth, 1)
            max_depth = _param_max(depth)
            for k in [k for k in params if _WIDTH_I.match(k)]:
                i = int(k.rsplit("_", 1)[1])
                if i >= max_depth:
                    if k in user_keys:
                        raise ValueError(
                            f"{where}[{k!r}] can never be used: num_hidden_layers is at most {max_depth}; "
                            f"drop it or raise num_hidden_layers."
                        )
                    del params[k]  # unreachable width from the family's own space
            for k in [k for k in params if k == _WIDTH or _WIDTH_I.match(k)]:
                _check_int_values(f"{where}[{k!r}]", params[k], 1)
            if self._constant_layer_size:
                if _WIDTH not in params and "hidden_dim_0" not in params:
                    raise ValueError(f"{where}: constant_layer_size=True needs 'hidden_dim'.")
            else:
                missing = [i for i in range(max_depth) if _WIDTH not in params and f"hidden_dim_{i}" not in params]
                if missing:
                    raise ValueError(
                        f"{where}: no width for hidden layer(s) {missing} (num_hidden_layers goes up to "
                        f"{max_depth}); give 'hidden_dim' for every layer or 'hidden_dim_<i>' for each."
                    )
        depth_varies = _DEPTH in params and not isinstance(params[_DEPTH], Fixed)
        if "hidden_dims" in params:
            fixed_depth: int | None = len(_candidates(params["hidden_dims"])[0])
        elif _DEPTH in params and isinstance(params[_DEPTH], Fixed):
            fixed_depth = params[_DEPTH].value
        elif _DEPTH in params:
            fixed_depth = None
        else:
            dims = defaults.get("hidden_dims")
            fixed_depth = len(dims) if isinstance(dims, list) else None
        for real, n_key, p_key in _SIDES.values():
            if real not in defaults:
                continue
            if real in params:
                order = _candidates(params[real])[0]
                if order is None:  # the family's own default order, which follows any depth
                    continue
                if depth_varies:
                    raise ValueError(
                        f"{where}: a fixed {real} cannot follow a tuned num_hidden_layers; "
                        f"give {n_key} and {p_key} instead."
                    )
                if fixed_depth is not None and len(order) != fixed_depth:
                    raise ValueError(
                        f"{where}[{real!r}] has {len(order)} layers but the network has {fixed_depth} hidden "
                        "layers; make them the same length."
                    )
                continue
            if n_key in params:
                _check_int_values(f"{where}[{n_key!r}]", params[n_key], 0)
            if p_key in params:
                bad = [v for v in _candidates(params[p_key]) if v not in _placements()]
                if bad:
                    raise ValueError(
                        f"{where}[{p_key!r}]: unknown placement {bad[0]!r}; expected one of {list(_placements())}."
                    )
        return params

    @staticmethod
    def _build_train(train: Mapping[str, Any]) -> dict[str, Param]:
        if not isinstance(train, Mapping):
            raise TypeError(f"train must be a dict of training options, got {type(train).__name__}.")
        unknown = sorted(str(k) for k in train if k not in TRAIN_PARAM_NAMES)
        if unknown:
            raise ValueError(
                f"train: unknown training option(s) {unknown}; valid names are {list(TRAIN_PARAM_NAMES)}."
            )
        out = {k: _coerce(v, name=f"train[{k!r}]") for k, v in train.items()}
        for k, p in out.items():
            # lr_refit is only valid together with reset_lr_refit=True (see RefitConfig).
            extra = {"reset_lr_refit": True} if k == "lr_refit" else {}
            _check_values(f"train[{k!r}]", p, lambda v, k=k, extra=extra: configs_from_dict({**extra, k: v}))
        if "lr_refit" in out:
            reset = out.get("reset_lr_refit")
            if reset is None or True not in _candidates(reset):
                raise ValueError(
                    "train['lr_refit'] is only used when reset_lr_refit is True, but the space never sets it; "
                    "add 'reset_lr_refit': True (or [True, False]) or drop lr_refit."
                )
        return _sorted_params(out)

    @staticmethod
    def _build_clustering(clustering: Mapping[str, Any]) -> dict[str, Param]:
        if not isinstance(clustering, Mapping):
            raise TypeError(f"clustering must be a dict of clustering options, got {type(clustering).__name__}.")
        unknown = sorted(str(k) for k in clustering if k not in CLUSTERING_PARAM_NAMES)
        if unknown:
            raise ValueError(
                f"clustering: unknown option(s) {unknown}; valid names are {list(CLUSTERING_PARAM_NAMES)}."
            )
        out = {k: _coerce(v, name=f"clustering[{k!r}]") for k, v in clustering.items()}

        def positive_int_or_none(v: Any) -> None:
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError("expected None (Leiden) or an integer >= 1")

        def positive_int(v: Any) -> None:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError("expected an integer >= 1")

        def positive_real_or_none(v: Any) -> None:
            if v is not None and (
                isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0
            ):
                raise ValueError("expected None (the default) or a number > 0")

        checks = {
            "n_clusters": positive_int_or_none,
            "k_neighbors": positive_int,
            "leiden_resolution": positive_real_or_none,
        }
        for k, p in out.items():
            _check_values(f"clustering[{k!r}]", p, checks[k])
        return _sorted_params(out)

    # ------------------------------------------------------------ read-only views
    @property
    def families(self) -> dict[str, dict[str, Param]]:
        """``{family: {param or meta key: Param}}`` (a copy), families sorted by name."""
        return {k: dict(v) for k, v in self._families.items()}

    @property
    def family_names(self) -> tuple[str, ...]:
        """The families the space chooses from, sorted."""
        return tuple(self._families)

    @property
    def train(self) -> dict[str, Param]:
        """Training parameters (a copy)."""
        return dict(self._train)

    @property
    def clustering(self) -> dict[str, Param]:
        """Clustering parameters (a copy)."""
        return dict(self._clustering)

    @property
    def evaluate_all_orders(self) -> bool:
        return self._evaluate_all_orders

    @property
    def max_exhaustive_orders(self) -> int:
        return self._max_exhaustive_orders

    @property
    def constant_layer_size(self) -> bool:
        return self._constant_layer_size

    @property
    def model_param(self) -> Param:
        """The family choice: :class:`Categorical` over the names, :class:`Fixed` for one family."""
        names = self.family_names
        return Fixed(names[0]) if len(names) == 1 else Categorical(names)

    # ------------------------------------------------------------ sampling
    def sample(self, trial: Any) -> TrialConfig:
        """Draw a configuration from an Optuna trial.

        The family is suggested first as ``"model"``, then that family's parameters
        as ``"<family>.<name>"``, then training and clustering options under their
        own names. Works with ``optuna.trial.FixedTrial(study.best_params,
        number=best.number)`` to rebuild a trial's configuration.

        Parameters
        ----------
        trial
            An ``optuna.Trial``, ``FrozenTrial`` or ``FixedTrial``.

        Returns
        -------
        TrialConfig
        """
        model = self.model_param.suggest(trial, "model")

        def pick(p: Param, name: str, default: Any = _MISSING) -> Any:
            return p.suggest(trial, name)

        return self._resolve(model, pick, seed=int(trial.number), fixed=False)

    def fixed_config(self, model: str | None = None) -> TrialConfig:
        """A configuration without a trial, for a plain fit.

        Each parameter takes its :class:`Fixed` value; otherwise the family's or the
        config's default when it lies inside the parameter's domain; otherwise the
        middle of the domain (arithmetic for linear ranges, geometric for log ranges,
        rounded to the step) or the first choice of a :class:`Categorical`. Depth and
        widths default to the family's default ``hidden_dims``; the ``random``
        placement uses seed 0 (like trial number 0). Training options left out of the
        space are left out here too, so the config defaults apply.

        Parameters
        ----------
        model
            Family to use; ``None`` takes the only family, or the first name in
            sorted order when there are several.

        Examples
        --------
        >>> SearchSpace(["vae"], train={"epochs": (10, 30)}).fixed_config().train_params
        {'epochs': 20}
        """
        if model is None:
            model = self.family_names[0]
        elif model not in self._families:
            raise ValueError(f"model={model!r} is not in this search space; choose one of {list(self.family_names)}.")

        def pick(p: Param, name: str, default: Any = _MISSING) -> Any:
            return _fixed_pick(p, default)

        return self._resolve(model, pick, seed=0, fixed=True)

    def _resolve(
        self,
        model: str,
        pick: Callable[..., Any],
        *,
        seed: int,
        fixed: bool,
    ) -> TrialConfig:
        model_params = self._resolve_model(model, pick, seed, fixed=fixed)
        cls = _registry().get_model_class(model)
        # The self-masking correction follows the fit of any family that assumes the
        # missingness ignorable; one that models it (not-MIWAE) leaves it out.
        correction = "mnar_correction" in self._train and not getattr(cls, "models_missingness", False)
        if not getattr(cls, "trainable", True):
            # A closed-form family (mean, em, knn, mice, missforest) has no epochs or learning
            # rate and pools all rows whatever the clusters: sampling those options for it
            # would only add noise to the sampler and to the trials table.
            train = {}
            if correction:
                default = TrainConfig().mnar_correction if fixed else _MISSING
                train["mnar_correction"] = pick(self._train["mnar_correction"], "mnar_correction", default)
            return TrialConfig(model, model_params, train, {})
        train_defaults: dict[str, Any] = {}
        clustering_defaults: dict[str, Any] = {"n_clusters": None}
        if fixed:
            from ..data.dataset import ClusteringOptions

            train_defaults = {**TrainConfig().to_dict(), **RefitConfig().to_dict()}
            bs = self._train.get("batch_size")
            if bs is not None and not _in_domain(bs, train_defaults["batch_size"]):
                # The default "auto" needs the row count; among tuned int choices the plain
                # fit keeps the value "auto" gives on small data (256), as before "auto".
                train_defaults["batch_size"] = AUTO_BATCH_MIN
            clustering_defaults.update(
                k_neighbors=ClusteringOptions().k_neighbors, leiden_resolution=ClusteringOptions().leiden_resolution
            )
        train: dict[str, Any] = {}
        for name, p in self._train.items():
            if name == "lr_refit" or (name == "mnar_correction" and not correction):
                continue
            train[name] = pick(p, name, train_defaults.get(name, _MISSING))
        if "lr_refit" in self._train and train.get("reset_lr_refit") is True:
            train["lr_refit"] = pick(self._train["lr_refit"], "lr_refit")
        clustering: dict[str, Any] = {}
        if "n_clusters" in self._clustering:
            clustering["n_clusters"] = pick(
                self._clustering["n_clusters"], "n_clusters", clustering_defaults["n_clusters"]
            )
        if clustering.get("n_clusters") is None:
            # Leiden options mean nothing to KMeans; sampling them there would only add noise to TPE.
            for name in ("k_neighbors", "leiden_resolution"):
                if name in self._clustering:
                    clustering[name] = pick(self._clustering[name], name, clustering_defaults.get(name, _MISSING))
        return TrialConfig(model, model_params, {k: train[k] for k in sorted(train)}, clustering)

    def _resolve_model(self, model: str, pick: Callable[..., Any], seed: int, *, fixed: bool) -> dict[str, Any]:
        cls = _registry().get_model_class(model)
        defaults = cls.default_params()
        space = self._families[model]
        prefix = f"{model}."
        out: dict[str, Any] = {}
        for name, p in space.items():
            if name in defaults:
                out[name] = pick(p, prefix + name, defaults[name])
        default_dims = defaults.get("hidden_dims")
        default_dims = default_dims if isinstance(default_dims, list) else []
        if _DEPTH in space:
            depth = int(pick(space[_DEPTH], prefix + _DEPTH, len(default_dims) or _MISSING))
            if self._constant_layer_size:
                p = space.get(_WIDTH, space.get("hidden_dim_0"))
                width = pick(p, prefix + _WIDTH, default_dims[0] if default_dims else _MISSING)
                dims = [width] * depth
            else:
                dims = [
                    pick(
                        space.get(f"hidden_dim_{i}", space.get(_WIDTH)),
                        f"{prefix}hidden_dim_{i}",
                        default_dims[i] if i < len(default_dims) else _MISSING,
                    )
                    for i in range(depth)
                ]
            out["hidden_dims"] = [int(w) for w in dims]
        n_layers = len(out.get("hidden_dims", default_dims))
        builds_depth = _DEPTH in space
        for k, (side, (real, n_key, p_key)) in enumerate(_SIDES.items()):
            if real not in defaults or real in space:
                continue
            has_meta = n_key in space or p_key in space
            if not has_meta and (defaults[real] is None or not builds_depth):
                # A default of None already follows any depth; a default list must be rebuilt to match one.
                continue
            if fixed and defaults[real] is None and not any(isinstance(space.get(m), Fixed) for m in (n_key, p_key)):
                # Nothing pins the order: the family's own default is the plain-fit choice.
                continue
            default_order = defaults[real] if isinstance(defaults[real], list) else []
            shared_tok, unshared_tok = _order_tokens()
            n_default = sum(1 for t in default_order if t == shared_tok)
            n_param = space.get(n_key, Fixed(n_default))
            n_shared = min(int(pick(n_param, prefix + n_key, n_default)), n_layers)
            if self._evaluate_all_orders:
                orders = _exhaustive_orders(n_layers, n_shared, self._max_exhaustive_orders)
                as_str = "".join("S" if t == shared_tok else "U" for t in default_order)
                chosen = (
                    orders[0]
                    if len(orders) == 1
                    else pick(Categorical(tuple(orders)), f"{prefix}{real}_L{n_layers}_S{n_shared}", as_str)
                )
                out[real] = [shared_tok if c == "S" else unshared_tok for c in chosen]
            else:
                # fixed_config keeps the family's default order when a placement reproduces it.
                default_placement = _MISSING
                if len(default_order) == n_layers:
                    default_placement = next(
                        (
                            pl
                            for pl in ("at_end", "at_start", "alternating")
                            if _layer_order(n_layers, n_shared, pl, 0) == default_order
                        ),
                        _MISSING,
                    )
                placement = pick(space.get(p_key, Fixed("at_end")), prefix + p_key, default_placement)
                out[real] = _layer_order(n_layers, n_shared, placement, 2 * seed + k)
        return out

    # ------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict that :meth:`from_dict` turns back into an equal space."""
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "families": {f: {k: p.to_dict() for k, p in ps.items()} for f, ps in self._families.items()},
            "train": {k: p.to_dict() for k, p in self._train.items()},
            "clustering": {k: p.to_dict() for k, p in self._clustering.items()},
            "evaluate_all_orders": self._evaluate_all_orders,
            "max_exhaustive_orders": self._max_exhaustive_orders,
            "constant_layer_size": self._constant_layer_size,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchSpace:
        """Build from :meth:`to_dict` output or a hand-written dict of the same shape.

        Parameters may be typed dicts (``{"type": "float", ...}``) or shorthand
        (a scalar is fixed, a list is a choice). Families listed are merged with
        their own spaces as in the constructor.
        """
        if not isinstance(d, Mapping):
            raise TypeError(f"SearchSpace.from_dict expects a dict, got {type(d).__name__}.")
        unknown = sorted(set(d) - _TOP_KEYS)
        if unknown:
            raise ValueError(f"SearchSpace: unknown key(s) {unknown}; valid keys are {sorted(_TOP_KEYS)}.")
        if "format" in d and d["format"] != _FORMAT:
            raise ValueError(f"SearchSpace: 'format' is {d['format']!r}, expected {_FORMAT!r}.")
        if "version" in d and d["version"] != _VERSION:
            raise ValueError(
                f"SearchSpace: file version {d['version']!r} is not supported (this version reads {_VERSION})."
            )
        kwargs: dict[str, Any] = {
            k: d[k]
            for k in ("train", "clustering", "evaluate_all_orders", "max_exhaustive_orders", "constant_layer_size")
            if k in d
        }
        return cls(d.get("families"), **kwargs)

    def to_json(self, path: str | Path | None = None) -> str:
        """The space as pretty-printed JSON with sorted keys; also written to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, text: str) -> SearchSpace:
        """Build from a JSON string (see :meth:`to_json`)."""
        if not isinstance(text, (str, bytes, bytearray)):
            raise TypeError(f"SearchSpace.from_json expects a JSON string, got {type(text).__name__}; "
                            "use from_file for a path.")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"SearchSpace.from_json: not valid JSON ({exc}).") from exc
        return cls.from_dict(data)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The space as YAML (needs PyYAML); also written to ``path`` if given."""
        yaml = _import_yaml()
        text = yaml.safe_dump(self.to_dict(), sort_keys=True, default_flow_style=False)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_yaml(cls, text: str) -> SearchSpace:
        """Build from a YAML string (needs PyYAML)."""
        yaml = _import_yaml()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"SearchSpace.from_yaml: not valid YAML ({exc}).") from exc
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | Path) -> SearchSpace:
        """Load a ``.json`` file, or a ``.yaml``/``.yml`` file when PyYAML is installed."""
        p = Path(path)
        suffix = p.suffix.lower()
        if suffix not in (".json", ".yaml", ".yml"):
            raise ValueError(f"SearchSpace.from_file: {str(path)!r} must end in .json, .yaml or .yml.")
        if not p.is_file():
            raise FileNotFoundError(f"SearchSpace.from_file: no file at {str(path)!r}.")
        text = p.read_text(encoding="utf-8")
        return cls.from_json(text) if suffix == ".json" else cls.from_yaml(text)

    @classmethod
    def preset(cls, name: str) -> SearchSpace:
        """A built-in space; see :func:`ciss_autoimpute.tuning.presets.available_presets`."""
        from .presets import get_preset

        return get_preset(name)

    # ------------------------------------------------------------ comparison
    def _canonical(self) -> str:
        # JSON text keeps 1, 1.0 and true apart, which a plain dict comparison would not.
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SearchSpace):
            return NotImplemented
        return self._canonical() == other._canonical()

    def __hash__(self) -> int:
        return hash(self._canonical())

    def __repr__(self) -> str:
        return (
            f"SearchSpace(families={list(self.family_names)}, train={sorted(self._train)}, "
            f"clustering={sorted(self._clustering)}, evaluate_all_orders={self._evaluate_all_orders}, "
            f"max_exhaustive_orders={self._max_exhaustive_orders}, constant_layer_size={self._constant_layer_size})"
        )


def _import_yaml():
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - PyYAML ships with optuna
        raise ImportError("YAML search spaces need PyYAML: pip install pyyaml, or use JSON.") from exc
    return yaml
