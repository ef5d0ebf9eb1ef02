"""The digits image-imputation example and the image corruption generator behind it."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ciss_autoimpute.datasets.images import corrupt_images, load_digits_frame, pixel_columns

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _load_example():
    spec = importlib.util.spec_from_file_location("digits_example", ROOT / "examples" / "digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails unless the file is a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


# ---------------------------------------------------------------------------- the example
@pytest.fixture(scope="module")
def example():
    return _load_example()


def test_example_runs_writes_pngs_and_beats_mean_imputation(example, tmp_path: Path, capsys) -> None:
    out = tmp_path / "figs"
    metrics = example.main([
        "--corruption", "pixel", "--rate", "0.5", "--likelihood", "gaussian", "--model", "vae",
        "--rows", "240", "--epochs", "30", "--refit-loops", "1", "--samples", "3",
        "--latent-dim", "4", "--batch-size", "32", "--lr", "5e-3", "--out", str(out), "--seed", "0",
    ])
    grid, latent = out / "digits_grid.png", out / "digits_latent.png"
    gw, gh = _png_size(grid)
    lw, lh = _png_size(latent)
    # 3 + 3 panels per row (original, corrupted, imputed, draws) and one row per digit 0-9.
    assert gw > 400 and gh > 800 and gh > gw
    assert (lw, lh) == (600, 520)
    assert metrics["rows"] == 240 and metrics["hidden_share"] == pytest.approx(0.5, abs=0.01)
    assert metrics["rmse_model"] < metrics["rmse_mean"]
    assert metrics["constant_columns_set_aside"] >= 3  # the three always-blank pixels at least
    assert metrics["draw_sd_hidden"] > 0  # the draws differ: the grid shows uncertainty
    saved = json.loads((out / "digits_metrics.json").read_text())
    assert saved["rmse_model"] == pytest.approx(metrics["rmse_model"])
    printed = capsys.readouterr().out
    assert f"rmse_model: {metrics['rmse_model']:.4f}" in printed and "rmse_mean:" in printed


def test_example_bernoulli_line_miwae(example, tmp_path: Path) -> None:
    metrics = example.main([
        "--corruption", "line", "--rate", "0.3", "--likelihood", "bernoulli", "--model", "miwae",
        "--rows", "200", "--epochs", "20", "--refit-loops", "0", "--samples", "2",
        "--latent-dim", "2", "--batch-size", "32", "--lr", "5e-3", "--out", str(tmp_path), "--seed", "1",
    ])
    for name in ("digits_grid.png", "digits_latent.png"):
        assert _png_size(tmp_path / name)[0] > 0
    assert metrics["rmse_model"] < metrics["rmse_mean"]
    assert 0.0 <= metrics["error_rate_model"] <= 1.0 and 0.0 <= metrics["error_rate_mode"] <= 1.0


def test_constant_pixels_are_set_aside_and_restored_exactly(example) -> None:
    holed = pd.DataFrame({"a": [0.0, np.nan, 0.0], "b": [0.2, np.nan, 0.7], "c": [np.nan, np.nan, np.nan]})
    varying, fills = example.split_constant(holed)
    assert varying == ["b"]
    assert fills == {"a": 0.0, "c": pytest.approx((0.0 + 0.0 + 0.2 + 0.7) / 4)}  # mean of every observed cell
    part = pd.DataFrame({"b": [0.2, 0.5, 0.7]})
    out = example.restore_constant(part, holed, fills)
    assert list(out.columns) == ["a", "b", "c"]
    assert out["a"].tolist() == [0.0, 0.0, 0.0] and out["b"].tolist() == [0.2, 0.5, 0.7]
    assert holed["b"].isna().sum() == 1  # the input is left alone


def test_latent_plot_says_when_it_projects(example) -> None:
    rng = np.random.default_rng(0)
    labels = pd.Series(np.repeat(np.arange(10), 5))
    title_16 = example.plot_latent(rng.normal(size=(50, 16)), labels, title="t").axes[0].get_title()
    title_2 = example.plot_latent(rng.normal(size=(50, 2)), labels, title="t").axes[0].get_title()
    assert "PCA of the 16-D latent means" in title_16 and "% of their variance" in title_16
    assert "PCA" not in title_2 and "2-D latent means" in title_2


def test_example_rejects_bad_arguments(example, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        example.main(["--rate", "1.5", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        example.main(["--likelihood", "poisson", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--rows must be at least 20"):
        example.main(["--rows", "5", "--out", str(tmp_path)])


# ---------------------------------------------------------------------------- the data
def test_load_digits_frame_scales_and_labels() -> None:
    raw, labels = load_digits_frame(scale="raw")
    unit, _ = load_digits_frame(scale="unit")
    binary, _ = load_digits_frame(scale="binary", threshold=0.25)
    assert raw.shape == (1797, 64) and list(raw.columns) == pixel_columns(8, 8)
    assert raw.columns[9] == "px_1_1"
    assert float(raw.to_numpy().max()) == 16.0
    np.testing.assert_array_equal(unit.to_numpy(), raw.to_numpy() / 16.0)
    np.testing.assert_array_equal(binary.to_numpy(), (raw.to_numpy() >= 4.0).astype(float))
    assert labels.name == "digit" and labels.dtype == np.int64 and sorted(labels.unique()) == list(range(10))
    assert labels.index.equals(raw.index)
    constant = [c for c in raw.columns if raw[c].nunique() == 1]
    assert constant == ["px_0_0", "px_4_0", "px_4_7"]


@pytest.mark.parametrize("corruption", ["pixel", "line"])
@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_corruption_rate_is_right(corruption: str, rate: float) -> None:
    images = np.arange(1500 * 64, dtype=float).reshape(1500, 64)
    holed = corrupt_images(images, corruption=corruption, rate=rate, seed=3)
    hidden = holed.isna().to_numpy()
    assert hidden.mean() == pytest.approx(rate, abs=0.015)
    assert not hidden.all(axis=1).any()  # no image disappears completely
    kept = ~hidden
    np.testing.assert_array_equal(holed.to_numpy()[kept], images[kept])  # visible pixels untouched
    if corruption == "pixel":
        # Per-image counts are rate * 64 rounded down or up, nothing else.
        counts = hidden.sum(axis=1)
        assert set(np.unique(counts)) <= {int(np.floor(rate * 64)), int(np.ceil(rate * 64))}


def test_line_corruption_hides_whole_rows_and_columns() -> None:
    images = np.ones((300, 64))
    holed = corrupt_images(images, corruption="line", rate=0.5, seed=0).to_numpy().reshape(300, 8, 8)
    hidden = np.isnan(holed)
    for img in hidden:
        rows = img.all(axis=1)
        cols = img.all(axis=0)
        # Every hidden pixel lies on a fully hidden image row or column.
        assert (img == (rows[:, None] | cols[None, :])).all()
    assert hidden.all(axis=2).any() and hidden.all(axis=1).any()


def test_corruption_is_seeded_and_leaves_the_input_alone() -> None:
    pixels, _ = load_digits_frame(scale="unit")
    before = pixels.copy()
    a = corrupt_images(pixels, corruption="pixel", rate=0.4, seed=7)
    b = corrupt_images(pixels, corruption="pixel", rate=0.4, seed=7)
    c = corrupt_images(pixels, corruption="pixel", rate=0.4, seed=8)
    pd.testing.assert_frame_equal(pixels, before)
    pd.testing.assert_frame_equal(a, b)
    assert not a.isna().equals(c.isna())
    assert a.index.equals(pixels.index) and list(a.columns) == list(pixels.columns)
    # An array gets px_r_c names; cells already missing stay missing.
    arr = pixels.to_numpy().copy()
    arr[0, 5] = np.nan
    holed = corrupt_images(arr, corruption="line", rate=0.2, image_shape=(8, 8), seed=0)
    assert list(holed.columns) == pixel_columns(8, 8) and np.isnan(holed.iloc[0, 5])
    assert np.isnan(arr).sum() == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"corruption": "blob"}, r"corruption='blob' is unknown; pass 'pixel'"),
        ({"rate": 0.0}, r"rate must be a share of pixels strictly between 0 and 1.*got 0.0"),
        ({"rate": 1.0}, r"rate must be .* got 1.0"),
        ({"rate": "0.3"}, r"rate must be .* got '0.3'"),
        ({"rate": True}, r"rate must be .* got True"),
        ({"seed": -1}, r"seed must be a non-negative integer, got -1"),
        ({"image_shape": (8,)}, r"image_shape must be a pair \(height, width\)"),
        ({"image_shape": (8, 0)}, r"image_shape must hold two positive integers"),
        ({"image_shape": (4, 4)}, r"images has 64 columns but image_shape=\(4, 4\) needs 16"),
    ],
)
def test_corruption_bad_arguments_raise(kwargs: dict, match: str) -> None:
    images = np.zeros((10, 64))
    with pytest.raises(ValueError, match=match):
        corrupt_images(images, **kwargs)


def test_corruption_bad_images_raise() -> None:
    with pytest.raises(TypeError, match="images must be a pandas DataFrame or a 2-D numpy array"):
        corrupt_images([[0.0] * 64], rate=0.3)
    with pytest.raises(ValueError, match=r"images must be a 2-D array .* shape \(2, 8, 8\)"):
        corrupt_images(np.zeros((2, 8, 8)), rate=0.3)
    with pytest.raises(ValueError, match="images has no rows"):
        corrupt_images(np.zeros((0, 64)), rate=0.3)
    text = pd.DataFrame(np.zeros((3, 64)), columns=pixel_columns(8, 8)).astype({"px_0_1": "str"})
    with pytest.raises(ValueError, match=r"column\(s\) \['px_0_1'\] are not numeric"):
        corrupt_images(text, rate=0.3)
    with pytest.raises(ValueError, match=r"scale='grey' is unknown; pass one of \['raw', 'unit', 'binary'\]"):
        load_digits_frame(scale="grey")
    with pytest.raises(ValueError, match="threshold must be a number in \\(0, 1\\]"):
        load_digits_frame(scale="binary", threshold=0.0)


def test_images_module_examples_run() -> None:
    import doctest

    from ciss_autoimpute.datasets import images

    result = doctest.testmod(images, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 8 and result.failed == 0
