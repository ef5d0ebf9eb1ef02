"""Example data shipped inside the package."""

from __future__ import annotations

from importlib import resources

import pandas as pd

__all__ = ["load_example", "available_benchmarks", "load_benchmark", "load_digits_frame", "corrupt_images"]


def __getattr__(name: str):
    # Benchmark loaders import optional packages; keep them out of the import path.
    if name in ("available_benchmarks", "load_benchmark"):
        from . import benchmarks

        return getattr(benchmarks, name)
    if name in ("load_digits_frame", "corrupt_images"):
        from . import images

        return getattr(images, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_example() -> pd.DataFrame:
    """The Palmer penguins table (344 rows, 8 mixed-type columns, real missing values).

    Species, island and sex are categorical; the four body measurements are numeric;
    ``year`` is an integer. Missing cells are NaN. Source and license:
    ``ciss_autoimpute/datasets/data/SOURCE.md``.

    Examples
    --------
    >>> from ciss_autoimpute.datasets import load_example
    >>> df = load_example()
    >>> df.shape, int(df.isna().sum().sum())
    ((344, 8), 19)
    """
    path = resources.files(__package__).joinpath("data", "penguins.csv")
    with path.open("r", encoding="utf-8") as fh:
        df = pd.read_csv(fh, na_values=["NA"], keep_default_na=False)
    for col in ("species", "island", "sex"):
        df[col] = df[col].astype("category")
    return df
