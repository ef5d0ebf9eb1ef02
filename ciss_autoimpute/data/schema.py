"""Column kinds, encoding to the model's float matrix, and exact decoding back.

A :class:`Schema` is fitted once on the training frame. It decides each column's kind
(numeric, binary or categorical), learns what the encoding needs (mean and standard
deviation, or the levels) and describes the encoded matrix with a
:class:`~ciss_autoimpute.data.layout.FeatureLayout`. :meth:`Schema.decode` turns a
model's encoded imputation back into the user's frame, filling only the missing cells:
observed cells, the index, the column names and order and the dtypes are the user's own.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from .checks import (
    KINDS,
    check_column_kinds,
    check_frame,
    check_same_columns,
    is_real_number,
    new_frame,
    plain_value,
)
from .layout import FeatureLayout

__all__ = ["CATEGORICAL_INT_MAX_LEVELS", "ColumnSpec", "Schema"]

#: An integer column with at most this many distinct observed values is categorical
#: (codes such as 1..5); with more it is numeric (counts, ages, ...).
CATEGORICAL_INT_MAX_LEVELS = 5

_SCHEMA_FORMAT = "ciss_autoimpute.schema"
_SCHEMA_VERSION = 1
_SHOW = 3


# ---------------------------------------------------------------------------- values
def _python_value(value: Any, *, what: str) -> Any:
    """A level or column name as a plain Python str/int/float/bool (numpy scalars unwrapped)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{what} {value!r} is not a finite number.")
        return float(value)
    if isinstance(value, str):
        return str(value)
    raise ValueError(
        f"{what} {value!r} has type {type(value).__name__}; only strings, integers, floats and "
        "booleans are supported. Convert it (e.g. with .astype(str))."
    )


def _type_rank(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, (int, float)):
        return 1
    return 2


def _sorted_levels(values: list[Any]) -> list[Any]:
    try:
        return sorted(values)
    except TypeError:
        # A column declared categorical may mix strings and numbers; order by type first.
        return sorted(values, key=lambda v: (_type_rank(v), v))


_JSON_TYPES = {"bool": bool, "int": int, "float": float, "str": str}


def _typed(value: Any, *, what: str) -> tuple[Any, str]:
    value = _python_value(value, what=what)
    return value, type(value).__name__


def _untyped(value: Any, type_name: str) -> Any:
    if type_name not in _JSON_TYPES:
        raise ValueError(f"unknown value type {type_name!r}; expected one of {list(_JSON_TYPES)}.")
    return _JSON_TYPES[type_name](value)


def _dtype_to_dict(dtype: Any) -> dict[str, Any]:
    if isinstance(dtype, pd.CategoricalDtype):
        cats = [_typed(c, what="category") for c in dtype.categories]
        return {
            "name": "category",
            "categories": [v for v, _ in cats],
            "category_types": [t for _, t in cats],
            "categories_dtype": str(dtype.categories.dtype),
            "ordered": bool(dtype.ordered),
        }
    if isinstance(dtype, pd.StringDtype):
        na_value = getattr(dtype, "na_value", pd.NA)
        return {
            "name": "string",
            "storage": dtype.storage,
            "na_value": "nan" if na_value is not pd.NA else "NA",
        }
    return {"name": str(dtype)}


def _dtype_from_dict(d: Mapping[str, Any]) -> Any:
    name = d["name"]
    if name == "category":
        cats = [_untyped(v, t) for v, t in zip(d["categories"], d["category_types"], strict=True)]
        return pd.CategoricalDtype(pd.Index(cats, dtype=d["categories_dtype"]), ordered=bool(d["ordered"]))
    if name == "string":
        if d["na_value"] == "nan":
            return pd.StringDtype(d["storage"], na_value=np.nan)
        return pd.StringDtype(d["storage"])
    return pd.api.types.pandas_dtype(name)


def _is_int_dtype(dtype: Any) -> bool:
    return pd.api.types.is_integer_dtype(dtype) and not isinstance(dtype, pd.CategoricalDtype)


def _is_float_dtype(dtype: Any) -> bool:
    return pd.api.types.is_float_dtype(dtype) and not isinstance(dtype, pd.CategoricalDtype)


def _all_real_numbers(observed: pd.Series) -> bool:
    return all(is_real_number(v) for v in pd.unique(observed))


# ---------------------------------------------------------------------------- ColumnSpec
@dataclass(frozen=True)
class ColumnSpec:
    """How one user column is encoded.

    Attributes
    ----------
    name
        The user's column name (any hashable; str, int, float or bool to be saved).
    kind
        ``"numeric"``, ``"binary"`` or ``"categorical"``.
    dtype
        The column's dtype at fit time.
    start, stop
        The encoded columns ``[start, stop)`` of this user column.
    levels
        Binary: the two levels, encoded 0 and 1. Categorical: one level per one-hot column.
        Empty for numeric columns.
    mean, std
        Numeric: the standardisation (mean and population standard deviation of the
        observed cells). ``0.0`` and ``1.0`` otherwise.
    low, high
        Numeric: the smallest and largest observed value (``None`` otherwise, and in
        schemas saved before they were recorded). Decoded imputations are kept within
        ``[low - w, high + w]``, ``w = high - low``: room for values beyond the observed
        ones (data missing *because* they are extreme), but not for a model that has
        drifted (a not-MIWAE with a saturated missing process once imputed values 10
        standard deviations out).
    """

    name: Hashable
    kind: str
    dtype: Any
    start: int
    stop: int
    levels: tuple[Any, ...] = ()
    mean: float = 0.0
    std: float = 1.0
    low: float | None = None
    high: float | None = None

    @property
    def width(self) -> int:
        return self.stop - self.start


# ---------------------------------------------------------------------------- Schema
@dataclass(frozen=True)
class Schema:
    """Column kinds and the encoding of a table; fit it with :meth:`Schema.fit`.

    Attributes
    ----------
    specs
        One :class:`ColumnSpec` per user column, in the user's order.
    max_categorical_levels
        The level limit used when the kinds were inferred.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> df = pd.DataFrame({"age": [31.0, np.nan, 45.0, 52.0],
    ...                    "smoker": ["no", "yes", None, "no"],
    ...                    "stage": pd.Categorical(["I", "II", "III", None])})
    >>> schema = Schema.fit(df)
    >>> schema.kinds
    {'age': 'numeric', 'smoker': 'binary', 'stage': 'categorical'}
    >>> values, observed = schema.encode(df)
    >>> values.shape, int(observed.sum())
    ((4, 5), 15)
    >>> schema.decode(np.nan_to_num(values), df).loc[3, "stage"]
    'I'
    """

    specs: tuple[ColumnSpec, ...]
    max_categorical_levels: int = 10

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        df: pd.DataFrame,
        column_kinds: Mapping[Any, str] | None = None,
        *,
        max_categorical_levels: int = 10,
    ) -> "Schema":
        """Infer each column's kind and fit the encoding on the observed cells.

        Kinds are inferred from the dtype and the distinct observed values, in this order:

        1. exactly two distinct observed values (any dtype: bool, 0/1 integers, two
           strings, two floats, a two-level category) -> ``"binary"``;
        2. bool, category, object or string dtype -> ``"categorical"``, except an object
           column whose observed values are all real numbers, which is ``"numeric"``;
        3. integer dtype (numpy or nullable ``Int64`` ...) -> ``"categorical"`` with at
           most :data:`CATEGORICAL_INT_MAX_LEVELS` (5) distinct observed values, else
           ``"numeric"``;
        4. float dtype -> ``"numeric"`` (a float column that happens to hold whole numbers
           stays numeric and is never rounded).

        An inferred categorical column with more than ``max_categorical_levels`` levels
        is refused (it is usually an identifier or free text); declare it in
        ``column_kinds`` to keep it anyway.

        Encoding: numeric columns are standardised with the mean and population standard
        deviation of their observed cells; binary columns become 0/1 with 1 for the
        second of the two sorted levels; categorical columns become one one-hot column
        per observed level, sorted (for a category dtype: the dtype's category order,
        restricted to the observed categories).

        Parameters
        ----------
        df
            The training frame (see :func:`~ciss_autoimpute.data.checks.to_frame`). It is
            validated with :func:`~ciss_autoimpute.data.checks.check_frame` first.
        column_kinds
            Optional overrides ``{column: "numeric" | "binary" | "categorical"}``.
            ``"numeric"`` needs real numbers (not strings, booleans or a category dtype);
            ``"binary"`` needs exactly two distinct observed values.
        max_categorical_levels
            Most levels an *inferred* categorical column may have.

        Returns
        -------
        Schema

        Raises
        ------
        ValueError
            Unknown column or kind in ``column_kinds``, an override that does not fit the
            column, too many levels, or any problem :func:`check_frame` reports.
        """
        if not isinstance(df, pd.DataFrame):
            raise TypeError(
                f"Schema.fit expects a pandas DataFrame, got {type(df).__name__}; convert it with to_frame(data)."
            )
        if (
            isinstance(max_categorical_levels, bool)
            or not isinstance(max_categorical_levels, (int, np.integer))
            or max_categorical_levels < 2
        ):
            raise ValueError(
                f"max_categorical_levels must be an integer >= 2, got {max_categorical_levels!r}."
            )
        kinds = check_column_kinds(df, column_kinds)
        check_frame(df, min_rows=1, column_kinds=kinds)
        specs: list[ColumnSpec] = []
        start = 0
        for name, series in df.items():
            spec = _fit_column(name, series, kinds.get(name), int(max_categorical_levels), start)
            specs.append(spec)
            start = spec.stop
        return cls(specs=tuple(specs), max_categorical_levels=int(max_categorical_levels))

    # ------------------------------------------------------------------ views
    @property
    def columns(self) -> list[Hashable]:
        """The user's column names, in order."""
        return [s.name for s in self.specs]

    @property
    def kinds(self) -> dict[Hashable, str]:
        """``{column: kind}``."""
        return {s.name: s.kind for s in self.specs}

    @property
    def dtypes(self) -> dict[Hashable, Any]:
        """``{column: dtype at fit time}``."""
        return {s.name: s.dtype for s in self.specs}

    @property
    def n_features(self) -> int:
        """Width of the encoded matrix."""
        return self.specs[-1].stop if self.specs else 0

    @cached_property
    def layout(self) -> FeatureLayout:
        """The :class:`FeatureLayout` of the encoded matrix."""
        numeric: list[int] = []
        binary: list[int] = []
        groups: list[tuple[int, int]] = []
        column_of: list[int] = []
        for j, spec in enumerate(self.specs):
            if spec.kind == "numeric":
                numeric.append(spec.start)
            elif spec.kind == "binary":
                binary.append(spec.start)
            else:
                groups.append((spec.start, spec.stop))
            column_of.extend([j] * spec.width)
        return FeatureLayout(
            n_features=self.n_features,
            numeric=tuple(numeric),
            binary=tuple(binary),
            categorical=tuple(groups),
            names=tuple(str(s.name) for s in self.specs),
            column_of=tuple(column_of),
        )

    @cached_property
    def _column_of(self) -> np.ndarray:
        return np.asarray(self.layout.column_of, dtype=np.int64)

    # ------------------------------------------------------------------ encoding
    def encode(self, df: pd.DataFrame, *, argument: str = "data") -> tuple[np.ndarray, np.ndarray]:
        """Encode a frame with the fitted columns.

        Parameters
        ----------
        df
            A frame with exactly the fitted columns, in order (the training frame or new rows).
        argument
            Name used for ``df`` in error messages.

        Returns
        -------
        values : numpy.ndarray
            float32 ``[n, d]``; NaN at missing cells (all columns of a categorical group).
        observed : numpy.ndarray
            bool ``[n, d]``; True where the user cell was observed.

        Raises
        ------
        ValueError
            Different columns, a level not seen at fit time, a non-numeric or infinite
            value in a numeric column.
        """
        if not isinstance(df, pd.DataFrame):
            raise TypeError(
                f"{argument} must be a pandas DataFrame here, got {type(df).__name__}; convert it with to_frame()."
            )
        check_same_columns(df, self.columns, argument=argument)
        n = len(df)
        values = np.full((n, self.n_features), np.nan, dtype=np.float32)
        observed = np.zeros((n, self.n_features), dtype=bool)
        for spec, (_, series) in zip(self.specs, df.items()):
            present = ~series.isna().to_numpy(dtype=bool)
            observed[:, spec.start : spec.stop] = present[:, None]
            if spec.kind == "numeric":
                x = _numeric_array(series, spec.name, argument=argument)
                bad = present & ~np.isfinite(x)
                if bad.any():
                    raise ValueError(
                        f"column {spec.name!r} of {argument} has {int(bad.sum())} infinite value(s); "
                        "replace them with NaN so they are imputed."
                    )
                values[:, spec.start] = ((x - spec.mean) / spec.std).astype(np.float32)
                continue
            codes = _level_codes(series, spec, present, argument=argument)
            rows = np.flatnonzero(present)
            if spec.kind == "binary":
                values[rows, spec.start] = codes[rows]
            else:
                block = np.zeros((len(rows), spec.width), dtype=np.float32)
                block[np.arange(len(rows)), codes[rows]] = 1.0
                values[rows, spec.start : spec.stop] = block
        return values, observed

    def missing_matrix(self, df: pd.DataFrame, *, argument: str = "data") -> np.ndarray:
        """bool ``[n, p]``: True where a user cell is missing (NaN, None, pd.NA)."""
        check_same_columns(df, self.columns, argument=argument)
        return df.isna().to_numpy(dtype=bool, copy=True)

    def encoded_mask(self, column_mask: Any) -> Any:
        """Expand a per-user-column mask ``[n, p]`` to the encoded columns ``[n, d]``.

        Each encoded column takes the value of the user column it encodes, so every
        column of a one-hot group agrees. Accepts a numpy array (returns a bool numpy
        array) or a torch tensor (returns a tensor on the same device).
        """
        p = len(self.specs)
        if hasattr(column_mask, "index_select") and hasattr(column_mask, "device"):
            import torch

            if column_mask.ndim != 2 or column_mask.shape[1] != p:
                raise ValueError(
                    f"column_mask must have shape [n, {p}] (one column per user column), "
                    f"got {tuple(column_mask.shape)}."
                )
            idx = torch.as_tensor(self._column_of, device=column_mask.device)
            return column_mask.index_select(1, idx)
        mask = np.asarray(column_mask)
        if mask.ndim != 2 or mask.shape[1] != p:
            raise ValueError(
                f"column_mask must have shape [n, {p}] (one column per user column), got {mask.shape}."
            )
        return mask.astype(bool, copy=False)[:, self._column_of]

    # ------------------------------------------------------------------ decoding
    def decode(self, encoded: Any, original: pd.DataFrame) -> pd.DataFrame:
        """Fill the missing cells of ``original`` from an encoded imputation.

        Numeric cells become ``x * std + mean`` (rounded, and clipped to the dtype's
        range, for integer dtypes; never rounded for float dtypes); binary cells the
        level on the side of 0.5 (``>= 0.5`` gives the second level); categorical cells
        the level of the largest encoded value in the group.

        Parameters
        ----------
        encoded
            float ``[n, d]`` numpy array or torch tensor. Only the cells that are missing
            in ``original`` are read; they must be finite.
        original
            The frame the encoding came from (same rows and columns).

        Returns
        -------
        pandas.DataFrame
            A new frame with ``original``'s index, column names and order and dtypes.
            Observed cells are ``original``'s own values, untouched; missing cells are
            imputed (category columns get a category of their dtype, integer columns
            integers, boolean columns booleans, string columns strings).
        """
        if hasattr(encoded, "detach") and hasattr(encoded, "cpu"):
            encoded = encoded.detach().cpu().numpy()
        enc = np.asarray(encoded, dtype=np.float64)
        if not isinstance(original, pd.DataFrame):
            raise TypeError(f"original must be a pandas DataFrame, got {type(original).__name__}.")
        if enc.ndim != 2 or enc.shape != (len(original), self.n_features):
            raise ValueError(
                f"encoded must have shape ({len(original)}, {self.n_features}) (rows of original x encoded "
                f"features), got {enc.shape}."
            )
        check_same_columns(original, self.columns, argument="original")
        out = new_frame(original)
        for j, (spec, (_, series)) in enumerate(zip(self.specs, original.items())):
            rows = np.flatnonzero(series.isna().to_numpy(dtype=bool))
            if len(rows) == 0:
                continue
            block = enc[rows, spec.start : spec.stop]
            if not np.isfinite(block).all():
                raise ValueError(
                    f"encoded holds NaN or infinite values at missing cells of column {spec.name!r}; "
                    "the imputation must be finite everywhere the data is missing."
                )
            filled = series.copy()
            filled.iloc[rows] = _decoded_values(spec, block, series.dtype)
            out.isetitem(j, filled)
        return out

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible description that :meth:`from_dict` turns back into an equal schema.

        Column names, levels and categories keep their Python type (str, int, float,
        bool) through JSON; dtypes are stored by name (categories and string storage
        included).
        """
        columns = []
        for spec in self.specs:
            name, name_type = _typed(spec.name, what="column name")
            levels = [_typed(v, what=f"level of column {spec.name!r}") for v in spec.levels]
            columns.append(
                {
                    "name": name,
                    "name_type": name_type,
                    "kind": spec.kind,
                    "dtype": _dtype_to_dict(spec.dtype),
                    "start": spec.start,
                    "stop": spec.stop,
                    "levels": [v for v, _ in levels],
                    "level_types": [t for _, t in levels],
                    "mean": spec.mean,
                    "std": spec.std,
                    "low": spec.low,
                    "high": spec.high,
                }
            )
        return {
            "format": _SCHEMA_FORMAT,
            "version": _SCHEMA_VERSION,
            "max_categorical_levels": self.max_categorical_levels,
            "columns": columns,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Schema":
        """Rebuild a schema from :meth:`to_dict` output.

        Raises
        ------
        ValueError
            ``d`` is not a schema description of a supported version.
        """
        if not isinstance(d, Mapping) or d.get("format") != _SCHEMA_FORMAT:
            raise ValueError(
                f"not a schema description: expected a dict with format={_SCHEMA_FORMAT!r}; "
                "pass the output of Schema.to_dict()."
            )
        if d.get("version") != _SCHEMA_VERSION:
            raise ValueError(
                f"schema description version {d.get('version')!r} is not supported (this version reads "
                f"{_SCHEMA_VERSION}); refit the schema."
            )
        try:
            specs = []
            expected_start = 0
            for c in d["columns"]:
                if c["kind"] not in KINDS:
                    raise ValueError(f"unknown kind {c['kind']!r}")
                spec = ColumnSpec(
                    name=_untyped(c["name"], c["name_type"]),
                    kind=c["kind"],
                    dtype=_dtype_from_dict(c["dtype"]),
                    start=int(c["start"]),
                    stop=int(c["stop"]),
                    levels=tuple(_untyped(v, t) for v, t in zip(c["levels"], c["level_types"], strict=True)),
                    mean=float(c["mean"]),
                    std=float(c["std"]),
                    low=None if c.get("low") is None else float(c["low"]),
                    high=None if c.get("high") is None else float(c["high"]),
                )
                if spec.start != expected_start or spec.stop <= spec.start:
                    raise ValueError(f"column {spec.name!r} has inconsistent encoded range")
                expected_start = spec.stop
                specs.append(spec)
            return cls(specs=tuple(specs), max_categorical_levels=int(d["max_categorical_levels"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid schema description: {exc!s}; pass the output of Schema.to_dict().") from exc


# ---------------------------------------------------------------------------- helpers
def _observed_levels(name: Hashable, series: pd.Series, observed: pd.Series) -> list[Any]:
    what = f"value of column {name!r}"
    if isinstance(series.dtype, pd.CategoricalDtype):
        cats = series.dtype.categories
        used = cats[cats.isin(observed.unique())]
        return [_python_value(v, what=what) for v in used]
    return _sorted_levels([_python_value(v, what=what) for v in pd.unique(observed)])


def _infer_kind(series: pd.Series, observed: pd.Series, n_levels: int) -> str:
    dtype = series.dtype
    if n_levels == 2:
        return "binary"
    if pd.api.types.is_bool_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype):
        return "categorical"
    if _is_int_dtype(dtype):
        return "categorical" if n_levels <= CATEGORICAL_INT_MAX_LEVELS else "numeric"
    if _is_float_dtype(dtype):
        return "numeric"
    if dtype == object and _all_real_numbers(observed):
        return "numeric"
    return "categorical"


def _numeric_capable(series: pd.Series, observed: pd.Series) -> bool:
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype):
        return False
    if _is_int_dtype(dtype) or _is_float_dtype(dtype):
        return True
    return dtype == object and _all_real_numbers(observed)


def _fit_column(
    name: Hashable, series: pd.Series, declared: str | None, max_levels: int, start: int
) -> ColumnSpec:
    observed = series.dropna()
    n_levels = int(observed.nunique())
    kind = declared if declared is not None else _infer_kind(series, observed, n_levels)

    if kind == "numeric":
        if not _numeric_capable(series, observed):
            examples = [plain_value(v) for v in pd.unique(observed)[:_SHOW]]
            raise ValueError(
                f"column {name!r} cannot be numeric: it has dtype {series.dtype} with values such as "
                f"{examples}. Fix: declare it 'categorical' (or 'binary') in column_kinds, or convert it "
                f"with pd.to_numeric(df[{name!r}], errors='coerce')."
            )
        x = _numeric_array(series, name, argument="data")
        x = x[~np.isnan(x)]
        mean = float(x.mean())
        std = float(x.std())
        if not (std > 0 and math.isfinite(std)):
            # check_frame rejects constant columns; this guards values too close to tell apart.
            raise ValueError(
                f"column {name!r} has (numerically) zero spread (std={std!r}); drop it."
            )
        return ColumnSpec(name=name, kind="numeric", dtype=series.dtype, start=start, stop=start + 1,
                          mean=mean, std=std, low=float(x.min()), high=float(x.max()))

    levels = _observed_levels(name, series, observed)
    if kind == "binary":
        if len(levels) != 2:
            raise ValueError(
                f"column {name!r} is declared binary but has {len(levels)} distinct observed values "
                f"({levels[:_SHOW + 2]}...); declare it 'categorical' instead."
            )
        return ColumnSpec(name=name, kind="binary", dtype=series.dtype, start=start, stop=start + 1,
                          levels=tuple(levels))

    if declared is None and len(levels) > max_levels:
        hint = ""
        if all(isinstance(v, str) for v in levels[:50]) and _all_numeric_strings(levels[:50]):
            hint = f" Its values look like numbers: convert it with pd.to_numeric(df[{name!r}], errors='coerce')."
        raise ValueError(
            f"column {name!r} looks categorical but has {len(levels)} distinct values (more than "
            f"max_categorical_levels={max_levels}), e.g. {levels[:_SHOW]}; it may be an identifier or "
            f"free text. Fix: drop it, raise max_categorical_levels, or declare it with "
            f"column_kinds={{{name!r}: 'categorical'}}.{hint}"
        )
    return ColumnSpec(name=name, kind="categorical", dtype=series.dtype, start=start,
                      stop=start + len(levels), levels=tuple(levels))


def _all_numeric_strings(values: list[str]) -> bool:
    try:
        for v in values:
            float(v)
    except ValueError:
        return False
    return True


def _numeric_array(series: pd.Series, name: Hashable, *, argument: str) -> np.ndarray:
    """float64 values of a numeric column, NaN where missing."""
    try:
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError):
        observed = series.dropna()
        bad = [v for v in pd.unique(observed) if not is_real_number(v)][:_SHOW]
        raise ValueError(
            f"column {name!r} of {argument} is numeric but holds non-numeric values {bad}; convert it with "
            f"pd.to_numeric(df[{name!r}], errors='coerce') (unparseable values become missing)."
        ) from None


def _level_codes(series: pd.Series, spec: ColumnSpec, present: np.ndarray, *, argument: str) -> np.ndarray:
    """Index of each cell's level in ``spec.levels`` (-1 at missing cells)."""
    # An object index compares by Python equality, so Int64 1, float 1.0 and numpy
    # int64 1 all find the level 1 whatever dtype the new rows arrive with.
    codes = pd.Index(list(spec.levels), dtype=object).get_indexer(series)
    unseen = present & (codes < 0)
    if unseen.any():
        values = list(dict.fromkeys(series[unseen].tolist()))
        raise ValueError(
            f"column {spec.name!r} of {argument} has value(s) {values[:_SHOW]} not seen when the schema was "
            f"fitted (known levels: {list(spec.levels)[:20]}). Fix: map them to a known level or set them "
            "to NaN so they are imputed."
        )
    return codes


def _numpy_dtype(dtype: Any) -> np.dtype:
    return np.dtype(getattr(dtype, "numpy_dtype", dtype))


def _decoded_values(spec: ColumnSpec, block: np.ndarray, dtype: Any) -> Any:
    """Values for the missing cells of one column, as an array of the column's dtype."""
    if spec.kind == "numeric":
        x = block[:, 0] * spec.std + spec.mean
        if spec.low is not None and spec.high is not None:
            # A plausibility bound, not a range check: the observed range widened by its
            # own width on each side (see ColumnSpec).
            width = spec.high - spec.low
            x = np.clip(x, spec.low - width, spec.high + width)
        if _is_int_dtype(dtype):
            np_dtype = _numpy_dtype(dtype)
            info = np.iinfo(np_dtype)
            x = np.clip(np.rint(x), info.min, info.max).astype(np_dtype)
            return pd.array(x, dtype=dtype)
        if _is_float_dtype(dtype):
            return pd.array(x.astype(_numpy_dtype(dtype)), dtype=dtype)
        # object column of numbers: plain Python floats, like the observed cells.
        return pd.array(np.array(x.tolist(), dtype=object), dtype=dtype)
    if spec.kind == "binary":
        idx = (block[:, 0] >= 0.5).astype(np.int64)
    else:
        idx = block.argmax(axis=1)
    levels = np.empty(len(spec.levels), dtype=object)
    levels[:] = list(spec.levels)
    return pd.array(levels[idx], dtype=dtype)
