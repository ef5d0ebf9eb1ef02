"""``autotune``: an Optuna study over model families and their hyperparameters."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..exceptions import TrainingDivergedError
from .workers import SurplusTrialError

__all__ = [
    "PruningCallback",
    "TuneResult",
    "DIRECTIONS_ATTR",
    "WARM_START_ATTR",
    "autotune",
    "default_pruner",
    "default_sampler",
    "direction_outliers",
    "learned_directions",
    "enqueue_warm_start",
    "make_objective",
    "warm_start_params",
]

#: Trial user attribute naming the family whose defaults a warm-start trial runs.
WARM_START_ATTR = "warm_start"

#: Trial user attribute of a self-masking not-MIWAE trial: ``{feature: +1 or -1}``, the
#: direction it learned for each column that had missing cells (+1: high values go missing).
DIRECTIONS_ATTR = "missing_directions"

#: Study user attribute recording the direction check of the last ``autotune`` call.
DIRECTION_CHECK_ATTR = "direction_check"

logger = logging.getLogger(__name__)


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class PruningCallback:
    """Training callback reporting the holdout error to Optuna after every refit loop.

    Loop 0 is the end of the initial training. Raises ``optuna.TrialPruned`` when the
    study's pruner says so; the validation curve so far is kept on the trial.
    """

    def __init__(self, trial: Any) -> None:
        self.trial = trial
        self.curve: list[float] = []

    # The Trainer calls the hooks it knows; the others are no-ops.
    def on_fit_start(self, trainer: Any, data: Any) -> None:
        pass

    def on_epoch_end(self, trainer: Any, record: dict) -> None:
        pass

    def on_fit_end(self, trainer: Any, result: Any) -> None:
        pass

    def on_loop_end(self, trainer: Any, record: dict) -> None:
        import optuna

        value = float(record["val"])
        step = int(record["loop"])
        self.curve.append(value)
        self.trial.set_user_attr("val_curve", list(self.curve))
        if not math.isfinite(value):
            raise TrainingDivergedError(f"validation error is {value} after refit loop {step}")
        self.trial.report(value, step)
        # A closed-form family is scored once, after all its work is done: stopping it
        # saves nothing, and its row in the trials table should show its real result.
        if getattr(trainer.model, "trainable", True) and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after refit loop {step} with validation error {value:.4g}")


@dataclass
class TuneResult:
    """What :func:`autotune` returns.

    Attributes
    ----------
    imputed
        The data with missing cells filled by :attr:`imputer` (same index, columns and
        dtypes; observed cells untouched).
    best_params
        The best trial's Optuna parameters. "Best" is the lowest holdout error among
        the trials the direction check kept (``direction_check=``), which is
        ``study.best_trial`` unless that trial was left out.
    best_value
        Its validation error (lower is better).
    best_config
        The full sampled configuration (family, model, training and clustering params).
    study
        The Optuna study.
    trials
        ``study.trials_dataframe()`` with the recorded attributes.
    imputer
        The fitted :class:`~ciss_autoimpute.Imputer` of the best trial (not retrained),
        or, when ensemble selection found a better weighted average of several trials
        (``ensemble=``), an :class:`~ciss_autoimpute.ensemble.EnsembleImputer` of them.
    history
        The best trial's training history (``{"epochs": [...], "loops": [...]}``).
    ensemble_weights
        ``{trial number: weight}`` of the ensemble, or ``{}`` when :attr:`imputer` is
        the best trial alone.
    ensemble_value
        The ensemble's holdout error (``None`` without ensemble). The weights were
        chosen on the same holdout, so it is slightly optimistic, unlike
        :attr:`best_value`, which no choice was fitted to beyond picking the trial.
    """

    imputed: pd.DataFrame
    best_params: dict[str, Any]
    best_value: float
    best_config: dict[str, Any]
    study: Any
    trials: pd.DataFrame
    imputer: Any
    history: dict[str, list] = field(default_factory=dict)
    ensemble_weights: dict[int, float] = field(default_factory=dict)
    ensemble_value: float | None = None


class _Objective:
    def __init__(
        self,
        space: Any,
        dataset: Any,
        *,
        seed: int,
        device: Any,
        artifact_store: Any,
        extra_callbacks: Sequence[Any] = (),
        target: Any = None,
        ensemble: int = 0,
        direction_check: bool = False,
    ) -> None:
        self.space = space
        self.dataset = dataset
        self.seed = seed
        self.device = device
        self.artifact_store = artifact_store
        self.extra_callbacks = list(extra_callbacks)
        self.target = target
        self._datasets: dict[str, Any] = {}
        self.best_value = math.inf
        self.best_number: int | None = None
        self.best_imputer: Any = None
        # With the direction check: the best trial of this process whose learned directions
        # agree with the data, kept (and uploaded) too, since the check may return it.
        self.direction_check = bool(direction_check)
        self._evidence: Any = None
        self.consistent_value = math.inf
        self.consistent_number: int | None = None
        self.consistent_imputer: Any = None
        # The best `ensemble` trials of this process: (value, number, imputer, reclustered).
        self.ensemble = int(ensemble)
        self.candidates: list[tuple[float, int, Any, bool]] = []

    def _dataset_for(self, clustering_params: dict[str, Any]) -> Any:
        if not clustering_params:
            return self.dataset
        key = json.dumps(clustering_params, sort_keys=True, default=str)
        if key not in self._datasets:
            params = dict(clustering_params)
            n_clusters = params.pop("n_clusters", None)
            self._datasets[key] = self.dataset.recluster(n_clusters=n_clusters, **params)
        return self._datasets[key]

    def __call__(self, trial: Any) -> float:
        from ..imputer import Imputer
        from .workers import worker_id

        start = time.perf_counter()
        self._note_retry(trial)
        trial.set_user_attr("worker", worker_id())
        if self.target is not None:
            try:
                self.target.check_trial(trial)
            except SurplusTrialError as exc:
                trial.set_user_attr("fail_reason", str(exc))
                raise
        try:
            _check_warm_start_duplicate(trial)
        except SurplusTrialError as exc:
            trial.set_user_attr("fail_reason", str(exc))
            raise
        config = self.space.sample(trial)
        trial.set_user_attr("model", config.model)
        trial.set_user_attr("config", config.to_dict())
        trial.set_user_attr("device", str(self.dataset.device))
        ds = self._dataset_for(config.clustering_params)
        trial.set_user_attr("n_clusters", int(ds.n_clusters))
        pruning = PruningCallback(trial)
        imputer = Imputer(
            model=config.model,
            model_params=config.model_params,
            train_params=config.train_params,
            seed=self.seed,
            device=str(ds.device),
        )
        try:
            # Trials on the study's own dataset share its direction evidence (read once).
            imputer.fit_dataset(ds, callbacks=[pruning, *self.extra_callbacks], keep_predictions=self.ensemble > 1,
                                evidence_of=self.direction_evidence if ds is self.dataset else None)
        except TrainingDivergedError as exc:
            trial.set_user_attr("fail_reason", f"diverged: {exc}")
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
            raise
        except Exception as exc:
            import optuna

            if not isinstance(exc, optuna.TrialPruned):
                trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
            raise
        loops = imputer.history_["loops"]
        value = float(imputer.best_score_)
        trial.set_user_attr("best_loop", imputer.best_loop_)
        trial.set_user_attr("epochs", int(sum(r.get("epochs", 0) for r in loops)) or len(imputer.history_["epochs"]))
        if loops:
            best = next((r for r in loops if r.get("loop") == imputer.best_loop_), loops[-1])
            per_cluster = best.get("per_cluster") or {}
            trial.set_user_attr("per_cluster_val", {str(k): float(v) for k, v in per_cluster.items()})
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
        trial.set_user_attr("peak_rss_mb", round(_peak_rss_mb(), 1))
        if not math.isfinite(value):
            trial.set_user_attr("fail_reason", f"non-finite validation error {value}")
            raise TrainingDivergedError(f"validation error is {value}")
        directions = learned_directions(imputer)
        if directions:
            trial.set_user_attr(DIRECTIONS_ATTR, directions)
        uploaded = False
        if value < self.best_value:
            self.best_value = value
            self.best_number = trial.number
            self.best_imputer = imputer
            self._upload(trial, imputer)
            uploaded = True
        if self.direction_check and value < self.consistent_value and not self._contradicts(directions):
            self.consistent_value = value
            self.consistent_number = trial.number
            self.consistent_imputer = imputer
            if not uploaded:
                self._upload(trial, imputer)
        self._keep_candidate(value, trial.number, imputer, bool(config.clustering_params))
        return value

    def direction_evidence(self) -> Any:
        """:func:`~ciss_autoimpute.data.diagnostics.missingness_direction_evidence` of the data, read once."""
        if self._evidence is None:
            from ..data.diagnostics import missingness_direction_evidence

            self._evidence = missingness_direction_evidence(self.dataset)
        return self._evidence

    def _contradicts(self, directions: dict[str, int]) -> bool:
        """True when learned ``directions`` oppose a direction the data calls."""
        if not directions:
            return False
        return bool(direction_outliers({0: directions}, _called_directions(self.direction_evidence())))

    def _keep_candidate(self, value: float, number: int, imputer: Any, reclustered: bool) -> None:
        """Keep the best ``ensemble`` trials (with their predictions) for ensemble selection."""
        if self.ensemble <= 1:
            return
        self.candidates.append((value, number, imputer, reclustered))
        self.candidates.sort(key=lambda c: (c[0], c[1]))
        for dropped in self.candidates[self.ensemble:]:
            dropped[2].__dict__.pop("predictions_", None)
        del self.candidates[self.ensemble:]
        # Only the best trial's completed frame is ever returned (the ensemble builds its
        # own from the predictions), so the other candidates drop theirs.
        for cand in self.candidates:
            if cand[2] is not self.best_imputer and cand[2] is not self.consistent_imputer:
                cand[2].__dict__.pop("fit_imputed_", None)

    @staticmethod
    def _note_retry(trial: Any) -> None:
        """Show on the dashboard which trial of a dead worker this one takes over."""
        from optuna.trial import TrialState

        dead_worker = trial.user_attrs.get("worker")
        if not dead_worker:
            # Only a retry arrives with attributes already set: copied from the failed trial.
            return
        running = trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        frozen = next((t for t in running if t.number == trial.number), None)
        failed = frozen.system_attrs.get("failed_trial") if frozen is not None else None
        if failed is not None:
            trial.set_user_attr("retry_of", int(failed))  # the first trial of the retried configuration
            trial.set_user_attr("retried_from_worker", dead_worker)

    def _upload(self, trial: Any, imputer: Any) -> None:
        if self.artifact_store is None:
            return
        from optuna.artifacts import upload_artifact

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"imputer_trial_{trial.number}.pt"
            imputer.save(path)
            artifact_id = upload_artifact(
                artifact_store=self.artifact_store, file_path=str(path), study_or_trial=trial
            )
        trial.set_user_attr("imputer_artifact_id", artifact_id)


def make_objective(space: Any, dataset: Any, *, seed: int = 0, device: Any = None) -> Callable[[Any], float]:
    """The Optuna objective ``autotune`` uses, for users who drive the study themselves."""
    return _Objective(space, dataset, seed=seed, device=device, artifact_store=None)


def default_sampler(seed: int) -> Any:
    """The sampler ``autotune`` uses by default: seeded TPE, multivariate and grouped."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        # multivariate/group TPE is flagged experimental in some Optuna releases.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=5)


def default_pruner() -> Any:
    """The pruner ``autotune`` uses by default: median of earlier trials after each refit loop."""
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)


def warm_start_params(space: Any, *, families: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Optuna parameters of each family's default configuration in ``space``.

    The configuration is :meth:`SearchSpace.fixed_config` of the family (its defaults
    where they lie in the space, else the middle of each range), spelled as the
    parameter names :meth:`SearchSpace.sample` suggests (``"model"``,
    ``"<family>.<param>"``, depth and widths, training and clustering options), so that
    ``study.enqueue_trial(params)`` replays exactly that configuration.

    Parameters
    ----------
    space
        A :class:`~ciss_autoimpute.SearchSpace`.
    families
        Families to include. ``None`` means every closed-form family of the space
        (``trainable = False``: ``mean``, ``em``, ``knn``, ``mice``, ``missforest``) and,
        when the space holds a single family and it is trained (the ``mnar`` and
        ``cissvae`` presets), that family: its defaults are a tested starting point,
        where a study of several deep families would spend one long trial per family.
        A trained family whose default configuration the sampler cannot replay
        exactly (e.g. a layer order the space builds from meta parameters) is left
        out when chosen this way, and refused with an error when named.

    Returns
    -------
    dict
        ``{family: params}``, cheapest family first (``mean``, then ``em`` and ``knn``,
        ``mice``, ``missforest``, then trained families; the class attribute
        ``relative_cost``, ties by name).

    Examples
    --------
    >>> from ciss_autoimpute import SearchSpace
    >>> warm_start_params(SearchSpace(["knn", "mean", "vae"]))
    {'mean': {'model': 'mean'}, 'knn': {'model': 'knn', 'knn.n_neighbors': 5, 'knn.weights': 'uniform'}}
    """
    from ..models.registry import get_model_class

    def trained(f: str) -> bool:
        return bool(getattr(get_model_class(f), "trainable", True))

    named = families is not None
    if families is None:
        names = list(space.family_names)
        families = [f for f in names if not trained(f)]
        if len(names) == 1 and trained(names[0]):
            families.append(names[0])
    out: dict[str, dict[str, Any]] = {}
    families = sorted(families, key=lambda f: (getattr(get_model_class(f), "relative_cost", 0), f))
    for family in families:
        if family not in space.family_names:
            raise ValueError(f"warm start: {family!r} is not in the search space {list(space.family_names)}.")
        config = space.fixed_config(family)
        # Replay the sampling with the fixed configuration's values to learn the names
        # the trial will suggest, so the enqueued parameters match them one to one.
        recorder = _Recorder(config)
        replayed = space.sample(recorder)
        if trained(family) and (replayed.model_params, replayed.train_params) != (
            config.model_params, config.train_params
        ):
            if not named:
                logger.debug("warm start: %r's defaults cannot be replayed in this space; left out", family)
                continue
            raise ValueError(
                f"warm start: the sampler cannot replay {family!r}'s default configuration in this search "
                f"space (it would run {replayed.model_params} instead of {config.model_params}); "
                f"leave {family!r} out of families, or pass autotune(..., warm_start=False)."
            )
        out[family] = recorder.params
    return out


class _Recorder:
    """A stand-in trial answering each suggestion from a fixed configuration and recording it."""

    number = 0

    def __init__(self, config: Any) -> None:
        self.config = config
        self.params: dict[str, Any] = {}
        model = config.model
        flat = {"model": model}
        flat.update({f"{model}.{k}": v for k, v in config.model_params.items()})
        dims = config.model_params.get("hidden_dims")
        if isinstance(dims, list) and dims:
            from .search_space import _DEPTH, _WIDTH

            # A tuned architecture is suggested as a depth and widths, not as the list.
            flat[f"{model}.{_DEPTH}"] = len(dims)
            flat[f"{model}.{_WIDTH}"] = dims[0]
            flat.update({f"{model}.{_WIDTH}_{i}": w for i, w in enumerate(dims)})
        flat.update(config.train_params)
        flat.update(config.clustering_params)
        self._flat = flat

    def _answer(self, name: str, fallback: Any) -> Any:
        value = self._flat.get(name, fallback)
        self.params[name] = value
        return value

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._answer(name, list(choices)[0])

    def suggest_int(self, name: str, low: int, high: int, **_: Any) -> int:
        return self._answer(name, low)

    def suggest_float(self, name: str, low: float, high: float, **_: Any) -> float:
        return self._answer(name, low)


def enqueue_warm_start(
    study: Any, space: Any, *, families: Sequence[str] | None = None, limit: int | None = None
) -> list[str]:
    """Queue one trial per family with its default configuration, unless the study has one.

    A family counts as present when any trial of the study (in any state) carries the
    user attribute :data:`WARM_START_ATTR` with its name, so a resumed study, or a
    second worker joining it, queues nothing twice. Two workers starting a new study at
    the same instant may both queue a family; the later trial then steps aside when it
    starts (it fails as surplus, without training).

    Parameters
    ----------
    study
        An ``optuna.Study``.
    space
        The :class:`~ciss_autoimpute.SearchSpace` the study samples from.
    families
        As for :func:`warm_start_params` (default: the closed-form families, or the
        only family of a single-family space).
    limit
        Queue at most this many, cheapest first (``autotune`` passes its trial count,
        so a short run does not leave queued trials behind).

    Returns
    -------
    list of str
        The families queued by this call.
    """
    present = {
        t.user_attrs.get(WARM_START_ATTR)
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get(WARM_START_ATTR) is not None
    }
    queued: list[str] = []
    for family, params in warm_start_params(space, families=families).items():
        if family in present:
            continue
        if limit is not None and len(queued) >= limit:
            break
        study.enqueue_trial(params, user_attrs={WARM_START_ATTR: family})
        queued.append(family)
    if queued:
        logger.info("Study %r: queued the default configuration of %s first", study.study_name, queued)
    return queued


def _check_warm_start_duplicate(trial: Any) -> None:
    """Refuse a warm-start trial when an earlier live trial already runs the same family's defaults."""
    from optuna.trial import TrialState

    family = trial.user_attrs.get(WARM_START_ATTR)
    if family is None:
        return
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    earlier = [
        t.number
        for t in trial.study.get_trials(deepcopy=False, states=live)
        if t.number < trial.number and t.user_attrs.get(WARM_START_ATTR) == family
    ]
    if earlier:
        raise SurplusTrialError(
            f"surplus: trial #{earlier[0]} already runs the default configuration of {family!r} "
            "(two workers queued the warm start at the same moment)"
        )


def learned_directions(imputer: Any, *, given: bool = False) -> dict[str, int]:
    """``{feature: +1 or -1}`` learned by a fitted self-masking not-MIWAE, else ``{}``.

    +1: high values go missing, -1: low values go missing. Only columns that had
    missing cells in training and a non-zero slope are listed (the others learned
    nothing), and under ``"selfmasking_known_signs"`` only the columns whose sign was
    0 (the others were given theirs). ``given=True`` lists those given columns
    instead. Linear and nonlinear missing processes have no per-column direction.
    """
    model = getattr(imputer, "model_", None)
    if not getattr(model, "models_missingness", False) or not hasattr(model, "interpret_missing_process"):
        return {}
    try:
        frame = model.interpret_missing_process()
    except ValueError:  # linear / nonlinear processes
        return {}
    frame = frame[frame["had_missing"] & (frame["strength"] > 0) & (frame["learned"] != given)]
    return {str(f): (1 if str(d).startswith("high") else -1) for f, d in frame["direction"].items()}


def direction_outliers(
    directions: dict[int, dict[str, int]], reference: dict[str, int]
) -> dict[int, list[str]]:
    """The trials that learned a missingness direction opposite to ``reference``.

    Parameters
    ----------
    directions
        ``{trial number: {feature: +1 or -1}}``, as recorded in each trial's
        :data:`DIRECTIONS_ATTR`.
    reference
        ``{feature: +1, -1 or 0}`` to hold the trials to, e.g. the ``direction``
        column of :func:`~ciss_autoimpute.data.diagnostics.missingness_direction_evidence`;
        0 (no call) and features it does not name hold no trial back.

    Returns
    -------
    dict
        Each trial that opposes ``reference`` on some feature, mapped to those features
        (in the order the trial lists them).
    """
    for feature, sign in reference.items():
        if sign not in (1, -1, 0):
            raise ValueError(f"reference direction of {feature!r} must be +1, -1 or 0, got {sign!r}.")
    outliers: dict[int, list[str]] = {}
    for number, learned in directions.items():
        against = []
        for feature, sign in learned.items():
            if sign not in (1, -1):
                raise ValueError(f"direction of {feature!r} in trial {number} must be +1 or -1, got {sign!r}.")
            if reference.get(feature, 0) == -sign:
                against.append(feature)
        if against:
            outliers[number] = against
    return outliers


def _consistent_best(
    complete: list[Any], best: Any, called: dict[str, int]
) -> tuple[Any, dict[int, list[str]], bool]:
    """Hold ``complete`` trials' learned directions (attribute :data:`DIRECTIONS_ATTR`) to ``called``.

    Returns ``(chosen, outliers, applied)``: the outlying trials with their features,
    and whether they are left out — not when none opposes ``called``, nor when every
    trial does (nothing to choose between); then ``chosen`` is ``best``, else the best
    trial that is not an outlier.
    """
    learned = {t.number: t.user_attrs[DIRECTIONS_ATTR] for t in complete if t.user_attrs.get(DIRECTIONS_ATTR)}
    outliers = direction_outliers(learned, called)
    kept = [t for t in complete if t.number not in outliers]
    if not outliers or not kept:
        return best, outliers, False
    return min(kept, key=lambda t: (t.value, t.number)), outliers, True


def _called_directions(evidence: Any) -> dict[str, int]:
    """``{column: +1 or -1}`` for the columns the evidence frame calls a direction for."""
    return {str(f): int(d) for f, d in evidence["direction"].items() if d}


def _apply_direction_check(
    study: Any, complete: list[Any], best: Any, evidence_of: Callable[[], Any]
) -> tuple[Any, set[int]]:
    """The best completed trial whose learned directions do not contradict the data's evidence.

    Returns ``(best trial, numbers of the trials left out)``; records the directions,
    the data's evidence (``evidence_of()``, the objective's cached frame) and the
    outliers on the study (:data:`DIRECTION_CHECK_ATTR`).
    """
    learned = {t.number: t.user_attrs[DIRECTIONS_ATTR] for t in complete if t.user_attrs.get(DIRECTIONS_ATTR)}
    if not learned:
        return best, set()
    evidence = evidence_of()
    called = _called_directions(evidence)
    chosen, outliers, applied = _consistent_best(complete, best, called)
    study.set_user_attr(
        DIRECTION_CHECK_ATTR,
        {
            "directions": called,
            "from_data": {str(f): round(float(t), 2) for f, t in evidence["t"].items() if np.isfinite(t)},
            "outliers": {str(n): f for n, f in outliers.items()},
            "trials": len(learned),
        },
    )
    if not applied:
        return best, set()
    for number, features in outliers.items():
        logger.info(
            "Trial %d learned the missingness direction opposite to the data's evidence on %s; it is left out "
            "of the selection (autotune(..., direction_check=False) keeps it).", number, features,
        )
    if chosen.number != best.number:
        logger.info(
            "Returning trial %d (holdout error %.4g) instead of the study's best trial %d (%.4g), whose learned "
            "missingness directions contradict the data's evidence.", chosen.number, chosen.value, best.number, best.value,
        )
    return chosen, set(outliers)


def _artifact_store(study: Any, storage_arg: Any, artifact_dir: Any) -> Any:
    """The shared folder of best-model artifacts: given, else recorded on the study, else the default.

    The folder is recorded on the study the first time, so workers that join later
    (and :func:`~ciss_autoimpute.tuning.workers.load_best_imputer`) find it.
    """
    from optuna.artifacts import FileSystemArtifactStore

    from .storage import default_artifact_dir
    from .workers import ARTIFACT_DIR_ATTR

    recorded = study.user_attrs.get(ARTIFACT_DIR_ATTR)
    if artifact_dir is not None:
        directory = Path(artifact_dir).expanduser()
    elif recorded:
        directory = Path(recorded)
    else:
        directory = default_artifact_dir(storage_arg, study.study_name)
    if directory is None:
        return None
    directory = directory.resolve()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"artifact_dir {str(directory)!r} cannot be created here ({exc.strerror or exc}); pass artifact_dir= "
            "a folder every worker can write (a shared mount when workers run on several machines)."
        ) from None
    if not recorded:
        study.set_user_attr(ARTIFACT_DIR_ATTR, str(directory))
    return FileSystemArtifactStore(str(directory))


def _worker_sampler_seed(seed: int) -> int:
    """A sampler seed of its own for this process, so workers do not propose the same trials."""
    from .workers import worker_id

    digest = hashlib.sha256(f"{seed}:{worker_id()}".encode()).digest()
    return int.from_bytes(digest[:4], "little") % 2**31


def autotune(
    search_space: Any,
    dataset: Any,
    *,
    n_trials: int | None = 20,
    timeout: float | None = None,
    storage: Any = None,
    study_name: str | None = None,
    load_if_exists: bool = True,
    sampler: Any = None,
    pruner: Any = None,
    seed: int = 0,
    device: Any = None,
    callbacks: Sequence[Callable] = (),
    show_progress: bool = True,
    artifact_dir: str | Path | None = None,
    trial_callbacks: Sequence[Any] = (),
    study_trials: int | None = None,
    data_path: str | os.PathLike | None = None,
    warm_start: bool = True,
    ensemble: int = 8,
    direction_check: bool = True,
) -> TuneResult:
    """Tune the model family and its hyperparameters with Optuna.

    Each trial samples a configuration from ``search_space`` (family first, then its
    parameters), trains it with the impute-refit loop, reports the holdout error after
    every refit loop (so the pruner can stop bad trials) and records, for the
    dashboard: family, validation curve, per-cluster error, epochs, seconds, peak
    memory, device and, on failure, the reason. A diverging trial fails alone.
    The best trial's fitted model is kept in memory — and as an Optuna artifact when
    the storage persists — so nothing is retrained at the end. When a weighted average
    of the best trials beats it on the holdout (``ensemble``), that average is returned.

    Several workers (processes or machines) share a study by calling ``autotune`` (or
    ``ciss-autoimpute worker``) with the same ``storage`` and ``study_name``: a database
    URL (heartbeats on, so the trial of a killed worker is failed and run again by
    another one) or, on one machine, a journal file. The study records the data it
    tunes on; a worker given other data or another holdout refuses before training.
    ``study_trials`` makes the trial count study-wide. See ``docs/workers.md``.

    Parameters
    ----------
    search_space
        A :class:`~ciss_autoimpute.SearchSpace`, or a preset name (``"default"``, ``"quick"``, ...).
    dataset
        A :class:`~ciss_autoimpute.ClusterDataset` (a DataFrame is wrapped in one with defaults).
    n_trials, timeout
        Trials to run in this call, and a wall-clock limit in seconds.
    storage
        ``None`` (in memory), ``sqlite:///file.db``, a ``.db`` or journal file path, a
        database URL, or an Optuna storage; see :func:`~ciss_autoimpute.tuning.storage.resolve_storage`.
        Database URLs get heartbeats every 10 s and retry the trials of dead workers; build
        the storage with ``resolve_storage(url, heartbeat_interval=...)`` to change that.
    study_name, load_if_exists
        Name of the study; an existing study of that name is resumed when ``load_if_exists``.
    sampler, pruner
        Optuna sampler and pruner; defaults: seeded multivariate grouped TPE, and a median pruner.
        With ``study_trials`` the default sampler is seeded from ``seed`` and this process
        (host and pid), so that workers do not all propose the same configurations.
    seed
        Seed of the sampler and of every trial's training.
    device
        ``None`` keeps the dataset's device.
    callbacks
        Optuna study callbacks ``f(study, frozen_trial)``.
    show_progress
        Optuna's progress bar over trials.
    artifact_dir
        Folder for best-model artifacts, shared by every worker of the study. Default: the
        folder the study recorded; for a new study, beside an SQLite or journal file, or
        ``./<study_name>_artifacts`` for a database server. No artifacts in memory.
    trial_callbacks
        Extra training callbacks added to every trial (e.g. a time budget).
    study_trials
        Study-wide target: stop once the study holds this many finished (complete or
        pruned) trials, counting every worker's. Failed trials do not count; a trial of a
        worker that died is run again and counted once. While the last trials run in other
        workers this call waits for them (on storages with heartbeats), so that it can take
        over one whose worker dies. This call still stops after ``n_trials`` of its own
        trials: pass ``n_trials=None`` to run until the target.
    data_path
        The file the data was read from, recorded on a new study so that
        ``ciss-autoimpute worker`` on another machine can read it.
    warm_start
        Queue, before any sampled trial, one trial per closed-form family of the space
        (``mean``, ``em``, ``knn``, ``mice``, ``missforest``) with its default parameters, so
        a cheap classical baseline is always among the finished trials and the study
        can only pick a deep model that beats it; a space holding a single trained
        family (the ``mnar`` preset) starts from that family's defaults instead (see
        :func:`warm_start_params`). Families already warm-started in
        the study (a resumed study, another worker) are not queued again; see
        :func:`enqueue_warm_start`. The queued trials count towards ``n_trials``; with
        fewer trials than families, the cheapest families are queued (``mean`` first).
        Trials you queued yourself (``study.enqueue_trial``) run first and take their
        share of that room.
    ensemble
        How many of the best completed trials of this call may be averaged. Greedy
        ensemble selection (:func:`~ciss_autoimpute.ensemble.select_ensemble`) weighs
        them on the validation holdout; when a mix of two or more beats the best trial
        there, :attr:`TuneResult.imputer` is an
        :class:`~ciss_autoimpute.ensemble.EnsembleImputer` and :attr:`TuneResult.imputed`
        its imputations. ``0`` or ``1`` keeps the best trial alone. Only trials run by
        this call can join (their holdout imputations are kept in memory, one copy of
        the held-out and missing cells per candidate); when the study's best trial ran
        elsewhere (another worker, an earlier session), the best trial is returned alone.
    direction_check
        Trials of a self-masking not-MIWAE record the direction they learned for each
        column with missing cells (trial attribute ``missing_directions``: +1 high values
        go missing, -1 low). The holdout, made of observed cells, cannot tell which
        direction is right, and a fit sometimes settles on the wrong one while scoring
        as well as the others there, or better. With ``True`` (the default), trials
        whose learned direction contradicts a direction the observed data calls clearly
        (:func:`~ciss_autoimpute.data.diagnostics.missingness_direction_evidence`,
        ``|t| >= 3``) are left out of the best trial and of the ensemble
        (:func:`direction_outliers`), unless every trial would be. The study's own
        ``best_trial`` is unchanged; the called directions, the data's ``t`` per column
        and the outliers are recorded on the study (user attribute
        ``direction_check``). ``False`` ranks every trial by the holdout alone.
        Studies without such trials are not affected.

    Returns
    -------
    TuneResult

    Examples
    --------
    >>> from ciss_autoimpute import ClusterDataset, SearchSpace, autotune
    >>> from ciss_autoimpute.datasets import load_example
    >>> ds = ClusterDataset(load_example(), seed=0, device="cpu")  # doctest: +SKIP
    >>> tuned = autotune(SearchSpace.preset("quick"), ds, n_trials=3, show_progress=False)  # doctest: +SKIP
    >>> tuned.imputed.isna().sum().sum()  # doctest: +SKIP
    0
    """
    import optuna

    from ..data.dataset import ClusterDataset
    from .search_space import SearchSpace
    from .storage import resolve_storage

    if isinstance(search_space, str):
        search_space = SearchSpace.preset(search_space)
    if not isinstance(search_space, SearchSpace):
        raise TypeError(
            f"search_space must be a SearchSpace or a preset name, got {type(search_space).__name__}; "
            "use SearchSpace.preset('default')."
        )
    if not isinstance(dataset, ClusterDataset):
        if isinstance(dataset, (pd.DataFrame, np.ndarray)) or type(dataset).__module__.startswith("torch"):
            dataset = ClusterDataset(dataset, seed=seed, device=device)
        else:
            raise TypeError(
                f"dataset must be a ClusterDataset (or a DataFrame/array), got {type(dataset).__name__}."
            )
    elif device is not None:
        dataset = dataset.to(device)
    if n_trials is not None and (isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1):
        raise ValueError(f"n_trials must be a positive integer or None, got {n_trials!r}.")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}.")
    if n_trials is None and timeout is None and study_trials is None:
        raise ValueError(
            "Give n_trials, timeout or study_trials (or several); otherwise the study would never stop."
        )
    if study_name is not None and not isinstance(study_name, str):
        raise TypeError(f"study_name must be a string or None, got {type(study_name).__name__}.")

    if study_trials is not None and (
        isinstance(study_trials, bool) or not isinstance(study_trials, int) or study_trials < 1
    ):
        raise ValueError(f"study_trials must be a positive integer or None, got {study_trials!r}.")
    if data_path is not None and not isinstance(data_path, (str, os.PathLike)):
        raise TypeError(f"data_path must be a path or None, got {type(data_path).__name__}.")
    if not isinstance(warm_start, bool):
        raise TypeError(f"warm_start must be True or False, got {warm_start!r}.")
    if not isinstance(direction_check, bool):
        raise TypeError(f"direction_check must be True or False, got {direction_check!r}.")
    if isinstance(ensemble, bool) or not isinstance(ensemble, (int, np.integer)) or ensemble < 0:
        raise ValueError(
            f"ensemble must be a non-negative integer (trials that may be averaged; 0 turns it off), got {ensemble!r}."
        )

    from .storage import mask_url, storage_url
    from .workers import (
        StudyTarget,
        check_study_data,
        data_fingerprint,
        heartbeat_interval_of,
    )

    resolved = resolve_storage(storage)
    where = mask_url(storage_url(resolved) or "memory")
    own_sampler = sampler is None
    if own_sampler:
        sampler = default_sampler(seed if study_trials is None else _worker_sampler_seed(seed))
    try:
        study = optuna.create_study(
            storage=resolved,
            sampler=sampler,
            pruner=pruner if pruner is not None else default_pruner(),
            study_name=study_name,
            direction="minimize",
            load_if_exists=load_if_exists,
        )
    except optuna.exceptions.DuplicatedStudyError:
        raise ValueError(
            f"A study named {study_name!r} already exists in this storage; pass load_if_exists=True to resume it "
            "or choose another study_name."
        ) from None
    if own_sampler and study_trials is None and study.trials:
        # A resumed study: offset the seed by the trials already run, so the sampler's
        # random start-up phase does not propose the first session's configurations again.
        study.sampler = default_sampler(seed + len(study.trials))
    # Before any trial: every worker of the study must tune on the same data and holdout.
    check_study_data(study, data_fingerprint(dataset), where=where)
    attrs = study.user_attrs
    if "seed" not in attrs:
        study.set_user_attr("seed", int(seed))
    if data_path is not None and "data_path" not in attrs:
        study.set_user_attr("data_path", str(Path(data_path).expanduser().resolve()))
    study.set_user_attr("search_space", search_space.to_dict())
    study.set_user_attr("data_shape", [len(dataset), len(dataset.columns)])
    store = _artifact_store(study, storage if isinstance(storage, (str, os.PathLike)) else resolved, artifact_dir)

    if warm_start:
        # Trials the caller queued run first; a warm start only takes the room they leave,
        # so a short run never ends with queued trials behind it.
        room = [v for v in (n_trials, study_trials) if v is not None]
        waiting = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
        enqueue_warm_start(study, search_space, limit=max(0, min(room) - waiting) if room else None)

    target = None
    if study_trials is not None:
        deadline = time.monotonic() + timeout if timeout is not None else None
        target = StudyTarget(study_trials, heartbeat_interval=heartbeat_interval_of(resolved), deadline=deadline)
    objective = _Objective(
        search_space, dataset, seed=seed, device=device, artifact_store=store, extra_callbacks=trial_callbacks,
        target=target, ensemble=int(ensemble), direction_check=direction_check,
    )
    if target is None or target.has_room(study):
        study.optimize(
            objective,
            n_trials=n_trials,
            timeout=timeout,
            # Any error inside one trial (divergence, a configuration the data cannot
            # take, out of memory) fails that trial alone, its reason stored on it; the
            # study goes on. If every trial fails, the RuntimeError below lists why.
            catch=(Exception,),
            callbacks=[*callbacks, *([target] if target is not None else [])],
            # Optuna's bar counts this call's trials and needs a limit to count towards.
            show_progress_bar=show_progress and (n_trials is not None or timeout is not None),
        )
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        reasons = sorted({str(t.user_attrs.get("fail_reason", t.state.name)) for t in study.trials})
        raise RuntimeError(
            f"No trial of study {study.study_name!r} completed ({len(study.trials)} trials; reasons: {reasons[:3]}). "
            "Widen the search space, lower the learning rate, or add trials."
        )
    best = study.best_trial
    excluded: set[int] = set()
    if direction_check:
        best, excluded = _apply_direction_check(study, complete, best, objective.direction_evidence)
    imputer = _best_imputer(best, objective, store, dataset, search_space, seed)
    history = getattr(imputer, "history_", {})
    weights: dict[int, float] = {}
    value: float | None = None
    combined = _build_ensemble(objective, best, dataset, excluded)
    if combined is not None:
        imputer = combined
        weights = dict(zip(combined.trial_numbers_, combined.weights_))
        value = float(combined.best_score_)
        study.set_user_attr(
            "ensemble", {"weights": {str(k): round(v, 4) for k, v in weights.items()}, "value": value}
        )
        logger.info("Ensemble of trials %s: holdout error %.4g (best trial alone %.4g)", weights, value, best.value)
    for cand in objective.candidates:
        cand[2].__dict__.pop("predictions_", None)
    return TuneResult(
        imputed=imputer.fit_imputed_.copy() if hasattr(imputer, "fit_imputed_") else imputer.transform(dataset.frame),
        best_params=dict(best.params),
        best_value=float(best.value),
        best_config=dict(best.user_attrs.get("config", {})),
        study=study,
        trials=study.trials_dataframe(),
        imputer=imputer,
        history=history,
        ensemble_weights=weights,
        ensemble_value=value,
    )


def _build_ensemble(objective: _Objective, best: Any, dataset: Any, excluded: Collection[int] = frozenset()) -> Any:
    """An :class:`EnsembleImputer` of this call's best trials (but ``excluded``), or ``None``
    when one trial is as good."""
    from ..ensemble import EnsembleImputer, ensemble_imputed, select_ensemble

    cands = [c for c in objective.candidates if c[1] not in excluded]
    if objective.ensemble <= 1 or len(cands) < 2 or not bool(dataset.data.val_mask.any()):
        return None
    if cands[0][1] != best.number:
        logger.info(
            "The study's best trial (%d) did not run in this call; returning it alone, without an ensemble.",
            best.number,
        )
        return None
    selection = select_ensemble([c[2].predictions_.holdout for c in cands], dataset.data)
    chosen = selection.members
    if len(chosen) < 2:
        return None
    members = [cands[i][2] for i in chosen]
    weights = [selection.weights[i] for i in chosen]
    combined = EnsembleImputer(
        members, weights, own_clusters=[not cands[i][3] for i in chosen], trial_numbers=[cands[i][1] for i in chosen]
    )
    combined.best_score_ = float(selection.score)
    combined.fit_imputed_ = ensemble_imputed([m.predictions_.missing for m in members], weights, dataset)
    return combined


def _best_imputer(best: Any, objective: _Objective, store: Any, dataset: Any, space: Any, seed: int) -> Any:
    """The best trial's fitted imputer: from memory, else its artifact, else refit once."""
    from ..ensemble import ensemble_imputed
    from ..imputer import Imputer

    if objective.best_number == best.number and objective.best_imputer is not None:
        return objective.best_imputer
    if objective.consistent_number == best.number and objective.consistent_imputer is not None:
        return objective.consistent_imputer
    for _, number, candidate, _ in objective.candidates:
        if number == best.number:
            # A candidate kept for the ensemble (chosen over the holdout's best by the
            # direction check): complete the data with its kept imputations.
            if not hasattr(candidate, "fit_imputed_"):
                candidate.fit_imputed_ = ensemble_imputed([candidate.predictions_.missing], [1.0], dataset)
            return candidate
    artifact_id = best.user_attrs.get("imputer_artifact_id")
    reason = "left no artifact"
    if store is not None and artifact_id:
        from optuna.artifacts import download_artifact

        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "best.pt"
                download_artifact(artifact_store=store, file_path=str(path), artifact_id=artifact_id)
                imputer = Imputer.load(path, device=str(dataset.device))
        except OSError as exc:
            # Workers on several machines without a shared artifact folder: refit below.
            reason = f"has its artifact elsewhere ({type(exc).__name__}: {exc})"
        else:
            imputer.fit_imputed_ = imputer.transform(dataset.frame)
            return imputer
    logger.warning(
        "The selected trial (%d) is not in this process's memory and %s; refitting its configuration once.",
        best.number, reason,
    )
    from .search_space import TrialConfig

    config = TrialConfig.from_dict(best.user_attrs["config"])
    ds = objective._dataset_for(config.clustering_params)
    imputer = Imputer(
        model=config.model, model_params=config.model_params, train_params=config.train_params, seed=seed,
        device=str(ds.device),
    )
    return imputer.fit_dataset(ds)
