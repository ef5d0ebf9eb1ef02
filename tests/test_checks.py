"""Input conversion and validation (ciss_autoimpute.data.checks)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ciss_autoimpute.data.checks import check_column_kinds, check_frame, check_same_columns, to_frame


def _good(n: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n)})


# ---------------------------------------------------------------------------- to_frame
def test_to_frame_dataframe_is_a_new_frame_and_changes_never_leak(mixed_frame):
    before = mixed_frame.copy(deep=True)
    out = to_frame(mixed_frame)
    assert out is not mixed_frame
    pd.testing.assert_frame_equal(out, before)
    out.iloc[0, 0] = 123.0
    out["colour"] = "x"
    pd.testing.assert_frame_equal(mixed_frame, before)


def test_to_frame_numeric_array_gets_int_column_names_and_its_own_memory():
    arr = np.array([[1.0, np.nan, 3.0], [4.0, 5.0, 6.0]])
    frame = to_frame(arr)
    assert frame.columns.tolist() == [0, 1, 2]
    assert all(type(c) is int for c in frame.columns)
    assert frame.dtypes.tolist() == [np.float64] * 3
    assert frame.isna().to_numpy().tolist() == [[False, True, False], [False, False, False]]
    frame.iloc[0, 0] = -1.0
    assert arr[0, 0] == 1.0


def test_to_frame_object_array_infers_each_column_and_all_missing_markers():
    arr = np.array([[1.5, "a", None], [np.nan, "b", 2], [3.0, pd.NA, 4]], dtype=object)
    frame = to_frame(arr)
    assert pd.api.types.is_float_dtype(frame[0].dtype)
    assert pd.api.types.is_string_dtype(frame[1].dtype)
    assert frame.isna().to_numpy().tolist() == [
        [False, False, True],
        [True, False, False],
        [False, True, False],
    ]


def test_to_frame_tensor_is_copied_to_cpu_frame():
    t = torch.tensor([[1.0, float("nan")], [3.0, 4.0]], dtype=torch.float32)
    frame = to_frame(t)
    assert frame.columns.tolist() == [0, 1]
    assert frame.dtypes.tolist() == [np.float32, np.float32]
    assert frame.iloc[1, 1] == 4.0 and np.isnan(frame.iloc[0, 1])
    frame.iloc[0, 0] = 99.0
    assert t[0, 0].item() == 1.0
    # bfloat16 has no numpy dtype; it arrives as float32.
    assert to_frame(t.to(torch.bfloat16)).dtypes.tolist() == [np.float32, np.float32]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([[1, 2], [3, 4]], r"X must be a pandas DataFrame.*got builtins\.list.*pd\.DataFrame\(X\)"),
        ({"a": [1, 2]}, r"X must be a pandas DataFrame.*got builtins\.dict"),
        (pd.Series([1.0, 2.0]), r"X must be a 2-D table, got a pandas Series; use series\.to_frame\(\)"),
    ],
)
def test_to_frame_rejects_wrong_types_naming_argument_type_and_fix(data, match):
    with pytest.raises(TypeError, match=match):
        to_frame(data, argument="X")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (np.arange(5.0), r"X must be two-dimensional.*1-D numpy array of shape \(5,\).*reshape\(-1, 1\)"),
        (np.zeros((2, 3, 4)), r"X must be two-dimensional.*3-D numpy array of shape \(2, 3, 4\)"),
        (torch.zeros(2, 3, 4), r"X must be two-dimensional.*torch tensor of shape \(2, 3, 4\)"),
    ],
)
def test_to_frame_rejects_wrong_shapes_as_value_errors(data, match):
    # A wrong shape is a bad value, not a bad type (scikit-learn's convention).
    with pytest.raises(ValueError, match=match):
        to_frame(data, argument="X")


def test_to_frame_accepts_array_likes():
    class ArrayLike:
        def __array__(self, dtype=None, copy=None):
            return np.array([[1.0, np.nan], [2.0, 3.0]])

    assert to_frame(ArrayLike()).shape == (2, 2)


# ---------------------------------------------------------------------------- check_frame
def test_check_frame_accepts_good_data_including_all_missing_rows(mixed_frame, numeric_frame):
    check_frame(mixed_frame)
    df = numeric_frame.copy()
    df.iloc[3] = np.nan  # a row with nothing observed is allowed
    check_frame(df)


def test_check_frame_empty():
    with pytest.raises(ValueError, match=r"empty: got 0 rows and 0 columns"):
        check_frame(pd.DataFrame())
    with pytest.raises(ValueError, match=r"empty: got 0 rows and 2 columns"):
        check_frame(pd.DataFrame({"a": [], "b": []}))


def test_check_frame_too_few_rows():
    with pytest.raises(ValueError, match=r"got 4 rows \(n_samples=4\); need at least 10 rows.*pass more rows"):
        check_frame(_good(4))
    check_frame(_good(4), min_rows=4)


def test_check_frame_duplicate_columns_are_listed():
    df = pd.concat([_good(), _good()[["a"]]], axis=1)
    with pytest.raises(ValueError, match=r"duplicate column names \['a'\]; rename or drop"):
        check_frame(df)


def test_check_frame_multiindex_columns():
    df = _good()
    df.columns = pd.MultiIndex.from_tuples([("x", "a"), ("x", "b")])
    with pytest.raises(ValueError, match=r"MultiIndex.*flatten"):
        check_frame(df)


def test_check_frame_all_missing_column():
    df = _good().assign(empty=np.nan)
    with pytest.raises(ValueError, match=r"column 'empty' has no observed value.*drop it"):
        check_frame(df)


def test_check_frame_constant_column():
    df = _good().assign(c=[np.nan] + [7.0] * 11)
    with pytest.raises(ValueError, match=r"column 'c' is constant \(its only observed value is 7\.0\).*drop it"):
        check_frame(df)


def test_check_frame_infinite_values_are_counted():
    df = _good()
    df.loc[[0, 5], "b"] = [np.inf, -np.inf]
    with pytest.raises(ValueError, match=r"column 'b' has 2 infinite value\(s\).*replace them with NaN"):
        check_frame(df)


def test_check_frame_strings_in_numeric_column_show_values_and_fix():
    df = _good().assign(lab=[1.5, 2.0, "n/a", 3.0, 4.5, "?", 5.0, "n/a", 6.0, 7.5, 8.0, "--"])
    expected = (
        r"column 'lab' looks numeric but holds strings that are not numbers: \['n/a', '\?', '--'\].*"
        r"pd\.to_numeric\(df\['lab'\], errors='coerce'\).*column_kinds=\{'lab': 'categorical'\}"
    )
    with pytest.raises(ValueError, match=expected):
        check_frame(df)
    # Declaring the column categorical is the documented way out.
    check_frame(df, column_kinds={"lab": "categorical"})


def test_check_frame_numbers_mixed_with_numeric_strings():
    df = _good().assign(m=[1.5, "2.0", 3.0, 4.0, 5.0, 6.5, 7.0, 8.0, 9.0, 10.0, 11.0, "12"])
    with pytest.raises(ValueError, match=r"column 'm' mixes numbers with numeric strings \['2\.0', '12'\]"):
        check_frame(df)


def test_check_frame_declared_numeric_must_hold_numbers():
    df = _good().assign(s=["x", "y"] * 6)
    with pytest.raises(ValueError, match=r"column 's' is declared numeric but holds non-numeric values"):
        check_frame(df, column_kinds={"s": "numeric"})


def test_check_frame_mostly_text_column_is_categorical_not_an_error():
    df = _good().assign(t=["a", "b", "c", "1"] * 3)
    check_frame(df)


def test_check_frame_unsupported_dtype():
    df = _good().assign(when=pd.date_range("2020-01-01", periods=12))
    with pytest.raises(ValueError, match=r"column 'when' has dtype datetime64.*convert it to numbers.*or drop it"):
        check_frame(df)


def test_check_frame_unsupported_object_values():
    df = _good().assign(o=pd.Series([pd.Timestamp("2020-01-01"), pd.Timestamp("2021-01-01")] * 6, dtype=object))
    with pytest.raises(ValueError, match=r"column 'o' holds values of unsupported type Timestamp"):
        check_frame(df)


def test_check_frame_reports_every_column_problem_at_once():
    df = _good().assign(empty=None, const=1, inf=np.r_[np.inf, np.arange(11.0)])
    with pytest.raises(ValueError, match=r"problems") as info:
        check_frame(df)
    message = str(info.value)
    for fragment in ("column 'empty' has no observed value", "column 'const' is constant", "column 'inf' has 1 infinite"):
        assert fragment in message


def test_check_frame_does_not_modify_input(mixed_frame):
    before = mixed_frame.copy(deep=True)
    check_frame(mixed_frame)
    pd.testing.assert_frame_equal(mixed_frame, before)


# ---------------------------------------------------------------------------- column_kinds
def test_check_column_kinds_unknown_column_and_kind():
    df = _good()
    with pytest.raises(ValueError, match=r"names column\(s\) \['zz'\] that are not in the data; valid columns are \['a', 'b'\]"):
        check_column_kinds(df, {"zz": "numeric"})
    with pytest.raises(ValueError, match=r"unknown kind\(s\) \{'a': 'ordinal'\}; valid kinds are \['numeric', 'binary', 'categorical'\]"):
        check_column_kinds(df, {"a": "ordinal"})
    with pytest.raises(TypeError, match=r"column_kinds must be a mapping"):
        check_column_kinds(df, ["a"])
    assert check_column_kinds(df, None) == {}


# ---------------------------------------------------------------------------- check_same_columns
def test_check_same_columns():
    df = pd.DataFrame(columns=["a", "b", "c"])
    check_same_columns(df, ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['c'\]; unexpected column\(s\) \['z'\]"):
        check_same_columns(pd.DataFrame(columns=["a", "b", "z"]), ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['c'\]\. Fix: pass exactly the columns \['a', 'b', 'c'\]"):
        check_same_columns(pd.DataFrame(columns=["a", "b"]), ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"new_rows has the right columns in another order: got \['b', 'a', 'c'\]"):
        check_same_columns(pd.DataFrame(columns=["b", "a", "c"]), ["a", "b", "c"], argument="new_rows")
