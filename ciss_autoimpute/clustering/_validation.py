"""Input checks for the clustering module: masks, proportion matrices, user labels.

Everything here is cheap and runs before any neighbour search, so a bad argument
fails in milliseconds with a message naming the argument, the value received and
the fix.
"""

from __future__ import annotations

import numbers
from typing import Any, Hashable

import numpy as np

__all__ = ["as_mask_matrix", "validate_labels", "check_int", "check_seed"]


def _column_names(mask: Any, n_cols: int) -> list[str]:
    columns = getattr(mask, "columns", None)
    if columns is not None and len(columns) == n_cols:
        return [str(c) for c in columns]
    return [f"column {j}" for j in range(n_cols)]


def _to_float_matrix(mask: Any, name: str) -> tuple[np.ndarray, list[str]]:
    """Convert ``mask`` to a 2-D float64 array (a copy never aliases the caller's data)."""
    # pandas is only needed when the caller passes a DataFrame; import lazily.
    if hasattr(mask, "iloc") and hasattr(mask, "columns"):
        import pandas as pd

        bad = [
            str(c)
            for c, dt in mask.dtypes.items()
            if not (pd.api.types.is_bool_dtype(dt) or pd.api.types.is_numeric_dtype(dt))
        ]
        if bad:
            raise TypeError(
                f"{name} must hold 0/1 (or bool) values, but column {bad[0]!r} has dtype "
                f"{mask[bad[0]].dtype}; pass the missingness indicator, e.g. df.isna()."
            )
        values = mask.to_numpy(dtype=np.float64, na_value=np.nan)
        return values, _column_names(mask, values.shape[1] if values.ndim == 2 else 0)
    if hasattr(mask, "iloc"):  # a pandas Series: one column only
        raise ValueError(
            f"{name} must be 2-D (rows x features), got a 1-D Series of length {len(mask)}; "
            "pass a DataFrame, e.g. series.to_frame()."
        )
    if hasattr(mask, "detach") and hasattr(mask, "cpu"):  # torch tensor
        mask = mask.detach().cpu().numpy()
    try:
        arr = np.asarray(mask)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} could not be read as an array ({exc}); pass a bool ndarray or DataFrame.") from None
    if arr.dtype == bool:
        return arr, _column_names(mask, arr.shape[1] if arr.ndim == 2 else 0)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(
            f"{name} must be a bool or numeric 0/1 array, got dtype {arr.dtype}; "
            "pass the missingness indicator, e.g. np.isnan(X) or df.isna()."
        )
    if arr.ndim != 2:
        return arr, []
    return arr.astype(np.float64, copy=True), _column_names(mask, arr.shape[1])


def as_mask_matrix(mask: Any, *, proportion: bool = False, name: str = "mask") -> tuple[np.ndarray, list[str]]:
    """Validate a missingness mask or proportion matrix and return it as an array.

    Parameters
    ----------
    mask
        bool / 0-1 array-like or DataFrame ``[n, p]`` (True = missing), or, with
        ``proportion=True``, floats in ``[0, 1]``.
    proportion
        Whether ``mask`` is a missingness-proportion matrix.
    name
        Argument name used in error messages.

    Returns
    -------
    values
        ``bool`` array for masks, ``float64`` array for proportion matrices (always
        a new array, never the caller's).
    columns
        Column names for messages (``"column j"`` when the input has none).
    """
    if not isinstance(proportion, (bool, np.bool_)):
        raise TypeError(f"proportion must be True or False, got {proportion!r}.")
    arr, columns = _to_float_matrix(mask, name)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (rows x features), got an array of shape {arr.shape}; "
            "reshape it, e.g. mask.reshape(-1, 1) for a single feature."
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name} has no rows (shape {arr.shape}); pass at least one row.")
    if arr.dtype == bool:
        if proportion:
            return arr.astype(np.float64), columns
        return arr.copy(), columns
    nan_at = np.argwhere(np.isnan(arr))
    if nan_at.size:
        i, j = nan_at[0]
        what = "proportion matrix" if proportion else "mask"
        raise ValueError(
            f"{name} contains NaN (row {i}, {columns[j]!r}); a {what} must be fully filled in. "
            + (
                "Pass the missingness indicator (e.g. df.isna()), not the data itself."
                if not proportion
                else "Replace NaN with the proportion of missing visits (0 when none)."
            )
        )
    if proportion:
        bad = np.argwhere((arr < 0.0) | (arr > 1.0))  # also catches +-inf
        if bad.size:
            i, j = bad[0]
            raise ValueError(
                f"{name} must hold missingness proportions in [0, 1], got {arr[i, j]:g} at row {i}, "
                f"{columns[j]!r}; divide missing counts by the number of visits."
            )
        # Adding 0.0 turns -0.0 into 0.0 so identical rows hash identically.
        return arr + 0.0, columns
    bad = np.argwhere((arr != 0.0) & (arr != 1.0))
    if bad.size:
        i, j = bad[0]
        raise ValueError(
            f"{name} must be 0/1 or bool (True = missing), got {arr[i, j]:g} at row {i}, {columns[j]!r}; "
            "for a missingness-proportion matrix pass proportion=True."
        )
    return arr == 1.0, columns


def check_int(value: Any, name: str, *, minimum: int, allow_none: bool = False) -> int | None:
    """``value`` as an ``int`` >= ``minimum`` (bools rejected), else a clear error."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    return int(value)


def check_seed(seed: Any) -> int:
    """Seeds go to leidenalg (a C int) and numpy, so keep them in ``[0, 2**31)``."""
    seed = check_int(seed, "seed", minimum=0)
    if seed >= 2**31:
        raise ValueError(f"seed must be < 2**31 (leidenalg takes a C int), got {seed}.")
    return seed


def validate_labels(
    labels: Any, n_rows: int, *, min_cluster_size: int = 1, name: str = "clusters"
) -> tuple[np.ndarray, dict[Hashable, int]]:
    """Check user-supplied cluster labels and relabel them ``0..k-1``.

    Parameters
    ----------
    labels
        One hashable label per row (ints, strings, ...): list, ndarray, pandas
        Series or torch tensor. Reported as the argument ``clusters``.
    n_rows
        Number of rows of the data the labels belong to.
    min_cluster_size
        Smallest allowed number of rows per cluster (1 accepts any size).
    name
        Argument name used in error messages.

    Returns
    -------
    labels
        ``int64`` array ``[n_rows]`` with values ``0..k-1``, in sorted order of the
        original labels when they are mutually comparable, else in order of first
        appearance.
    mapping
        Original label -> new integer label (numpy scalars converted to Python ones).

    Raises
    ------
    ValueError
        Wrong length, missing (NaN/None) labels, non-integer floats, unhashable
        labels, or a cluster smaller than ``min_cluster_size``.

    Examples
    --------
    >>> lab, mapping = validate_labels(["b", "a", "b"], 3)
    >>> lab.tolist(), mapping
    ([1, 0, 1], {'a': 0, 'b': 1})
    """
    import pandas as pd

    n_rows = check_int(n_rows, "n_rows", minimum=1)
    min_cluster_size = check_int(min_cluster_size, "min_cluster_size", minimum=1)
    if labels is None or isinstance(labels, (str, bytes, dict, set)) or np.isscalar(labels):
        raise TypeError(
            f"{name} must be a sequence with one label per row, got {type(labels).__name__} "
            f"{labels!r:.60}; pass e.g. a list or array of length {n_rows}."
        )
    if hasattr(labels, "detach") and hasattr(labels, "cpu"):  # torch tensor
        labels = labels.detach().cpu().numpy()
    if isinstance(labels, (pd.Series, pd.Index, pd.Categorical)):
        arr = np.asarray(labels.astype(object) if not isinstance(labels, pd.Categorical) else labels.astype(object))
    elif isinstance(labels, (list, tuple)):
        # Element by element, so numpy neither turns [1, "x"] into ["1", "x"] nor a
        # list of lists into a 2-D array.
        arr = np.empty(len(labels), dtype=object)
        for i, value in enumerate(labels):
            arr[i] = value
    else:
        try:
            arr = np.asarray(labels)
        except Exception as exc:
            raise ValueError(
                f"{name} could not be read as one label per row ({exc}); pass a list or 1-D array."
            ) from None
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D (one label per row), got shape {arr.shape}; flatten it, e.g. labels.ravel()."
        )
    if len(arr) != n_rows:
        raise ValueError(
            f"{name} has {len(arr)} labels but the data has {n_rows} rows; pass exactly one label per row."
        )
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        bad = np.flatnonzero(~np.isnan(arr) & (~finite | (arr != np.round(arr))))
        if bad.size:
            raise ValueError(
                f"{name} must hold integer or string labels, got {arr[bad[0]].item()!r} at position {bad[0]}; "
                "map the labels to integers."
            )
        # Integral floats (labels that went through a NaN-capable column) act as ints;
        # NaN stays NaN so factorize flags it below.
        as_obj = arr.astype(object)
        as_obj[finite] = arr[finite].astype(np.int64)
        arr = as_obj
    elif arr.dtype == object:
        for i, v in enumerate(arr):  # object arrays are Python objects already
            if isinstance(v, (float, np.floating)) and not np.isnan(v) and (not np.isfinite(v) or v != round(v)):
                raise ValueError(
                    f"{name} must hold integer or string labels, got {v!r} at position {i}; "
                    "map the labels to integers."
                )
    try:
        codes, uniques = pd.factorize(arr, sort=True, use_na_sentinel=True)
    except TypeError as exc:
        if "unhashable" in str(exc):
            first = next(
                (v for v in arr if not isinstance(v, Hashable) or _unhashable(v)), None
            )
            raise ValueError(
                f"{name} must hold hashable labels (ints or strings), got unhashable value {first!r:.60}; "
                "pass one scalar label per row."
            ) from None
        # Mixed, mutually incomparable labels (e.g. ints and strings): keep first-appearance order.
        codes, uniques = pd.factorize(arr, sort=False, use_na_sentinel=True)
    missing = np.flatnonzero(codes < 0)
    if missing.size:
        raise ValueError(
            f"{name} has a missing label (NaN/None) at position {missing[0]} "
            f"({missing.size} in all); give every row a label."
        )
    codes = codes.astype(np.int64)
    sizes = np.bincount(codes, minlength=len(uniques))
    small = np.flatnonzero(sizes < min_cluster_size)
    if small.size:
        lab = uniques[small[0]]
        raise ValueError(
            f"{name} has {small.size} cluster(s) with fewer than {min_cluster_size} rows "
            f"(e.g. label {lab!r} has {sizes[small[0]]}); merge small clusters or let the package cluster "
            "(clusters=None)."
        )
    mapping = {(u.item() if isinstance(u, np.generic) else u): i for i, u in enumerate(uniques)}
    return codes, mapping


def _unhashable(v: Any) -> bool:
    try:
        hash(v)
    except TypeError:
        return True
    return False
