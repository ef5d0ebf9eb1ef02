"""TrainConfig(batch_size="auto"): the resolution rule, validation, recording and round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ciss_autoimpute.data.dataset import ClusterDataset
from ciss_autoimpute.models.registry import build_model
from ciss_autoimpute.training import (
    AUTO_BATCH_SIZE,
    RefitConfig,
    TrainConfig,
    Trainer,
    configs_from_dict,
    resolve_batch_size,
)
from ciss_autoimpute.tuning.params import Categorical, Fixed
from ciss_autoimpute.tuning.search_space import SearchSpace


def small_dataset(n_rows: int = 300, seed: int = 0) -> ClusterDataset:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n_rows, 2))
    x = z @ rng.standard_normal((2, 5)) + 0.3 * rng.standard_normal((n_rows, 5))
    x[rng.random(x.shape) < 0.2] = np.nan
    return ClusterDataset(x.astype(np.float32), clusters=np.zeros(n_rows, dtype=np.int64), val_proportion=0.1,
                          seed=seed, device="cpu")


def fit(ds: ClusterDataset, batch_size, family: str = "vae", epochs: int = 3):
    model = build_model(family, ds.layout, ds.n_clusters, {}, seed=0)
    trainer = Trainer(model, TrainConfig(epochs=epochs, batch_size=batch_size),
                      RefitConfig(max_loops=1, epochs_per_loop=1), seed=3, device="cpu")
    return trainer, trainer.fit(ds.data)


# ------------------------------------------------------------------ the rule
@pytest.mark.parametrize("n_rows", [0, 1, 255, 256, 1_000, 25_600, 25_699])
def test_auto_is_256_up_to_25600_rows(n_rows):
    assert resolve_batch_size("auto", n_rows) == 256


@pytest.mark.parametrize(
    "n_rows, expected",
    [(25_700, 257), (51_200, 512), (100_000, 1_000), (409_600, 4_096), (1_000_000, 4_096), (10**8, 4_096)],
)
def test_auto_grows_with_rows_up_to_the_cap(n_rows, expected):
    assert resolve_batch_size("auto", n_rows) == expected


def test_auto_is_monotone_and_bounded():
    sizes = [resolve_batch_size("auto", n) for n in range(0, 600_000, 997)]
    assert sizes == sorted(sizes) and min(sizes) == 256 and max(sizes) == 4096


def test_integer_batch_size_passes_through():
    assert resolve_batch_size(64, 100_000) == 64
    assert resolve_batch_size(5_000, 10) == 5_000  # larger than the data: one batch per epoch


def test_default_is_auto():
    assert TrainConfig().batch_size == AUTO_BATCH_SIZE == "auto"


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "value, exc, match",
    [
        ("Auto", ValueError, r"TrainConfig\.batch_size must be a positive integer or 'auto', got 'Auto'; .*\"auto\""),
        ("", ValueError, r"TrainConfig\.batch_size must be a positive integer or 'auto', got ''"),
        (0, ValueError, r"TrainConfig\.batch_size must be >= 1, got 0; pass a positive number of rows"),
        (-5, ValueError, r"TrainConfig\.batch_size must be >= 1, got -5"),
        (1.5, TypeError, r"TrainConfig\.batch_size must be a positive integer or 'auto', got 1\.5 \(float\)"),
        (True, TypeError, r"TrainConfig\.batch_size must be a positive integer or 'auto', got True \(bool\)"),
        (None, TypeError, r"TrainConfig\.batch_size must be a positive integer or 'auto', got None"),
    ],
)
def test_bad_batch_size_is_rejected(value, exc, match):
    with pytest.raises(exc, match=match):
        TrainConfig(batch_size=value)


def test_resolve_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer or 'auto', got 'big'"):
        resolve_batch_size("big", 100)
    with pytest.raises(ValueError, match=r"n_rows must be a non-negative integer, got -1"):
        resolve_batch_size("auto", -1)
    with pytest.raises(TypeError, match=r"batch_size must be a positive integer or 'auto', got 2\.0"):
        resolve_batch_size(2.0, 100)


# ------------------------------------------------------------------ round trips
def test_json_round_trip_keeps_auto():
    train = TrainConfig(epochs=7, batch_size="auto")
    flat = json.loads(json.dumps({**train.to_dict(), **RefitConfig().to_dict()}))
    assert flat["batch_size"] == "auto"
    back, _ = configs_from_dict(flat)
    assert back == train and back.batch_size == "auto"
    assert configs_from_dict({"batch_size": 128})[0].batch_size == 128


def test_search_space_accepts_auto_and_plain_fit_keeps_256_among_int_choices():
    fixed = SearchSpace(["vae"], train={"batch_size": Fixed("auto")})
    assert fixed.fixed_config("vae").train_params["batch_size"] == "auto"
    tuned = SearchSpace(["vae"], train={"batch_size": Categorical((64, 128, 256))})
    assert tuned.fixed_config("vae").train_params["batch_size"] == 256
    with_auto = SearchSpace(["vae"], train={"batch_size": Categorical((64, "auto"))})
    assert with_auto.fixed_config("vae").train_params["batch_size"] == "auto"


# ------------------------------------------------------------------ the Trainer
def test_auto_trains_exactly_like_256_on_small_data_and_is_recorded():
    ds = small_dataset()
    trainer_auto, auto = fit(ds, "auto")
    _, fixed = fit(ds, 256)
    assert auto.batch_size == fixed.batch_size == trainer_auto.batch_size == 256
    assert [r["batch_size"] for r in auto.loop_history] == [256, 256]
    assert torch.equal(auto.imputed, fixed.imputed)
    assert [r["loss"] for r in auto.epoch_history] == [r["loss"] for r in fixed.epoch_history]


def test_integer_batch_size_is_recorded_and_changes_training():
    ds = small_dataset()
    _, r64 = fit(ds, 64)
    _, r256 = fit(ds, 256)
    assert r64.batch_size == 64 and r64.loop_history[0]["batch_size"] == 64
    # 300 rows: 5 steps per epoch at 64 against 2 at 256, so the runs differ.
    assert r64.epoch_history[0]["loss"] != r256.epoch_history[0]["loss"]


def test_auto_uses_the_resolved_size_per_fit(monkeypatch):
    # The rule's large-data branch, without training on 100k rows: shrink the threshold.
    import ciss_autoimpute.training.config as config

    monkeypatch.setattr(config, "AUTO_BATCH_MIN", 16)
    monkeypatch.setattr(config, "AUTO_ROWS_PER_STEP_DIVISOR", 10)
    ds = small_dataset(n_rows=400)
    steps = []
    trainer, result = fit(ds, "auto", epochs=1)
    assert result.batch_size == 40 == trainer.batch_size
    model = build_model("vae", ds.layout, ds.n_clusters, {}, seed=0)
    original = model.loss

    def counting(x, *a, **kw):
        steps.append(x.shape[0])
        return original(x, *a, **kw)

    monkeypatch.setattr(model, "loss", counting)
    Trainer(model, TrainConfig(epochs=1, batch_size="auto"), RefitConfig(max_loops=0), device="cpu").fit(ds.data)
    assert steps == [40] * 10


def test_closed_form_family_records_no_batch_size():
    _, result = fit(small_dataset(), "auto", family="mean")
    assert result.batch_size is None and result.loop_history[0]["batch_size"] is None
