"""TrainConfig.precision: bfloat16 matrix products under autocast, float32 everywhere else."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ciss_autoimpute import Imputer
from ciss_autoimpute.models.layers import ClusterLinear
from ciss_autoimpute.training import PRECISIONS, TrainConfig, configs_from_dict, precision_context

FAST = {"epochs": 30, "max_loops": 1, "epochs_per_loop": 5}


def _correlated(n: int = 200, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    full = np.column_stack([z[:, 0], z[:, 0] + 0.1 * rng.normal(size=n), z[:, 1], z[:, 1] - z[:, 0]])
    df_full = pd.DataFrame(full, columns=["a", "b", "c", "d"])
    return df_full.mask(rng.random(full.shape) < 0.25), df_full


def _rmse(out: pd.DataFrame, holes: pd.DataFrame, full: pd.DataFrame) -> float:
    miss = holes.isna().to_numpy()
    return float(np.sqrt(np.mean((out.to_numpy() - full.to_numpy())[miss] ** 2)))


class _DtypeSpy:
    """Records the dtype of every ClusterLinear output of a model."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.seen: dict[bool, set[torch.dtype]] = {True: set(), False: set()}
        self.handles = [
            m.register_forward_hook(lambda mod, inp, out: self.seen[mod.float_output].add(out.dtype))
            for m in model.modules() if isinstance(m, ClusterLinear)
        ]

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def test_config_validates_and_round_trips_precision():
    assert PRECISIONS == ("32", "bf16-mixed")
    assert TrainConfig().precision == "32"
    with pytest.raises(ValueError, match="TrainConfig.precision.*bf16-mixed"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="TrainConfig.precision"):
        TrainConfig(precision=16)
    train, _ = configs_from_dict({"precision": "bf16-mixed"})
    assert train.precision == "bf16-mixed"
    assert configs_from_dict(train.to_dict())[0] == train


def test_precision_context_runs_linear_layers_in_bfloat16_and_heads_return_float32():
    hidden = ClusterLinear(4, 3)
    head = ClusterLinear(3, 2, float_output=True)
    g = torch.Generator().manual_seed(0)
    hidden.reset_parameters(g)
    head.reset_parameters(g)
    x = torch.randn(5, 4, generator=g)
    with precision_context("bf16-mixed", "cpu"):
        h = hidden(x)
        y = head(h)
    assert h.dtype == torch.bfloat16 and y.dtype == torch.float32
    with precision_context("32", "cpu"):
        assert hidden(x).dtype == torch.float32
    # The float32 path is untouched: float_output adds nothing to an ordinary forward.
    assert torch.equal(head(hidden(x)), torch.nn.functional.linear(hidden(x), head.weight, head.bias))
    with pytest.raises(ValueError, match="precision"):
        precision_context("half", "cpu")


@pytest.mark.parametrize("family", ["vae", "notmiwae"])
def test_bf16_training_is_deterministic_float32_and_as_accurate(family):
    holes, full = _correlated()
    before = holes.copy(deep=True)
    runs = {}
    for precision in ("32", "bf16-mixed", "bf16-mixed"):
        imp = Imputer(model=family, train_params={**FAST, "precision": precision}, seed=3, device="cpu")
        out = imp.fit_transform(holes)
        runs.setdefault(precision, []).append(out)
    pd.testing.assert_frame_equal(holes, before)
    bf_a, bf_b = runs["bf16-mixed"]
    pd.testing.assert_frame_equal(bf_a, bf_b)  # same seed, same result
    obs = holes.notna().to_numpy()
    assert np.array_equal(bf_a.to_numpy()[obs], holes.to_numpy()[obs])
    assert not bf_a.isna().any().any() and (bf_a.dtypes == holes.dtypes).all()
    # bfloat16 rounding changes the numbers, so the bf16 path really ran ...
    assert not np.allclose(bf_a.to_numpy(), runs["32"][0].to_numpy(), atol=1e-6)
    # ... but not the quality of the imputations.
    e32, ebf = _rmse(runs["32"][0], holes, full), _rmse(bf_a, holes, full)
    assert ebf < 1.1 * e32, (e32, ebf)


def test_trainer_and_transform_use_the_configured_precision():
    holes, _ = _correlated(120)
    imp = Imputer(model="cissvae", n_clusters=2, train_params={**FAST, "precision": "bf16-mixed"}, seed=0,
                  device="cpu")
    imp.fit(holes)
    spy = _DtypeSpy(imp.model_)
    try:
        imp.transform(holes.iloc[:40])
    finally:
        spy.close()
    assert spy.seen[False] == {torch.bfloat16}, "hidden layers of the imputation pass ran in float32"
    assert spy.seen[True] == {torch.float32}, "output layers must hand float32 to the likelihood"

    plain = Imputer(model="cissvae", n_clusters=2, train_params=FAST, seed=0, device="cpu").fit(holes)
    spy = _DtypeSpy(plain.model_)
    try:
        plain.transform(holes.iloc[:40])
    finally:
        spy.close()
    assert spy.seen[False] | spy.seen[True] == {torch.float32}


def test_closed_form_families_ignore_precision():
    holes, _ = _correlated(80)
    a = Imputer(model="knn", train_params={"precision": "bf16-mixed"}, seed=0, device="cpu").fit_transform(holes)
    b = Imputer(model="knn", seed=0, device="cpu").fit_transform(holes)
    pd.testing.assert_frame_equal(a, b)


def test_cluster_segments_under_autocast_match_exact_segments_in_value_and_gradient():
    """Rounded row windows (a few bfloat16 kernel shapes) give each segment's own product."""
    from ciss_autoimpute.models.layers import AUTOCAST_ROW_QUANTUM, ClusterIndex

    g = torch.Generator().manual_seed(1)
    layer = ClusterLinear(6, 5, n_clusters=3, shared=False)
    layer.reset_parameters(g)
    counts = [AUTOCAST_ROW_QUANTUM + 3, 7, 2 * AUTOCAST_ROW_QUANTUM - 1]  # none a multiple of the quantum
    x = torch.randn(sum(counts), 6, generator=g, requires_grad=True)
    upstream = torch.randn(sum(counts), 5, generator=g)

    with precision_context("bf16-mixed", "cpu"):
        got = layer(x, ClusterIndex.grouped(counts, 3))
    (got.float() * upstream).sum().backward()
    got_grads = (x.grad.clone(), layer.weight.grad.clone(), layer.bias.grad.clone())
    x.grad, layer.weight.grad, layer.bias.grad = None, None, None

    # Reference: each cluster's rows alone, same bfloat16 products.
    with precision_context("bf16-mixed", "cpu"):
        parts = [torch.addmm(layer.bias[c], seg, layer.weight[c]) for c, seg in enumerate(x.split(counts))]
    want = torch.cat(parts)
    (want.float() * upstream).sum().backward()
    assert got.shape == want.shape
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    for a, b in zip(got_grads, (x.grad, layer.weight.grad, layer.bias.grad)):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=5e-2)
    # Without gradients the windows borrow neighbouring rows: same values.
    with torch.no_grad(), precision_context("bf16-mixed", "cpu"):
        borrowed = layer(x, ClusterIndex.grouped(counts, 3))
    torch.testing.assert_close(borrowed.float(), want.float(), rtol=2e-2, atol=2e-2)


def test_precision_reaches_autotune_and_the_command_line(tmp_path):
    import json
    import subprocess
    import sys

    from ciss_autoimpute import ClusterDataset, SearchSpace, autotune

    holes, _ = _correlated(100)
    space = SearchSpace(["vae"], train={"precision": "bf16-mixed", "epochs": 5, "max_loops": 1})
    tuned = autotune(space, ClusterDataset(holes, seed=0), n_trials=1, seed=0, ensemble=0, show_progress=False)
    assert tuned.imputer.train_params["precision"] == "bf16-mixed"

    src, out, model = tmp_path / "in.csv", tmp_path / "out.csv", tmp_path / "m.pt"
    holes.to_csv(src, index=False)
    train = json.dumps({"precision": "bf16-mixed", "epochs": 5, "max_loops": 1})
    proc = subprocess.run(
        [sys.executable, "-m", "ciss_autoimpute.cli", "impute", str(src), "-o", str(out), "--model", "vae",
         "--train-params", train, "--seed", "0", "--device", "cpu", "--save-model", str(model), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    back = Imputer.load(model)
    assert back.train_params["precision"] == "bf16-mixed"
    filled = pd.read_csv(out)
    assert not filled.isna().any().any()
    obs = holes.notna().to_numpy()
    np.testing.assert_allclose(filled.to_numpy()[obs], holes.to_numpy()[obs], rtol=1e-12)

    bad = subprocess.run(
        [sys.executable, "-m", "ciss_autoimpute.cli", "impute", str(src), "-o", str(out), "--model", "vae",
         "--train-params", '{"precision": "fp16"}', "--device", "cpu", "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert bad.returncode != 0 and "precision" in bad.stderr and "bf16-mixed" in bad.stderr
