"""Image imputation on scikit-learn's 8x8 digits: the VAE-imputation notebook's case.

Hides pixels of the bundled digits (random pixels, or whole image rows and columns),
fits a VAE or MIWAE from ``ciss_autoimpute`` on the holed images, and compares the
imputation of the hidden pixels with mean imputation. Writes three files to ``--out``:

* ``digits_grid.png`` — one image per digit: original, corrupted (hidden pixels in
  red), imputed, and ``--samples`` draws from the model (the spread between draws is
  the model's uncertainty);
* ``digits_latent.png`` — the encoder's latent means of every image, coloured by digit
  (projected on their first two principal components when ``--latent-dim`` > 2);
* ``digits_metrics.json`` — the numbers printed on stdout.

Run ``python examples/digits.py --help`` for the options. Needs matplotlib (the
``plots`` extra: ``pip install ciss_autoimpute[plots]``).

Two pixel models:

``--likelihood gaussian``
    Grey levels scaled to ``[0, 1]`` and declared numeric: a Gaussian per pixel.
``--likelihood bernoulli``
    Pixels binarised at 0.5 and declared binary: a Bernoulli per pixel. The imputer's
    own output (``transform``) is the most likely level, 0 or 1; the RMSE uses the
    model's probability ``P(pixel = 1)`` instead (the decoder mean at the posterior
    mean of the completed image), which is what the grid shows as grey.

Pixels that are constant over the observed cells (three are 0 in every digit, and
more once pixels are hidden in a small sample) carry no information and the imputer
refuses them, so they are set aside before fitting and put back afterwards: observed
cells verbatim, hidden cells with the column's single observed value (the mean of
all observed pixels when a column lost every cell).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ciss_autoimpute import Imputer
from ciss_autoimpute.datasets.images import CORRUPTIONS, corrupt_images, load_digits_frame

LIKELIHOODS = ("bernoulli", "gaussian")
MODELS = ("vae", "miwae")
IMAGE_SIDE = 8


# ---------------------------------------------------------------------------- arguments
def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"--rate must be strictly between 0 and 1 (e.g. 0.5), got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (all have defaults)."""
    p = argparse.ArgumentParser(
        description="Impute corrupted 8x8 digits with a VAE or MIWAE and plot the result.",
    )
    p.add_argument("--corruption", choices=CORRUPTIONS, default="pixel",
                   help="'pixel': random pixels; 'line': whole image rows and columns (default: pixel)")
    p.add_argument("--rate", type=_rate, default=0.5, help="expected share of hidden pixels, in (0, 1) (default: 0.5)")
    p.add_argument("--likelihood", choices=LIKELIHOODS, default="gaussian",
                   help="pixel model: 'gaussian' on [0, 1] grey levels or 'bernoulli' on binarised pixels")
    p.add_argument("--model", choices=MODELS, default="vae", help="model family (default: vae)")
    p.add_argument("--epochs", type=_positive, default=100, help="epochs of initial training (default: 100)")
    p.add_argument("--refit-loops", type=_non_negative, default=2,
                   help="impute-refit loops after initial training, each epochs/4 epochs (default: 2)")
    p.add_argument("--rows", type=_positive, default=1797,
                   help="use the first ROWS of the 1797 digits (at least 20; default: all)")
    p.add_argument("--samples", type=_positive, default=5, help="sampled imputations shown per image (default: 5)")
    p.add_argument("--latent-dim", type=_positive, default=16,
                   help="latent dimension; above 2 the latent plot shows a PCA projection (default: 16)")
    p.add_argument("--batch-size", type=_positive, default=128, help="rows per optimisation step (default: 128)")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default: 2e-3)")
    p.add_argument("--out", type=Path, default=Path("digits_out"), help="directory for the PNGs (default: digits_out)")
    p.add_argument("--seed", type=_non_negative, default=0, help="seed of corruption, training and draws (default: 0)")
    return p


# ---------------------------------------------------------------------------- constant pixels
def split_constant(frame: pd.DataFrame) -> tuple[list[str], dict[str, float]]:
    """Columns the imputer can model, and a fill value for each of the others.

    A column with fewer than two distinct observed values is constant as far as the
    data can tell (``check_frame`` refuses it). Its hidden cells get its one observed
    value, or the mean of every observed pixel when it has none.
    """
    distinct = frame.nunique(dropna=True)
    varying = [c for c in frame.columns if distinct[c] >= 2]
    overall = float(np.nanmean(frame.to_numpy(dtype=np.float64)))
    fills: dict[str, float] = {}
    for c in frame.columns:
        if distinct[c] < 2:
            observed = frame[c].dropna()
            fills[c] = float(observed.iloc[0]) if len(observed) else overall
    return varying, fills


def restore_constant(part: pd.DataFrame, holed: pd.DataFrame, fills: dict[str, float]) -> pd.DataFrame:
    """``part`` (the modelled columns) plus the set-aside columns, in ``holed``'s column order.

    Observed cells of the set-aside columns are ``holed``'s own values; only their
    missing cells take the fill value.
    """
    out = holed.copy()
    out[list(part.columns)] = part.to_numpy(dtype=np.float64)
    for c, value in fills.items():
        out[c] = holed[c].fillna(value)
    return out


# ---------------------------------------------------------------------------- model read-outs
def _encoded_inputs(imp: Imputer, holed: pd.DataFrame, completed: pd.DataFrame) -> tuple[torch.Tensor, ...]:
    """The completed rows, their observed mask and cluster ids as the fitted model sees them."""
    values, _ = imp.schema_.encode(completed)
    _, observed = imp.schema_.encode(holed)
    device = next(imp.model_.parameters()).device
    x = torch.from_numpy(values).to(device)
    mask = torch.from_numpy(observed).to(device)
    clusters = torch.from_numpy(np.asarray(imp.fit_clusters_, dtype=np.int64)).to(device)
    return x, mask, clusters


@torch.no_grad()
def latent_means(imp: Imputer, holed: pd.DataFrame, completed: pd.DataFrame) -> np.ndarray:
    """Posterior means ``[n, latent_dim]`` of the encoder for the completed rows.

    The encoder was trained on rows whose missing cells hold the model's current
    imputations (the impute-refit loop), so it reads the completed rows.
    """
    x, _, clusters = _encoded_inputs(imp, holed, completed)
    mu, _ = imp.model_.encode(x, imp.model_.cluster_index(clusters))
    return mu.cpu().numpy().astype(np.float64)


@torch.no_grad()
def expected_pixels(imp: Imputer, holed: pd.DataFrame, completed: pd.DataFrame, *, seed: int) -> pd.DataFrame:
    """The model's expected value of each hidden pixel (observed pixels unchanged).

    For a binary column that is the probability of its second level (1.0 for
    binarised pixels) instead of the 0/1 level :meth:`Imputer.transform` returns.
    """
    x, mask, clusters = _encoded_inputs(imp, holed, completed)
    gen = torch.Generator(device=x.device).manual_seed(int(seed))
    mean = imp.model_.impute(x, mask, clusters, generator=gen).cpu().numpy().astype(np.float64)
    out = holed.copy()
    for spec in imp.schema_.specs:
        col = mean[:, spec.start]
        if spec.kind == "numeric":
            values = col * spec.std + spec.mean
        elif spec.kind == "binary":
            low, high = (float(v) for v in spec.levels)
            values = low + np.clip(col, 0.0, 1.0) * (high - low)
        else:  # pixels are never categorical; keep the imputer's own answer
            values = completed[spec.name].to_numpy(dtype=np.float64)
        missing = holed[spec.name].isna().to_numpy()
        out.loc[missing, spec.name] = values[missing]
    return out


# ---------------------------------------------------------------------------- figures
def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # render with Agg: no display, no pyplot state
    return fig


def plot_grid(
    original: pd.DataFrame,
    holed: pd.DataFrame,
    imputed: pd.DataFrame,
    draws: list[pd.DataFrame],
    labels: pd.Series,
    rows: Sequence[int],
    *,
    title: str,
) -> Any:
    """One row per image: original | corrupted (hidden in red) | imputed | draws.

    ``rows`` are positions in ``original``, ``holed``, ``imputed`` and ``labels``; each
    frame of ``draws`` holds just those rows, in that order.
    """
    import matplotlib

    cmap = matplotlib.colormaps["gray_r"].with_extremes(bad="tab:red")
    heads = ["original", "corrupted", "imputed"] + [f"draw {k + 1}" for k in range(len(draws))]
    n_rows, n_cols = len(rows), len(heads)
    fig = _figure(0.95 * n_cols + 0.4, 0.95 * n_rows + 0.7)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i, r in enumerate(rows):
        panels = [original.iloc[r], holed.iloc[r], imputed.iloc[r]] + [d.iloc[i] for d in draws]
        for j, row in enumerate(panels):
            ax = axes[i, j]
            img = np.clip(row.to_numpy(dtype=np.float64).reshape(IMAGE_SIDE, IMAGE_SIDE), 0.0, 1.0)
            ax.imshow(np.ma.masked_invalid(img), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(heads[j], fontsize=8)
            if j == 0:
                ax.set_ylabel(str(labels.iloc[r]), fontsize=9, rotation=0, labelpad=8, va="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_latent(means: np.ndarray, labels: pd.Series, *, title: str) -> Any:
    """Latent means coloured by digit; a PCA projection when there are more than 2 dimensions."""
    import matplotlib

    dim = means.shape[1]
    if dim > 2:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=0)
        coords = pca.fit_transform(means)
        share = float(pca.explained_variance_ratio_.sum())
        axis = ("PC 1", "PC 2")
        note = f"PCA of the {dim}-D latent means ({100 * share:.0f}% of their variance)"
    elif dim == 2:
        coords, axis, note = means, ("z 1", "z 2"), "2-D latent means"
    else:
        coords = np.column_stack([means[:, 0], np.zeros(len(means))])
        axis, note = ("z 1", ""), "1-D latent means"
    fig = _figure(6.0, 5.2)
    ax = fig.subplots()
    colors = matplotlib.colormaps["tab10"]
    for digit in sorted(labels.unique()):
        sel = labels.to_numpy() == digit
        ax.scatter(coords[sel, 0], coords[sel, 1], s=6, alpha=0.7, color=colors(int(digit) % 10), label=str(digit))
    ax.set_xlabel(axis[0])
    ax.set_ylabel(axis[1])
    ax.legend(title="digit", fontsize=7, title_fontsize=8, markerscale=2.5, loc="center left",
              bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_title(f"{title}\n{note}", fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- the run
def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def _one_per_digit(labels: pd.Series, limit: int = 10) -> list[int]:
    """Position of the first image of each digit (up to ``limit`` images)."""
    seen: dict[int, int] = {}
    for pos, digit in enumerate(labels.to_numpy()):
        seen.setdefault(int(digit), pos)
    return [seen[d] for d in sorted(seen)][:limit]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the example; returns the measured numbers (also printed and saved as JSON)."""
    args = build_parser().parse_args(argv)
    if args.rows < 20:
        raise SystemExit(f"--rows must be at least 20 (the imputer needs rows to hold out), got {args.rows}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise SystemExit(f"--lr must be a positive number such as 2e-3, got {args.lr}")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("this example draws with matplotlib: pip install 'ciss_autoimpute[plots]'") from None

    scale = "binary" if args.likelihood == "bernoulli" else "unit"
    pixels, labels = load_digits_frame(scale=scale)
    pixels, labels = pixels.iloc[: args.rows], labels.iloc[: args.rows]
    holed = corrupt_images(pixels, corruption=args.corruption, rate=args.rate, seed=args.seed)
    hidden = holed.isna().to_numpy()
    truth = pixels.to_numpy(dtype=np.float64)

    varying, fills = split_constant(holed)
    kind = "binary" if args.likelihood == "bernoulli" else "numeric"
    model_params: dict[str, Any] = {"latent_dim": args.latent_dim}
    if kind == "numeric":
        model_params["likelihood"] = "gaussian"
    imp = Imputer(
        model=args.model,
        model_params=model_params,
        train_params={
            "epochs": args.epochs,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "max_loops": args.refit_loops,
            "epochs_per_loop": max(1, args.epochs // 4),
        },
        # The VAE and MIWAE share every layer, so missingness clusters would only cost time.
        n_clusters=1,
        # Declared, not inferred: a grey-level pixel with two observed values would pass for binary.
        column_kinds={c: kind for c in varying},
        seed=args.seed,
        device="cpu",
    )
    started = time.perf_counter()
    completed_part = imp.fit_transform(holed[varying])
    fit_seconds = time.perf_counter() - started
    completed = restore_constant(completed_part, holed, fills)

    if kind == "binary":
        shown = restore_constant(expected_pixels(imp, holed[varying], completed_part, seed=args.seed), holed, fills)
    else:
        shown = completed
    means = holed.mean(axis=0, skipna=True).fillna(float(np.nanmean(holed.to_numpy(dtype=np.float64))))
    mean_filled = holed.fillna(means).to_numpy(dtype=np.float64)

    metrics: dict[str, Any] = {
        "corruption": args.corruption,
        "rate": args.rate,
        "likelihood": args.likelihood,
        "model": args.model,
        "rows": int(len(pixels)),
        "epochs": args.epochs,
        "latent_dim": args.latent_dim,
        "seed": args.seed,
        "hidden_share": float(hidden.mean()),
        "constant_columns_set_aside": len(fills),
        "rmse_model": _rmse(shown.to_numpy(dtype=np.float64)[hidden], truth[hidden]),
        "rmse_mean": _rmse(mean_filled[hidden], truth[hidden]),
        "fit_seconds": round(fit_seconds, 2),
    }
    if kind == "binary":
        # The 0/1 answer of transform() against the majority level of each column.
        majority = (means >= 0.5).astype(np.float64)
        metrics["error_rate_model"] = float(np.mean(completed.to_numpy(dtype=np.float64)[hidden] != truth[hidden]))
        metrics["error_rate_mode"] = float(np.mean(holed.fillna(majority).to_numpy(dtype=np.float64)[hidden]
                                                   != truth[hidden]))

    rows = _one_per_digit(labels)
    draws_part = imp.sample(holed[varying].iloc[rows], n=args.samples, seed=args.seed)
    draws = [restore_constant(d, holed.iloc[rows], fills) for d in draws_part]
    stacked = np.stack([d.to_numpy(dtype=np.float64) for d in draws])
    metrics["draw_sd_hidden"] = float(stacked.std(axis=0)[hidden[rows]].mean()) if args.samples > 1 else 0.0

    args.out.mkdir(parents=True, exist_ok=True)
    what = (f"{args.model}, {args.likelihood} pixels, {args.corruption} corruption {100 * args.rate:.0f}%, "
            f"{len(pixels)} images")
    title = f"{what}: RMSE {metrics['rmse_model']:.3f} (mean imputation {metrics['rmse_mean']:.3f})"
    grid = plot_grid(pixels, holed, shown, draws, labels, rows, title=title)
    grid_path = args.out / "digits_grid.png"
    grid.savefig(grid_path)
    latent = latent_means(imp, holed[varying], completed_part)
    latent_path = args.out / "digits_latent.png"
    plot_latent(latent, labels, title=f"Latent means ({what})").savefig(latent_path)
    metrics["files"] = [str(grid_path), str(latent_path)]
    (args.out / "digits_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")

    for key, value in metrics.items():
        if key != "files":
            print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    print("wrote " + ", ".join(metrics["files"]))
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
