"""Tests of the Trainer, the impute-refit loop, the callbacks and the configs.

Two tiny models defined here stand in for the real families: ``TinyAE`` (a linear
denoising autoencoder that actually learns) and ``ScriptedModel`` (imputes a constant
held in a buffer, so tests can dictate each loop's score exactly).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ciss_autoimpute.data.layout import EncodedData, FeatureLayout
from ciss_autoimpute.exceptions import TrainingDivergedError
from ciss_autoimpute.models.base import ImputationModel, LossOutput
from ciss_autoimpute.training import trainer as trainer_module
from ciss_autoimpute.training import _flat as flat_module
from ciss_autoimpute.training._flat import FlatAdam, FlatGrads
from ciss_autoimpute.training import (
    Callback,
    History,
    MetricWeights,
    ProgressLogger,
    RefitConfig,
    TimeBudget,
    TrainConfig,
    Trainer,
    configs_from_dict,
    history_frame,
    impute_all,
    validation_score,
)


# --------------------------------------------------------------------------- helpers
class TinyAE(ImputationModel):
    """Linear autoencoder with latent noise drawn from the generator."""

    name = "tiny_ae_test"

    def __init__(self, layout: FeatureLayout, n_clusters: int = 1, *, seed: int = 0, **params):
        super().__init__()
        self.params = self.resolve_params(params)
        self.layout, self.n_clusters = layout, n_clusters
        d, k = layout.n_features, self.params["latent_dim"]
        g = torch.Generator().manual_seed(seed)
        self.enc = nn.Linear(2 * d, k)
        self.dec = nn.Linear(k, d)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
        self.cluster_bias = nn.Parameter(torch.zeros(n_clusters, d))
        self.beta = self.params["beta"]

    @classmethod
    def default_params(cls):
        return {"latent_dim": 2, "beta": 1.0, "noise": 0.1}

    @classmethod
    def search_space(cls):
        return {}

    def _forward(self, x, mask, clusters, generator=None, noisy=False):
        h = self.enc(torch.cat([x, mask.to(x.dtype)], dim=1))
        if noisy:
            h = h + self.params["noise"] * torch.randn(h.shape, generator=generator, device=h.device)
        return self.dec(h) + self.cluster_bias[clusters], h

    def loss(self, x, mask, clusters, *, generator=None):
        recon, h = self._forward(x, mask, clusters, generator, noisy=True)
        nll = ((recon - x).square() * mask).sum(1).mean()
        kl = 0.01 * self.beta * h.square().sum(1).mean()
        return LossOutput(nll + kl, {"nll": nll.detach(), "kl": kl.detach()})

    def impute(self, x, mask, clusters, *, generator=None):
        return self._forward(x, mask, clusters)[0]

    def sample_imputations(self, x, mask, clusters, n, *, generator=None):
        draws = torch.stack([self._forward(x, mask, clusters, generator, noisy=True)[0] for _ in range(n)])
        return torch.where(mask, x, draws)


class ScriptedModel(ImputationModel):
    """Imputes the constant ``offset`` (a buffer, hence part of the state)."""

    name = "scripted_test"

    def __init__(self, layout: FeatureLayout, n_clusters: int = 1, *, seed: int = 0, **params):
        super().__init__()
        self.params = self.resolve_params(params)
        self.layout, self.n_clusters = layout, n_clusters
        self.w = nn.Parameter(torch.zeros(()))
        self.register_buffer("offset", torch.zeros(()))
        self.nan_loss = False
        self.nan_impute = False

    @classmethod
    def default_params(cls):
        return {}

    @classmethod
    def search_space(cls):
        return {}

    def loss(self, x, mask, clusters, *, generator=None):
        loss = (self.w - 1.0).square() + 0.0 * x.sum()
        if self.nan_loss:
            loss = loss * float("nan")
        return LossOutput(loss, {"sq": loss.detach()})

    def impute(self, x, mask, clusters, *, generator=None):
        out = torch.zeros_like(x) + self.offset
        if self.nan_impute:
            out = out * float("nan")
        return out

    def sample_imputations(self, x, mask, clusters, n, *, generator=None):
        return torch.where(mask, x, self.impute(x, mask, clusters).expand(n, *x.shape))


class OffsetSchedule(Callback):
    """Sets ScriptedModel.offset to ``offsets[loop]`` during each loop's training."""

    def __init__(self, offsets):
        self.offsets = offsets

    def on_epoch_end(self, trainer, record):
        trainer.model.offset.fill_(self.offsets[record["loop"]])


def make_data(n=120, d=4, *, miss=0.2, val=0.15, n_clusters=2, seed=0, val_value=None):
    """Correlated standardised numeric data with missing and held-out cells."""
    g = torch.Generator().manual_seed(seed)
    full = torch.randn(n, 2, generator=g) @ torch.randn(2, d, generator=g) + 0.2 * torch.randn(n, d, generator=g)
    full = (full - full.mean(0)) / full.std(0)
    observed = torch.rand(n, d, generator=g) > miss
    val_mask = observed & (torch.rand(n, d, generator=g) < val)
    train = observed & ~val_mask
    truth = full if val_value is None else torch.full_like(full, val_value)
    return EncodedData(
        x=torch.where(train, full, torch.zeros(())),
        observed=observed,
        train_mask=train,
        val_mask=val_mask,
        x_val=torch.where(val_mask, truth, torch.zeros(())),
        clusters=torch.arange(n) % n_clusters,
        n_clusters=n_clusters,
        layout=FeatureLayout.all_numeric(d),
    )


FAST = TrainConfig(epochs=5, lr=1e-2, batch_size=32)


def fit_tiny(data=None, train=FAST, refit=RefitConfig(max_loops=2, epochs_per_loop=3), seed=0, **kw):
    data = make_data() if data is None else data
    model = TinyAE(data.layout, data.n_clusters, seed=0)
    return Trainer(model, train, refit, seed=seed, device="cpu", **kw).fit(data)


# --------------------------------------------------------------------------- configs
def test_config_defaults_and_round_trip():
    train, refit = TrainConfig(), RefitConfig()
    flat = {**train.to_dict(), **refit.to_dict()}
    assert configs_from_dict(flat) == (train, refit)
    t2, r2 = configs_from_dict({"epochs": 7, "max_loops": 0, "lr_refit": 0.1, "reset_lr_refit": True})
    assert (t2.epochs, t2.lr, r2.max_loops, r2.lr_refit) == (7, TrainConfig().lr, 0, 0.1)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"epochs": 0}, ValueError, r"TrainConfig.epochs must be >= 1, got 0"),
        ({"epochs": 2.5}, TypeError, r"TrainConfig.epochs must be an integer, got 2.5"),
        ({"epochs": True}, TypeError, r"TrainConfig.epochs must be an integer"),
        ({"lr": 0.0}, ValueError, r"TrainConfig.lr must be > 0, got 0.0"),
        ({"lr": float("nan")}, TypeError, r"TrainConfig.lr must be a finite number"),
        ({"weight_decay": -1.0}, ValueError, r"weight_decay must be >= 0, got -1.0"),
        ({"decay_factor": 1.5}, ValueError, r"decay_factor must be in \(0, 1\], got 1.5"),
        ({"grad_clip": 0}, ValueError, r"grad_clip must be > 0 or None, got 0"),
        ({"batch_size": 0}, ValueError, r"batch_size must be >= 1, got 0"),
        ({"val_every": -1}, ValueError, r"val_every must be >= 0, got -1"),
    ],
)
def test_train_config_rejects_bad_values(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        TrainConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"max_loops": -1}, ValueError, r"RefitConfig.max_loops must be >= 0, got -1"),
        ({"patience": 0}, ValueError, r"RefitConfig.patience must be >= 1, got 0"),
        ({"epochs_per_loop": 0}, ValueError, r"epochs_per_loop must be >= 1, got 0"),
        ({"reset_lr_refit": 1}, TypeError, r"reset_lr_refit must be True or False, got 1"),
        ({"lr_refit": 0.1}, ValueError, r"lr_refit=0.1 has no effect unless reset_lr_refit=True"),
        ({"lr_refit": -0.1, "reset_lr_refit": True}, ValueError, r"lr_refit must be > 0 or None, got -0.1"),
        ({"decay_factor_refit": 0.0}, ValueError, r"decay_factor_refit must be in \(0, 1\] or None, got 0.0"),
        ({"beta_refit": -1.0}, ValueError, r"beta_refit must be >= 0 or None, got -1.0"),
        ({"min_delta": -0.5}, ValueError, r"min_delta must be >= 0, got -0.5"),
    ],
)
def test_refit_config_rejects_bad_values(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        RefitConfig(**kwargs)


def test_configs_from_dict_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match=r"Unknown training option\(s\) \['epoch'\]; valid keys are .*'epochs'"):
        configs_from_dict({"epoch": 3})


# --------------------------------------------------------------------------- optimiser / schedule
def test_optimizer_and_scheduler_created_once_per_run(monkeypatch):
    created = {"adam": 0, "sched": 0}
    RealAdam, RealExp = torch.optim.Adam, torch.optim.lr_scheduler.ExponentialLR

    class CountingAdam(RealAdam):
        def __init__(self, *a, **k):
            created["adam"] += 1
            super().__init__(*a, **k)

    class CountingExp(RealExp):
        def __init__(self, *a, **k):
            created["sched"] += 1
            super().__init__(*a, **k)

    class CountingFlatAdam(trainer_module.FlatAdam):
        def __init__(self, *a, **k):
            created["adam"] += 1
            super().__init__(*a, **k)

    monkeypatch.setattr(torch.optim, "Adam", CountingAdam)
    # The trainer's lean Adam (float parameters on one device, the usual case).
    monkeypatch.setattr(trainer_module, "FlatAdam", CountingFlatAdam)
    monkeypatch.setattr(torch.optim.lr_scheduler, "ExponentialLR", CountingExp)

    seen = set()

    class Spy(Callback):
        def on_epoch_end(self, trainer, record):
            seen.add((id(trainer.optimizer), id(trainer.scheduler)))

        on_loop_end = on_epoch_end

    refit = RefitConfig(max_loops=3, patience=5, epochs_per_loop=2, reset_lr_refit=True, decay_factor_refit=0.5)
    result = fit_tiny(refit=refit, callbacks=[ProgressLogger(every=1), Spy()])
    assert len(result.loop_history) == 4
    assert created == {"adam": 1, "sched": 1}
    assert len(seen) == 1


def test_lr_decays_exponentially_across_initial_and_refit_epochs():
    train = TrainConfig(epochs=4, lr=0.1, decay_factor=0.5, batch_size=32)
    result = fit_tiny(train=train, refit=RefitConfig(max_loops=2, patience=5, epochs_per_loop=3))
    lrs = [r["lr"] for r in result.epoch_history]
    assert len(lrs) == 4 + 2 * 3
    assert lrs == pytest.approx([0.1 * 0.5**k for k in range(10)])
    assert [r["phase"] for r in result.epoch_history] == ["initial"] * 4 + ["refit"] * 6
    assert [r["loop"] for r in result.epoch_history] == [0] * 4 + [1] * 3 + [2] * 3


def test_reset_lr_refit_resets_rate_and_refit_decay_applies():
    train = TrainConfig(epochs=4, lr=0.1, decay_factor=0.5, batch_size=32)
    refit = RefitConfig(max_loops=2, patience=5, epochs_per_loop=2, reset_lr_refit=True, lr_refit=0.2,
                        decay_factor_refit=0.9)
    lrs = [r["lr"] for r in fit_tiny(train=train, refit=refit).epoch_history]
    assert lrs[:4] == pytest.approx([0.1, 0.05, 0.025, 0.0125])
    assert lrs[4:] == pytest.approx([0.2 * 0.9**k for k in range(4)])
    # Without lr_refit the reset goes back to the initial rate.
    refit = RefitConfig(max_loops=1, epochs_per_loop=2, reset_lr_refit=True)
    lrs = [r["lr"] for r in fit_tiny(train=train, refit=refit).epoch_history]
    assert lrs[4:] == pytest.approx([0.1, 0.05])


# --------------------------------------------------------------------------- batching
def test_every_row_seen_exactly_once_per_epoch_in_a_fresh_order():
    n, d, bs = 50, 2, 16
    x = torch.stack([torch.arange(n, dtype=torch.float32), torch.zeros(n)], dim=1)
    train = torch.ones(n, d, dtype=torch.bool)
    val = torch.zeros(n, d, dtype=torch.bool)
    val[::5, 1] = True
    train &= ~val
    data = EncodedData(x=x, observed=torch.ones(n, d, dtype=torch.bool), train_mask=train, val_mask=val,
                       x_val=torch.where(val, 1.0, 0.0), clusters=torch.zeros(n, dtype=torch.long), n_clusters=1,
                       layout=FeatureLayout.all_numeric(d))
    batches = []

    class Spy(TinyAE):
        def loss(self, x, mask, clusters, *, generator=None):
            batches.append(x[:, 0].clone())
            return super().loss(x, mask, clusters, generator=generator)

    epochs = 3
    Trainer(Spy(data.layout), TrainConfig(epochs=epochs, batch_size=bs), RefitConfig(max_loops=1, epochs_per_loop=1),
            device="cpu").fit(data)
    per_epoch = math.ceil(n / bs)
    assert len(batches) == (epochs + 1) * per_epoch
    orders = []
    for e in range(epochs + 1):
        chunk = batches[e * per_epoch:(e + 1) * per_epoch]
        assert [len(b) for b in chunk] == [16, 16, 16, 2]
        order = torch.cat(chunk)
        assert torch.equal(order.sort().values, torch.arange(n, dtype=torch.float32))
        orders.append(order)
    assert not torch.equal(orders[0], orders[1])


@pytest.mark.parametrize("n_clusters", [1, 3])
def test_batches_come_sorted_by_cluster_when_the_model_asks_and_hold_the_same_rows(n_clusters):
    # A model that groups rows by cluster (cissvae) gets every training batch with its rows
    # in cluster order; the batches hold the same rows as they would unsorted.
    n, d, bs = 70, 2, 16
    x = torch.stack([torch.arange(n, dtype=torch.float32), torch.zeros(n)], dim=1)
    observed = torch.ones(n, d, dtype=torch.bool)
    clusters = torch.randint(0, n_clusters, (n,), generator=torch.Generator().manual_seed(4))
    data = EncodedData(x=x, observed=observed, train_mask=observed, val_mask=torch.zeros_like(observed),
                       x_val=torch.zeros(n, d), clusters=clusters, n_clusters=n_clusters,
                       layout=FeatureLayout.all_numeric(d))
    seen: dict[bool, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for sorts in (False, True):
        batches = seen[sorts] = []

        class Spy(TinyAE):
            sorts_batches_by_cluster = sorts

            def loss(self, x, mask, clusters, *, generator=None):
                batches.append((x[:, 0].clone(), clusters.clone()))
                return super().loss(x, mask, clusters, generator=generator)

        Trainer(Spy(data.layout, n_clusters), TrainConfig(epochs=2, batch_size=bs), RefitConfig(max_loops=0),
                seed=3, device="cpu").fit(data)
    assert len(seen[True]) == len(seen[False]) == 2 * math.ceil(n / bs)
    for (rows, ids), (plain_rows, plain_ids) in zip(seen[True], seen[False]):
        assert torch.equal(rows.sort().values, plain_rows.sort().values)
        assert torch.equal(ids, clusters[rows.long()])
        assert bool((ids[1:] >= ids[:-1]).all())
        # Within a cluster the rows keep the shuffled order (a stable sort).
        for c in range(n_clusters):
            assert torch.equal(rows[ids == c], plain_rows[plain_ids == c])
    if n_clusters > 1:
        assert any(not torch.equal(a[0], b[0]) for a, b in zip(seen[True], seen[False]))


def test_cissvae_epochs_laid_out_in_padded_blocks_train_as_the_segment_products_do(monkeypatch):
    # Batches whose clusters are about equally large reach the loss already in padded cluster
    # blocks, laid out once per epoch; the rest stay grouped. Epoch losses (means over the real
    # rows) and the trained weights must be those of the per-segment path (max_padding=None).
    from ciss_autoimpute.models.registry import build_model

    n, d, n_clusters = 150, 4, 3
    data = make_data(n, d, n_clusters=n_clusters, seed=2)
    # Cluster sizes vary from batch to batch; the last batch (22 rows) is mostly cluster 0.
    ids = torch.randint(0, n_clusters, (n,), generator=torch.Generator().manual_seed(1))
    data = dataclasses.replace(data, clusters=ids)
    seen: list[tuple[bool, int, int]] = []
    config = TrainConfig(epochs=3, batch_size=32, lr=1e-2)
    runs = {}
    for padding in (0.2, None):
        model = build_model("cissvae", data.layout, n_clusters, {"hidden_dims": [8, 6], "latent_dim": 2}, seed=0)
        model.max_padding = padding
        loss = model.loss

        def spy(x, mask, clusters, *, generator=None, loss=loss):
            if padding is not None:
                seen.append((clusters.is_padded, x.shape[0], sum(clusters.counts)))
            return loss(x, mask, clusters, generator=generator)

        monkeypatch.setattr(model, "loss", spy)
        runs[padding] = Trainer(model, config, RefitConfig(max_loops=0), seed=4, device="cpu").fit(data)
    assert len(seen) == 3 * 5
    padded = [(rows, real) for is_padded, rows, real in seen if is_padded]
    assert padded and len(padded) < len(seen)
    assert all(rows > real and rows % n_clusters == 0 for rows, real in padded)
    assert all(rows == real for is_padded, rows, real in seen if not is_padded)
    assert sorted(real for _, _, real in seen[:5]) == [22, 32, 32, 32, 32]
    blocks, segments = runs[0.2], runs[None]
    for a, b in zip(blocks.epoch_history, segments.epoch_history):
        for key in ("loss", "nll", "kl"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
    for k, v in blocks.best_state.items():
        torch.testing.assert_close(v, segments.best_state[k], rtol=1e-4, atol=1e-5)


#: Tensor methods that read a value back to the host: each one waits for the device (on a GPU).
_HOST_READS = frozenset({"item", "tolist", "__int__", "__float__", "__bool__", "__index__"})


class _HostReads(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in _HOST_READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


class _ReadsPerEpoch(Callback):
    """Host reads between consecutive epoch ends (the epoch's steps and its summary)."""

    def __init__(self):
        self.counts: list[int] = []
        self.mode: _HostReads | None = None

    def on_epoch_end(self, trainer, record):
        self.close()
        self.mode = _HostReads()
        self.mode.__enter__()

    def close(self):
        if self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.counts.append(self.mode.count)
            self.mode = None


@pytest.mark.parametrize("family", ["vae", "cissvae", "miwae", "notmiwae", "gain", "mida"])
def test_training_steps_read_nothing_back_from_the_device(family):
    # On a GPU every host read (a cluster id checked with int(), counts with tolist()) stalls
    # the queue of kernels. The Trainer checks the ids once and passes each batch as a
    # ClusterIndex, so an epoch reads the same small number of values however many steps it has.
    from ciss_autoimpute.models.registry import build_model, get_model_class

    n, d = 96, 4
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    observed = torch.rand(n, d, generator=g) > 0.2
    data = EncodedData(x=torch.where(observed, x, 0.0), observed=observed, train_mask=observed,
                       val_mask=torch.zeros_like(observed), x_val=torch.zeros(n, d),
                       clusters=torch.randint(0, 3, (n,), generator=g), n_clusters=3,
                       layout=FeatureLayout.all_numeric(d))
    defaults = get_model_class(family).default_params()
    small = {"hidden_dims": [8], "latent_dim": 2, "n_samples": 3, "missing_hidden_dim": 4}
    reads = {}
    for batch_size in (48, 8):  # 2 and 12 steps per epoch
        model = build_model(family, data.layout, 3, {k: v for k, v in small.items() if k in defaults}, seed=0)
        spy = _ReadsPerEpoch()
        try:
            Trainer(model, TrainConfig(epochs=3, batch_size=batch_size), RefitConfig(max_loops=0), callbacks=[spy],
                    seed=0, device="cpu").fit(data)
        finally:
            spy.close()
        reads[batch_size] = spy.counts[:2]  # epochs 2 and 3 (the last count is after the run)
    assert family != "cissvae" or model.sorts_batches_by_cluster
    assert reads[8] == reads[48], reads
    assert max(reads[8]) <= 2, reads


# --------------------------------------------------------------------------- refit loop
def test_best_loop_state_and_imputations_are_kept_not_the_last():
    data = make_data(val_value=0.0)  # held-out truth 0: each loop's score is |offset|
    model = ScriptedModel(data.layout, data.n_clusters)
    states = []

    class Snap(Callback):
        def on_loop_end(self, trainer, record):
            states.append({k: v.clone() for k, v in trainer.model.state_dict().items()})

    offsets = [0.5, 0.1, 1.0, 2.0, 3.0, 4.0]
    result = Trainer(model, TrainConfig(epochs=2, batch_size=64), RefitConfig(max_loops=5, patience=2, epochs_per_loop=1),
                     callbacks=[OffsetSchedule(offsets), Snap()], device="cpu").fit(data)
    vals = [r["val"] for r in result.loop_history]
    assert vals == pytest.approx([0.5, 0.1, 1.0, 2.0])
    assert result.best_loop == 1 and result.stop_reason == "patience"
    assert result.best_score.total == pytest.approx(0.1)
    assert [r["improved"] for r in result.loop_history] == [True, True, False, False]
    assert [r["best_loop"] for r in result.loop_history] == [0, 1, 1, 1]
    # Weights and buffers of loop 1, not of the last loop (offset 2.0).
    assert float(states[-1]["offset"]) == 2.0
    assert float(result.model.offset) == pytest.approx(0.1)
    assert torch.equal(result.best_state["offset"], states[1]["offset"])
    # Imputations of loop 1; training cells keep their values.
    not_train = ~data.train_mask
    scored = result.scored_imputed
    assert torch.allclose(scored[not_train], torch.full_like(scored[not_train], 0.1))
    assert torch.equal(scored[data.train_mask], data.x[data.train_mask])
    assert validation_score(scored, data).total == pytest.approx(0.1)
    # The kept imputations: loop 1's model on the missing cells, every observed cell as in the data.
    missing = ~data.observed
    assert torch.allclose(result.imputed[missing], torch.full_like(result.imputed[missing], 0.1))
    assert torch.equal(result.imputed[data.val_mask], data.x_val[data.val_mask])
    assert torch.equal(result.imputed[data.train_mask], data.x[data.train_mask])


def test_patience_counts_loops_without_improvement_beyond_min_delta():
    data = make_data(val_value=0.0)

    def run(offsets, refit):
        model = ScriptedModel(data.layout, data.n_clusters)
        return Trainer(model, TrainConfig(epochs=1), refit, callbacks=[OffsetSchedule(offsets)], device="cpu").fit(data)

    worse = [0.1] + [0.5 + 0.1 * k for k in range(10)]
    result = run(worse, RefitConfig(max_loops=10, patience=3, epochs_per_loop=1))
    assert len(result.loop_history) == 4 and result.stop_reason == "patience" and result.best_loop == 0
    assert [r["loops_since_improvement"] for r in result.loop_history] == [0, 1, 2, 3]

    # Always improving: runs to max_loops.
    better = [1.0 - 0.1 * k for k in range(6)]
    result = run(better, RefitConfig(max_loops=4, patience=1, epochs_per_loop=1))
    assert len(result.loop_history) == 5 and result.stop_reason == "max_loops" and result.best_loop == 4

    # Improvements smaller than min_delta do not count.
    tiny = [1.0, 0.999, 0.998, 0.997]
    result = run(tiny, RefitConfig(max_loops=3, patience=2, epochs_per_loop=1, min_delta=0.01))
    assert len(result.loop_history) == 3 and result.best_loop == 0 and result.stop_reason == "patience"


def test_max_loops_zero_is_initial_training_only_and_needs_no_holdout():
    data = make_data(val=0.0)
    result = fit_tiny(data, refit=RefitConfig(max_loops=0))
    assert result.stop_reason == "no_refit" and result.best_loop == 0
    assert len(result.loop_history) == 1 and result.n_epochs == FAST.epochs
    assert math.isnan(result.best_score.total) and result.best_score.n_cells == 0
    with pytest.raises(ValueError, match=r"held-out cells.*val_proportion > 0.*max_loops=0"):
        fit_tiny(data, refit=RefitConfig(max_loops=2))


def test_refit_trains_on_imputations_at_missing_cells():
    data = make_data()
    seen = []

    class Spy(TinyAE):
        def loss(self, x, mask, clusters, *, generator=None):
            seen.append(x[~mask].abs().sum().item())
            return super().loss(x, mask, clusters, generator=generator)

    model = Spy(data.layout, data.n_clusters)
    Trainer(model, TrainConfig(epochs=1, batch_size=1000), RefitConfig(max_loops=1, epochs_per_loop=1),
            device="cpu").fit(data)
    assert seen[0] == 0.0  # initial training: replacement value 0 at non-training cells
    assert seen[1] > 0.0  # refit: the model's imputations fill them


def test_beta_refit_applies_during_refit_only():
    betas = []

    class Spy(Callback):
        def on_epoch_end(self, trainer, record):
            betas.append((record["phase"], trainer.model.beta))

    data = make_data()
    model = TinyAE(data.layout, data.n_clusters, beta=1.0)
    Trainer(model, TrainConfig(epochs=2), RefitConfig(max_loops=1, epochs_per_loop=2, beta_refit=0.25),
            callbacks=[Spy()], device="cpu").fit(data)
    assert betas == [("initial", 1.0)] * 2 + [("refit", 0.25)] * 2
    assert model.beta == 1.0  # restored: the model's config still describes it


# --------------------------------------------------------------------------- failures
def test_nan_loss_raises_training_diverged_with_epoch_and_hint():
    data = make_data()
    model = ScriptedModel(data.layout, data.n_clusters)
    model.nan_loss = True
    with pytest.raises(TrainingDivergedError, match=r"loss became nan in epoch 1 \(initial phase, loop 0\).*lower "
                                                    r"TrainConfig.lr"):
        Trainer(model, TrainConfig(epochs=3), device="cpu").fit(data)


def test_divergence_in_a_refit_loop_names_the_loop():
    class Breaker(Callback):
        def on_loop_end(self, trainer, record):
            if record["loop"] == 1:
                trainer.model.nan_loss = True

    data = make_data()
    with pytest.raises(TrainingDivergedError, match=r"epoch 4 \(refit phase, loop 2\)"):
        Trainer(ScriptedModel(data.layout, data.n_clusters), TrainConfig(epochs=2), RefitConfig(max_loops=3, epochs_per_loop=1),
                callbacks=[Breaker()], device="cpu").fit(data)


def test_huge_learning_rate_diverges_loudly():
    data = make_data()
    model = TinyAE(data.layout, data.n_clusters)
    with pytest.raises(TrainingDivergedError, match=r"lower TrainConfig.lr, enable TrainConfig.grad_clip"):
        Trainer(model, TrainConfig(epochs=50, lr=1e30, grad_clip=None, decay_factor=1.0), device="cpu").fit(data)


def test_nan_imputations_raise_training_diverged():
    data = make_data()
    model = ScriptedModel(data.layout, data.n_clusters)
    model.nan_impute = True
    with pytest.raises(TrainingDivergedError, match=r"NaN or infinite imputations after epoch 2 \(loop 0\)"):
        Trainer(model, TrainConfig(epochs=2), device="cpu").fit(data)


def test_callback_exception_propagates_out_of_fit():
    class Boom(RuntimeError):
        pass

    class Raiser(Callback):
        def on_loop_end(self, trainer, record):
            if record["loop"] == 1:
                raise Boom(f"pruned at step {record['loop']} with value {record['val']:.3f}")

    with pytest.raises(Boom, match=r"pruned at step 1 with value \d"):
        fit_tiny(callbacks=[Raiser()])


@pytest.mark.parametrize(
    "mutate, exc, match",
    [
        (lambda d: d.__setattr__("clusters", d.clusters + 5), ValueError, r"clusters holds ids 5..6.*n_clusters=2"),
        (lambda d: d.x.__setitem__((0, 0), float("nan")), ValueError, r"data.x contains NaN"),
        (lambda d: d.__setattr__("train_mask", d.train_mask.float()), TypeError, r"data.train_mask must be a bool"),
        (lambda d: d.__setattr__("x_val", d.x_val[:, :2]), ValueError, r"data.x_val has shape \(120, 2\)"),
        (lambda d: d.__setattr__("clusters", d.clusters.int()), TypeError, r"clusters must be an int64 tensor"),
        (lambda d: d.__setattr__("layout", FeatureLayout(4, numeric=(0, 1), binary=(2, 3))), ValueError,
         r"data.layout does not match the model's layout"),
    ],
)
def test_bad_data_is_rejected_before_training(mutate, exc, match):
    data = make_data()
    model = TinyAE(data.layout, data.n_clusters)
    mutate(data)
    with pytest.raises(exc, match=match):
        Trainer(model, FAST, device="cpu").fit(data)


def test_bad_arguments_are_rejected():
    data = make_data()
    model = TinyAE(data.layout, 2)
    with pytest.raises(TypeError, match=r"fit expects an EncodedData, got Tensor"):
        Trainer(model, device="cpu").fit(data.x)
    with pytest.raises(ValueError, match=r"data has 4 encoded columns but the model was built for 3"):
        Trainer(TinyAE(FeatureLayout.all_numeric(3), 2), device="cpu").fit(data)
    with pytest.raises(TypeError, match=r"model must be an ImputationModel, got Linear"):
        Trainer(nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"callbacks must be Callback instances, got function"):
        Trainer(model, callbacks=[lambda *a: None])
    with pytest.raises(ValueError, match=r"Unknown device 'gpu0'"):
        Trainer(model, device="gpu0")
    with pytest.raises(ValueError, match=r"seed must be a non-negative integer, got -1"):
        Trainer(model, seed=-1)


# --------------------------------------------------------------------------- randomness / leakage
def test_same_seed_same_result_different_seed_different():
    a = fit_tiny(seed=3)
    b = fit_tiny(seed=3)
    c = fit_tiny(seed=4)
    assert torch.equal(a.imputed, b.imputed)
    assert [r["loss"] for r in a.epoch_history] == [r["loss"] for r in b.epoch_history]
    assert [r["val"] for r in a.loop_history] == [r["val"] for r in b.loop_history]
    assert not torch.equal(a.imputed, c.imputed)


def test_kept_imputations_read_the_held_out_cells_once_scoring_is_done():
    # Four near-copies of one factor: a row's held-out cells tell much about its missing ones.
    g = torch.Generator().manual_seed(3)
    n, d = 600, 4
    full = torch.randn(n, 1, generator=g).expand(n, d) + 0.1 * torch.randn(n, d, generator=g)
    observed = torch.rand(n, d, generator=g) > 0.3
    val_mask = observed & (torch.rand(n, d, generator=g) < 0.3)
    train = observed & ~val_mask
    zero = torch.zeros(())
    data = EncodedData(
        x=torch.where(train, full, zero), observed=observed, train_mask=train, val_mask=val_mask,
        x_val=torch.where(val_mask, full, zero), clusters=torch.zeros(n, dtype=torch.long), n_clusters=1,
        layout=FeatureLayout.all_numeric(d),
    )
    result = fit_tiny(data, train=TrainConfig(epochs=20, lr=1e-2, batch_size=32))
    # The kept imputations are one pass of the kept model given every observed cell,
    # with the scored pass's imputations as the missing cells' fillers.
    given_all = torch.where(val_mask, data.x_val, result.scored_imputed)
    assert torch.allclose(result.imputed, impute_all(result.model, given_all, observed, data.clusters))
    # ... and, in rows that had cells held out, closer to the truth than the scored pass.
    missing = ~observed & val_mask.any(1, keepdim=True)
    assert int(missing.sum()) > 50
    err_scored = float((result.scored_imputed - full)[missing].square().mean())
    err_kept = float((result.imputed - full)[missing].square().mean())
    assert err_kept < 0.8 * err_scored
    # The score still comes from the pass that never saw the holdout.
    assert result.best_score.total == pytest.approx(validation_score(result.scored_imputed, data).total)


def test_held_out_values_never_reach_the_model_and_data_is_not_modified():
    sentinel = 1e6
    data = make_data(val_value=sentinel)
    before = {k: getattr(data, k).clone() for k in ("x", "observed", "train_mask", "val_mask", "x_val", "clusters")}
    largest = []

    class Spy(TinyAE):
        def loss(self, x, mask, clusters, *, generator=None):
            largest.append(("loss", float(x.abs().max())))
            return super().loss(x, mask, clusters, generator=generator)

        def impute(self, x, mask, clusters, *, generator=None):
            largest.append(("impute", float(x.abs().max())))
            return super().impute(x, mask, clusters, generator=generator)

    model = Spy(data.layout, data.n_clusters)
    result = Trainer(model, TrainConfig(epochs=3, val_every=1), RefitConfig(max_loops=2, patience=5, epochs_per_loop=2),
                     device="cpu").fit(data)
    assert len(result.loop_history) == 3
    # Training and scoring never see the holdout; only the last pass, after every loop
    # was scored, reads the held-out values as inputs (the kept imputations).
    *during, (last_kind, last_max) = largest
    assert len(during) > 10 and max(v for _, v in during) < 100.0
    assert last_kind == "impute" and last_max == sentinel
    assert result.best_score.numeric_rmse > sentinel / 2  # the metric did read the holdout
    for k, v in before.items():
        assert torch.equal(getattr(data, k), v), k


# --------------------------------------------------------------------------- records and callbacks
def test_records_hold_documented_fields():
    result = fit_tiny(train=TrainConfig(epochs=4, val_every=2, batch_size=32),
                      refit=RefitConfig(max_loops=1, epochs_per_loop=2))
    first = result.epoch_history[0]
    assert {"phase", "loop", "epoch", "loss", "nll", "kl", "lr", "seconds"} <= set(first)
    assert [r["epoch"] for r in result.epoch_history] == list(range(1, 7))
    assert ["val" in r for r in result.epoch_history] == [False, True, False, True, False, False]
    assert first["loss"] == pytest.approx(first["nll"] + first["kl"], rel=1e-5)
    loop = result.loop_history[1]
    assert {"loop", "val", "per_cluster", "numeric_rmse", "n_cells", "improved", "best_loop", "best_val",
            "loops_since_improvement", "epochs", "lr", "seconds"} <= set(loop)
    assert set(loop["per_cluster"]) == {0, 1} and loop["epochs"] == 2
    assert result.n_epochs == 6 and result.seconds > 0
    frame = history_frame(result.loop_history)
    assert list(frame["loop"]) == [0, 1] and "per_cluster_1" in frame.columns
    assert len(result.epoch_frame()) == 6


def test_history_callback_collects_the_latest_fit_only():
    history = History()
    fit_tiny(callbacks=[history], refit=RefitConfig(max_loops=1, epochs_per_loop=1))
    result = fit_tiny(callbacks=[history], refit=RefitConfig(max_loops=1, epochs_per_loop=2))
    assert len(history.epochs) == FAST.epochs + 2 and len(history.loops) == 2
    assert history.loops == result.loop_history
    assert list(history.frame("epochs")["epoch"]) == list(range(1, FAST.epochs + 3))


def test_progress_logger_logs_and_never_prints(caplog, capsys):
    with caplog.at_level(logging.INFO, logger="ciss_autoimpute.training"):
        fit_tiny(callbacks=[ProgressLogger(every=2)], refit=RefitConfig(max_loops=1, epochs_per_loop=2))
    messages = [r.getMessage() for r in caplog.records]
    assert sum("epoch" in m and "loss" in m for m in messages) == 3  # epochs 2, 4, 6 of 7
    assert any(m.startswith("loop 1: val") for m in messages)
    assert any(m.startswith("done after 7 epochs") for m in messages)
    assert capsys.readouterr() == ("", "")
    with pytest.raises(ValueError, match=r"every must be a positive integer, got 0"):
        ProgressLogger(every=0)


def test_request_stop_and_time_budget_end_training_gracefully():
    result = fit_tiny(callbacks=[TimeBudget(1e-9)], refit=RefitConfig(max_loops=5, epochs_per_loop=2))
    assert result.stop_reason == "time_budget" and result.n_epochs == 1 and len(result.loop_history) == 1

    class StopAfterLoop(Callback):
        def on_loop_end(self, trainer, record):
            if record["loop"] == 2:
                trainer.request_stop("enough")
            assert trainer.should_stop == (record["loop"] >= 2)

    result = fit_tiny(callbacks=[StopAfterLoop()], refit=RefitConfig(max_loops=5, patience=5, epochs_per_loop=1))
    assert result.stop_reason == "enough" and len(result.loop_history) == 3
    with pytest.raises(ValueError, match=r"TimeBudget seconds must be a positive number, got 0"):
        TimeBudget(0)


def test_duck_typed_callbacks_with_all_hooks_are_accepted():
    class Reporter:  # e.g. a pruning callback written without importing Callback
        def __init__(self):
            self.steps = []

        def on_fit_start(self, trainer, data):
            pass

        def on_epoch_end(self, trainer, record):
            pass

        def on_loop_end(self, trainer, record):
            self.steps.append((record["loop"], record["val"]))

        def on_fit_end(self, trainer, result):
            pass

    reporter = Reporter()
    result = fit_tiny(callbacks=[reporter])
    assert reporter.steps == [(r["loop"], r["val"]) for r in result.loop_history]

    class Partial:
        def on_loop_end(self, trainer, record):
            pass

    with pytest.raises(TypeError, match=r"got Partial \(missing \['on_fit_start', 'on_epoch_end', 'on_fit_end'\]\)"):
        fit_tiny(callbacks=[Partial()])


def test_metric_weights_reach_the_score():
    data = make_data()
    result = fit_tiny(data, metric_weights=MetricWeights(numeric=2.0))
    assert result.best_score.total == pytest.approx(validation_score(result.scored_imputed, data).total)
    with pytest.raises(TypeError, match=r"metric_weights must be a MetricWeights or None, got dict"):
        fit_tiny(data, metric_weights={"numeric": 1.0})


# --------------------------------------------------------------------------- impute_all
def test_impute_all_chunks_match_one_pass_and_keep_observed():
    data = make_data()
    model = TinyAE(data.layout, data.n_clusters)
    model.train()
    one = impute_all(model, data.x, data.train_mask, data.clusters, 10_000)
    chunked = impute_all(model, data.x, data.train_mask, data.clusters, 7)
    assert torch.allclose(one, chunked, atol=1e-6)
    assert torch.equal(one[data.train_mask], data.x[data.train_mask])
    raw = impute_all(model, data.x, data.train_mask, data.clusters, keep_observed=False)
    assert torch.allclose(raw[~data.train_mask], one[~data.train_mask])
    assert not torch.allclose(raw[data.train_mask], data.x[data.train_mask])
    assert model.training  # mode restored
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer, got 0"):
        impute_all(model, data.x, data.train_mask, data.clusters, 0)


def test_trained_model_beats_mean_imputation_on_holdout():
    data = make_data(n=300, d=6)
    result = fit_tiny(data, train=TrainConfig(epochs=60, lr=1e-2, batch_size=64),
                      refit=RefitConfig(max_loops=3, epochs_per_loop=10))
    mean_score = validation_score(torch.zeros_like(data.x), data).total
    assert result.best_score.total < 0.8 * mean_score


# --------------------------------------------------------------------------- lean optimiser step
def _reference_fit(data, train, seed):
    """Initial training as the Trainer runs it, with torch.optim.Adam and clip_grad_norm_."""
    model = TinyAE(data.layout, data.n_clusters, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=train.lr, weight_decay=train.weight_decay, fused=True)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=train.decay_factor)
    gen = torch.Generator().manual_seed(seed)
    n, bs = data.n_rows, train.batch_size
    losses = []
    for _ in range(train.epochs):
        perm = torch.randperm(n, generator=gen)
        x, mask, clusters = data.x[perm], data.train_mask[perm], data.clusters[perm]
        total = torch.zeros(())
        for s in range(0, n, bs):
            out = model.loss(x[s:s + bs], mask[s:s + bs], clusters[s:s + bs], generator=gen)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            if train.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
            opt.step()
            total.add_(out.loss.detach(), alpha=x[s:s + bs].shape[0])
        losses.append((total / n).item())
        sched.step()
    return model, losses


@pytest.mark.parametrize("clip, weight_decay", [(0.05, 0.0), (None, 1e-2), (5.0, 1e-3)])
def test_trainer_steps_match_plain_adam_and_clip_grad_norm(clip, weight_decay):
    # The packed buffers and the one-call Adam step are Adam and clip_grad_norm_ up to float
    # rounding (the fused kernel's tail loop and the order of the norm's sum): same weights
    # and epoch losses as torch.optim.Adam + clip_grad_norm_ to 1e-6 after 16 steps.
    data = make_data()
    train = TrainConfig(epochs=4, lr=2e-2, batch_size=32, grad_clip=clip, weight_decay=weight_decay,
                        decay_factor=0.9)
    result = fit_tiny(data, train=train, refit=RefitConfig(max_loops=0), seed=5)
    assert isinstance(result.model, TinyAE)
    reference, losses = _reference_fit(data, train, seed=5)
    for (name, p), q in zip(result.model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6, msg=name)
    assert [r["loss"] for r in result.epoch_history] == pytest.approx(losses, rel=1e-6)
    # A different update would be far off: one step of Adam moves every weight by ~lr.
    moved = torch.cat([(p - q).reshape(-1) for p, q in zip(reference.parameters(), TinyAE(
        data.layout, data.n_clusters, seed=0).parameters())])
    assert moved.abs().max() > 1e-2


def test_clipping_is_active_in_the_bit_identity_check():
    # Guards the test above: with grad_clip=0.05 the gradients really are scaled down.
    data = make_data()
    model = TinyAE(data.layout, data.n_clusters)
    model.loss(data.x[:32], data.train_mask[:32], data.clusters[:32], generator=torch.Generator()).loss.backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert norm > 0.05


def test_flat_grads_views_share_one_buffer_and_are_released_after_fit():
    data = make_data()
    model = TinyAE(data.layout, data.n_clusters)
    params = list(model.parameters())
    grads = FlatGrads(params)
    assert grads.grad.numel() == sum(p.numel() for p in params)
    for p, view in zip(params, grads.views):
        assert p.grad is view and p.grad.untyped_storage().data_ptr() == grads.grad.untyped_storage().data_ptr()
    # Autograd accumulates into the views; zero_grad zeroes them all at once.
    model.loss(data.x, data.train_mask, data.clusters, generator=torch.Generator()).loss.backward()
    assert grads.grad.abs().sum() > 0 and all(p.grad is v for p, v in zip(params, grads.views))
    grads.zero_grad()
    assert not grads.grad.any()
    # Code that resets the gradients (model.zero_grad sets them to None) is repaired.
    model.zero_grad()
    out = model.loss(data.x, data.train_mask, data.clusters, generator=torch.Generator()).loss
    out.backward()
    fresh = [p.grad.clone() for p in params]
    grads.sync()
    assert all(p.grad is v for p, v in zip(params, grads.views))
    assert all(torch.equal(v, f) for v, f in zip(grads.views, fresh))
    # zero_grad puts the views back too (a stale gradient must not leak into the next step).
    model.zero_grad()
    params[0].grad = torch.ones_like(params[0])
    grads.zero_grad()
    assert all(p.grad is v for p, v in zip(params, grads.views)) and not grads.grad.any()
    with pytest.raises(ValueError, match=r"same parameter twice"):
        FlatGrads([params[0], params[0]])
    with pytest.raises(ValueError, match=r"one device with one dtype"):
        FlatGrads([params[0], nn.Parameter(torch.zeros(2, dtype=torch.float64))])

    # After a fit the model is an ordinary module: no gradient or parameter aliases another one.
    result = fit_tiny(data)
    ptrs = [p.grad.untyped_storage().data_ptr() for p in result.model.parameters() if p.grad is not None]
    assert len(set(ptrs)) == len(ptrs)
    ptrs = [p.untyped_storage().data_ptr() for p in result.model.parameters()]
    assert len(set(ptrs)) == len(ptrs)


def test_flat_grads_pack_the_parameter_values_and_keep_them_packed():
    data = make_data()
    model = TinyAE(data.layout, data.n_clusters, seed=3)
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    grads = FlatGrads(params)
    # Same parameter objects and values, now views of one buffer.
    assert [p for p in model.parameters()] == params
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    storage = grads.data.untyped_storage().data_ptr()
    assert all(p.untyped_storage().data_ptr() == storage for p in params)
    grads.data.add_(1.0)
    assert all(torch.equal(p, b + 1.0) for p, b in zip(params, before))
    # Code that gives a parameter new values of the same shape is repaired by sync().
    params[1].data = torch.full_like(params[1], 7.0)
    grads.sync()
    assert params[1].untyped_storage().data_ptr() == storage and bool((params[1] == 7.0).all())
    assert bool((grads.views[1] == 0).all())
    # A changed shape or dtype cannot be repaired: a clear error, not a silent mix.
    params[0].data = params[0].detach().double()
    with pytest.raises(RuntimeError, match=r"parameter 0 of this update step changed from .*float32.* to .*float64"):
        grads.sync()
    grads.release()
    ptrs = [p.untyped_storage().data_ptr() for p in params]
    assert len(set(ptrs)) == len(ptrs)

    # During a fit the parameters stay packed: the optimiser updates the buffer they view.
    # Afterwards each one has its own storage from before the fit back, with the trained
    # values: references taken before training (an uncloned state_dict) see them.
    model = TinyAE(data.layout, data.n_clusters, seed=3)
    live = model.state_dict()
    start = {k: v.clone() for k, v in live.items()}
    ptrs = {k: v.data_ptr() for k, v in live.items()}
    result = Trainer(model, FAST, RefitConfig(max_loops=1, epochs_per_loop=2), seed=0, device="cpu").fit(data)
    trained = result.model.state_dict()
    assert all(trained[k].data_ptr() == ptrs[k] and torch.equal(trained[k], live[k]) for k in live)
    assert any(not torch.equal(live[k], start[k]) for k in live)
    seen = []

    class Probe(Callback):
        def on_epoch_end(self, trainer, record):
            flat = trainer._flat[0]
            seen.append(all(p.untyped_storage().data_ptr() == flat.data.untyped_storage().data_ptr()
                            for p in trainer.model.parameters()))

    fit_tiny(data, callbacks=[Probe()])
    assert seen and all(seen)


def _backward_on_rows(model, data, start=0, rows=32):
    """Gradients of ``model``'s loss on ``rows`` rows of ``data`` from ``start`` (fixed noise)."""
    sl = slice(start, start + rows)
    model.loss(data.x[sl], data.train_mask[sl], data.clusters[sl],
               generator=torch.Generator().manual_seed(0)).loss.backward()


def test_flat_adam_keeps_its_moments_in_buffers_with_one_step_counter():
    data = make_data()
    model = TinyAE(data.layout, data.n_clusters, seed=2)
    grads = FlatGrads(list(model.parameters()))
    opt = FlatAdam(grads, lr=1e-2)
    for s in range(0, 96, 32):
        opt.zero_grad()
        _backward_on_rows(model, data, s)
        opt.lean_step()
    states = [opt.state[p] for p in grads.params]
    assert len({id(st["step"]) for st in states}) == 1 and float(states[0]["step"]) == 3.0
    for key in ("exp_avg", "exp_avg_sq"):
        assert len({st[key].untyped_storage().data_ptr() for st in states}) == 1
        assert all(st[key].shape == p.shape for st, p in zip(states, grads.params))
    assert float(states[0]["exp_avg_sq"].abs().sum()) > 0
    # A second parameter group leaves the buffers: Adam's own step, one count per parameter.
    extra = nn.Parameter(torch.zeros(3))
    opt.add_param_group({"params": [extra]})
    extra.grad = torch.ones(3)
    opt.step()
    counts = [float(opt.state[p]["step"]) for p in grads.params]
    assert counts == [4.0] * len(counts) and float(opt.state[extra]["step"]) == 1.0


def test_flat_adam_with_a_loaded_state_of_unequal_step_counts_runs_adams_own_step():
    # A state whose parameters were stepped different numbers of times cannot share one step
    # counter: FlatAdam then runs Adam.step, as torch.optim.Adam would, and counts each once.
    data = make_data()

    def backward(model):
        model.zero_grad()
        _backward_on_rows(model, data)

    a = TinyAE(data.layout, data.n_clusters, seed=2)
    ga = FlatGrads(list(a.parameters()))
    opt_a = FlatAdam(ga, lr=1e-2)
    for _ in range(2):
        opt_a.zero_grad()
        backward(a)
        opt_a.lean_step()
    # Its state dict gives every parameter a counter of its own (the live one is shared).
    saved = opt_a.state_dict()["state"]
    assert len({id(v["step"]) for v in saved.values()}) == len(saved) == len(ga.params)
    # A state with one counter object for several parameters (and a different count for one).
    state = copy.deepcopy(opt_a.state_dict())
    shared = torch.tensor(2.0)
    for v in state["state"].values():
        v["step"] = shared
    state["state"][0]["step"] = torch.tensor(5.0)
    b, ref = TinyAE(data.layout, data.n_clusters, seed=9), TinyAE(data.layout, data.n_clusters, seed=9)
    b.load_state_dict(a.state_dict())
    ref.load_state_dict(a.state_dict())
    gb = FlatGrads(list(b.parameters()))
    opt_b = FlatAdam(gb, lr=1e-2)
    opt_b.load_state_dict(state)
    opt_ref = torch.optim.Adam(ref.parameters(), lr=1e-2, fused=True)
    ref_state = copy.deepcopy(state)
    for v in ref_state["state"].values():
        v["step"] = v["step"].clone()
    opt_ref.load_state_dict(ref_state)
    for _ in range(2):
        opt_b.zero_grad()
        backward(b)
        opt_b.lean_step()
        backward(ref)
        opt_ref.step()
    assert [float(opt_b.state[p]["step"]) for p in gb.params][:2] == [7.0, 4.0]
    for p, q in zip(b.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_lean_step_skips_the_step_wrappers_only_when_nothing_listens(recwarn):
    data = make_data()
    model = TinyAE(data.layout, data.n_clusters, seed=2)
    grads = FlatGrads(list(model.parameters()))
    opt = FlatAdam(grads, lr=1e-2)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)

    def backward():
        opt.zero_grad()
        _backward_on_rows(model, data)

    backward()
    opt.lean_step()
    sched.step()  # no "lr_scheduler.step() before optimizer.step()" warning: the flag is set
    assert not [w for w in recwarn if "optimizer.step()" in str(w.message)]
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-3)
    # A registered step hook must run: lean_step then goes through step().
    calls = []
    handle = opt.register_step_post_hook(lambda *a: calls.append(1))
    backward()
    opt.lean_step()
    handle.remove()
    backward()
    opt.lean_step()
    assert calls == [1]
    # Under the profiler the step keeps its usual record.
    from torch.profiler import profile

    backward()
    with profile() as prof:
        opt.lean_step()
    assert any("Optimizer.step#FlatAdam.step" in e.key for e in prof.key_averages())


def test_refit_of_the_same_trainer_repeats_the_first_fit():
    # The gradient buffers are built per fit and released after it; a second fit of the
    # same trainer (new model state, same seed) must give the same result as the first.
    data = make_data()
    model = TinyAE(data.layout, data.n_clusters, seed=0)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, FAST, RefitConfig(max_loops=1, epochs_per_loop=2), seed=1, device="cpu")
    first = trainer.fit(data)
    first_losses = [r["loss"] for r in first.epoch_history]
    first_imputed = first.imputed.clone()
    model.load_state_dict(initial)
    second = trainer.fit(data)
    assert [r["loss"] for r in second.epoch_history] == first_losses
    assert torch.equal(second.imputed, first_imputed)
    # The best state loads back into the model through the usual state_dict path.
    assert all(torch.equal(second.model.state_dict()[k], v) for k, v in second.best_state.items())


def test_flat_adam_state_dict_round_trip_continues_identically():
    data = make_data()
    batches = [(data.x[s:s + 40], data.train_mask[s:s + 40], data.clusters[s:s + 40]) for s in range(0, 120, 40)]

    def run(model, opt, grads, items):
        for xb, mb, cb in items:
            opt.zero_grad()
            model.loss(xb, mb, cb, generator=torch.Generator().manual_seed(0)).loss.backward()
            grads.clip_grad_norm_(1.0)
            opt.step()

    a = TinyAE(data.layout, data.n_clusters, seed=2)
    ga = FlatGrads(list(a.parameters()))
    opt_a = FlatAdam(ga, lr=1e-2, weight_decay=1e-3)
    run(a, opt_a, ga, batches[:2])
    b = TinyAE(data.layout, data.n_clusters, seed=9)
    b.load_state_dict(a.state_dict())
    gb = FlatGrads(list(b.parameters()))
    opt_b = FlatAdam(gb, lr=1e-2, weight_decay=1e-3)
    # Deep-copied, as a saved and reloaded checkpoint would be (state_dict returns live tensors).
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    assert set(opt_a.state_dict()["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    run(a, opt_a, ga, batches[2:])
    run(b, opt_b, gb, batches[2:])
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


class PartsModel(TinyAE):
    """TinyAE whose loss parts change after ``switch`` calls: ``kind`` says how."""

    name = "parts_test"

    def __init__(self, *a, switch=None, kind="dtype", **k):
        super().__init__(*a, **k)
        self.switch, self.kind, self.calls = switch, kind, 0

    def loss(self, x, mask, clusters, *, generator=None):
        out = super().loss(x, mask, clusters, generator=generator)
        self.calls += 1
        if self.switch is not None and self.calls > self.switch:
            if self.kind == "dtype":
                out.parts["kl"] = out.parts["kl"].double()
            elif self.kind == "shape":
                out.parts["kl"] = out.parts["kl"].reshape(1)
            else:
                out.parts["rows"] = torch.tensor(float(x.shape[0]))
        return out


@pytest.mark.parametrize("switch", [0, 2])
@pytest.mark.parametrize("kind", ["dtype", "shape", "names"])
def test_epoch_parts_are_row_weighted_means_when_parts_change_mid_epoch(switch, kind):
    # Parts that are not float32 scalars, or whose names change within an epoch, leave the
    # one-vector fast path for the per-part sums; the record must not notice.
    data = make_data(n=100)
    plain = Trainer(PartsModel(data.layout, data.n_clusters), TrainConfig(epochs=1, batch_size=32),
                    RefitConfig(max_loops=0), seed=0, device="cpu").fit(data)
    mixed = Trainer(PartsModel(data.layout, data.n_clusters, switch=switch, kind=kind),
                    TrainConfig(epochs=1, batch_size=32), RefitConfig(max_loops=0), seed=0, device="cpu").fit(data)
    a, b = plain.epoch_history[0], mixed.epoch_history[0]
    for key in ("loss", "nll", "kl"):
        assert b[key] == pytest.approx(a[key], rel=1e-6), key
    if kind == "names":
        # Four batches of 32, 32, 32, 4 rows; "rows" appears from batch switch + 1 on.
        sizes = [32, 32, 32, 4][switch:]
        assert b["rows"] == pytest.approx(sum(r * r for r in sizes) / 100)


def test_lean_adam_falls_back_to_adam_step_when_the_private_kernel_changes(monkeypatch):
    # torch._fused_adam_ is private: a release that changes it must cost speed, not results.
    data = make_data()
    train = TrainConfig(epochs=3, lr=2e-2, batch_size=32, grad_clip=0.05, decay_factor=0.9)
    expected = fit_tiny(data, train=train, refit=RefitConfig(max_loops=0), seed=5)
    calls = {"n": 0}

    def changed_signature(*args, **kwargs):
        calls["n"] += 1
        raise TypeError("_fused_adam_() got an unexpected keyword argument 'beta1'")

    # Only the lean step's handle changes; Adam.step keeps reaching the real kernel.
    monkeypatch.setattr(flat_module, "_fused_adam_kernel", changed_signature)
    got = fit_tiny(data, train=train, refit=RefitConfig(max_loops=0), seed=5)
    assert calls["n"] == 1  # tried once, then Adam.step for good
    for (name, p), q in zip(got.model.named_parameters(), expected.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6, msg=name)
