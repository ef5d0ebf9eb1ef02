"""Input checks: the one place where user data is converted and validated.

Every entry point (``ClusterDataset``, ``Imputer``, ``run_imputation``, the CLI) turns
the user's data into a :class:`pandas.DataFrame` with :func:`to_frame` and validates it
with :func:`check_frame` before anything heavy runs, so a bad table fails in
milliseconds with a message that names the column, the value received and the fix.

Missing cells are whatever :func:`pandas.isna` reports: ``NaN``, ``None``, ``pd.NA``
and ``NaT`` all mean missing.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "KINDS",
    "to_frame",
    "check_frame",
    "check_column_kinds",
    "check_same_columns",
]

#: The column kinds the schema knows.
KINDS: tuple[str, ...] = ("numeric", "binary", "categorical")

# pandas 3 always copies on write, so a shallow copy can never leak a change back to
# the caller; older pandas needs a deep copy for the same guarantee.
_PANDAS_COW = int(pd.__version__.split(".")[0]) >= 3

# How many offending values / column names an error message shows.
_SHOW = 3
_SHOW_COLUMNS = 20


def new_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` whose modification can never reach ``df`` (cheap under pandas 3)."""
    return df.copy(deep=not _PANDAS_COW)


def plain_value(value: Any) -> Any:
    """numpy scalars as Python values, so messages read 7.0 rather than np.float64(7.0)."""
    return value.item() if isinstance(value, np.generic) else value


def _short_list(values: Iterable[Any], limit: int = _SHOW_COLUMNS) -> str:
    values = list(values)
    shown = ", ".join(repr(plain_value(v)) for v in values[:limit])
    if len(values) > limit:
        shown += f", ... ({len(values) - limit} more)"
    return f"[{shown}]"


# ---------------------------------------------------------------------------- to_frame
def _is_torch_tensor(data: Any) -> bool:
    # Only look at torch if the caller already imported it: nothing else can hold a
    # tensor, and `import ciss_autoimpute` must not pay for importing torch here.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(data, torch.Tensor)


def to_frame(data: Any, *, argument: str = "data") -> pd.DataFrame:
    """Convert user data to a new :class:`pandas.DataFrame`.

    Parameters
    ----------
    data
        A pandas DataFrame, a 2-D numpy array (numeric, boolean or object) or a 2-D
        torch tensor (moved to the CPU). ``NaN``, ``None`` and ``pd.NA`` mean missing.
    argument
        Name of the argument in the caller's signature, used in error messages.

    Returns
    -------
    pandas.DataFrame
        A new frame; changing it never changes ``data``. A DataFrame keeps its index,
        column names and dtypes. Arrays and tensors get columns ``0 .. p-1`` (ints) and a
        default index; the columns of an object array are inferred one by one (numbers
        become numeric columns, strings become string columns).

    Raises
    ------
    TypeError
        ``data`` is not one of the accepted types.
    ValueError
        ``data`` is not two-dimensional.

    Examples
    --------
    >>> import numpy as np
    >>> to_frame(np.array([[1.0, np.nan], [3.0, 4.0]])).columns.tolist()
    [0, 1]
    """
    if isinstance(data, pd.DataFrame):
        return new_frame(data)
    if isinstance(data, np.ndarray):
        return _frame_from_array(data, argument=argument, what="numpy array")
    if _is_torch_tensor(data):
        import torch

        tensor = data.detach().to("cpu")
        if tensor.dtype in (torch.float16, torch.bfloat16):
            # numpy has no bfloat16; float32 holds both exactly.
            tensor = tensor.to(torch.float32)
        if tensor.ndim != 2:
            raise ValueError(
                f"{argument} must be two-dimensional (rows x columns), got a torch tensor of shape "
                f"{tuple(tensor.shape)}; reshape it to 2-D (e.g. tensor.reshape(len(tensor), -1))."
            )
        return _frame_from_array(tensor.numpy(), argument=argument, what="torch tensor")
    if not isinstance(data, (pd.Series, str, bytes, dict, list, tuple)) and hasattr(data, "__array__"):
        # Other array-likes (e.g. xarray, dask in memory, scikit-learn's test wrappers).
        return _frame_from_array(np.asarray(data), argument=argument, what="array-like")
    if isinstance(data, pd.Series):
        raise TypeError(
            f"{argument} must be a 2-D table, got a pandas Series; use series.to_frame() "
            "to pass a single column."
        )
    raise TypeError(
        f"{argument} must be a pandas DataFrame, a 2-D numpy array or a 2-D torch tensor, "
        f"got {type(data).__module__}.{type(data).__qualname__}; wrap it first, "
        f"e.g. pd.DataFrame({argument})."
    )


def _frame_from_array(arr: np.ndarray, *, argument: str, what: str) -> pd.DataFrame:
    if arr.ndim != 2:
        hint = "arr.reshape(-1, 1) for a single column" if arr.ndim == 1 else "to rows x columns"
        raise ValueError(
            f"{argument} must be two-dimensional (rows x columns), got a {arr.ndim}-D {what} of shape "
            f"{arr.shape}. Reshape your data, e.g. {hint}."
        )
    if arr.dtype.fields is not None:
        raise TypeError(
            f"{argument} is a structured numpy array (dtype {arr.dtype}); pass pd.DataFrame({argument}) instead."
        )
    # copy=True: the frame must never share memory with the caller's array.
    frame = pd.DataFrame(arr, copy=True)
    if arr.dtype == object:
        # Object arrays usually mix a few numeric and string columns; let each column
        # take its natural dtype so numbers are not mistaken for category labels.
        frame = frame.infer_objects()
    return frame


# ---------------------------------------------------------------------------- values
def is_real_number(value: Any) -> bool:
    """True for Python/numpy ints and floats (booleans excluded)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _is_numeric_string(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def _supported_dtype(dtype: Any) -> bool:
    return (
        pd.api.types.is_bool_dtype(dtype)
        or pd.api.types.is_integer_dtype(dtype)
        or pd.api.types.is_float_dtype(dtype)
        or pd.api.types.is_string_dtype(dtype)
        or isinstance(dtype, pd.CategoricalDtype)
        or dtype == object
    )


def _is_text_dtype(dtype: Any) -> bool:
    """object or string columns: their values must be inspected one by one."""
    return dtype == object or (
        pd.api.types.is_string_dtype(dtype) and not isinstance(dtype, pd.CategoricalDtype)
    )


def observed_value_counts(series: pd.Series) -> pd.Series:
    """Counts of each distinct observed value (missing cells dropped)."""
    return series.value_counts(dropna=True, sort=False)


# ---------------------------------------------------------------------------- column_kinds
def check_column_kinds(df: pd.DataFrame, column_kinds: Mapping[Any, str] | None) -> dict[Any, str]:
    """Validate a ``{column: kind}`` override mapping against ``df``.

    Returns
    -------
    dict
        A plain dict copy (empty when ``column_kinds`` is None).

    Raises
    ------
    TypeError
        ``column_kinds`` is not a mapping.
    ValueError
        A key is not a column of ``df`` or a value is not one of :data:`KINDS`.
    """
    if column_kinds is None:
        return {}
    if not isinstance(column_kinds, Mapping):
        raise TypeError(
            f"column_kinds must be a mapping {{column: kind}} with kinds in {list(KINDS)}, "
            f"got {type(column_kinds).__name__}."
        )
    unknown_cols = [c for c in column_kinds if c not in df.columns]
    if unknown_cols:
        raise ValueError(
            f"column_kinds names column(s) {_short_list(unknown_cols)} that are not in the data; "
            f"valid columns are {_short_list(df.columns)}."
        )
    bad = {c: k for c, k in column_kinds.items() if k not in KINDS}
    if bad:
        raise ValueError(
            f"column_kinds has unknown kind(s) {bad}; valid kinds are {list(KINDS)}."
        )
    return dict(column_kinds)


# ---------------------------------------------------------------------------- check_frame
def check_frame(
    df: pd.DataFrame,
    *,
    min_rows: int = 10,
    column_kinds: Mapping[Any, str] | None = None,
) -> None:
    """Validate a frame before any heavy work; raise one clear error listing every problem.

    Frame-level problems (no rows or columns, too few rows, MultiIndex or duplicate
    column names) are reported first, on their own. Column problems are then collected
    over all columns and reported together, one line per problem, each naming the
    column and the fix:

    * an unsupported dtype (dates, timedeltas, complex numbers, intervals, ...);
    * no observed value at all;
    * a single distinct observed value (constant column);
    * ``+inf`` / ``-inf`` values;
    * values that are not numbers, strings or booleans (lists, dates in object columns, ...);
    * strings in a numeric column: an object/string column whose observed values are
      mostly numbers or numeric strings but not all (e.g. ``[1.5, 2.0, "n/a"]``), or
      that mixes real numbers with numeric strings (``[1.5, "2.0"]``). Columns declared
      ``"categorical"`` or ``"binary"`` in ``column_kinds`` are exempt; a column declared
      ``"numeric"`` must hold real numbers only.

    Rows in which every cell is missing are allowed: they carry no information of their
    own and are imputed from their cluster (or the model's prior).

    Parameters
    ----------
    df
        The frame, as returned by :func:`to_frame`.
    min_rows
        Fewest rows accepted.
    column_kinds
        Optional ``{column: kind}`` overrides, as given to :meth:`Schema.fit`.

    Raises
    ------
    ValueError
        Describing every problem found.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"check_frame expects a DataFrame (use to_frame first), got {type(df).__name__}.")
    n, p = df.shape
    if p == 0 or n == 0:
        raise ValueError(
            f"The data is empty: got {n} rows and {p} columns, i.e. {p} feature(s) (shape=({n}, {p})) while a "
            f"minimum of 1 is required; pass a table with at least "
            f"{min_rows} rows and one column."
        )
    if n < min_rows:
        raise ValueError(
            f"The data has too few rows: got {n} rows (n_samples={n}); need at least {min_rows} rows to fit a model "
            "and hold out validation cells. Fix: pass more rows."
        )
    if isinstance(df.columns, pd.MultiIndex):
        raise ValueError(
            "The data has MultiIndex (hierarchical) column names; flatten them first, e.g. "
            "df.columns = ['_'.join(map(str, c)) for c in df.columns]."
        )
    if df.columns.has_duplicates:
        dups = list(dict.fromkeys(df.columns[df.columns.duplicated()]))
        raise ValueError(
            f"The data has duplicate column names {_short_list(dups)}; rename or drop them so every "
            "column name is unique."
        )
    kinds = check_column_kinds(df, column_kinds)

    problems: list[str] = []
    for name, series in df.items():
        problems.extend(_column_problems(name, series, kinds.get(name)))
    if problems:
        head = "The data has problems; fix them and try again:" if len(problems) > 1 else "The data has a problem:"
        raise ValueError(head + "\n- " + "\n- ".join(problems))


def _column_problems(name: Hashable, series: pd.Series, declared: str | None) -> list[str]:
    col = f"column {name!r}"
    dtype = series.dtype
    if not _supported_dtype(dtype):
        if getattr(dtype, "kind", "") == "c":
            return [f"{col} holds complex numbers (Complex data not supported); keep the real part or split it into two columns."]
        return [
            f"{col} has dtype {dtype}, which cannot be imputed; convert it to numbers (e.g. days "
            "since a reference date) or strings, or drop it."
        ]
    observed = series.dropna()
    if len(observed) == 0:
        return [f"{col} has no observed value (every cell is missing); drop it."]

    problems: list[str] = []
    if _is_text_dtype(dtype):
        try:
            counts = observed_value_counts(observed)
        except TypeError:
            return [
                f"{col} holds unhashable values (e.g. {plain_value(observed.iloc[0])!r}); only numbers, strings and "
                "booleans are supported. Convert or drop it."
            ]
        problems.extend(_text_column_problems(name, counts, declared))
        n_distinct = len(counts)
    else:
        if pd.api.types.is_float_dtype(dtype):
            values = observed.to_numpy(dtype=np.float64)
            n_inf = int(np.isinf(values).sum())
            if n_inf:
                problems.append(
                    f"{col} has {n_inf} infinite value(s) (+/-inf); replace them with NaN "
                    "(df.replace([np.inf, -np.inf], np.nan)) so they are imputed."
                )
        if isinstance(dtype, pd.CategoricalDtype):
            used = dtype.categories[dtype.categories.isin(observed.unique())]
            odd = [v for v in used if not (is_real_number(v) or isinstance(v, (str, bool, np.bool_)))]
            if odd:
                problems.append(
                    f"{col} has categories of unsupported type {type(odd[0]).__name__} "
                    f"(e.g. {plain_value(odd[0])!r}); only numbers, strings and booleans are supported. "
                    "Convert the categories with .cat.rename_categories(str) or drop the column."
                )
        n_distinct = int(observed.nunique())
    if n_distinct == 1 and not problems:
        problems.append(
            f"{col} is constant (its only observed value is {plain_value(observed.iloc[0])!r}); it carries no "
            "information, drop it."
        )
    return problems


def _text_column_problems(name: Hashable, counts: pd.Series, declared: str | None) -> list[str]:
    """Problems of an object/string column, from the counts of its distinct values."""
    col = f"column {name!r}"
    numbers_n = 0
    numeric_str: list[Any] = []
    numeric_str_n = 0
    other_str: list[Any] = []
    other_str_n = 0
    bools_n = 0
    infinite: list[Any] = []
    odd: list[Any] = []
    for value, count in counts.items():
        if isinstance(value, (bool, np.bool_)):
            bools_n += count
        elif is_real_number(value):
            if math.isfinite(value):
                numbers_n += count
            else:
                infinite.append(value)
        elif isinstance(value, str):
            if _is_numeric_string(value):
                numeric_str.append(value)
                numeric_str_n += count
            else:
                other_str.append(value)
                other_str_n += count
        else:
            odd.append(value)

    problems: list[str] = []
    if odd:
        problems.append(
            f"{col} holds values of unsupported type {type(odd[0]).__name__} (e.g. {plain_value(odd[0])!r}); only "
            "numbers, strings and booleans are supported. Convert them (e.g. .astype(str)) or drop the column."
        )
        return problems
    if infinite:
        problems.append(
            f"{col} has infinite value(s) {_short_list(infinite, _SHOW)}; replace them with NaN "
            "(df.replace([np.inf, -np.inf], np.nan)) so they are imputed."
        )
    if declared in ("categorical", "binary"):
        return problems
    total = numbers_n + numeric_str_n + other_str_n + bools_n
    numeric_like = numbers_n + numeric_str_n
    to_numeric_fix = (
        f"convert the column with pd.to_numeric(df[{name!r}], errors='coerce') (unparseable "
        f"values become missing and are imputed), or declare it categorical with "
        f"column_kinds={{{name!r}: 'categorical'}}."
    )
    if declared == "numeric":
        bad = other_str + numeric_str
        if bad or bools_n:
            shown = _short_list(bad, _SHOW) if bad else "booleans"
            problems.append(
                f"{col} is declared numeric but holds non-numeric values {shown}; {to_numeric_fix}"
            )
        return problems
    if other_str_n and numeric_like * 2 > total:
        problems.append(
            f"{col} looks numeric but holds strings that are not numbers: {_short_list(other_str, _SHOW)}; "
            + to_numeric_fix
        )
    elif numbers_n and numeric_str_n and not other_str_n:
        problems.append(
            f"{col} mixes numbers with numeric strings {_short_list(numeric_str, _SHOW)}; " + to_numeric_fix
        )
    return problems


# ---------------------------------------------------------------------------- new rows
def check_same_columns(df: pd.DataFrame, columns: Iterable[Any], *, argument: str = "data") -> None:
    """Check that ``df`` has exactly ``columns``, in the same order (e.g. new rows at transform time).

    Raises
    ------
    ValueError
        Listing the missing columns, the unexpected ones, or the order found when only
        the order differs.
    """
    expected = list(columns)
    got = list(df.columns)
    if got == expected:
        return
    missing = [c for c in expected if c not in got]
    extra = [c for c in got if c not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing column(s) {_short_list(missing)}")
        if extra:
            parts.append(f"unexpected column(s) {_short_list(extra)}")
        raise ValueError(
            f"{argument} does not have the columns the model was fitted on: {'; '.join(parts)}. "
            f"Fix: pass exactly the columns {_short_list(expected)}."
        )
    if len(got) != len(expected):
        raise ValueError(
            f"{argument} has duplicate column names {_short_list(c for c in set(got) if got.count(c) > 1)}; "
            f"pass exactly the columns {_short_list(expected)}."
        )
    raise ValueError(
        f"{argument} has the right columns in another order: got {_short_list(got)}, expected "
        f"{_short_list(expected)}. Fix: reorder them, e.g. {argument}[expected_columns]."
    )
