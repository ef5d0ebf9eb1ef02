"""The self-masking correction (``TrainConfig.mnar_correction``): a selection model per
numeric column, fitted on the holdout, that moves the imputations of self-masked columns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ciss_autoimpute import ClusterDataset, Imputer, SearchSpace, autotune
from ciss_autoimpute.data.layout import EncodedData, FeatureLayout
from ciss_autoimpute.selection import SelfMaskingCorrection
from ciss_autoimpute.training import TrainConfig


def _self_masked(direction: int = 1, n: int = 600, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """x0..x2 correlated; x0 loses 70 % of its values beyond 0.3 (high ones for +1, low for -1);
    x3 independent of everything, missing completely at random."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    full = np.column_stack([z + 0.5 * rng.normal(size=n), z + 0.5 * rng.normal(size=n),
                            -z + 0.5 * rng.normal(size=n), rng.normal(size=n)])
    holed = full.copy()
    holed[(direction * full[:, 0] > 0.3) & (rng.random(n) < 0.7), 0] = np.nan
    holed[rng.random(n) < 0.15, 3] = np.nan
    cols = ["x0", "x1", "x2", "x3"]
    return pd.DataFrame(holed, columns=cols), pd.DataFrame(full, columns=cols)


def _rmse(imputed: pd.DataFrame, full: pd.DataFrame, holed: pd.DataFrame, col: str) -> float:
    gone = holed[col].isna().to_numpy()
    return float(np.sqrt(np.mean((imputed[col].to_numpy()[gone] - full[col].to_numpy()[gone]) ** 2)))


@pytest.mark.parametrize("direction", [1, -1])
def test_the_correction_moves_a_self_masked_column_and_finds_its_process(direction):
    holed, full = _self_masked(direction)
    before = holed.copy()
    plain = Imputer(model="em", device="cpu").fit(holed)
    fixed = Imputer(model="em", train_params={"mnar_correction": "selfmasking"}, device="cpu").fit(holed)
    pd.testing.assert_frame_equal(holed, before)  # nothing the user passed is modified
    assert plain.mnar_correction_ is None
    # The conditional mean of a self-masked column is pulled towards the observed values;
    # the correction pushes it back where the missing values were.
    err_plain, err_fixed = _rmse(plain.fit_imputed_, full, holed, "x0"), _rmse(fixed.fit_imputed_, full, holed, "x0")
    assert err_fixed < 0.8 * err_plain, (err_plain, err_fixed)
    gone = holed["x0"].isna().to_numpy()
    moved = fixed.fit_imputed_["x0"].to_numpy()[gone] - plain.fit_imputed_["x0"].to_numpy()[gone]
    assert np.all(direction * moved > 0)
    # Observed cells come back bit-identical.
    obs = holed.notna().to_numpy()
    np.testing.assert_array_equal(fixed.fit_imputed_.to_numpy()[obs], holed.to_numpy()[obs])
    report = fixed.mnar_correction_.describe(fixed.schema_)
    assert list(report.index) == ["x0", "x3"]
    want = "high values missing" if direction > 0 else "low values missing"
    assert report.loc["x0", "direction"] == want and bool(report.loc["x0", "applied"])
    # The threshold is reported in the column's units, near the 0.3 the mask used.
    assert abs(report.loc["x0", "threshold"] - direction * 0.3) < 0.5
    assert 0.4 < report.loc["x0", "max_prob"] <= 1.0


def test_selfmasking_data_leaves_columns_the_data_does_not_call():
    holed, full = _self_masked(1)
    fixed = Imputer(model="em", train_params={"mnar_correction": "selfmasking_data"}, device="cpu").fit(holed)
    plain = Imputer(model="em", device="cpu").fit(holed)
    report = fixed.mnar_correction_.describe()
    # x0 is called high by the observed data and corrected; x3 (MCAR, unrelated) is not called.
    assert bool(report.loc["x0", "applied"]) and not bool(report.loc["x3", "applied"])
    assert report.loc["x3", "reason"] == "no call from the data"
    np.testing.assert_array_equal(fixed.fit_imputed_["x3"].to_numpy(), plain.fit_imputed_["x3"].to_numpy())
    assert _rmse(fixed.fit_imputed_, full, holed, "x0") < 0.8 * _rmse(plain.fit_imputed_, full, holed, "x0")


def test_under_mcar_selfmasking_data_changes_nothing():
    rng = np.random.default_rng(3)
    z = rng.normal(size=500)
    full = np.column_stack([z + 0.5 * rng.normal(size=500) for _ in range(4)])
    holed = pd.DataFrame(np.where(rng.random(full.shape) < 0.2, np.nan, full), columns=list("abcd"))
    plain = Imputer(model="em", device="cpu").fit(holed)
    fixed = Imputer(model="em", train_params={"mnar_correction": "selfmasking_data"}, device="cpu").fit(holed)
    assert not fixed.mnar_correction_.describe()["applied"].any()
    pd.testing.assert_frame_equal(fixed.fit_imputed_, plain.fit_imputed_)


def test_new_rows_save_load_and_draws_carry_the_correction(tmp_path):
    holed, _ = _self_masked(1)
    imp = Imputer(model="em", train_params={"mnar_correction": "selfmasking"}, device="cpu").fit(holed)
    new = holed.iloc[:80].copy()
    out = imp.transform(new)
    values, observed = imp.schema_.encode(new)
    own = imp._impute_encoded(new, values, observed, None, corrected=False)
    shift = imp.mnar_correction_.shift(own, ~torch.from_numpy(observed))
    assert shift[:, 0][new["x0"].isna().to_numpy()].abs().min() > 0
    assert (shift[torch.from_numpy(observed)] == 0).all()
    want = imp.schema_.decode((own + shift).numpy(), new)
    pd.testing.assert_frame_equal(out, want)
    # The file keeps the fitted process.
    back = Imputer.load(imp.save(tmp_path / "imp.pt"))
    pd.testing.assert_frame_equal(back.transform(new), out)
    assert back.mnar_correction_.to_dict() == imp.mnar_correction_.to_dict()
    # Draws move by the same shift as the single imputation.
    draws = imp.sample(new, n=2, seed=1)
    kept, imp.mnar_correction_ = imp.mnar_correction_, None
    raw = imp.sample(new, n=2, seed=1)
    imp.mnar_correction_ = kept
    for j, col in enumerate(new.columns):
        gone = new[col].isna().to_numpy()
        expect = shift[:, j].numpy()[gone] * imp.schema_.specs[j].std
        for d, r in zip(draws, raw):
            np.testing.assert_allclose(d[col].to_numpy()[gone] - r[col].to_numpy()[gone], expect, rtol=1e-4,
                                       atol=1e-5)
            np.testing.assert_array_equal(d[col].to_numpy()[~gone], new[col].to_numpy()[~gone])
    assert not np.allclose(draws[0]["x0"], raw[0]["x0"])


def test_bad_settings_are_refused_before_training():
    holed, _ = _self_masked(1, n=200)
    with pytest.raises(ValueError, match="mnar_correction must be one of"):
        TrainConfig(mnar_correction="heckman")
    with pytest.raises(ValueError, match="models the missing process itself"):
        Imputer(model="notmiwae", train_params={"mnar_correction": "selfmasking"}, device="cpu").fit(holed)
    with pytest.raises(ValueError, match="holds out no cell"):
        Imputer(model="em", train_params={"mnar_correction": "selfmasking"}, val_proportion=0.0,
                device="cpu").fit(holed)


def test_the_fit_reads_missing_and_held_out_cells_only():
    # A hand-built case: column 0's missing cells are predicted at 2.0, its held-out
    # cells (observed, values below 1) at their values; a step at about 1 explains it.
    n = 400
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(n, 2)).astype(np.float32))
    observed = torch.ones(n, 2, dtype=torch.bool)
    observed[:100, 0] = False
    val = torch.zeros(n, 2, dtype=torch.bool)
    val[100:300, 0] = True
    truth = torch.from_numpy(rng.uniform(-2.0, 1.0, size=n).astype(np.float32))
    x_val = torch.where(val, truth[:, None].expand(n, 2), torch.zeros(n, 2))
    layout = FeatureLayout.all_numeric(2)
    data = EncodedData(x=x, observed=observed, train_mask=observed & ~val, val_mask=val, x_val=x_val,
                       clusters=torch.zeros(n, dtype=torch.int64), n_clusters=1, layout=layout)
    imputed = x.clone()
    imputed[:100, 0] = 2.0
    scored = torch.where(val, x_val + 0.1 * torch.from_numpy(rng.normal(size=(n, 2)).astype(np.float32)), imputed)
    corr = SelfMaskingCorrection.fit("selfmasking", data, imputed, scored)
    assert corr.columns == (0,)  # column 1 has no missing cell
    assert corr.slope[0] > 5 and 0.5 < corr.threshold[0] < 1.6
    moved = corr.apply(imputed, ~observed)
    # Predictions far beyond the step stay (nearly) put; one well below it moves most of the way up.
    assert torch.all(moved[:100, 0] >= 2.0) and torch.equal(moved[100:], imputed[100:])
    low = imputed.clone()
    low[:100, 0] = 0.0
    up = corr.apply(low, ~observed)[:100, 0]
    assert torch.all(up > 0.5) and torch.all(up < corr.threshold[0])
    again = SelfMaskingCorrection.from_dict(corr.to_dict())
    assert torch.equal(again.apply(imputed, ~observed), moved)


def test_the_mnar_correction_preset_tunes_corrected_trials():
    space = SearchSpace.preset("mnar_correction")
    assert space.family_names == ("em", "knn", "mean", "mice", "missforest")  # the closed-form families
    assert space.fixed_config("missforest").train_params == {"mnar_correction": "selfmasking_data"}
    # In a space of one's own, trained families carry it too; not-MIWAE leaves it out.
    mixed = SearchSpace(["notmiwae", "vae", "em"], train={"mnar_correction": "selfmasking"})
    assert mixed.fixed_config("vae").train_params["mnar_correction"] == "selfmasking"
    assert "mnar_correction" not in mixed.fixed_config("notmiwae").train_params
    holed, full = _self_masked(1, n=300)
    ds = ClusterDataset(holed, n_clusters=1, seed=0, device="cpu")
    tiny = SearchSpace(["em", "mice"], train={"mnar_correction": "selfmasking_data"})
    res = autotune(tiny, ds, n_trials=2, seed=0, show_progress=False, ensemble=1)
    assert res.imputer.mnar_correction_ is not None
    assert bool(res.imputer.mnar_correction_.describe().loc["x0", "applied"])
    plain = autotune(SearchSpace(["em", "mice"]), ds, n_trials=2, seed=0, show_progress=False, ensemble=1)
    assert _rmse(res.imputed, full, holed, "x0") < _rmse(plain.imputed, full, holed, "x0")


def test_the_command_line_fits_the_correction(tmp_path):
    import json
    import subprocess
    import sys

    holed, full = _self_masked(1, n=400)
    src, out, model = tmp_path / "in.csv", tmp_path / "out.csv", tmp_path / "em.pt"
    holed.to_csv(src, index=False)
    proc = subprocess.run(
        [sys.executable, "-m", "ciss_autoimpute.cli", "impute", str(src), "-o", str(out), "--model", "em",
         "--train-params", json.dumps({"mnar_correction": "selfmasking_data"}), "--device", "cpu",
         "--save-model", str(model)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    got = pd.read_csv(out)
    plain = Imputer(model="em", device="cpu").fit(holed)
    assert _rmse(got, full, holed, "x0") < 0.8 * _rmse(plain.fit_imputed_, full, holed, "x0")
    assert Imputer.load(model).mnar_correction_.describe().loc["x0", "applied"]


def test_a_study_reads_the_direction_evidence_once(evidence_reads):
    holed, _ = _self_masked(1, n=300)
    ds = ClusterDataset(holed, n_clusters=1, seed=0, device="cpu")
    res = autotune(SearchSpace(["em", "mice"], train={"mnar_correction": "selfmasking_data"}), ds, n_trials=3,
                   seed=0, show_progress=False, ensemble=1)
    assert res.imputer.mnar_correction_.describe().loc["x0", "applied"]
    assert len(evidence_reads) == 1 and evidence_reads[0] is ds  # three corrected trials, one reading of the data
