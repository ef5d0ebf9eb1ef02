"""Small images as tables, and the two corruptions of the VAE-imputation notebook.

An ``H x W`` grey-scale image is one row of ``H * W`` pixel columns, read row by row
(column ``px_r_c`` is the pixel in image row ``r``, image column ``c``). Hiding pixels
turns image completion into the tabular imputation problem the rest of the package
solves:

* :func:`load_digits_frame` — scikit-learn's bundled 8x8 handwritten digits (1797
  images, shipped inside scikit-learn: nothing is downloaded) as such a frame, on the
  raw 0-16 scale, scaled to ``[0, 1]`` or binarised;
* :func:`corrupt_images` — hide random pixels (``"pixel"``) or whole image rows or
  columns (``"line"``) at a chosen rate.

Examples
--------
>>> from ciss_autoimpute.datasets.images import load_digits_frame, corrupt_images
>>> pixels, labels = load_digits_frame(scale="unit")
>>> holed = corrupt_images(pixels, corruption="line", rate=0.25, seed=0)
>>> holed.shape, round(float(holed.isna().to_numpy().mean()), 2)
((1797, 64), 0.25)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["CORRUPTIONS", "DIGIT_SCALES", "pixel_columns", "load_digits_frame", "corrupt_images"]

#: The corruptions :func:`corrupt_images` knows.
CORRUPTIONS: tuple[str, ...] = ("pixel", "line")
#: The pixel scales :func:`load_digits_frame` offers.
DIGIT_SCALES: tuple[str, ...] = ("raw", "unit", "binary")
#: Grey level of the raw digits (pixels hold 0 .. 16).
_DIGITS_MAX = 16.0


def pixel_columns(height: int, width: int) -> list[str]:
    """Column names ``px_r_c`` of an ``height x width`` image, row by row.

    Examples
    --------
    >>> pixel_columns(2, 2)
    ['px_0_0', 'px_0_1', 'px_1_0', 'px_1_1']
    """
    _check_side("height", height)
    _check_side("width", width)
    return [f"px_{r}_{c}" for r in range(int(height)) for c in range(int(width))]


def load_digits_frame(*, scale: str = "unit", threshold: float = 0.5) -> tuple[pd.DataFrame, pd.Series]:
    """scikit-learn's 8x8 handwritten digits as a pixel table and a label series.

    The 1797 images come with scikit-learn (``sklearn.datasets.load_digits``), so
    nothing is downloaded. They are complete; hide pixels with :func:`corrupt_images`.

    Parameters
    ----------
    scale
        ``"raw"``: the grey levels 0 .. 16 as floats; ``"unit"``: divided by 16, so in
        ``[0, 1]`` (for a Gaussian pixel likelihood); ``"binary"``: 1.0 where the unit
        value is ``>= threshold``, else 0.0 (for a Bernoulli pixel likelihood, which the
        imputer uses for any column with two distinct values).
    threshold
        Cut-off on the ``[0, 1]`` scale used by ``scale="binary"``, in ``(0, 1]``.

    Returns
    -------
    pixels : pandas.DataFrame
        ``[1797, 64]`` float64, columns ``px_0_0 .. px_7_7`` (image row, image column).
    labels : pandas.Series
        The digit (0 .. 9) of each image, int64, named ``digit``, same index.

    Raises
    ------
    ValueError
        Unknown ``scale`` or a ``threshold`` outside ``(0, 1]``.

    Notes
    -----
    Three pixels (``px_0_0``, ``px_4_0``, ``px_4_7``) are 0 in every image, and more
    are constant in small subsets or once pixels are hidden. The imputer refuses
    constant columns (they carry no information), so drop them before fitting and put
    them back afterwards; ``examples/digits.py`` shows how.

    Examples
    --------
    >>> pixels, labels = load_digits_frame(scale="binary")
    >>> pixels.shape, sorted(set(pixels.to_numpy().ravel().tolist())), int(labels.iloc[0])
    ((1797, 64), [0.0, 1.0], 0)
    """
    if not isinstance(scale, str) or scale not in DIGIT_SCALES:
        raise ValueError(
            f"scale={scale!r} is unknown; pass one of {list(DIGIT_SCALES)} ('unit' for grey levels in [0, 1], "
            "'binary' for 0/1 pixels)."
        )
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float, np.integer, np.floating))
        or not 0.0 < float(threshold) <= 1.0
    ):
        raise ValueError(
            f"threshold must be a number in (0, 1] on the unit pixel scale, got {threshold!r}; e.g. 0.5."
        )
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = np.asarray(bunch.data, dtype=np.float64)
    if scale == "raw":
        values = raw.copy()
    elif scale == "unit":
        values = raw / _DIGITS_MAX
    else:
        values = (raw / _DIGITS_MAX >= float(threshold)).astype(np.float64)
    height, width = bunch.images.shape[1:]
    pixels = pd.DataFrame(values, columns=pixel_columns(height, width))
    labels = pd.Series(np.asarray(bunch.target, dtype=np.int64), index=pixels.index, name="digit")
    return pixels, labels


def corrupt_images(
    images: pd.DataFrame | np.ndarray,
    *,
    corruption: str = "pixel",
    rate: float = 0.5,
    image_shape: Sequence[int] = (8, 8),
    seed: int = 0,
) -> pd.DataFrame:
    """Hide pixels of flattened images: random pixels or whole image rows and columns.

    ``rate`` is the expected share of pixels hidden in each image. Counts are ``rate``
    times what is available, rounded up or down at random with the probabilities that
    keep the expectation exact (a rate of 0.3 on 64 pixels hides 19 pixels in 80% of
    the images and 20 in the rest). No image is ever hidden completely.

    ``"pixel"``
        Each image loses that many of its ``H * W`` pixels, chosen uniformly without
        replacement, independently of the other images.
    ``"line"``
        Each image loses whole image rows *and* whole image columns, as in the
        notebook's line mask: with ``s = 1 - sqrt(1 - rate)``, ``a`` rows (about
        ``s * H``) and, independently, ``b`` columns (about ``s * W``), chosen
        uniformly without replacement. The visible pixels are the ``(H - a) x (W - b)``
        crossings of the kept rows and columns, so the expected hidden share is
        ``1 - (1 - s)**2 = rate``.

    At most ``H * W - 1`` pixels, ``H - 1`` rows and ``W - 1`` columns go; only rates
    so high that the expected count would cross that cap (above 63/64 ~ 0.984 for an
    8x8 image, pixels and lines alike) come out slightly lower than asked.

    Parameters
    ----------
    images
        ``[n, H * W]`` DataFrame or 2-D array of pixels, each row an image read row by
        row (as :func:`load_digits_frame` returns). Cells that are already missing stay
        missing. The input is never modified.
    corruption
        One of :data:`CORRUPTIONS`.
    rate
        Expected share of hidden pixels per image, strictly between 0 and 1 (the
        notebook's 10% .. 90%).
    image_shape
        ``(H, W)``; ``H * W`` must equal the number of columns.
    seed
        Seed of the ``numpy.random.default_rng`` behind every choice.

    Returns
    -------
    pandas.DataFrame
        A new float64 frame with the hidden pixels set to NaN: ``images``' index and
        columns for a DataFrame, columns ``px_r_c`` and a ``RangeIndex`` for an array.

    Raises
    ------
    ValueError
        Unknown ``corruption``, ``rate`` outside ``(0, 1)``, a bad ``image_shape`` or
        one that does not match the columns, non-numeric pixels, or a negative seed.
    TypeError
        ``images`` is neither a DataFrame nor an array.

    Examples
    --------
    >>> import numpy as np
    >>> holed = corrupt_images(np.zeros((400, 64)), corruption="pixel", rate=0.1, seed=1)
    >>> round(float(holed.isna().to_numpy().mean()), 2)
    0.1
    """
    if not isinstance(corruption, str) or corruption not in CORRUPTIONS:
        raise ValueError(
            f"corruption={corruption!r} is unknown; pass 'pixel' (random pixels) or 'line' (whole image rows "
            "or columns)."
        )
    if (
        isinstance(rate, bool)
        or not isinstance(rate, (int, float, np.integer, np.floating))
        or not 0.0 < float(rate) < 1.0
    ):
        raise ValueError(
            f"rate must be a share of pixels strictly between 0 and 1 (e.g. 0.3 for 30%), got {rate!r}."
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    height, width = _check_shape(image_shape)
    frame = _pixel_frame(images, height, width)

    rng = np.random.default_rng(int(seed))
    n = len(frame)
    if corruption == "pixel":
        hide = _hide_pieces(rng, n, height * width, float(rate))
    else:
        # Equal shares per direction: keeping (1 - s) of the rows and of the columns keeps (1 - s)^2 of the pixels.
        share = 1.0 - math.sqrt(1.0 - float(rate))
        rows = _hide_pieces(rng, n, height, share)  # [n, H]
        cols = _hide_pieces(rng, n, width, share)  # [n, W]
        hide = (rows[:, :, None] | cols[:, None, :]).reshape(n, height * width)
    values = frame.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    values[hide] = np.nan
    return pd.DataFrame(values, index=frame.index.copy(), columns=frame.columns.copy())


# ---------------------------------------------------------------------------- helpers
def _hide_pieces(rng: np.random.Generator, n: int, pieces: int, rate: float) -> np.ndarray:
    """bool ``[n, pieces]``: each row hides ``floor`` or ``ceil`` of ``rate * pieces`` pieces.

    The count is rounded at random so its expectation is exactly ``rate * pieces``
    (capped at ``pieces - 1``: something must stay visible); which pieces is uniform
    without replacement (ranks of uniform keys).
    """
    target = rate * pieces
    low = math.floor(target)
    counts = np.minimum(low + (rng.random(n) < target - low).astype(np.int64), pieces - 1)
    ranks = np.argsort(np.argsort(rng.random((n, pieces)), axis=1), axis=1)
    return ranks < counts[:, None]


def _check_side(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer (pixels), got {value!r}.")


def _check_shape(image_shape: Any) -> tuple[int, int]:
    try:
        dims = tuple(image_shape)
    except TypeError:
        dims = ()
    if isinstance(image_shape, (str, bytes)) or len(dims) != 2:
        raise ValueError(
            f"image_shape must be a pair (height, width) of positive integers, e.g. (8, 8); got {image_shape!r}."
        )
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in dims):
        raise ValueError(
            f"image_shape must hold two positive integers (height, width), e.g. (8, 8); got {image_shape!r}."
        )
    return int(dims[0]), int(dims[1])


def _pixel_frame(images: Any, height: int, width: int) -> pd.DataFrame:
    """``images`` as a float64 frame (not yet copied), after shape and dtype checks."""
    if isinstance(images, pd.DataFrame):
        frame = images
    elif isinstance(images, np.ndarray):
        if images.ndim != 2:
            raise ValueError(
                f"images must be a 2-D array [n_images, height * width] (flatten each image row by row, e.g. "
                f"images.reshape(len(images), -1)), got an array of shape {images.shape}."
            )
        frame = pd.DataFrame(images, columns=pixel_columns(height, width) if images.shape[1] == height * width
                             else None)
    else:
        raise TypeError(
            f"images must be a pandas DataFrame or a 2-D numpy array of pixels, got {type(images).__name__}."
        )
    n, p = frame.shape
    if p != height * width:
        raise ValueError(
            f"images has {p} columns but image_shape={(height, width)} needs {height * width} "
            f"(height x width); pass the matching image_shape."
        )
    if n == 0:
        raise ValueError("images has no rows; pass at least one image.")
    bad = [c for c, dt in frame.dtypes.items() if not (pd.api.types.is_numeric_dtype(dt)
                                                        and not pd.api.types.is_bool_dtype(dt))]
    if bad:
        raise ValueError(
            f"images must hold numeric pixels; column(s) {bad[:5]} are not numeric. Convert them with "
            "pd.to_numeric or drop them."
        )
    return frame
