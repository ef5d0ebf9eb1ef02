"""Figures for a fitted imputer, its data and its study.

matplotlib is imported only inside these functions (``pip install matplotlib``, or the
``plots`` extra). Every function builds a bare :class:`matplotlib.figure.Figure`
without pyplot, so nothing depends on a display or on pyplot's global figure list:
figures render headless (save them with ``fig.savefig("x.png")``) and show in Jupyter
as the value of a cell.

=============================== ===========================================================
function                        shows
=============================== ===========================================================
:func:`plot_history`            training loss per epoch and validation error per refit loop
:func:`plot_missingness`        the missingness pattern, rows sorted by cluster
:func:`plot_column_errors`      imputation error on the validation holdout, per column
:func:`plot_architecture`       CISS-VAE's shared and cluster-specific layers
:func:`plot_missing_process`    not-MIWAE's learned missing process per feature
:func:`plot_optimization_history` trial values and the best value so far
:func:`write_report`            all of the above as PNG files plus ``index.md``
=============================== ===========================================================
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.figure import Figure

__all__ = [
    "plot_history",
    "plot_missingness",
    "holdout_column_errors",
    "plot_column_errors",
    "plot_architecture",
    "plot_missing_process",
    "plot_optimization_history",
    "write_report",
]

logger = logging.getLogger(__name__)

_SHARED_COLOUR = "#7fb3d5"
_CLUSTER_COLOUR = "#f1948a"
_LATENT_COLOUR = "#f7dc6f"
_IO_COLOUR = "#a9dfbf"


def _new_figure(width: float, height: float) -> "Figure":
    """A bare Figure (no pyplot state, no display needed)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "Plotting needs matplotlib, which is not installed; install it with 'pip install matplotlib' "
            "(or 'pip install ciss_autoimpute[plots]')."
        ) from None
    return Figure(figsize=(width, height), layout="constrained")


# ---------------------------------------------------------------------------- history
def _history_of(source: Any) -> dict[str, list]:
    """The ``{"epochs": [...], "loops": [...]}`` history of whatever holds one."""
    if isinstance(source, Mapping):
        history = source
    elif hasattr(source, "epoch_history") and hasattr(source, "loop_history"):  # TrainResult
        history = {"epochs": source.epoch_history, "loops": source.loop_history}
    elif hasattr(source, "history_"):  # Imputer
        history = source.history_
    elif isinstance(getattr(source, "history", None), Mapping):  # TuneResult, ImputationResult
        history = source.history
    else:
        raise TypeError(
            f"history must be a dict with 'epochs' and 'loops' records, a fitted Imputer or a result object, "
            f"got {type(source).__name__}."
        )
    unknown = sorted(set(history) - {"epochs", "loops"})
    if unknown:
        raise ValueError(f"history has unknown key(s) {unknown}; expected 'epochs' and 'loops'.")
    return {"epochs": list(history.get("epochs") or []), "loops": list(history.get("loops") or [])}


def plot_history(history: Any) -> "Figure":
    """Training loss per epoch and validation error per refit loop.

    Parameters
    ----------
    history
        ``{"epochs": [...], "loops": [...]}`` records (``Imputer.history_``), or a fitted
        :class:`~ciss_autoimpute.Imputer`, a ``TuneResult``, an ``ImputationResult`` or a
        ``TrainResult``.

    Returns
    -------
    matplotlib.figure.Figure
        Left: the training loss of every epoch, one colour per loop (loop 0 is the
        initial training). Right: the validation error after each loop, the kept
        (best) loop starred.

    Raises
    ------
    ValueError
        The history holds no records (the model was loaded from a file, or never fitted).

    Examples
    --------
    >>> fig = plot_history(imputer)  # doctest: +SKIP
    >>> fig.savefig("history.png")  # doctest: +SKIP
    """
    hist = _history_of(history)
    epochs, loops = hist["epochs"], hist["loops"]
    if not epochs and not loops:
        raise ValueError(
            "history holds no epoch or loop records; a model loaded from a file keeps no history. "
            "Plot the history of a fitted Imputer or of autotune's result."
        )
    fig = _new_figure(10, 3.8)
    ax_loss, ax_val = fig.subplots(1, 2)

    if epochs:
        frame = pd.DataFrame.from_records(epochs, columns=["epoch", "loop", "loss"])
        for loop, part in frame.groupby("loop", sort=True):
            label = "initial training" if loop == 0 else f"refit loop {loop}"
            ax_loss.plot(part["epoch"], part["loss"], color=f"C{int(loop) % 10}", lw=1.2,
                         label=label if loop < 6 else None)
            if loop > 0:
                ax_loss.axvline(part["epoch"].iloc[0] - 0.5, color="0.75", lw=0.8, ls=":")
        ax_loss.legend(fontsize="small", loc="upper right")
    else:
        ax_loss.text(0.5, 0.5, "no epoch records", ha="center", va="center", transform=ax_loss.transAxes)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss (negative bound)")
    ax_loss.set_title("Training loss")

    if loops:
        lf = pd.DataFrame.from_records(loops, columns=["loop", "val"])
        ax_val.plot(lf["loop"], lf["val"], marker="o", color="C0", lw=1.2)
        finite = lf[np.isfinite(lf["val"].astype(float))]
        # The trainer's own choice (it applies min_delta); the minimum when records lack it.
        kept = loops[-1].get("best_loop")
        chosen = finite[finite["loop"] == kept] if kept is not None else finite.iloc[0:0]
        if len(chosen) or len(finite):
            best = chosen.iloc[0] if len(chosen) else finite.loc[finite["val"].astype(float).idxmin()]
            ax_val.plot([best["loop"]], [best["val"]], marker="*", ms=16, color="C3", ls="none",
                        label=f"kept: loop {int(best['loop'])} ({float(best['val']):.4g})")
            ax_val.legend(fontsize="small")
        ax_val.set_xticks(lf["loop"].tolist())
    else:
        ax_val.text(0.5, 0.5, "no loop records", ha="center", va="center", transform=ax_val.transAxes)
    ax_val.set_xlabel("refit loop (0 = after initial training)")
    ax_val.set_ylabel("validation error (lower is better)")
    ax_val.set_title("Validation error on the holdout")
    return fig


# ---------------------------------------------------------------------------- missingness
def plot_missingness(dataset: Any, *, clusters: Any = None, max_columns: int = 60) -> "Figure":
    """The missingness pattern: one row per data row, sorted by cluster.

    Parameters
    ----------
    dataset
        A :class:`~ciss_autoimpute.ClusterDataset` (its clusters and validation holdout
        are drawn), or a DataFrame (then ``clusters`` may give a label per row).
    clusters
        Cluster label per row when ``dataset`` is a DataFrame; ignored otherwise.
    max_columns
        Draw at most this many columns (those with the most missing cells first), so
        wide tables stay readable.

    Returns
    -------
    matplotlib.figure.Figure
        Missing cells dark, held-out validation cells orange, observed cells light;
        horizontal lines separate the clusters.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> df = pd.DataFrame({"a": [1.0, np.nan, 3.0, 4.0], "b": [np.nan, 2.0, np.nan, 1.0]})
    >>> fig = plot_missingness(df, clusters=["x", "y", "x", "y"])
    >>> fig.axes[0].get_title()
    'Missingness pattern: 3 missing cells, 0 held out'
    """
    if isinstance(max_columns, bool) or not isinstance(max_columns, int) or max_columns < 1:
        raise ValueError(f"max_columns must be a positive integer, got {max_columns!r}.")
    if isinstance(dataset, pd.DataFrame):
        columns = list(dataset.columns)
        missing = dataset.isna().to_numpy()
        held_out = np.zeros_like(missing)
        if clusters is None:
            labels = np.zeros(len(dataset), dtype=np.int64)
            names = ["all rows"]
        else:
            arr = np.asarray(clusters, dtype=object).ravel()
            if len(arr) != len(dataset):
                raise ValueError(f"clusters has {len(arr)} labels but the data has {len(dataset)} rows.")
            uniques = sorted(set(arr.tolist()), key=str)
            lookup = {v: i for i, v in enumerate(uniques)}
            labels = np.array([lookup[v] for v in arr], dtype=np.int64)
            names = [f"cluster {v}" for v in uniques]
    elif hasattr(dataset, "missing_mask_columns") and hasattr(dataset, "clusters"):
        columns = list(dataset.columns)
        missing = np.asarray(dataset.missing_mask_columns, dtype=bool)
        held_out = np.asarray(dataset.val_mask_columns, dtype=bool)
        labels = np.asarray(dataset.clusters, dtype=np.int64)
        names = [f"cluster {v}" for v in dataset.cluster_labels_]
    else:
        raise TypeError(f"dataset must be a ClusterDataset or a DataFrame, got {type(dataset).__name__}.")
    n, p = missing.shape
    if n == 0 or p == 0:
        raise ValueError(f"dataset is empty ({n} rows x {p} columns); nothing to draw.")

    if p > max_columns:
        keep = np.sort(np.argsort(-missing.sum(axis=0), kind="stable")[:max_columns])
        missing, held_out, columns = missing[:, keep], held_out[:, keep], [columns[j] for j in keep]
        p = max_columns
    # Clusters first; inside a cluster, rows with the same pattern sit together.
    order = np.lexsort(tuple(missing[:, j] for j in reversed(range(p))) + (labels,))
    codes = np.where(missing, 2, np.where(held_out, 1, 0))[order]

    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    fig = _new_figure(max(5.0, min(14.0, 2.5 + 0.35 * p)), 5.5)
    ax = fig.subplots()
    cmap = ListedColormap(["#eaecee", "#f5b041", "#1b2631"])
    ax.imshow(codes, aspect="auto", interpolation="nearest", cmap=cmap, vmin=0, vmax=2)
    sizes = np.bincount(labels, minlength=len(names))
    bounds = np.cumsum(sizes)
    for b in bounds[:-1]:
        ax.axhline(b - 0.5, color="C3", lw=1.2)
    centres = bounds - sizes / 2.0 - 0.5
    shown = sizes > 0
    ax.set_yticks(centres[shown])
    ax.set_yticklabels([f"{names[k]} (n={sizes[k]})" for k in np.flatnonzero(shown)], fontsize="small")
    ax.set_xticks(range(p))
    ax.set_xticklabels([str(c) for c in columns], rotation=60, ha="right", fontsize="small")
    ax.set_title(f"Missingness pattern: {int(missing.sum())} missing cells, {int(held_out.sum())} held out")
    ax.legend(
        handles=[Patch(color="#1b2631", label="missing"), Patch(color="#f5b041", label="held out (validation)"),
                 Patch(color="#eaecee", label="observed")],
        loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
    )
    return fig


# ---------------------------------------------------------------------------- column errors
def holdout_column_errors(imputer: Any, dataset: Any) -> pd.DataFrame:
    """Per-column imputation error on the validation holdout of ``dataset``.

    The held-out cells are hidden, the fitted ``imputer`` fills them, and each column is
    scored on the scale of its kind: numeric columns by RMSE divided by the column's
    standard deviation (1 is no better than the mean), binary and categorical columns
    by the share of wrong values.

    Parameters
    ----------
    imputer
        A fitted :class:`~ciss_autoimpute.Imputer` (or a result object holding one in
        ``.imputer``).
    dataset
        The :class:`~ciss_autoimpute.ClusterDataset` whose holdout to score (the one the
        imputer was fitted or tuned on).

    Returns
    -------
    pandas.DataFrame
        Index: the columns with held-out cells; columns ``kind``, ``metric``
        (``"rmse/sd"`` or ``"error rate"``), ``error`` and ``n_held_out``.
    """
    imputer = getattr(imputer, "imputer", imputer)
    if imputer is None or not hasattr(imputer, "transform") or not hasattr(imputer, "schema_"):
        raise TypeError(
            f"imputer must be a fitted Imputer (or a result holding one), got {type(imputer).__name__}."
        )
    if not hasattr(dataset, "val_mask_columns"):
        raise TypeError(f"dataset must be a ClusterDataset, got {type(dataset).__name__}.")
    frame = dataset.frame
    held = np.asarray(dataset.val_mask_columns, dtype=bool)
    if list(frame.columns) != list(imputer.columns_):
        raise ValueError(
            f"dataset has columns {list(frame.columns)[:8]} but the imputer was fitted on "
            f"{list(imputer.columns_)[:8]}; pass the dataset the imputer was fitted on."
        )
    if not held.any():
        raise ValueError("dataset has no held-out cells (val_proportion=0?); there is nothing to score.")
    # DataFrame.mask returns a new frame (integer columns become float to hold NaN).
    hidden = frame.mask(pd.DataFrame(held, index=frame.index, columns=frame.columns))
    fit_clusters = getattr(imputer, "fit_clusters_", None)
    if fit_clusters is not None and len(fit_clusters) == len(frame):
        # The rows' clusters from fit, not a re-assignment of their (now holed) patterns.
        labels = [imputer.cluster_labels_[int(c)] for c in fit_clusters]
        filled = imputer.transform(hidden, clusters=labels)
    else:
        filled = imputer.transform(hidden)

    rows = []
    for spec in imputer.schema_.specs:
        mask = held[:, frame.columns.get_loc(spec.name)]
        n_held = int(mask.sum())
        if n_held == 0:
            continue
        truth = frame[spec.name].to_numpy()[mask]
        guess = filled[spec.name].to_numpy()[mask]
        if spec.kind == "numeric":
            diff = guess.astype(np.float64) - truth.astype(np.float64)
            scale = spec.std if spec.std and math.isfinite(spec.std) and spec.std > 0 else 1.0
            err, metric = float(np.sqrt(np.mean(diff**2)) / scale), "rmse/sd"
        else:
            wrong = np.array([str(a) != str(b) for a, b in zip(truth.tolist(), guess.tolist())])
            err, metric = float(wrong.mean()), "error rate"
        rows.append({"column": spec.name, "kind": spec.kind, "metric": metric, "error": err, "n_held_out": n_held})
    return pd.DataFrame.from_records(rows, columns=["column", "kind", "metric", "error", "n_held_out"]).set_index(
        "column"
    )


def plot_column_errors(source: Any, dataset: Any = None) -> "Figure":
    """Imputation error on the validation holdout, one bar per column.

    Parameters
    ----------
    source
        Per-column errors (the DataFrame of :func:`holdout_column_errors`, or a Series /
        dict ``{column: error}``), or a fitted imputer (or a result holding one) to be
        scored on ``dataset``.
    dataset
        The :class:`~ciss_autoimpute.ClusterDataset` to score ``source`` on; needed only
        when ``source`` is an imputer.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plot_column_errors({"age": 0.62, "income": 0.85})
    >>> [t.get_text() for t in fig.axes[0].get_yticklabels()]
    ['age', 'income']
    """
    if isinstance(source, pd.DataFrame):
        if "error" not in source.columns:
            raise ValueError(f"the errors DataFrame needs an 'error' column, got columns {list(source.columns)}.")
        errors = source
    elif isinstance(source, (pd.Series, Mapping)):
        errors = pd.DataFrame({"error": pd.Series(source, dtype="float64")})
    else:
        if dataset is None:
            raise ValueError(
                "plot_column_errors needs the dataset to score an imputer on; "
                "pass plot_column_errors(imputer, dataset)."
            )
        errors = holdout_column_errors(source, dataset)
    errors = errors[np.isfinite(errors["error"].astype(float))]
    if errors.empty:
        raise ValueError("no finite per-column error to plot.")
    errors = errors.sort_values("error")
    kinds = errors["kind"] if "kind" in errors.columns else pd.Series("column", index=errors.index)
    palette = {"numeric": "C0", "binary": "C1", "categorical": "C2"}

    from matplotlib.patches import Patch

    fig = _new_figure(7, max(2.5, 0.8 + 0.32 * len(errors)))
    ax = fig.subplots()
    y = np.arange(len(errors))
    ax.barh(y, errors["error"].astype(float), color=[palette.get(k, "C7") for k in kinds])
    ax.set_yticks(y)
    ax.set_yticklabels([str(c) for c in errors.index], fontsize="small")
    if "n_held_out" in errors.columns:
        for yi, (e, n) in enumerate(zip(errors["error"].astype(float), errors["n_held_out"])):
            ax.text(e, yi, f"  n={int(n)}", va="center", fontsize="x-small")
    ax.axvline(1.0, color="0.6", ls=":", lw=1)
    ax.set_xlabel("holdout error (numeric: RMSE / SD, 1 = mean imputation; binary, categorical: error rate)")
    ax.set_title("Imputation error per column on the validation holdout")
    present = [k for k in palette if k in set(kinds)]
    if present:
        ax.legend(handles=[Patch(color=palette[k], label=k) for k in present], fontsize="small", loc="lower right")
    return fig


# ---------------------------------------------------------------------------- architecture
def _model_config(model: Any) -> dict[str, Any]:
    """``ImputationModel.config()`` of whatever holds a model."""
    holder = getattr(model, "imputer", None)
    if holder is not None:
        model = holder
    if hasattr(model, "model_"):
        model = model.model_
    if hasattr(model, "config") and callable(model.config):
        return model.config()
    if isinstance(model, Mapping) and "params" in model:
        return dict(model)
    raise TypeError(
        f"model must be a fitted Imputer, a model, a result holding an imputer, or a model config dict, "
        f"got {type(model).__name__}."
    )


def _is_shared(token: Any) -> bool:
    # CISS-VAE writes "shared"/"unshared" or the shorthand "s"/"u".
    return str(token).strip().lower().startswith("s")


def plot_architecture(model: Any, *, max_cluster_boxes: int = 5) -> "Figure":
    """The network's layers as boxes: shared by all clusters, or one per cluster.

    Drawn from the model's configuration (``hidden_dims``, ``latent_dim``,
    ``layer_order_enc``/``layer_order_dec``, ``latent_shared``, ``output_shared``).
    Families without cluster-specific layers (VAE, MIWAE, not-MIWAE) are drawn with
    every layer shared.

    Parameters
    ----------
    model
        A fitted :class:`~ciss_autoimpute.Imputer`, an ``ImputationModel``, a result
        holding an imputer, or ``model.config()``.
    max_cluster_boxes
        Cluster-specific layers with more clusters than this are drawn as a stack of
        this many boxes marked with the count.

    Returns
    -------
    matplotlib.figure.Figure
    """
    cfg = _model_config(model)
    params = dict(cfg.get("params") or {})
    name = str(cfg.get("name", "model"))
    n_clusters = int(cfg.get("n_clusters", 1) or 1)
    n_in = int((cfg.get("layout") or {}).get("n_features", 0))
    hidden = params.get("hidden_dims")
    if not isinstance(hidden, (list, tuple)) or not all(isinstance(h, (int, np.integer)) for h in hidden):
        raise ValueError(
            f"model {name!r} has no list of hidden_dims in its parameters ({sorted(params)}); "
            "plot_architecture draws encoder/decoder networks only."
        )
    hidden = [int(h) for h in hidden]
    enc_order = params.get("layer_order_enc")
    dec_order = params.get("layer_order_dec")
    enc_shared = [_is_shared(t) for t in enc_order] if isinstance(enc_order, (list, tuple)) else [True] * len(hidden)
    dec_shared = (
        [_is_shared(t) for t in dec_order] if isinstance(dec_order, (list, tuple)) else [True] * len(hidden)
    )
    if len(enc_shared) != len(hidden) or len(dec_shared) != len(hidden):
        raise ValueError(
            f"model {name!r}: layer orders of length {len(enc_shared)}/{len(dec_shared)} do not match "
            f"{len(hidden)} hidden layers."
        )
    latent = params.get("latent_dim")
    columns: list[tuple[str, str, bool]] = [("input", f"{n_in}" if n_in else "", True)]
    columns += [(f"enc {i + 1}", str(w), s) for i, (w, s) in enumerate(zip(hidden, enc_shared))]
    columns.append(("latent", str(latent) if latent is not None else "", bool(params.get("latent_shared", True))))
    # The decoder mirrors the encoder's widths.
    columns += [(f"dec {i + 1}", str(w), s) for i, (w, s) in enumerate(zip(reversed(hidden), dec_shared))]
    columns.append(("output", f"{n_in}" if n_in else "", bool(params.get("output_shared", True))))

    from matplotlib.patches import FancyArrowPatch, Patch, Rectangle

    fig = _new_figure(max(7.0, 1.25 * len(columns)), 4.2)
    ax = fig.subplots()
    ax.set_xlim(-0.6, len(columns) - 0.4)
    ax.set_ylim(-0.55, 1.12)
    ax.axis("off")
    box_w, top, height = 0.62, 1.0, 1.0
    k_boxes = min(n_clusters, max_cluster_boxes)
    for x, (label, width, shared) in enumerate(columns):
        single = shared or n_clusters == 1 or label == "input"
        if label in ("input", "output"):
            colour = _IO_COLOUR if single else _CLUSTER_COLOUR
        elif label == "latent":
            colour = _LATENT_COLOUR if single else _CLUSTER_COLOUR
        else:
            colour = _SHARED_COLOUR if single else _CLUSTER_COLOUR
        if single:
            ax.add_patch(Rectangle((x - box_w / 2, top - height), box_w, height, fc=colour, ec="0.2", lw=1))
        else:
            gap = 0.04
            h = (height - gap * (k_boxes - 1)) / k_boxes
            for k in range(k_boxes):
                y0 = top - (k + 1) * h - k * gap
                ax.add_patch(Rectangle((x - box_w / 2, y0), box_w, h, fc=colour, ec="0.2", lw=1))
                last_of_many = n_clusters > max_cluster_boxes and k == k_boxes - 1
                ax.text(x, y0 + h / 2, f"... {n_clusters}" if last_of_many else f"c{k}", ha="center",
                        va="center", fontsize="x-small")
        ax.text(x, -0.12, label, ha="center", va="top", fontsize="small")
        if width:
            ax.text(x, -0.3, width, ha="center", va="top", fontsize="small", color="0.3")
        if x > 0:
            ax.add_patch(FancyArrowPatch((x - 1 + box_w / 2, 0.5), (x - box_w / 2, 0.5), arrowstyle="-|>",
                                         mutation_scale=10, color="0.35", lw=0.8))
    ax.legend(
        handles=[Patch(fc=_SHARED_COLOUR, ec="0.2", label="shared by all clusters"),
                 Patch(fc=_CLUSTER_COLOUR, ec="0.2", label="one per cluster"),
                 Patch(fc=_LATENT_COLOUR, ec="0.2", label="latent (shared)"),
                 Patch(fc=_IO_COLOUR, ec="0.2", label="input / output")],
        loc="upper center", bbox_to_anchor=(0.5, 1.0), ncol=4, fontsize="x-small", frameon=False,
    )
    ax.set_title(f"{name}: {len(hidden)} hidden layers, {n_clusters} cluster(s)", pad=18)
    return fig


# ---------------------------------------------------------------------------- missing process
def _missing_process_frame(source: Any) -> pd.DataFrame:
    holder = getattr(source, "imputer", None)
    if holder is not None:
        source = holder
    if hasattr(source, "model_"):
        source = source.model_
    if hasattr(source, "interpret_missing_process") and callable(source.interpret_missing_process):
        source = source.interpret_missing_process()
    if isinstance(source, pd.DataFrame):
        frame = source.copy()
    elif isinstance(source, Mapping):
        frame = pd.DataFrame(source)
    elif isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        frame = pd.DataFrame.from_records(list(source))
    else:
        raise TypeError(
            "plot_missing_process needs a not-MIWAE model (or an Imputer / result holding one) or the output of "
            f"its interpret_missing_process(), got {type(source).__name__}."
        )
    if frame.empty:
        raise ValueError("the missing process has no per-feature terms to draw.")
    return frame


def plot_missing_process(model: Any, *, max_curves: int = 8) -> "Figure":
    """not-MIWAE's learned self-masking missing process, per feature.

    In a self-masking process the chance that feature ``j`` is missing depends on its
    own value: ``P(missing | x_j) = sigmoid(W_j (x_j - b_j))`` on the standardised scale,
    so ``W_j > 0`` means high values go missing and ``W_j < 0`` low values.

    Parameters
    ----------
    model
        A fitted not-MIWAE model (``missing_process`` ``"selfmasking"`` or
        ``"selfmasking_known_signs"``), an :class:`~ciss_autoimpute.Imputer` or result
        holding one, or the DataFrame its ``interpret_missing_process()`` returns
        (index: feature; columns ``direction``, ``strength``, ``threshold``, and
        optionally ``had_missing``: features never missing in training are left out).
    max_curves
        Draw the probability curves of at most this many features (the strongest).

    Returns
    -------
    matplotlib.figure.Figure
        Left: the signed slope ``W_j`` of every feature, its threshold ``b_j`` in the
        label. Right: ``P(missing | x_j)`` against ``x_j`` for the strongest features.

    Raises
    ------
    ValueError
        The model uses the ``"linear"`` or ``"nonlinear"`` process, which has no
        per-feature slope.
    """
    if isinstance(max_curves, bool) or not isinstance(max_curves, int) or max_curves < 1:
        raise ValueError(f"max_curves must be a positive integer, got {max_curves!r}.")
    frame = _missing_process_frame(model)
    needed = {"direction", "strength", "threshold"}
    if not needed <= set(frame.columns):
        raise ValueError(
            f"the missing-process table needs columns {sorted(needed)}, got {list(frame.columns)}; "
            "pass the output of interpret_missing_process()."
        )
    if "had_missing" in frame.columns:
        # Columns never missing in training: their slope and threshold were learned from nothing.
        frame = frame[frame["had_missing"].astype(bool)]
        if frame.empty:
            raise ValueError("no feature had missing cells in training, so the missing process has nothing to show.")
    high = frame["direction"].astype(str).str.startswith("high")
    slope = np.where(high, 1.0, -1.0) * frame["strength"].to_numpy(dtype=np.float64)
    threshold = frame["threshold"].to_numpy(dtype=np.float64)
    labels = [str(v) for v in frame.index]

    fig = _new_figure(11, max(3.2, 0.9 + 0.3 * len(labels)))
    ax_w, ax_p = fig.subplots(1, 2, width_ratios=[1, 1.2])
    y = np.arange(len(labels))
    ax_w.barh(y, slope, color=np.where(slope > 0, "#c0392b", "#2471a3"))
    ax_w.axvline(0.0, color="0.3", lw=0.8)
    ax_w.set_yticks(y)
    ax_w.set_yticklabels([f"{name} (b={b:.2g})" for name, b in zip(labels, threshold)], fontsize="small")
    ax_w.invert_yaxis()
    ax_w.set_xlabel("slope W (> 0: high values go missing; < 0: low values)")
    ax_w.set_title("Self-masking slope per feature")

    grid = np.linspace(-3.0, 3.0, 121)
    strongest = np.argsort(-np.abs(slope), kind="stable")[:max_curves]
    for rank, j in enumerate(strongest):
        prob = 1.0 / (1.0 + np.exp(-slope[j] * (grid - threshold[j])))
        ax_p.plot(grid, prob, color=f"C{rank % 10}", lw=1.4, label=labels[j])
    ax_p.set_ylim(-0.02, 1.02)
    ax_p.set_xlabel("standardised value of the feature")
    ax_p.set_ylabel("P(missing | own value)")
    ax_p.set_title("Learned chance of being missing")
    ax_p.legend(fontsize="x-small", loc="best")
    return fig


# ---------------------------------------------------------------------------- optimisation
def _study_of(source: Any) -> Any:
    study = getattr(source, "study", source)
    if not hasattr(study, "trials") or not hasattr(study, "study_name"):
        raise TypeError(f"expected an Optuna study or a TuneResult, got {type(source).__name__}.")
    return study


def plot_optimization_history(study: Any) -> "Figure":
    """Every trial's validation error, coloured by model family, and the best so far.

    Pruned trials are drawn at their last reported value (crosses); failed trials as
    ticks along the top edge.

    Parameters
    ----------
    study
        An Optuna study (``TuneResult.study``) or a ``TuneResult``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import optuna

    study = _study_of(study)
    trials = study.get_trials(deepcopy=False)
    if not trials:
        raise ValueError(f"study {study.study_name!r} has no trials yet; run autotune first.")
    state = optuna.trial.TrialState
    fig = _new_figure(8, 4.2)
    ax = fig.subplots()
    complete = [t for t in trials if t.state == state.COMPLETE and t.value is not None and math.isfinite(t.value)]
    families = sorted({str(t.user_attrs.get("model", "?")) for t in complete})
    for i, fam in enumerate(families):
        pts = [(t.number, t.value) for t in complete if str(t.user_attrs.get("model", "?")) == fam]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=f"C{i % 10}", s=28, label=fam, zorder=3)
    if complete:
        ordered = sorted(complete, key=lambda t: t.number)
        best = np.minimum.accumulate([t.value for t in ordered])
        ax.step([t.number for t in ordered], best, where="post", color="0.2", lw=1.3, label="best so far", zorder=2)
    pruned = [t for t in trials if t.state == state.PRUNED and t.intermediate_values]
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.scatter([t.number for t in pruned], last, marker="x", color="0.55", s=26, label="pruned", zorder=3)
    failed = [t for t in trials if t.state == state.FAIL]
    if failed:
        ax.plot([t.number for t in failed], [0.98] * len(failed), marker="v", ls="none", color="C3",
                transform=ax.get_xaxis_transform(), label="failed", zorder=3)
    counts = {s.name.lower(): sum(1 for t in trials if t.state == s) for s in state}
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    ax.set_title(f"Study {study.study_name!r}: {summary}")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation error (lower is better)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return fig


# ---------------------------------------------------------------------------- report
def _md_cell(value: Any) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(tune_result: Any, dataset: Any, directory: str | Path, *, dpi: int = 100) -> dict[str, Path]:
    """Write the study's figures as PNG files and a short Markdown summary, ``index.md``.

    Figures: ``optimization_history.png``, ``history.png`` (the best trial's training),
    ``missingness.png``, ``column_errors.png``, and, when the best model has them,
    ``architecture.png`` (CISS-VAE and other encoder/decoder families) and
    ``missing_process.png`` (not-MIWAE). A figure that cannot be drawn is listed in
    ``index.md`` with the reason (and logged as a warning) instead of stopping the
    report.

    Parameters
    ----------
    tune_result
        What :func:`~ciss_autoimpute.autotune` returned.
    dataset
        The :class:`~ciss_autoimpute.ClusterDataset` it was tuned on.
    directory
        Folder to write into (created if needed; existing files of the same names are
        replaced).
    dpi
        Resolution of the PNG files.

    Returns
    -------
    dict
        ``{"index": path of index.md, "<figure name>": path of its PNG, ...}``.

    Examples
    --------
    >>> files = write_report(tuned, dataset, "report")  # doctest: +SKIP
    >>> sorted(files)  # doctest: +SKIP
    ['column_errors', 'history', 'index', 'missingness', 'optimization_history']
    """
    import optuna

    study = _study_of(tune_result)
    imputer = getattr(tune_result, "imputer", None)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)

    best_params = {}
    model_name = None
    if imputer is not None and hasattr(imputer, "model_"):
        model_name = imputer.model
        best_params = dict(getattr(imputer.model_, "params", {}) or {})
    figures: list[tuple[str, str, Any]] = [
        ("optimization_history", "Validation error of every trial", lambda: plot_optimization_history(study)),
        ("history", "Training of the best trial", lambda: plot_history(tune_result)),
        ("missingness", "Missingness pattern by cluster", lambda: plot_missingness(dataset)),
        ("column_errors", "Holdout error per column (best model)", lambda: plot_column_errors(imputer, dataset)),
    ]
    if isinstance(best_params.get("hidden_dims"), (list, tuple)):
        figures.append(("architecture", "Network of the best model", lambda: plot_architecture(imputer)))
    if imputer is not None and hasattr(getattr(imputer, "model_", None), "interpret_missing_process"):
        figures.append(("missing_process", "Learned missing process", lambda: plot_missing_process(imputer)))

    written: dict[str, Path] = {}
    skipped: list[tuple[str, str]] = []
    for name, _caption, draw in figures:
        try:
            fig = draw()
        except (ValueError, TypeError, ImportError) as exc:
            logger.warning("report: %s not drawn: %s", name, exc)
            skipped.append((name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
            continue
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=dpi)
        written[name] = path

    trials = study.get_trials(deepcopy=False)
    states = optuna.trial.TrialState
    counts = {s.name.lower(): sum(1 for t in trials if t.state == s) for s in states}
    complete = [t for t in trials if t.state == states.COMPLETE and t.value is not None]
    lines = [f"# Study `{study.study_name}`", ""]
    lines.append(
        f"{len(trials)} trials: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n) + "."
        + (f" Data: {len(dataset)} rows x {len(dataset.columns)} columns, {dataset.n_missing} missing cells, "
           f"{dataset.n_clusters} missingness cluster(s)." if hasattr(dataset, "n_missing") else "")
    )
    if complete:
        best = study.best_trial
        lines += [
            "",
            f"**Best trial #{best.number}**: model `{best.user_attrs.get('model', model_name or '?')}`, "
            f"validation error {best.value:.4g} (lower is better; about 1 is no better than the mean).",
            "",
            _md_table(["parameter", "value"], [[k, v] for k, v in sorted(best.params.items())]),
        ]
        ranked = sorted(complete, key=lambda t: t.value)[:10]
        lines += [
            "",
            "## Best trials",
            "",
            _md_table(
                ["trial", "model", "value", "seconds"],
                [[t.number, t.user_attrs.get("model", "?"), float(t.value), t.user_attrs.get("seconds", "-")]
                 for t in ranked],
            ),
        ]
    weights = getattr(tune_result, "ensemble_weights", None) or {}
    if weights:
        families = {t.number: t.user_attrs.get("model", "?") for t in trials}
        lines += [
            "",
            "## Ensemble",
            "",
            f"The returned imputer averages {len(weights)} trials (greedy ensemble selection on the holdout); "
            f"validation error {tune_result.ensemble_value:.4g}, measured on the holdout the weights were chosen on.",
            "",
            _md_table(["trial", "model", "weight"],
                      [[num, families.get(num, "?"), round(w, 3)] for num, w in sorted(weights.items(),
                                                                                     key=lambda kv: -kv[1])]),
        ]
    lines += ["", "## Figures", ""]
    for name, caption, _ in figures:
        if name in written:
            lines += [f"### {caption}", "", f"![{caption}]({name}.png)", ""]
    for name, reason in skipped:
        lines.append(f"- `{name}.png` was not drawn: {reason}")
    index = folder / "index.md"
    index.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    written["index"] = index
    return written
