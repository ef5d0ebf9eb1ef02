"""Column kinds, encoding and exact decoding (ciss_autoimpute.data.schema)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ciss_autoimpute.data.checks import check_frame, to_frame
from ciss_autoimpute.data.schema import CATEGORICAL_INT_MAX_LEVELS, Schema


def _random_fill(values: np.ndarray, seed: int = 0) -> np.ndarray:
    """An arbitrary 'imputation': random numbers in every missing encoded cell."""
    rng = np.random.default_rng(seed)
    return np.where(np.isnan(values), rng.normal(size=values.shape), values).astype(np.float32)


def _assert_observed_bit_identical(out: pd.DataFrame, original: pd.DataFrame) -> None:
    for col in original.columns:
        observed = original[col].notna().to_numpy()
        got, want = out[col][observed], original[col][observed]
        pd.testing.assert_series_equal(got, want, check_exact=True)
        if pd.api.types.is_float_dtype(want.dtype):
            # -0.0 == 0.0, so compare the bits too.
            assert np.array_equal(got.to_numpy().view(np.int64), want.to_numpy().view(np.int64))
        else:
            assert [type(v) for v in got.tolist()] == [type(v) for v in want.tolist()]


# ---------------------------------------------------------------------------- round trip
def test_mixed_round_trip_keeps_observed_cells_dtypes_and_index(mixed_frame):
    before = mixed_frame.copy(deep=True)
    schema = Schema.fit(mixed_frame)
    values, observed = schema.encode(mixed_frame)
    out = schema.decode(_random_fill(values), mixed_frame)

    pd.testing.assert_frame_equal(mixed_frame, before)  # caller's frame untouched
    assert out.index.equals(mixed_frame.index) and out.index.name == "id"
    assert out.columns.tolist() == mixed_frame.columns.tolist()
    assert out.dtypes.to_dict() == mixed_frame.dtypes.to_dict()
    assert out.notna().all().all()
    _assert_observed_bit_identical(out, mixed_frame)

    holes = mixed_frame.isna()
    assert np.isfinite(out.loc[holes["num"], "num"].to_numpy()).all()
    assert out["count"].dtype == "Int64"
    assert set(out.loc[holes["code"], "code"]) <= {1, 2, 3}
    assert set(out.loc[holes["smoker"], "smoker"]) <= {"no", "yes"}
    assert all(type(v) is str for v in out.loc[holes["smoker"], "smoker"])
    assert set(out.loc[holes["flag_na"], "flag_na"]) <= {True, False}
    assert out["stage"].cat.categories.tolist() == ["III", "II", "I", "IV"]
    assert set(out.loc[holes["stage"], "stage"]) <= {"I", "II", "III"}  # never the unobserved "IV"
    assert set(out.loc[holes["colour"], "colour"]) <= {"red", "green", "blue"}
    assert set(out.loc[holes["city"], "city"]) <= {"Oslo", "Lima", "Pune"}


def test_decode_of_the_true_encoding_recovers_the_hidden_values(mixed_complete, mixed_frame):
    # Fitted on the holey frame, encoding the complete truth and decoding it into the
    # holes must give the truth back: exactly for levels, to float32 precision for numbers.
    schema = Schema.fit(mixed_frame)
    truth_encoded, truth_observed = schema.encode(mixed_complete)
    assert truth_observed.all()
    out = schema.decode(truth_encoded, mixed_frame)
    for col in ["code", "smoker", "flag_na", "stage", "colour", "city"]:
        pd.testing.assert_series_equal(out[col], mixed_complete[col].astype(mixed_frame[col].dtype))
    np.testing.assert_allclose(out["num"].to_numpy(), mixed_complete["num"].to_numpy(), rtol=1e-6, atol=1e-6)
    assert out["count"].tolist() == mixed_complete["count"].tolist()  # rounding undoes float32 error


def test_numeric_decode_rounds_and_clips_integer_dtypes_only():
    df = pd.DataFrame(
        {
            "small": pd.array([0, 250, 10, 20, 30, 40, 50, None], dtype="UInt8"),
            "flt": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, np.nan],  # whole numbers, but float: not rounded
        }
    )
    schema = Schema.fit(df)
    assert schema.kinds == {"small": "numeric", "flt": "numeric"}
    enc = np.zeros((8, 2))
    enc[7] = [100.0, 0.123]  # far above the UInt8 range; an arbitrary standardised value
    out = schema.decode(enc, df)
    assert out["small"].dtype == "UInt8" and out.loc[7, "small"] == 255
    spec = schema.specs[1]
    assert out.loc[7, "flt"] == 0.123 * spec.std + spec.mean


def test_object_column_of_numbers_is_numeric_and_stays_object():
    df = pd.DataFrame({"x": pd.Series([1, 2.5, None, 4, 5.5, 6, 7, 8.5], dtype=object)})
    schema = Schema.fit(df)
    assert schema.kinds == {"x": "numeric"}
    out = schema.decode(np.full((8, 1), 0.5), df)
    assert out["x"].dtype == object
    assert isinstance(out.loc[2, "x"], float)
    assert out.loc[0, "x"] == 1 and type(out.loc[0, "x"]) is int


def test_ndarray_and_tensor_inputs_round_trip():
    arr = np.random.default_rng(1).normal(size=(12, 3))
    arr[[0, 4], [1, 2]] = np.nan
    for data in (arr, torch.from_numpy(arr.copy())):
        frame = to_frame(data)
        check_frame(frame)
        schema = Schema.fit(frame)
        assert schema.layout.names == ("0", "1", "2")
        assert schema.columns == [0, 1, 2]
        values, _ = schema.encode(frame)
        out = schema.decode(torch.from_numpy(_random_fill(values)), frame)
        assert out.notna().all().all()
        observed = ~np.isnan(arr)
        assert np.array_equal(out.to_numpy()[observed], arr[observed])


# ---------------------------------------------------------------------------- inference
def test_kind_inference_rules():
    n = 12
    df = pd.DataFrame(
        {
            "two_floats": [0.5, 1.5] * 6,
            "zero_one": np.array([0, 1] * 6, dtype=np.int64),
            "int_codes": np.array([1, 2, 3, 4, 5, 1] * 2, dtype=np.int64),
            "int_many": np.arange(n, dtype=np.int64) % 6,  # 6 distinct values > CATEGORICAL_INT_MAX_LEVELS
            "floats": np.linspace(0, 1, n),
            "bools": [True, False] * 6,
            "strings": ["a", "b", "c"] * 4,
            "cat2": pd.Categorical(["u", "v"] * 6),
        }
    )
    assert CATEGORICAL_INT_MAX_LEVELS == 5
    assert Schema.fit(df).kinds == {
        "two_floats": "binary",
        "zero_one": "binary",
        "int_codes": "categorical",
        "int_many": "numeric",
        "floats": "numeric",
        "bools": "binary",
        "strings": "categorical",
        "cat2": "binary",
    }


def test_levels_order_and_encoding(mixed_frame):
    schema = Schema.fit(mixed_frame)
    specs = {s.name: s for s in schema.specs}
    assert specs["smoker"].levels == ("no", "yes")
    assert specs["stage"].levels == ("III", "II", "I")  # dtype order, unused "IV" dropped
    assert specs["colour"].levels == ("blue", "green", "red")
    values, observed = schema.encode(mixed_frame)
    s = specs["smoker"]
    smoker = mixed_frame["smoker"]
    assert np.array_equal(values[smoker.notna().to_numpy(), s.start], (smoker.dropna() == "yes").to_numpy(np.float32))
    c = specs["colour"]
    block = values[:, c.start : c.stop]
    present = mixed_frame["colour"].notna().to_numpy()
    assert np.array_equal(block[present].sum(axis=1), np.ones(present.sum()))
    assert np.isnan(block[~present]).all() and not observed[~present, c.start : c.stop].any()
    assert [c.levels[i] for i in block[present].argmax(axis=1)] == mixed_frame["colour"].dropna().tolist()
    num = specs["num"]
    z = values[mixed_frame["num"].notna().to_numpy(), num.start]
    assert abs(z.mean()) < 1e-6 and abs(z.std() - 1) < 1e-6


def test_layout_and_encoded_mask(mixed_frame):
    schema = Schema.fit(mixed_frame)
    layout = schema.layout
    assert layout.n_features == 18 == schema.n_features
    assert layout.numeric == (0, 1, 5)
    assert layout.binary == (6, 7, 8)
    assert layout.categorical == ((2, 5), (9, 12), (12, 15), (15, 18))
    assert layout.names[0] == "num" and len(layout.column_of) == 18
    missing = schema.missing_matrix(mixed_frame)
    assert missing.shape == (12, 10) and missing.sum() == 17
    _, observed = schema.encode(mixed_frame)
    assert np.array_equal(schema.encoded_mask(~missing), observed)
    as_tensor = schema.encoded_mask(torch.from_numpy(~missing))
    assert isinstance(as_tensor, torch.Tensor) and torch.equal(as_tensor, torch.from_numpy(observed))
    with pytest.raises(ValueError, match=r"column_mask must have shape \[n, 10\]"):
        schema.encoded_mask(np.zeros((12, 9), dtype=bool))


def test_missing_markers_none_nan_and_pd_na_all_count():
    df = pd.DataFrame(
        {
            "o": pd.Series(["a", None, "b", np.nan, "a", pd.NA, "b", "a"], dtype=object),
            "f": [1.0, 2.0, np.nan, 4.0, 5.0, 6.0, 7.0, 8.0],
        }
    )
    schema = Schema.fit(df)
    assert schema.missing_matrix(df)[:, 0].tolist() == [False, True, False, True, False, True, False, False]
    out = schema.decode(np.zeros((8, 2)), df)
    assert out["o"].notna().all() and out.loc[2, "f"] == schema.specs[1].mean


# ---------------------------------------------------------------------------- overrides and errors
def test_column_kinds_overrides():
    df = pd.DataFrame({"i": np.arange(12) % 4, "f": [0.5, 1.5, 2.5] * 4, "s": ["x", "y", "z"] * 4})
    schema = Schema.fit(df, {"i": "numeric", "f": "categorical"})
    assert schema.kinds == {"i": "numeric", "f": "categorical", "s": "categorical"}
    assert schema.specs[1].levels == (0.5, 1.5, 2.5)
    with pytest.raises(ValueError, match=r"names column\(s\) \['nope'\].*valid columns are \['i', 'f', 's'\]"):
        Schema.fit(df, {"nope": "numeric"})
    with pytest.raises(ValueError, match=r"unknown kind\(s\) \{'i': 'ordinal'\}; valid kinds are"):
        Schema.fit(df, {"i": "ordinal"})
    with pytest.raises(ValueError, match=r"column 's' is declared numeric but holds non-numeric values"):
        Schema.fit(df, {"s": "numeric"})
    with pytest.raises(ValueError, match=r"column 'i' is declared binary but has 4 distinct.*'categorical'"):
        Schema.fit(df, {"i": "binary"})
    cat = pd.DataFrame({"c": pd.Categorical([1.0, 2.0, 3.0] * 4)})
    with pytest.raises(ValueError, match=r"column 'c' cannot be numeric: it has dtype category"):
        Schema.fit(cat, {"c": "numeric"})


def test_too_many_levels_needs_an_explicit_declaration():
    df = pd.DataFrame({"id": [f"p{i}" for i in range(12)], "v": np.arange(12.0)})
    with pytest.raises(ValueError, match=r"column 'id' looks categorical but has 12 distinct values.*drop it"):
        Schema.fit(df)
    assert Schema.fit(df, {"id": "categorical"}).specs[0].width == 12
    assert Schema.fit(df, max_categorical_levels=12).kinds["id"] == "categorical"
    numeric_strings = pd.DataFrame({"n": [str(i / 4) for i in range(12)]})
    with pytest.raises(ValueError, match=r"look like numbers: convert it with pd\.to_numeric"):
        Schema.fit(numeric_strings)
    with pytest.raises(ValueError, match=r"max_categorical_levels must be an integer >= 2"):
        Schema.fit(df, max_categorical_levels=1)


def test_fit_runs_the_input_checks():
    df = pd.DataFrame({"a": [1.0, np.inf, 2.0, 3.0], "b": ["x"] * 4})
    with pytest.raises(ValueError, match=r"column 'a' has 1 infinite.*\n- column 'b' is constant"):
        Schema.fit(df)
    with pytest.raises(TypeError, match=r"Schema\.fit expects a pandas DataFrame, got ndarray; convert it with to_frame"):
        Schema.fit(np.zeros((3, 2)))


def test_encode_new_rows_errors(mixed_frame):
    schema = Schema.fit(mixed_frame)
    new = mixed_frame.iloc[:3].copy()
    new["colour"] = new["colour"].astype(object)
    new.iloc[1, new.columns.get_loc("colour")] = "purple"
    with pytest.raises(ValueError, match=r"column 'colour' of new_rows has value\(s\) \['purple'\] not seen.*set them to NaN"):
        schema.encode(new, argument="new_rows")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['city'\]"):
        schema.encode(mixed_frame.drop(columns="city"))
    bad = mixed_frame.iloc[:3].copy()
    bad["num"] = [1.0, np.inf, 2.0]
    with pytest.raises(ValueError, match=r"column 'num' of data has 1 infinite"):
        schema.encode(bad)
    text = mixed_frame.iloc[:3].astype({"num": object})
    text.iloc[0, 0] = "oops"
    with pytest.raises(ValueError, match=r"column 'num' of data is numeric but holds non-numeric values \['oops'\]"):
        schema.encode(text)


def test_encode_accepts_other_dtypes_for_the_same_levels():
    df = pd.DataFrame({"code": pd.array([1, 2, 3, None] * 3, dtype="Int64"), "v": np.arange(12.0)})
    schema = Schema.fit(df)
    as_float = df.astype({"code": "float64"})
    np.testing.assert_array_equal(schema.encode(as_float)[0], schema.encode(df)[0])


def test_decode_errors(mixed_frame):
    schema = Schema.fit(mixed_frame)
    values, _ = schema.encode(mixed_frame)
    with pytest.raises(ValueError, match=r"encoded must have shape \(12, 18\)"):
        schema.decode(values[:, :5], mixed_frame)
    with pytest.raises(ValueError, match=r"NaN or infinite values at missing cells of column 'num'"):
        schema.decode(values, mixed_frame)
    with pytest.raises(ValueError, match=r"original has the right columns in another order"):
        schema.decode(_random_fill(values), mixed_frame[mixed_frame.columns[::-1]])


# ---------------------------------------------------------------------------- persistence
def test_to_dict_from_dict_json_round_trip_preserves_types(mixed_frame):
    df = mixed_frame.copy()
    df[3] = [float(i) for i in range(12)]  # an int column name next to str names
    df["object_bools"] = pd.Series([True, False] * 6, index=df.index, dtype=object)
    df["mixed"] = pd.Series([1, "a", 2.5] * 4, index=df.index, dtype=object)
    assert df["object_bools"].dtype == object and df["mixed"].dtype == object
    schema = Schema.fit(df, {"mixed": "categorical"})
    restored = Schema.from_dict(json.loads(json.dumps(schema.to_dict())))
    assert restored == schema
    assert restored.columns == schema.columns
    assert [type(c) for c in restored.columns] == [type(c) for c in schema.columns]
    for a, b in zip(restored.specs, schema.specs):
        assert [type(v) for v in a.levels] == [type(v) for v in b.levels]
        assert a.dtype == b.dtype
    specs = {s.name: s for s in restored.specs}
    assert specs["object_bools"].levels == (False, True) and type(specs["object_bools"].levels[0]) is bool
    assert specs["mixed"].levels == (1, 2.5, "a")
    assert specs["code"].levels == (1, 2, 3) and type(specs["code"].levels[0]) is int
    assert specs["stage"].dtype.categories.tolist() == ["III", "II", "I", "IV"] and specs["stage"].dtype.ordered
    values, _ = schema.encode(df)
    filled = _random_fill(values)
    pd.testing.assert_frame_equal(restored.decode(filled, df), schema.decode(filled, df))


def test_from_dict_rejects_bad_input():
    with pytest.raises(ValueError, match=r"not a schema description"):
        Schema.from_dict({"columns": []})
    with pytest.raises(ValueError, match=r"version 99 is not supported"):
        Schema.from_dict({"format": "ciss_autoimpute.schema", "version": 99})
    with pytest.raises(ValueError, match=r"invalid schema description"):
        Schema.from_dict({"format": "ciss_autoimpute.schema", "version": 1, "columns": [{"kind": "numeric"}]})


def test_nothing_modifies_the_callers_frame(mixed_frame):
    before = mixed_frame.copy(deep=True)
    frame = to_frame(mixed_frame)
    check_frame(frame)
    schema = Schema.fit(frame)
    values, _ = schema.encode(frame)
    schema.missing_matrix(frame)
    out = schema.decode(_random_fill(values), frame)
    out.iloc[0, 0] = 1e9
    pd.testing.assert_frame_equal(mixed_frame, before)
    pd.testing.assert_frame_equal(frame, before)


def test_decoded_numeric_imputations_stay_within_a_widened_observed_range():
    df = pd.DataFrame({"a": [0.0, 1.0, 2.0, 4.0, np.nan, np.nan, np.nan], "b": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]})
    schema = Schema.fit(df)
    spec = schema.specs[0]
    assert (spec.low, spec.high) == (0.0, 4.0)
    enc, _ = schema.encode(df)
    enc = np.array(enc, dtype=np.float64)
    # Three imputations on the standardised scale: plausible, far above, far below.
    enc[4:7, 0] = [(5.0 - spec.mean) / spec.std, 100.0, -100.0]
    out = schema.decode(enc, df)
    # Room beyond the observed values (the range's own width on each side), no further.
    assert out["a"].tolist()[:4] == [0.0, 1.0, 2.0, 4.0]
    assert out["a"].iloc[4] == pytest.approx(5.0)
    assert out["a"].iloc[5] == pytest.approx(8.0) and out["a"].iloc[6] == pytest.approx(-4.0)
    # Saved and loaded with the bound; a description saved before bounds existed has none.
    d = json.loads(json.dumps(schema.to_dict()))
    assert Schema.from_dict(d).specs[0].high == 4.0
    for c in d["columns"]:
        c.pop("low"), c.pop("high")
    old = Schema.from_dict(d)
    assert old.specs[0].low is None and old.decode(enc, df)["a"].iloc[5] > 100
