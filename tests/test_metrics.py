"""The validation metric against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from ciss_autoimpute.data.layout import EncodedData, FeatureLayout
from ciss_autoimpute.training import MetricWeights, held_out_counts, score_imputations, validation_score

# Columns: 0, 1 numeric; 2 binary; 3..5 one categorical feature with three classes.
LAYOUT = FeatureLayout(
    n_features=6, numeric=(0, 1), binary=(2,), categorical=((3, 6),),
    names=("a", "b", "flag", "colour"), column_of=(0, 1, 2, 3, 3, 3),
)
T, F = True, False
VAL = torch.tensor([
    [T, F, T, F, F, F],  # row 0: numeric a, binary
    [F, T, F, T, T, T],  # row 1: numeric b, categorical
    [T, T, F, F, F, F],  # row 2: both numerics
    [F, F, T, T, T, T],  # row 3: binary, categorical
])
X_VAL = torch.tensor([
    [1.0, 0.0, 1.0, 0.0, 0.0, 0.0],
    [0.0, -2.0, 0.0, 0.0, 1.0, 0.0],
    [0.5, 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, 1.0, 0.0, 0.0],
])
G = 99.0  # garbage at cells that are not held out: must be ignored
IMPUTED = torch.tensor([
    [0.0, G, 0.8, G, G, G],
    [G, -1.0, G, 0.2, 0.5, 0.3],
    [0.5, 1.0, G, G, G, G],
    [G, G, 0.5, 0.1, 0.6, 0.3],
])


def make_data(val=VAL, x_val=X_VAL, layout=LAYOUT, clusters=(0, 0, 1, 1), n_clusters=3):
    n, d = val.shape
    return EncodedData(
        x=torch.zeros(n, d), observed=torch.ones(n, d, dtype=torch.bool), train_mask=~val, val_mask=val,
        x_val=x_val, clusters=torch.tensor(clusters), n_clusters=n_clusters, layout=layout,
    )


def test_hand_computed_example():
    s = validation_score(IMPUTED, make_data())
    # numeric squared errors: row0 (0-1)^2=1, row1 (-1+2)^2=1, row2 0 and (1-0)^2=1
    assert s.n_numeric == 4 and s.numeric_rmse == pytest.approx(math.sqrt(3 / 4))
    # binary: row0 (0.8-1)^2=0.04 (right), row3 (0.5-0)^2=0.25 (0.5 predicts 1: wrong)
    assert s.n_binary == 2
    assert s.binary_brier == pytest.approx((0.04 + 0.25) / 2)
    assert s.binary_error == pytest.approx(0.5)
    # categorical (one unit per row): row1 (0.04+0.25+0.09)/2=0.19 (argmax right),
    # row3 (0.81+0.36+0.09)/2=0.63 (argmax 1, truth 0: wrong)
    assert s.n_categorical == 2 and s.n_cells == 8
    assert s.categorical_brier == pytest.approx((0.19 + 0.63) / 2)
    assert s.categorical_error == pytest.approx(0.5)
    # total: numeric 1+1+0+1, binary 4*0.04 + 4*0.25, categorical 4*0.19 + 4*0.63, over 8 units
    assert s.total == pytest.approx(math.sqrt((3 + 0.16 + 1.0 + 0.76 + 2.52) / 8))
    # cluster 0 = rows 0, 1; cluster 1 = rows 2, 3; cluster 2 has no rows and is left out
    assert set(s.per_cluster) == {0, 1}
    assert s.per_cluster[0] == pytest.approx(math.sqrt((1 + 0.16 + 1 + 0.76) / 4))
    assert s.per_cluster[1] == pytest.approx(math.sqrt((0 + 1 + 1.0 + 2.52) / 4))
    d = s.to_dict()
    assert d["val"] == s.total and d["n_cells"] == 8 and d["per_cluster"] == s.per_cluster


def test_weights_rescale_the_kinds():
    s = validation_score(IMPUTED, make_data(), weights=MetricWeights(numeric=2.0, binary=0.0, categorical=1.0))
    assert s.total == pytest.approx(math.sqrt((2 * 3 + 0.76 + 2.52) / (2 * 4 + 2)))
    # the per-kind summaries do not depend on the weights
    assert s.binary_brier == pytest.approx(0.145)


def test_uninformed_guesses_score_one_and_perfect_scores_zero():
    n = 8
    layout = FeatureLayout(n_features=3, binary=(0,), categorical=((1, 3),), names=("b", "c"), column_of=(0, 1, 1))
    val = torch.ones(n, 3, dtype=torch.bool)
    y = torch.arange(n) % 2
    x_val = torch.stack([y.float(), (1 - y).float(), y.float()], dim=1)
    data = make_data(val=val, x_val=x_val, layout=layout, clusters=[0] * n, n_clusters=1)
    # a 50/50 guess scores 1 for a binary cell and for a two-class group alike
    assert validation_score(torch.full((n, 3), 0.5), data).total == pytest.approx(1.0)
    assert validation_score(x_val.clone(), data).total == 0.0
    # numeric: predicting 0 (the mean on the standardised scale) scores the RMS of the truth
    num = make_data(val=val[:, :1], x_val=torch.tensor([[1.0], [-1.0]] * 4), layout=FeatureLayout.all_numeric(1),
                    clusters=[0] * n, n_clusters=1)
    assert validation_score(torch.zeros(n, 1), num).total == pytest.approx(1.0)


def test_probabilities_are_clipped_to_unit_interval():
    layout = FeatureLayout(n_features=1, binary=(0,), names=("b",), column_of=(0,))
    val = torch.ones(2, 1, dtype=torch.bool)
    data = make_data(val=val, x_val=torch.ones(2, 1), layout=layout, clusters=[0, 0], n_clusters=1)
    s = validation_score(torch.tensor([[1.7], [-0.3]]), data)
    assert s.binary_brier == pytest.approx(0.5)  # (1-1)^2 and (0-1)^2
    assert s.total == pytest.approx(math.sqrt(4 * 1.0 / 2))


def test_empty_holdout_gives_nan_total_and_no_clusters():
    data = make_data(val=torch.zeros_like(VAL))
    s = validation_score(IMPUTED, data)
    assert math.isnan(s.total) and s.n_cells == 0 and s.per_cluster == {}
    assert s.numeric_rmse is None and s.binary_error is None and s.categorical_brier is None
    assert held_out_counts(data.val_mask, LAYOUT) == {"numeric": 0, "binary": 0, "categorical": 0}
    assert held_out_counts(VAL, LAYOUT) == {"numeric": 4, "binary": 2, "categorical": 2}


def test_score_imputations_on_arbitrary_masks_without_clusters():
    s = score_imputations(IMPUTED, X_VAL, VAL, LAYOUT)
    assert s.total == pytest.approx(validation_score(IMPUTED, make_data()).total)
    assert s.per_cluster == {}


def test_bad_input_is_rejected():
    data = make_data()
    with pytest.raises(ValueError, match=r"imputed has shape \(4, 5\) but the data is \(4, 6\)"):
        validation_score(IMPUTED[:, :5], data)
    with pytest.raises(TypeError, match=r"imputed must be a torch.Tensor, got ndarray"):
        validation_score(IMPUTED.numpy(), data)
    with pytest.raises(TypeError, match=r"data must be an EncodedData, got dict"):
        validation_score(IMPUTED, {})
    with pytest.raises(ValueError, match=r"MetricWeights.binary must be >= 0, got -1"):
        MetricWeights(binary=-1)
    with pytest.raises(ValueError, match=r"at least one positive weight"):
        MetricWeights(0, 0, 0)
    with pytest.raises(TypeError, match=r"MetricWeights.numeric must be a finite number, got nan"):
        MetricWeights(numeric=float("nan"))


def test_only_the_scored_cells_are_read():
    # The scorer gathers the held-out cells before any arithmetic, so values elsewhere
    # (NaN or inf in the imputations, here) cannot leak into the score. The columns are
    # permuted so that the numeric columns are not one increasing run.
    perm = [2, 3, 4, 5, 1, 0]  # new column k holds old column perm[k]
    layout = FeatureLayout(
        n_features=6, numeric=(5, 4), binary=(0,), categorical=((1, 4),),
        names=("a", "b", "flag", "colour"), column_of=(2, 3, 3, 3, 1, 0),
    )
    bad = IMPUTED.clone()
    bad[~VAL] = float("nan")
    bad[0, 3] = float("inf")  # the categorical group is not held out in row 0
    s = validation_score(bad[:, perm], make_data(VAL[:, perm], X_VAL[:, perm], layout))
    ref = validation_score(IMPUTED, make_data())
    assert math.isfinite(s.total)
    assert s.total == pytest.approx(ref.total)
    assert (s.n_numeric, s.n_binary, s.n_categorical) == (4, 2, 2)
    assert s.numeric_rmse == pytest.approx(ref.numeric_rmse)
    assert s.binary_brier == pytest.approx(ref.binary_brier)
    assert s.categorical_brier == pytest.approx(ref.categorical_brier)
    assert s.per_cluster == pytest.approx(ref.per_cluster)
