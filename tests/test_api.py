"""run_imputation: one call, good defaults, the contracts of the output."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd
import pytest

from ciss_autoimpute import available_models, run_imputation
from ciss_autoimpute.exceptions import NothingMissingWarning
from ciss_autoimpute.training.callbacks import Callback, TimeBudget

FAST = {"epochs": 6, "max_loops": 1, "epochs_per_loop": 3, "batch_size": 64}


def test_single_family_keeps_contracts(mixed_frame):
    before = mixed_frame.copy(deep=True)
    res = run_imputation(mixed_frame, model="cissvae", train_params=FAST, device="cpu")
    out = res.imputed
    pd.testing.assert_frame_equal(mixed_frame, before)
    assert out.index.equals(mixed_frame.index)
    assert list(out.columns) == list(mixed_frame.columns)
    assert (out.dtypes == mixed_frame.dtypes).all()
    assert not out.isna().any().any()
    obs = mixed_frame.notna()
    for col in mixed_frame.columns:
        assert out.loc[obs[col], col].tolist() == mixed_frame.loc[obs[col], col].tolist()
    assert res.model == "cissvae" and res.study is None
    assert np.isfinite(res.validation_error)
    assert res.history["loops"]


def test_auto_runs_a_small_search(numeric_frame):
    res = run_imputation(numeric_frame, n_trials=2, time_budget=60, device="cpu")
    assert res.study is not None and len(res.study.trials) == 2
    # The first trials of a study are the classical baselines (autotune's warm start).
    # The best trial, or a weighted mix of the two when that wins the holdout.
    assert res.model in available_models() or (res.model == "ensemble" and len(res.imputer.members_) == 2)
    assert not res.imputed.isna().any().any()
    assert res.imputer.transform(numeric_frame.head(5)).shape == (5, 4)


def test_auto_respects_its_time_budget(numeric_frame):
    start = time.perf_counter()
    res = run_imputation(numeric_frame, n_trials=50, time_budget=3, device="cpu")
    # Trials stop at the shared deadline; one epoch of slack is enough on tiny data.
    assert time.perf_counter() - start < 30
    assert len(res.study.trials) < 50


def test_array_in_array_out(numeric_frame):
    arr = numeric_frame.to_numpy()
    res = run_imputation(arr, model="vae", train_params=FAST, device="cpu")
    assert isinstance(res.imputed, np.ndarray) and res.imputed.shape == arr.shape
    obs = ~np.isnan(arr)
    assert np.array_equal(res.imputed[obs], arr[obs])


def test_nothing_missing_returns_copy_with_warning():
    df = pd.DataFrame(np.random.default_rng(0).normal(size=(20, 3)), columns=list("abc"))
    with pytest.warns(NothingMissingWarning, match="no missing cell"):
        res = run_imputation(df)
    pd.testing.assert_frame_equal(res.imputed, df)
    assert res.imputed is not df


def test_same_seed_same_result(numeric_frame):
    a = run_imputation(numeric_frame, model="notmiwae", train_params=FAST, seed=3, device="cpu")
    b = run_imputation(numeric_frame, model="notmiwae", train_params=FAST, seed=3, device="cpu")
    pd.testing.assert_frame_equal(a.imputed, b.imputed)


class _Count(Callback):
    def __init__(self) -> None:
        self.epochs = 0

    def on_epoch_end(self, trainer, record) -> None:
        self.epochs += 1


def test_callbacks_reach_training(numeric_frame):
    counter = _Count()
    run_imputation(numeric_frame, model="vae", train_params=FAST, device="cpu", callbacks=[counter])
    assert counter.epochs >= FAST["epochs"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"model": "forest"}, "model must be 'auto' or one of"),
        ({"model": "vae", "n_trials": 3}, "apply to model='auto' only"),
        ({"model_params": {"beta": 1.0}}, "apply to a single family"),
        ({"time_budget": -1}, "time_budget must be a positive number"),
    ],
)
def test_bad_arguments(numeric_frame, kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_imputation(numeric_frame, **kwargs)


def test_bad_data_fails_before_training(numeric_frame):
    bad = numeric_frame.copy()
    bad["b"] = np.nan
    started = []

    class Spy(Callback):
        def on_fit_start(self, trainer, data) -> None:
            started.append(True)

    with pytest.raises(ValueError, match="'b'"):
        run_imputation(bad, model="vae", callbacks=[Spy()])
    assert not started
    inf = numeric_frame.copy()
    inf.iloc[0, 0] = np.inf
    with pytest.raises(ValueError, match="inf"):
        run_imputation(inf, model="vae")


def test_shared_time_budget_spans_fits():
    budget = TimeBudget(5.0, shared=True)
    budget.on_fit_start(None, None)
    first = budget._start
    budget.on_fit_start(None, None)
    assert budget._start == first
    plain = TimeBudget(5.0)
    plain.on_fit_start(None, None)
    a = plain._start
    time.sleep(0.01)
    plain.on_fit_start(None, None)
    assert plain._start > a


def test_autotune_is_the_function_after_its_module_was_imported():
    # Importing the submodule ciss_autoimpute.tuning.autotune makes the tuning package's attribute
    # "autotune" that module; the top-level name and run_imputation's search must still get the
    # function. A fresh interpreter, since in this process the import order is the other tests'.
    import subprocess
    import sys

    code = ("import numpy as np, pandas as pd\n"
            "import ciss_autoimpute.tuning.autotune\n"
            "from ciss_autoimpute import autotune, TuneResult, run_imputation\n"
            "assert callable(autotune) and autotune.__name__ == 'autotune', autotune\n"
            "assert isinstance(TuneResult, type)\n"
            "rng = np.random.default_rng(0)\n"
            "values = rng.normal(size=(40, 4))\n"
            "values[rng.random((40, 4)) < 0.2] = np.nan\n"
            "res = run_imputation(pd.DataFrame(values), n_trials=2, time_budget=60, device='cpu')\n"
            "assert len(res.study.trials) == 2\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

