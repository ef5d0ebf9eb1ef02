"""Shared tiny fixtures. Keep them small: the whole suite must stay fast."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# Tiny models run fastest on one thread, and a busy 2-core machine makes torch's default
# of one thread per core crawl. Subprocesses (command-line tests, workers) inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load_script(name: str):
    """scripts/<name>.py imported as a fresh module (its main() and helpers, nothing run)."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def load_script():
    """Loads a benchmark script by name: ``load_script("bench_step").main([...])``."""
    return _load_script


@pytest.fixture
def keep_torch_threads():
    """Puts torch's thread count back after a test whose script sets it for the process."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _mixed_complete() -> pd.DataFrame:
    """12 complete rows, one column per supported dtype/kind, string index."""
    index = [f"r{i:02d}" for i in range(12)]
    df = pd.DataFrame(
        {
            # float numeric; -0.0 and 0.1 + 0.2 test bit-exact copy-back.
            "num": [0.1 + 0.2, -0.0, 1.5, 2.25, -3.0, 4.75, 5.5, 1e-3, 7.0, 8.125, -9.5, 10.0],
            # nullable integer with many values -> numeric, rounded on decode.
            "count": pd.array([3, 7, 12, 1, 0, 25, 9, 14, 2, 30, 5, 8], dtype="Int64"),
            # nullable integer with 3 codes -> categorical.
            "code": pd.array([1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3], dtype="Int64"),
            # plain int64, never missing -> numeric.
            "full_int": np.arange(100, 112, dtype=np.int64),
            # two strings (object dtype) -> binary.
            "smoker": ["no", "yes"] * 6,
            # numpy bool, never missing -> binary.
            "flag": np.array([True, False, False] * 4),
            # nullable boolean -> binary.
            "flag_na": pd.array([True, False, True, True] * 3, dtype="boolean"),
            # category with an unused category -> categorical over the observed ones.
            "stage": pd.Categorical(
                ["I", "II", "III"] * 4, categories=["III", "II", "I", "IV"], ordered=True
            ),
            # object strings -> categorical.
            "colour": ["red", "green", "blue"] * 4,
            # pandas 3 "str" dtype -> categorical.
            "city": pd.array(["Oslo", "Lima", "Pune", "Oslo"] * 3, dtype="str"),
        },
        index=pd.Index(index, name="id"),
    )
    # pandas 3 infers "str" for string data even from object arrays; force real object columns.
    return df.astype({"smoker": object, "colour": object})


# Cells hidden in the mixed fixture: (row position, column). Every column that can hold a
# missing value loses at least one cell; row "r11" loses every cell that can be missing.
MIXED_HOLES = [
    (0, "num"), (3, "num"), (11, "num"),
    (1, "count"), (11, "count"),
    (2, "code"), (11, "code"),
    (4, "smoker"), (11, "smoker"),
    (5, "flag_na"), (11, "flag_na"),
    (6, "stage"), (11, "stage"),
    (7, "colour"), (11, "colour"),
    (8, "city"), (11, "city"),
]


@pytest.fixture
def mixed_complete() -> pd.DataFrame:
    """The complete mixed-type frame (the truth behind ``mixed_frame``)."""
    return _mixed_complete()


@pytest.fixture
def mixed_frame() -> pd.DataFrame:
    """The mixed-type frame with the cells of ``MIXED_HOLES`` missing (NaN, None or pd.NA)."""
    df = _mixed_complete()
    for row, col in MIXED_HOLES:
        df.iloc[row, df.columns.get_loc(col)] = None
    return df


@pytest.fixture
def numeric_frame() -> pd.DataFrame:
    """40 x 4 float frame with about 20% of its cells missing."""
    rng = np.random.default_rng(0)
    values = rng.normal(size=(40, 4))
    values[rng.random((40, 4)) < 0.2] = np.nan
    return pd.DataFrame(values, columns=["a", "b", "c", "d"])


@pytest.fixture
def evidence_reads(monkeypatch) -> list:
    """The datasets ``missingness_direction_evidence`` is computed on during the test, in order."""
    from ciss_autoimpute.data import diagnostics

    calls: list = []
    real = diagnostics.missingness_direction_evidence

    def counted(dataset, **kw):
        calls.append(dataset)
        return real(dataset, **kw)

    monkeypatch.setattr(diagnostics, "missingness_direction_evidence", counted)
    return calls
