"""``run_imputation``: one call from a table with holes to a completed table."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from .exceptions import NothingMissingWarning

__all__ = ["run_imputation", "ImputationResult"]

logger = logging.getLogger(__name__)

#: Trials and seconds of the small search behind ``model="auto"``.
AUTO_TRIALS = 12
AUTO_TIME_BUDGET = 120.0


@dataclass
class ImputationResult:
    """What :func:`run_imputation` returns.

    Attributes
    ----------
    imputed
        The completed data: same index, columns and dtypes; observed cells untouched.
    imputer
        The fitted :class:`~ciss_autoimpute.Imputer` (``imputer.transform(new_rows)``),
        or an :class:`~ciss_autoimpute.ensemble.EnsembleImputer` of several trials.
    model
        The family that was fitted (``"cissvae"``, ...), or ``"ensemble"``.
    validation_error
        Holdout error of the kept model (lower is better); ``nan`` when nothing was
        missing. For an ensemble, the error of its weighted average, on the holdout
        its weights were chosen on (so slightly optimistic).
    study
        The Optuna study behind ``model="auto"``, else ``None``.
    history
        Training history of the kept model.
    """

    imputed: Any
    imputer: Any
    model: str | None
    validation_error: float
    study: Any = None
    history: dict[str, list] = field(default_factory=dict)


def run_imputation(
    data: Any,
    *,
    model: str = "auto",
    seed: int = 0,
    device: str | None = None,
    time_budget: float | None = None,
    n_trials: int | None = None,
    model_params: Mapping[str, Any] | None = None,
    train_params: Mapping[str, Any] | None = None,
    clusters: Any = None,
    n_clusters: int | None = None,
    val_proportion: float = 0.1,
    column_kinds: Mapping[Any, str] | None = None,
    columns_ignore: Sequence[Any] | None = None,
    storage: Any = None,
    study_name: str | None = None,
    show_progress: bool = False,
    callbacks: Sequence[Any] = (),
) -> ImputationResult:
    """Impute every missing cell of ``data`` with good defaults.

    Parameters
    ----------
    data
        DataFrame, numpy array or torch tensor; NaN, None and ``pd.NA`` mean missing.
    model
        ``"auto"`` runs a small, time-bounded search over the ``quick`` preset (every
        built-in family for ignorable missingness, the classical baselines ``mean``,
        ``em``, ``knn``, ``mice`` and ``missforest`` evaluated first) and returns the best trial,
        or the weighted average of several trials when that beats it on the holdout
        (an :class:`~ciss_autoimpute.ensemble.EnsembleImputer`; ``model`` of the result
        is then ``"ensemble"``). A family name (see
        :func:`~ciss_autoimpute.available_models`) fits that family once with its
        defaults and ``model_params``.
    seed
        Seed of everything random; the same seed gives the same result on CPU.
    device
        ``None`` picks CUDA when available.
    time_budget
        Seconds for ``model="auto"`` (default 120); trials stop when it runs out.
    n_trials
        Trials for ``model="auto"`` (default 12).
    model_params, train_params
        Family hyperparameters and training settings for a single fit.
    clusters, n_clusters, val_proportion, column_kinds, columns_ignore
        As in :class:`~ciss_autoimpute.ClusterDataset`.
    storage, study_name
        Where the ``auto`` study is kept (default in memory).
    show_progress
        Show a progress bar over trials.
    callbacks
        Training callbacks (e.g. :class:`ciss_autoimpute.progress.TrainingProgress`)
        added to the single fit or to every trial.

    Returns
    -------
    ImputationResult

    Warns
    -----
    UserWarning
        A self-masking ``notmiwae`` fit learned, for some column, the direction opposite
        to the one the observed data calls
        (:func:`~ciss_autoimpute.data.diagnostics.missingness_direction_evidence`); the
        message names the columns and the ``signs`` that would fix them.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from ciss_autoimpute import run_imputation
    >>> rng = np.random.default_rng(0)
    >>> df = pd.DataFrame(rng.normal(size=(80, 3)), columns=list("abc"))
    >>> df.iloc[::4, 1] = np.nan
    >>> res = run_imputation(df, model="vae", train_params={"epochs": 5, "max_loops": 1}, device="cpu")
    >>> int(res.imputed.isna().sum().sum())
    0
    """
    from .data.checks import check_frame, to_frame
    from .data.dataset import ClusterDataset
    from .imputer import Imputer, _like_input
    from .models.registry import available_models

    frame = to_frame(data, argument="data")
    if not isinstance(model, str) or (model != "auto" and model not in available_models()):
        raise ValueError(f"model must be 'auto' or one of {available_models()}, got {model!r}.")
    if time_budget is not None and (not isinstance(time_budget, (int, float)) or time_budget <= 0):
        raise ValueError(f"time_budget must be a positive number of seconds or None, got {time_budget!r}.")
    if model != "auto" and (n_trials is not None or time_budget is not None):
        raise ValueError(
            f"n_trials and time_budget apply to model='auto' only; model={model!r} fits once. "
            "Drop them or use model='auto'."
        )
    if model == "auto" and (model_params is not None or train_params is not None):
        raise ValueError(
            "model_params and train_params apply to a single family; pass model='cissvae' (or another family) "
            "or tune with autotune(SearchSpace(...), ...)."
        )
    check_frame(frame)
    if not frame.isna().to_numpy().any():
        warnings.warn(
            "The data has no missing cell; returning an unchanged copy.", NothingMissingWarning, stacklevel=2
        )
        return ImputationResult(
            imputed=_like_input(data, frame.copy()), imputer=None, model=None, validation_error=float("nan")
        )

    dataset = ClusterDataset(
        frame,
        clusters=clusters,
        n_clusters=n_clusters,
        val_proportion=val_proportion,
        columns_ignore=columns_ignore,
        seed=seed,
        device=device,
        column_kinds=column_kinds,
    )
    if model == "auto":
        from .training.callbacks import TimeBudget
        from .tuning import SearchSpace
        # From its module: the package attribute "autotune" is that module once it is imported.
        from .tuning.autotune import autotune

        budget = float(time_budget) if time_budget is not None else AUTO_TIME_BUDGET
        tuned = autotune(
            SearchSpace.preset("quick"),
            dataset,
            n_trials=n_trials if n_trials is not None else AUTO_TRIALS,
            timeout=budget,
            storage=storage,
            study_name=study_name,
            seed=seed,
            show_progress=show_progress,
            trial_callbacks=[TimeBudget(budget, shared=True), *callbacks],
        )
        imputer = tuned.imputer
        return ImputationResult(
            imputed=_like_input(data, tuned.imputed),
            imputer=imputer,
            model=imputer.model,
            validation_error=float(tuned.ensemble_value if tuned.ensemble_value is not None else tuned.best_value),
            study=tuned.study,
            history=tuned.history,
        )

    imputer = Imputer(
        model=model,
        model_params=model_params,
        train_params=train_params,
        n_clusters=n_clusters,
        val_proportion=val_proportion,
        column_kinds=column_kinds,
        columns_ignore=columns_ignore,
        seed=seed,
        device=device,
    )
    evidence_of = _cached_evidence(dataset)
    imputer.fit_dataset(dataset, callbacks=callbacks, evidence_of=evidence_of)
    _warn_against_the_data(imputer, evidence_of)
    return ImputationResult(
        imputed=_like_input(data, imputer.fit_imputed_.copy()),
        imputer=imputer,
        model=model,
        validation_error=float(imputer.best_score_),
        history=imputer.history_,
    )


def _cached_evidence(dataset: Any) -> Callable[[], pd.DataFrame]:
    """``dataset``'s missingness direction evidence, computed on the first call only."""
    from .data.diagnostics import missingness_direction_evidence

    held: list[pd.DataFrame] = []

    def evidence_of() -> pd.DataFrame:
        if not held:
            held.append(missingness_direction_evidence(dataset))
        return held[0]

    return evidence_of


def _warn_against_the_data(imputer: Any, evidence_of: Callable[[], pd.DataFrame]) -> None:
    """Warn when a self-masking fit's directions contradict the data's evidence.

    ``evidence_of`` returns the fitted dataset's direction evidence (shared with the fit,
    which already read it for ``signs="data"``). Learned directions and signs the user
    gave are told apart: a learned one gets the signs that would fix it, a given one is
    pointed out as the user's to check.
    """
    from .tuning.autotune import direction_outliers, learned_directions

    learned = learned_directions(imputer)
    given = learned_directions(imputer, given=True)
    if not learned and not given:
        return
    called = evidence_of()
    reference = called["direction"].to_dict()
    against = direction_outliers({0: learned}, reference).get(0, [])
    against_given = direction_outliers({0: given}, reference).get(0, [])

    def side(sign: int) -> str:
        return "high" if sign > 0 else "low"

    if against:
        # Per column: the data's call, else the fit's sign, else +1 (never missing: any sign works).
        fitted = {**learned, **given}
        signs = [int(called["direction"].get(str(n), 0)) or int(fitted.get(str(n), 1))
                 for n in imputer.model_.layout.names]
        t = ", ".join(f"{f} (learned {side(learned[f])} values missing, data t = "
                      f"{called.loc[f, 't']:+.1f})" for f in against)
        warnings.warn(
            f"not-MIWAE learned the missingness direction opposite to what the observed data shows for {t}; "
            f"its imputations of those columns are likely shifted the wrong way. If you know the directions, "
            f"refit with model_params={{'missing_process': 'selfmasking_known_signs', 'signs': {signs}}} "
            "(+1: high values go missing), or compare with another seed.",
            UserWarning,
            stacklevel=3,
        )
    if against_given:
        t = ", ".join(f"{f} (given {side(given[f])} values missing, data t = {called.loc[f, 't']:+.1f}, "
                      f"which points to {side(reference[f])} values)" for f in against_given)
        warnings.warn(
            f"the signs passed to not-MIWAE contradict what the observed data shows for {t}. Check them "
            "(+1: high values go missing, -1: low values, 0: learn it), or pass signs='data' to take each "
            "column's sign from the data.",
            UserWarning,
            stacklevel=3,
        )
