"""Several workers, one study: PostgreSQL (a real server), a journal file, killed workers.

The PostgreSQL tests use the session server of ``conftest_pg.py``; they fail (never
skip) when the server or the driver is missing: ``scripts/test.sh`` installs them.
Workers are real processes (``python -m ciss_autoimpute.cli worker``) with one torch
thread each, so two of them fit the two cores.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from ciss_autoimpute import ClusterDataset, SearchSpace, autotune
from ciss_autoimpute.exceptions import StorageError
from ciss_autoimpute.tuning import Categorical, Fixed
from ciss_autoimpute.tuning.storage import resolve_storage
from ciss_autoimpute.tuning.workers import (
    StudyTarget,
    SurplusTrialError,
    count_trials,
    data_fingerprint,
    load_best_imputer,
)

pytest_plugins = ["conftest_pg"]

COMPLETE, PRUNED, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL


def _frame(seed: int = 0, n: int = 80) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    full = z @ rng.normal(size=(2, 4)) + 0.1 * rng.normal(size=(n, 4))
    mask = rng.random(full.shape) < 0.2
    mask[mask.all(axis=1), 0] = False
    return pd.DataFrame(np.round(np.where(mask, np.nan, full), 4), columns=list("abcd"))


def _space(epochs: int) -> SearchSpace:
    """One small family; ``epochs`` sets how long a trial takes (about 10 ms an epoch here)."""
    return SearchSpace(
        {"vae": {"hidden_dims": Fixed([8]), "latent_dim": Categorical((2, 4))}},
        train={"epochs": Fixed(epochs), "max_loops": Fixed(1), "epochs_per_loop": Fixed(2), "batch_size": Fixed(32)},
    )


@pytest.fixture(autouse=True)
def one_torch_thread():
    """This process trains too (each study's first trial): one thread, like each worker.

    Two OpenMP threads fighting the workers for two cores slow a small fit down tenfold.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("workers") / "cohort.csv"
    _frame().to_csv(path, index=False)
    return path


def _dataset(path: Path, seed: int = 0) -> ClusterDataset:
    # What the CLI worker builds from the recorded file: default options, Leiden clusters.
    return ClusterDataset(pd.read_csv(path), seed=seed, device="cpu")


def _create_study(storage: str, name: str, data_file: Path, *, epochs: int, artifact_dir: Path | None = None) -> None:
    """Start a study from Python, as a user would, recording the file workers read."""
    autotune(_space(epochs), _dataset(data_file), n_trials=1, storage=storage, study_name=name,
             data_path=data_file, artifact_dir=artifact_dir, show_progress=False)


def _start_worker(storage: str, study: str, *extra: object) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["OMP_NUM_THREADS"] = "1"  # one core each
    return subprocess.Popen(
        [sys.executable, "-m", "ciss_autoimpute.cli", "worker", "--storage", storage, "--study", study,
         "--device", "cpu", "-q", *map(str, extra)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _finish(proc: subprocess.Popen, timeout: float = 150) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"worker {proc.pid} did not finish within {timeout} s:\n{err}")
    return proc.returncode, err


_READERS: dict[str, object] = {}


def _load(storage: str, name: str) -> optuna.Study:
    # One storage object per URL (a new engine per look would cost the workers CPU);
    # heartbeat_interval=0: this test process only reads the study.
    if storage not in _READERS:
        _READERS[storage] = resolve_storage(storage, heartbeat_interval=0)
    return optuna.load_study(study_name=name, storage=_READERS[storage])


def _pid(trial: optuna.trial.FrozenTrial) -> int | None:
    worker = trial.user_attrs.get("worker") or ""
    return int(worker.rsplit(":", 1)[1]) if ":" in worker else None


def _assert_exactly(study: optuna.Study, n: int) -> None:
    """n finished trials, nothing left running or waiting, and no failure but allowed ones."""
    trials = study.get_trials(deepcopy=False)
    counts = count_trials(study)
    assert counts.finished == n, [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials]
    assert counts.running == 0 and counts.waiting == 0


# ---------------------------------------------------------------------------- PostgreSQL
def test_two_workers_share_a_postgres_study_and_finish_exactly_n(postgres_server, data_file, tmp_path):
    n = 6
    postgres_url = postgres_server.url
    artifacts = tmp_path / "shared_artifacts"
    autotune(_space(80), _dataset(data_file), n_trials=1, storage=postgres_url, study_name="shared",
             data_path=data_file, artifact_dir=artifacts, show_progress=False)
    study = _load(postgres_url, "shared")
    # The study records what it tunes on, for every worker to check.
    fp = study.user_attrs["data_fingerprint"]
    assert fp == data_fingerprint(_dataset(data_file))
    assert study.user_attrs["data_path"] == str(data_file.resolve())
    assert study.user_attrs["artifact_dir"] == str(artifacts.resolve())

    workers = [_start_worker(postgres_url, "shared", "--study-trials", n) for _ in range(2)]
    for w in workers:
        code, err = _finish(w)
        assert code == 0, err
        assert postgres_server.password not in err  # nothing a worker printed shows the password

    study = _load(postgres_url, "shared")
    _assert_exactly(study, n)
    trials = study.get_trials(deepcopy=False)
    # Only a trial that lost the race for the last place may have failed, and it does not count.
    assert all(str(t.user_attrs.get("fail_reason", "")).startswith("surplus") for t in trials if t.state == FAIL)
    ran = {_pid(t) for t in trials if t.state in (COMPLETE, PRUNED)}
    assert {w.pid for w in workers} <= ran, "both workers ran trials of the study"

    # Any worker's best model is in the shared folder; the user loads it from there.
    best = study.best_trial
    assert (artifacts / best.user_attrs["imputer_artifact_id"]).is_file()
    imputer = load_best_imputer(postgres_url, "shared", device="cpu")
    filled = imputer.transform(pd.read_csv(data_file))
    assert not filled.isna().any().any()


def test_a_killed_worker_trial_is_failed_retried_and_counted_once(postgres_url, data_file, tmp_path):
    n = 3
    # About 1.5 s a trial on an idle core: long enough to catch one running.
    _create_study(postgres_url, "killed", data_file, epochs=150, artifact_dir=tmp_path / "artifacts")
    victim = _start_worker(postgres_url, "killed", "--study-trials", n, "--heartbeat", 1)
    # Wait until the victim is in the middle of a trial, then kill it without warning.
    # (The survivor starts then: started together, it could finish the study first.)
    deadline = time.monotonic() + 90
    doomed = None
    study = _load(postgres_url, "killed")
    while doomed is None and time.monotonic() < deadline and victim.poll() is None:
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        # Once its parameters are drawn: a trial killed before that has none to hand to its retry.
        doomed = next((t.number for t in running if _pid(t) == victim.pid and t.params), None)
        time.sleep(0.2)
    assert doomed is not None, "the victim never started a trial"
    survivor = _start_worker(postgres_url, "killed", "--study-trials", n, "--heartbeat", 1)
    os.kill(victim.pid, signal.SIGKILL)
    assert _finish(victim)[0] == -signal.SIGKILL

    code, err = _finish(survivor)
    assert code == 0, err
    study = _load(postgres_url, "killed")
    _assert_exactly(study, n)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    # The dead worker's trial was failed by the heartbeat check ...
    assert trials[doomed].state == FAIL
    # ... and run once more, by the survivor, to the end.
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == doomed]
    assert len(retries) == 1
    (retry,) = retries
    assert retry.state in (COMPLETE, PRUNED)
    assert retry.user_attrs["retry_of"] == doomed and _pid(retry) == survivor.pid
    assert retry.params == trials[doomed].params
    # No other trial failed: every trial is accounted for.
    assert [t.number for t in trials.values() if t.state == FAIL and t.number != doomed] == [
        t.number for t in trials.values()
        if t.state == FAIL and str(t.user_attrs.get("fail_reason", "")).startswith("surplus")
    ]


def _cli(capsys, *args: object) -> tuple[int, str]:
    """``ciss-autoimpute ARGS`` in this process: (exit status, stderr); restores the logging it sets up."""
    import warnings

    from ciss_autoimpute.cli import main

    root = logging.getLogger()
    handlers, level, show, verbosity = list(root.handlers), root.level, warnings.showwarning, optuna.logging.get_verbosity()
    try:
        capsys.readouterr()
        code = main([str(a) for a in args])
        return code, capsys.readouterr().err
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        warnings.showwarning = show
        optuna.logging.set_verbosity(verbosity)


def test_bad_password_or_closed_port_fails_within_seconds_masked(postgres_server, data_file, caplog, capsys):
    wrong = "Wr0ngSecret"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    cases = {
        "password authentication failed": postgres_server.url_with(password=wrong),
        "Connection refused|could not connect": postgres_server.url_with(password=wrong, port=closed),
    }
    caplog.set_level(logging.DEBUG)
    for pattern, url in cases.items():
        start = time.monotonic()
        with pytest.raises(StorageError, match=pattern) as info:
            autotune(_space(2), _dataset(data_file), n_trials=1, storage=url, study_name="x", show_progress=False)
        assert time.monotonic() - start < 10
        message = str(info.value)
        assert wrong not in message and f"{postgres_server.user}:***@127.0.0.1" in message
    # Through the command line: one line, exit 2, masked.
    code, err = _cli(capsys, "worker", "--storage", cases["password authentication failed"], "--study", "x")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "password authentication failed" in err and wrong not in err and ":***@" in err
    assert wrong not in caplog.text


def test_database_storage_has_heartbeats_and_retries_by_default(postgres_url, tmp_path):
    storage = resolve_storage(postgres_url)
    assert storage.get_heartbeat_interval() == 10
    assert isinstance(storage.get_heartbeat_stale_trial_callback(), optuna.storages.RetryHeartbeatStaleTrialCallback)
    assert resolve_storage(postgres_url, heartbeat_interval=0).get_heartbeat_interval() is None
    assert resolve_storage(f"sqlite:///{tmp_path / 's.db'}").get_heartbeat_interval() is None
    with pytest.raises(ValueError, match="journal files keep no heartbeats"):
        resolve_storage(tmp_path / "s.log", heartbeat_interval=5)


def test_worker_heartbeat_option_needs_a_database(tmp_path, capsys):
    code, err = _cli(capsys, "worker", "--storage", tmp_path / "s.log", "--study", "x", "--heartbeat", 5)
    assert code == 2 and "--heartbeat needs a database URL" in err


# ---------------------------------------------------------------------------- journal file, one machine
def test_two_processes_share_a_journal_file_and_finish_exactly_n(data_file, tmp_path):
    n = 5
    journal = str(tmp_path / "studies.log")
    _create_study(journal, "journal", data_file, epochs=40)
    workers = [_start_worker(journal, "journal", "--study-trials", n) for _ in range(2)]
    for w in workers:
        code, err = _finish(w)
        assert code == 0, err
    study = _load(journal, "journal")
    _assert_exactly(study, n)
    assert all(str(t.user_attrs.get("fail_reason", "")).startswith("surplus")
               for t in study.get_trials(deepcopy=False) if t.state == FAIL)
    # Artifacts beside the journal file.
    assert (tmp_path / "studies_artifacts" / study.best_trial.user_attrs["imputer_artifact_id"]).is_file()


# ---------------------------------------------------------------------------- data checks, target
def test_a_worker_with_other_data_or_holdout_refuses_before_training(data_file, tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    _create_study(url, "s", data_file, epochs=2)
    other = _frame(seed=1)
    with pytest.raises(ValueError, match=r"Study 's' in sqlite:.* tunes on other data .*cell values.* another study_name"):
        autotune(_space(2), ClusterDataset(other, seed=0, device="cpu"), n_trials=1, storage=url, study_name="s",
                 show_progress=False)
    with pytest.raises(ValueError, match=r"the validation holdout differs \(seed 0 recorded, 1 here"):
        autotune(_space(2), _dataset(data_file, seed=1), n_trials=1, storage=url, study_name="s",
                 show_progress=False)
    with pytest.raises(ValueError, match=r"columns missing here: \['d'\]"):
        autotune(_space(2), ClusterDataset(pd.read_csv(data_file).drop(columns="d"), seed=0, device="cpu"),
                 n_trials=1, storage=url, study_name="s", show_progress=False)
    assert len(_load(url, "s").trials) == 1  # nothing ran
    # The same data joins.
    res = autotune(_space(2), _dataset(data_file), n_trials=1, storage=url, study_name="s", show_progress=False)
    assert len(res.study.trials) == 2


def test_a_trial_beyond_the_study_target_gives_way():
    study = optuna.create_study()
    study.add_trial(optuna.create_trial(value=1.0, params={}, distributions={}))
    first, second = study.ask(), study.ask()
    target = StudyTarget(2)
    target.check_trial(first)  # the second place of two
    with pytest.raises(SurplusTrialError, match="surplus: the study already had 2 trials"):
        target.check_trial(second)
    # Without heartbeats a worker leaves rather than wait for trials running elsewhere.
    assert not target.has_room(study)
    study.tell(first, 2.0)
    assert not target.has_room(study)
    study.tell(second, state=optuna.trial.TrialState.FAIL)
    assert count_trials(study) == (2, 0, 0, 1)


def test_study_trials_counts_every_worker(data_file, tmp_path):
    url = f"sqlite:///{tmp_path / 'target.db'}"
    _create_study(url, "t", data_file, epochs=2)
    res = autotune(_space(2), _dataset(data_file), n_trials=None, study_trials=3, storage=url, study_name="t",
                   show_progress=False)
    assert count_trials(res.study).finished == 3  # one from before, two now
    res = autotune(_space(2), _dataset(data_file), n_trials=None, study_trials=3, storage=url, study_name="t",
                   show_progress=False)
    assert len(res.study.trials) == 3 and not res.imputed.isna().any().any()
    with pytest.raises(ValueError, match="study_trials must be a positive integer"):
        autotune(_space(2), _dataset(data_file), study_trials=0, storage=url, study_name="t", show_progress=False)
