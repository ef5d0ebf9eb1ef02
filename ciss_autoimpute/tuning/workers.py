"""Several workers, one study: shared data checks, a study-wide trial target, best-model loading.

Optuna's shared storages are the engine (PostgreSQL or MySQL between machines, a journal
file between processes of one machine); this module adds what tuning imputers needs on
top of them, and nothing like a scheduler:

* :func:`data_fingerprint` / :func:`check_study_data` — a study records what it tunes on
  (a content hash, the schema, the validation holdout and its seed) and every worker
  proves it has the same data and the same holdout before its first trial, because
  validation errors measured on different holdouts cannot be compared.
* :class:`StudyTarget` — "N trials" for the whole study: workers stop once the study holds
  N finished (complete or pruned) trials, wait while the last ones run elsewhere, and take
  over the trials of workers that died (their heartbeats stopped).
* :func:`load_best_imputer` — the best trial's fitted imputer from the shared artifact folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "ARTIFACT_DIR_ATTR",
    "FINGERPRINT_ATTR",
    "StudyTarget",
    "SurplusTrialError",
    "TrialCounts",
    "check_study_data",
    "count_trials",
    "data_fingerprint",
    "heartbeat_interval_of",
    "load_best_imputer",
    "worker_id",
]

logger = logging.getLogger(__name__)

#: Study user attribute holding :func:`data_fingerprint` of the data the study tunes on.
FINGERPRINT_ATTR = "data_fingerprint"
#: Study user attribute holding the (absolute) folder of best-model artifacts.
ARTIFACT_DIR_ATTR = "artifact_dir"

_FINGERPRINT_VERSION = 1
# Schema entries that are statistics of the data: covered by the content hash, and
# floating-point sums may differ in the last bit between machines.
_SCHEMA_STATISTICS = ("mean", "std")


def worker_id() -> str:
    """``host:pid`` of this process, recorded on each trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


# ---------------------------------------------------------------------------- data fingerprint
def _sha256(*chunks: bytes) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(len(chunk).to_bytes(8, "little"))
        digest.update(chunk)
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    """``val_proportion`` (a float, a sequence or a mapping) in a JSON-stable form."""
    if isinstance(value, Mapping):
        return {str(k): float(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [float(v) for v in value]
    return float(value)


def data_fingerprint(dataset: Any) -> dict[str, Any]:
    """What a study records about the data it tunes on, in JSON-compatible form.

    Parameters
    ----------
    dataset
        A :class:`~ciss_autoimpute.ClusterDataset`.

    Returns
    -------
    dict
        ``rows``, ``columns``, ``content_sha256`` (cell values, dtypes and index),
        ``schema`` (``Schema.to_dict()``), ``holdout`` (``seed``, ``val_proportion``,
        ``cells`` and ``sha256`` of the held-out cells) and ``clusters`` (``n`` and
        ``sha256`` of the row labels).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from ciss_autoimpute import ClusterDataset
    >>> df = pd.DataFrame({"a": [1.0, np.nan, 3.0, 4.0] * 10, "b": [0.5, 1.5, np.nan, 2.0] * 10})
    >>> fp = data_fingerprint(ClusterDataset(df, n_clusters=2, seed=0, device="cpu"))
    >>> fp["rows"], fp["columns"], fp["holdout"]["seed"]
    (40, ['a', 'b'], 0)
    """
    import pandas as pd

    frame = dataset.frame
    # Row hashes of the values and the index, plus names and dtypes: a reordered, renamed
    # or retyped column changes the hash as surely as a changed cell does.
    rows = pd.util.hash_pandas_object(frame, index=True).to_numpy()
    header = json.dumps([[str(c), str(t)] for c, t in frame.dtypes.items()]).encode()
    val = np.ascontiguousarray(dataset.val_mask_columns, dtype=np.bool_)
    clusters = np.ascontiguousarray(dataset.clusters, dtype=np.int64)
    return {
        "version": _FINGERPRINT_VERSION,
        "rows": int(frame.shape[0]),
        "columns": [str(c) for c in frame.columns],
        "content_sha256": _sha256(header, rows.tobytes()),
        "schema": dataset.schema.to_dict(),
        "holdout": {
            "seed": int(dataset.seed),
            "val_proportion": _jsonable(dataset.val_proportion),
            "cells": int(val.sum()),
            "sha256": _sha256(np.array(val.shape, dtype=np.int64).tobytes(), np.packbits(val).tobytes()),
        },
        "clusters": {"n": int(dataset.n_clusters), "sha256": _sha256(clusters.tobytes())},
    }


def _schema_structure(schema: Mapping[str, Any]) -> dict[str, Any]:
    columns = {}
    for col in schema.get("columns", []):
        columns[str(col.get("name"))] = {k: v for k, v in col.items() if k not in _SCHEMA_STATISTICS}
    return columns


def _difference(recorded: Mapping[str, Any], given: Mapping[str, Any]) -> str | None:
    """A sentence saying how ``given`` differs from ``recorded``, or None when they agree."""
    if recorded.get("columns") != given.get("columns"):
        old, new = list(recorded.get("columns", [])), list(given.get("columns", []))
        only_old = [c for c in old if c not in new]
        only_new = [c for c in new if c not in old]
        detail = []
        if only_old:
            detail.append(f"columns missing here: {only_old[:10]}")
        if only_new:
            detail.append(f"columns not in the study's data: {only_new[:10]}")
        if not detail:
            detail.append(f"the columns are in another order ({new[:10]} instead of {old[:10]})")
        return "the columns differ (" + "; ".join(detail) + ")"
    if recorded.get("rows") != given.get("rows"):
        return f"the study's data has {recorded.get('rows')} rows, the data given here {given.get('rows')}"
    if recorded.get("content_sha256") != given.get("content_sha256"):
        return (
            "the cell values, dtypes or row index differ (content hash "
            f"{str(recorded.get('content_sha256'))[:12]}... recorded, {str(given.get('content_sha256'))[:12]}... here)"
        )
    old_schema, new_schema = _schema_structure(recorded.get("schema", {})), _schema_structure(given.get("schema", {}))
    if old_schema != new_schema:
        changed = [c for c in new_schema if old_schema.get(c) != new_schema[c]]
        kinds = {c: (old_schema.get(c, {}).get("kind"), new_schema[c].get("kind")) for c in changed[:5]}
        return f"the schema differs for columns {changed[:10]} (recorded kind, kind here: {kinds})"
    old_h, new_h = recorded.get("holdout", {}), given.get("holdout", {})
    if old_h.get("sha256") != new_h.get("sha256"):
        settings = [
            f"{key} {old_h.get(key)!r} recorded, {new_h.get(key)!r} here"
            for key in ("seed", "val_proportion", "cells")
            if old_h.get(key) != new_h.get(key)
        ]
        old_c, new_c = recorded.get("clusters", {}), given.get("clusters", {})
        if not settings and old_c.get("sha256") != new_c.get("sha256"):
            settings.append(
                f"the missingness clusters came out differently ({old_c.get('n')} recorded, {new_c.get('n')} here)"
            )
        return "the validation holdout differs (" + ("; ".join(settings) or "other held-out cells") + ")"
    old_c, new_c = recorded.get("clusters", {}), given.get("clusters", {})
    if old_c.get("sha256") != new_c.get("sha256"):
        return f"the missingness clusters differ ({old_c.get('n')} clusters recorded, {new_c.get('n')} here)"
    return None


def check_study_data(study: Any, fingerprint: Mapping[str, Any], *, where: str = "") -> None:
    """Record ``fingerprint`` on a study that has none; refuse one that records other data.

    Called by :func:`~ciss_autoimpute.autotune` before its first trial, so every
    worker of a study trains on the same rows, encoding and validation holdout.

    Parameters
    ----------
    study
        An ``optuna.Study``.
    fingerprint
        :func:`data_fingerprint` of the data this process would tune on.
    where
        The (password-masked) storage, for the message.

    Raises
    ------
    ValueError
        The study was created on other data, another schema or another holdout;
        the message names the study, what differs and the fix.
    """
    fingerprint = json.loads(json.dumps(dict(fingerprint)))  # what the storage will hand back
    recorded = study.user_attrs.get(FINGERPRINT_ATTR)
    if recorded is None:
        study.set_user_attr(FINGERPRINT_ATTR, fingerprint)
        # Two workers may start a new study at the same moment: the last write wins, so
        # read it back; the loser finds out here, before training anything.
        recorded = study.user_attrs.get(FINGERPRINT_ATTR, fingerprint)
    problem = _difference(recorded, fingerprint)
    if problem is not None:
        place = f" in {where}" if where else ""
        raise ValueError(
            f"Study {study.study_name!r}{place} tunes on other data than this worker was given: {problem}. "
            "Every worker must build its ClusterDataset from the same file with the same options "
            "(seed, val_proportion, n_clusters, column_kinds); fix the data or options, or use another study_name."
        )


# ---------------------------------------------------------------------------- study-wide target
class TrialCounts(NamedTuple):
    """Trials of a study by state; ``finished`` is complete plus pruned."""

    finished: int
    running: int
    waiting: int
    failed: int


def count_trials(study: Any) -> TrialCounts:
    """How many trials of ``study`` are finished, running, waiting and failed."""
    from optuna.trial import TrialState

    counts = dict.fromkeys(TrialState, 0)
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state] += 1
    return TrialCounts(
        counts[TrialState.COMPLETE] + counts[TrialState.PRUNED],
        counts[TrialState.RUNNING],
        counts[TrialState.WAITING],
        counts[TrialState.FAIL],
    )


def heartbeat_interval_of(storage: Any) -> int | None:
    """The heartbeat interval of a resolved storage, or None when it keeps no heartbeats."""
    getter = getattr(storage, "get_heartbeat_interval", None)
    return getter() if callable(getter) else None


def _fail_stale_trials(study: Any) -> None:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


class SurplusTrialError(RuntimeError):
    """A trial started after the study already had its target of trials (it is failed, not counted)."""


class StudyTarget:
    """Stop every worker once the study holds ``n_trials`` finished trials in all.

    Used as an Optuna study callback (after each trial) and through :meth:`has_room`
    (before the first): a worker starts another trial only while the finished plus
    running trials are fewer than the target. When the rest of the target is running
    in other workers, it waits — on a storage with heartbeats, a worker that died
    leaves a trial whose heartbeat stops; this worker then marks it failed, the retry
    callback queues it again, and this worker runs it. So no trial is lost, and
    (with :meth:`check_trial` at the start of every trial) none is counted twice:
    the finished trials number exactly ``n_trials``.

    Parameters
    ----------
    n_trials
        Finished (complete or pruned) trials the study should end with.
    heartbeat_interval
        The storage's heartbeat interval (:func:`heartbeat_interval_of`); ``None`` when
        it has none: then a worker leaves instead of waiting for trials running elsewhere.
    deadline
        ``time.monotonic()`` after which a waiting worker gives up.
    poll
        Seconds between two looks at the study while waiting (default 1, or the
        heartbeat interval when shorter).
    """

    def __init__(
        self,
        n_trials: int,
        *,
        heartbeat_interval: int | None = None,
        deadline: float | None = None,
        poll: float | None = None,
    ) -> None:
        if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
            raise ValueError(f"study_trials must be a positive integer or None, got {n_trials!r}.")
        self.n_trials = n_trials
        self.heartbeat_interval = heartbeat_interval
        self.deadline = deadline
        self.poll = poll

    def has_room(self, study: Any) -> bool:
        """Whether this worker should start another trial (waits while others finish the target)."""
        interval = self.heartbeat_interval
        # Look often enough to leave promptly once the others finish; failing a dead
        # worker's trial needs the grace period to pass anyway.
        poll = self.poll if self.poll is not None else min(float(interval or 1), 1.0)
        announced = False
        while True:
            if interval is not None:
                _fail_stale_trials(study)  # dead workers' trials: failed now, queued again by the retry callback
            counts = count_trials(study)
            if counts.finished >= self.n_trials:
                return False
            # A waiting trial (a retry, or one the user queued) is room: ask() takes it first.
            if counts.finished + counts.running < self.n_trials:
                return True
            if interval is None:
                # Without heartbeats a dead worker's trial would run forever; the workers
                # still running finish the target, this one leaves.
                return False
            if self.deadline is not None and time.monotonic() >= self.deadline:
                return False
            if not announced:
                logger.info(
                    "Study %r: %d of %d trials finished, the rest running in other workers; waiting for them",
                    study.study_name, counts.finished, self.n_trials,
                )
                announced = True
            time.sleep(poll)

    def __call__(self, study: Any, trial: Any) -> None:
        if not self.has_room(study):
            study.stop()

    def check_trial(self, trial: Any) -> None:
        """Refuse a trial that would go beyond the target (raises :class:`SurplusTrialError`).

        Two workers may both see room for one last trial and both start one. Trial numbers
        are handed out in order by the storage, so the trial with the higher number finds
        the other one (running, waiting or finished) below it and gives way.
        """
        from optuna.trial import TrialState

        live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
        before = sum(1 for t in trial.study.get_trials(deepcopy=False, states=live) if t.number < trial.number)
        if before >= self.n_trials:
            raise SurplusTrialError(
                f"surplus: the study already had {before} trials running or finished for its target of "
                f"{self.n_trials} when this one started (another worker started one at the same moment)"
            )


# ---------------------------------------------------------------------------- best imputer
def load_best_imputer(
    storage: Any,
    study_name: str,
    *,
    artifact_dir: str | os.PathLike | None = None,
    device: str | None = None,
    direction_check: bool = True,
) -> Any:
    """The best trial's fitted :class:`~ciss_autoimpute.Imputer`, from the shared artifact folder.

    Parameters
    ----------
    storage
        The study's storage (URL, file path or Optuna storage).
    study_name
        The study.
    artifact_dir
        Folder of the artifacts; default the one the study recorded.
    device
        Torch device to load onto (``None``: CPU unless CUDA is available).
    direction_check
        Pick the trial as ``autotune`` does: when a worker's ``autotune`` recorded the
        data's missingness directions on the study (study attribute
        ``direction_check``), self-masking trials whose learned directions contradict
        them are passed over, unless every trial does. Each worker keeps the artifact
        of its best trial that agrees with the data, so that trial can be loaded.
        ``False``: the holdout's best trial.

    Raises
    ------
    ValueError
        No such study, no completed trial, or the best trial left no artifact
        (the message says where it looked).

    Examples
    --------
    >>> imputer = load_best_imputer("postgresql://ana:pw@db/studies", "cohort")  # doctest: +SKIP
    >>> imputer.transform(new_rows)  # doctest: +SKIP
    """
    import tempfile

    import optuna
    from optuna.artifacts import FileSystemArtifactStore, download_artifact

    from ..imputer import Imputer
    from .autotune import DIRECTION_CHECK_ATTR, _consistent_best
    from .storage import mask_url, resolve_storage, storage_url

    if not isinstance(direction_check, bool):
        raise TypeError(f"direction_check must be True or False, got {direction_check!r}.")
    resolved = resolve_storage(storage, heartbeat_interval=0)
    where = mask_url(storage_url(resolved) or storage)
    try:
        study = optuna.load_study(study_name=study_name, storage=resolved)
    except KeyError:
        raise ValueError(f"There is no study {study_name!r} in {where}; check study_name.") from None
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise ValueError(f"Study {study_name!r} in {where} has no completed trial yet; run trials first.")
    best = study.best_trial
    check = study.user_attrs.get(DIRECTION_CHECK_ATTR) if direction_check else None
    if check and check.get("directions"):
        chosen, _, applied = _consistent_best(complete, best, check["directions"])
        if applied and chosen.number != best.number:
            logger.info("Loading trial %d: the study's best trial %d learned missingness directions that contradict "
                        "the data (load_best_imputer(..., direction_check=False) loads it).", chosen.number,
                        best.number)
            best = chosen
    artifact_id = best.user_attrs.get("imputer_artifact_id")
    folder = Path(artifact_dir) if artifact_dir is not None else None
    if folder is None and study.user_attrs.get(ARTIFACT_DIR_ATTR):
        folder = Path(study.user_attrs[ARTIFACT_DIR_ATTR])
    if not artifact_id or folder is None:
        raise ValueError(
            f"The best trial (#{best.number}) of study {study_name!r} left no imputer artifact; "
            "tune with a persistent storage and an artifact_dir, or refit its best_params."
        )
    candidate = folder / artifact_id
    if not candidate.is_file():
        raise ValueError(
            f"The imputer of the best trial (#{best.number}) of study {study_name!r} is not at {str(candidate)!r}; "
            "pass artifact_dir= the folder the workers shared (it must be reachable from here)."
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "best.pt"
        download_artifact(artifact_store=FileSystemArtifactStore(str(folder)), file_path=str(path),
                          artifact_id=artifact_id)
        return Imputer.load(path, device=device)
