"""Held-out cells count as observed for not-MIWAE's missing process.

A cell held out for validation was observed; only its value is hidden from the
likelihood. ``p(s|x)`` must read it as ``s = 1``: the Trainer passes ``observed`` to
models of the missingness, both while training and when it imputes the holdout.
"""

from __future__ import annotations

import torch
from test_conformance import _encoded

from ciss_autoimpute.data.layout import FeatureLayout
from ciss_autoimpute.models.registry import build_model
from ciss_autoimpute.training import RefitConfig, TrainConfig, Trainer, impute_all


def _self_masked(n=240, d=4, seed=0):
    """Correlated columns; in the first two, values above 0.3 go missing; 15% held out."""
    g = torch.Generator().manual_seed(seed)
    full = torch.randn(n, 1, generator=g) @ torch.ones(1, d) + 0.4 * torch.randn(n, d, generator=g)
    observed = torch.ones(n, d, dtype=torch.bool)
    observed[:, :2] = full[:, :2] <= 0.3
    val = observed & (torch.rand(n, d, generator=g) < 0.15)
    return _encoded(full, observed, val, FeatureLayout.all_numeric(d), n_clusters=1)


def _model(d=4):
    return build_model("notmiwae", FeatureLayout.all_numeric(d), params={
        "hidden_dims": [16], "latent_dim": 2, "n_samples": 5, "n_impute_samples": 200,
        "missing_process": "selfmasking_known_signs", "signs": [1] * d,
    }, seed=0)


def test_observed_flips_the_direction_of_a_hidden_cell():
    # A steep "high values go missing" process: a cell read as missing is imputed
    # higher than the same cell read as observed.
    data = _self_masked()
    model = _model().eval()
    with torch.no_grad():
        model.missing.w.fill_(3.0)
        model.missing.b.zero_()
    rows = torch.nonzero(data.val_mask[:, 0]).flatten()[:20]
    x, mask, cl = data.x[rows], data.train_mask[rows], data.clusters[rows]
    as_missing = model.impute(x, mask, cl, generator=torch.Generator().manual_seed(1))
    as_observed = model.impute(x, mask, cl, generator=torch.Generator().manual_seed(1), observed=data.observed[rows])
    assert float((as_missing[:, 0] - as_observed[:, 0]).mean()) > 0.3
    # observed=None is the old behaviour: the mask is s.
    again = model.impute(x, mask, cl, generator=torch.Generator().manual_seed(1), observed=mask)
    torch.testing.assert_close(again, as_missing)


def test_trainer_passes_observed_to_models_of_the_missingness():
    data = _self_masked()
    model = _model()
    seen = []
    orig_loss = model.loss

    def spy(x, mask, clusters, *, generator=None, observed=None):
        seen.append((mask, observed))
        return orig_loss(x, mask, clusters, generator=generator, observed=observed)

    model.loss = spy
    result = Trainer(model, TrainConfig(epochs=2, batch_size=80), RefitConfig(max_loops=1, epochs_per_loop=1),
                     seed=0, device="cpu").fit(data)
    epochs = result.n_epochs
    assert seen and all(o is not None for _, o in seen)
    assert all(bool((o | ~m).all()) for m, o in seen)  # observed is a superset of the training mask
    # Over each epoch every held-out cell reaches the loss as observed but not trainable.
    extra = sum(int((o & ~m).sum()) for m, o in seen)
    assert extra == int(data.val_mask.sum()) * epochs


def test_trainer_does_not_pass_observed_to_other_families():
    data = _self_masked()
    model = build_model("miwae", FeatureLayout.all_numeric(4), params={"hidden_dims": [16], "latent_dim": 2,
                                                                      "n_samples": 5, "n_impute_samples": 20}, seed=0)
    calls = []
    orig_loss = model.loss

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return orig_loss(*args, **kwargs)

    model.loss = spy
    Trainer(model, TrainConfig(epochs=1, batch_size=120), RefitConfig(max_loops=1, epochs_per_loop=1),
            seed=0, device="cpu").fit(data)
    assert calls and all("observed" not in kw for kw in calls)


def test_holdout_is_scored_as_observed_cells():
    # Trained with a holdout, the imputation of held-out cells (observed=True) sits
    # below the imputation of truly missing cells of the same column: the model has
    # learned that high values go missing, and the holdout is not mistaken for them.
    data = _self_masked(n=400)
    model = _model()
    Trainer(model, TrainConfig(epochs=60, lr=5e-3, batch_size=32), RefitConfig(max_loops=1, epochs_per_loop=1),
            seed=0, device="cpu").fit(data)
    def holdout_rmse(observed):
        imp = impute_all(model, data.x, data.train_mask, data.clusters,
                         generator=torch.Generator().manual_seed(0), observed=observed)
        return imp, float(((imp - data.x_val)[data.val_mask] ** 2).mean().sqrt())

    imp, rmse = holdout_rmse(data.observed)
    held, missing = data.val_mask[:, 0], ~data.observed[:, 0]
    assert float(imp[missing, 0].mean()) > float(imp[held, 0].mean()) + 0.5
    # Read as missing (the old behaviour), the holdout is imputed like the high values
    # that went missing and scores clearly worse (measured 0.58 vs 0.81).
    _, rmse_as_missing = holdout_rmse(None)
    assert rmse < 0.85 * rmse_as_missing
