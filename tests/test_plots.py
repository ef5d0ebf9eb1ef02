"""Each plot returns a matplotlib Figure drawn from the real object it describes."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("matplotlib")  # the optional 'plots' extra

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from ciss_autoimpute import plots  # noqa: E402

TRAIN = {"epochs": 3, "max_loops": 2, "epochs_per_loop": 2, "patience": 5, "batch_size": 32}


def _holed_frame(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(60, 2))
    df = pd.DataFrame(
        {
            "a": z[:, 0],
            "b": z[:, 0] + 0.3 * z[:, 1],
            "c": z[:, 1],
            "kind": np.where(z[:, 0] > 0, "hi", "lo"),
        }
    )
    df.loc[:14, "a"] = np.nan
    df.loc[30:39, "c"] = np.nan
    df.loc[45:49, "kind"] = None
    return df


@pytest.fixture(scope="module")
def dataset():
    from ciss_autoimpute import ClusterDataset

    df = _holed_frame()
    # Given labels: two clusters whatever the clustering's minimum cluster size.
    return ClusterDataset(df, clusters=np.where(df["a"].isna(), "gap", "full"), val_proportion=0.2, seed=0,
                          device="cpu")


@pytest.fixture(scope="module")
def cissvae(dataset):
    from ciss_autoimpute import Imputer

    params = {
        "hidden_dims": [8, 6],
        "latent_dim": 2,
        "layer_order_enc": ["shared", "unshared"],
        "layer_order_dec": ["unshared", "shared"],
        "latent_shared": False,
        "output_shared": False,
    }
    return Imputer(model="cissvae", model_params=params, train_params=TRAIN, seed=0, device="cpu").fit_dataset(
        dataset
    )


def test_history_draws_every_epoch_and_loop(cissvae):
    fig = plots.plot_history(cissvae)
    assert isinstance(fig, Figure)
    ax_loss, ax_val = fig.axes
    epochs, loops = cissvae.history_["epochs"], cissvae.history_["loops"]
    # Solid lines are the loss curves; dotted ones mark where each refit loop starts.
    drawn = sum(len(line.get_xdata()) for line in ax_loss.get_lines() if line.get_linestyle() == "-")
    assert len([line for line in ax_loss.get_lines() if line.get_linestyle() == ":"]) == TRAIN["max_loops"]
    assert drawn == len(epochs) == TRAIN["epochs"] + TRAIN["max_loops"] * TRAIN["epochs_per_loop"]
    curve = ax_val.get_lines()[0]
    assert list(curve.get_ydata()) == [r["val"] for r in loops]
    star = ax_val.get_lines()[1]
    assert star.get_xdata()[0] == cissvae.best_loop_


def test_history_accepts_the_plain_dict_and_rejects_an_empty_one(cissvae, tmp_path):
    assert isinstance(plots.plot_history(cissvae.history_), Figure)
    with pytest.raises(ValueError, match="no epoch or loop records"):
        plots.plot_history({"epochs": [], "loops": []})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['epoch'\]"):
        plots.plot_history({"epoch": []})
    with pytest.raises(TypeError, match="history must be a dict"):
        plots.plot_history(42)


def test_missingness_matrix_holds_exactly_the_missing_and_held_out_cells(dataset):
    fig = plots.plot_missingness(dataset)
    image = np.asarray(fig.axes[0].get_images()[0].get_array())
    assert image.shape == (len(dataset), len(dataset.columns))
    assert int((image == 2).sum()) == dataset.n_missing
    assert int((image == 1).sum()) == int(dataset.val_mask_columns.sum())
    # Rows are grouped by cluster: one separating line between the two clusters.
    assert len([ln for ln in fig.axes[0].get_lines()]) == dataset.n_clusters - 1


def test_missingness_of_a_plain_frame_and_wide_tables():
    df = _holed_frame()
    fig = plots.plot_missingness(df, clusters=np.where(df["a"].isna(), "gap", "full"))
    image = np.asarray(fig.axes[0].get_images()[0].get_array())
    assert int((image == 2).sum()) == int(df.isna().to_numpy().sum())
    # The first cluster block ("full", sorted first) holds no missing "a" cell.
    n_full = int(df["a"].notna().sum())
    assert not (image[:n_full, 0] == 2).any()
    narrow = plots.plot_missingness(df, max_columns=2)
    assert np.asarray(narrow.axes[0].get_images()[0].get_array()).shape == (60, 2)
    with pytest.raises(ValueError, match="clusters has 3 labels but the data has 60 rows"):
        plots.plot_missingness(df, clusters=[0, 1, 2])
    with pytest.raises(TypeError, match="ClusterDataset or a DataFrame"):
        plots.plot_missingness(np.zeros((3, 3)))


def test_holdout_column_errors_score_the_held_out_cells(cissvae, dataset):
    errors = plots.holdout_column_errors(cissvae, dataset)
    held = dataset.val_mask_columns.sum(axis=0)
    expected = {c: int(n) for c, n in zip(dataset.columns, held) if n}
    assert errors["n_held_out"].to_dict() == expected
    assert errors.loc["a", "metric"] == "rmse/sd" and errors.loc["kind", "metric"] == "error rate"
    assert errors.loc["kind", "kind"] in ("binary", "categorical")
    assert np.isfinite(errors["error"]).all() and (errors["error"] >= 0).all()
    assert 0.0 <= errors.loc["kind", "error"] <= 1.0
    # The dataset itself is untouched by the scoring.
    assert dataset.frame.isna().to_numpy().sum() == dataset.n_missing


def test_column_errors_plot_one_bar_per_scored_column(cissvae, dataset):
    fig = plots.plot_column_errors(cissvae, dataset)
    bars = fig.axes[0].patches
    assert len(bars) == int((dataset.val_mask_columns.sum(axis=0) > 0).sum())
    from_dict = plots.plot_column_errors({"x": 0.5, "y": 0.25})
    widths = sorted(p.get_width() for p in from_dict.axes[0].patches)
    assert widths == [0.25, 0.5]
    with pytest.raises(ValueError, match="needs the dataset"):
        plots.plot_column_errors(cissvae)


def _boxes(fig: Figure) -> list[Rectangle]:
    ax = fig.axes[0]
    return [p for p in ax.patches if type(p) is Rectangle]


def test_architecture_draws_one_box_per_cluster_for_unshared_layers(cissvae):
    fig = plots.plot_architecture(cissvae)
    # input 1 + enc(shared 1, unshared 2) + latent unshared 2 + dec(unshared 2, shared 1) + output unshared 2
    assert len(_boxes(fig)) == 11
    labels = [t.get_text() for t in fig.axes[0].texts]
    for width in ("8", "6"):
        assert labels.count(width) == 2  # encoder and mirrored decoder


def test_architecture_of_a_family_without_cluster_layers(dataset):
    from ciss_autoimpute import Imputer

    vae = Imputer(model="vae", model_params={"hidden_dims": [8], "latent_dim": 2}, train_params=TRAIN,
                  device="cpu").fit_dataset(dataset)
    assert len(_boxes(plots.plot_architecture(vae))) == 5  # input, enc, latent, dec, output
    with pytest.raises(ValueError, match="no list of hidden_dims"):
        plots.plot_architecture({"name": "x", "params": {"k": 3}})
    with pytest.raises(TypeError, match="model must be a fitted Imputer"):
        plots.plot_architecture("cissvae")


def test_many_clusters_are_drawn_as_a_capped_stack():
    cfg = {"name": "cissvae", "n_clusters": 9, "layout": {"n_features": 4},
           "params": {"hidden_dims": [4], "latent_dim": 2, "layer_order_enc": ["u"], "layer_order_dec": ["s"],
                      "latent_shared": True, "output_shared": True}}
    fig = plots.plot_architecture(cfg, max_cluster_boxes=3)
    assert len(_boxes(fig)) == 1 + 3 + 1 + 1 + 1
    assert "... 9" in [t.get_text() for t in fig.axes[0].texts]


def test_missing_process_curves_follow_the_learned_slopes():
    table = pd.DataFrame(
        {"direction": ["high values missing", "low values missing"], "strength": [2.0, 0.5],
         "threshold": [0.5, -1.0]},
        index=pd.Index(["income", "age"], name="feature"),
    )
    fig = plots.plot_missing_process(table)
    ax_w, ax_p = fig.axes
    assert sorted(p.get_width() for p in ax_w.patches) == [-0.5, 2.0]
    curves = {line.get_label(): line for line in ax_p.get_lines()}
    for name, slope, b in (("income", 2.0, 0.5), ("age", -0.5, -1.0)):
        x, y = curves[name].get_xdata(), curves[name].get_ydata()
        np.testing.assert_allclose(y, 1.0 / (1.0 + np.exp(-slope * (x - b))))
    assert curves["income"].get_ydata()[-1] > 0.9  # high incomes go missing
    assert curves["age"].get_ydata()[0] > curves["age"].get_ydata()[-1]  # low ages go missing
    with pytest.raises(ValueError, match="needs columns"):
        plots.plot_missing_process(table.drop(columns="threshold"))
    # A feature never missing in training (had_missing False) is left out of both panels.
    fig = plots.plot_missing_process(table.assign(had_missing=[True, False]))
    assert [p.get_width() for p in fig.axes[0].patches] == [2.0]
    assert [line.get_label() for line in fig.axes[1].get_lines() if not line.get_label().startswith("_")] == ["income"]
    with pytest.raises(ValueError, match="no feature had missing cells"):
        plots.plot_missing_process(table.assign(had_missing=[False, False]))


def test_missing_process_of_a_fitted_notmiwae(dataset):
    from ciss_autoimpute import Imputer

    fitted = Imputer(model="notmiwae", model_params={"hidden_dims": [8], "latent_dim": 2, "n_samples": 3},
                     train_params=TRAIN, device="cpu").fit_dataset(dataset)
    table = fitted.model_.interpret_missing_process()
    table = table[table["had_missing"]]  # features never missing in training are not drawn
    fig = plots.plot_missing_process(fitted)
    widths = [p.get_width() for p in fig.axes[0].patches]
    signs = np.where(table["direction"].str.startswith("high"), 1.0, -1.0)
    np.testing.assert_allclose(widths, signs * table["strength"].to_numpy())
    linear = Imputer(model="notmiwae", model_params={"hidden_dims": [8], "latent_dim": 2, "n_samples": 3,
                                                     "missing_process": "linear"},
                     train_params={**TRAIN, "max_loops": 0}, device="cpu").fit_dataset(dataset)
    with pytest.raises(ValueError, match="compute_missing_sensitivity"):
        plots.plot_missing_process(linear)
    with pytest.raises(TypeError, match="not-MIWAE model"):
        plots.plot_missing_process(42)


def test_optimization_history_marks_complete_pruned_and_failed_trials():
    import optuna

    def objective(trial):
        x = trial.suggest_float("x", -2.0, 2.0)
        trial.set_user_attr("model", "vae" if trial.number % 2 else "cissvae")
        trial.report(x * x + 1.0, 0)
        if trial.number == 2:
            raise optuna.TrialPruned()
        if trial.number == 4:
            raise RuntimeError("diverged")
        return x * x

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the failing trial would log a traceback
    try:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), study_name="plots")
        study.optimize(objective, n_trials=6, catch=(RuntimeError,))
    finally:
        optuna.logging.set_verbosity(verbosity)
    fig = plots.plot_optimization_history(study)
    ax = fig.axes[0]
    scatter_sizes = {c.get_label(): len(c.get_offsets()) for c in ax.collections}
    assert scatter_sizes == {"cissvae": 1, "vae": 3, "pruned": 1}  # odd numbers are "vae"
    best_line = next(line for line in ax.get_lines() if line.get_label() == "best so far")
    values = [t.value for t in study.trials if t.value is not None]
    assert best_line.get_ydata()[-1] == pytest.approx(min(values))
    assert "4 complete, 1 pruned, 1 fail" in ax.get_title()
    with pytest.raises(ValueError, match="has no trials yet"):
        plots.plot_optimization_history(optuna.create_study())
    with pytest.raises(TypeError, match="Optuna study or a TuneResult"):
        plots.plot_optimization_history([1, 2])


def test_figures_save_as_png_without_a_display(cissvae, dataset, tmp_path):
    for name, fig in {
        "history": plots.plot_history(cissvae),
        "missingness": plots.plot_missingness(dataset),
        "architecture": plots.plot_architecture(cissvae),
    }.items():
        path = tmp_path / f"{name}.png"
        fig.savefig(path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_matplotlib_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plots.plot_column_errors({"a": 1.0})
