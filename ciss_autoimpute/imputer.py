"""``Imputer``: a scikit-learn transformer around one fitted model."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, TransformerMixin

from . import __version__
from .exceptions import ModelFileError, NotFittedError

__all__ = ["Imputer"]

logger = logging.getLogger(__name__)

_FORMAT = "ciss_autoimpute.imputer"
_FORMAT_VERSION = 1
#: ``format`` tag of a saved :class:`~ciss_autoimpute.ensemble.EnsembleImputer`.
ENSEMBLE_FORMAT = "ciss_autoimpute.ensemble"


def _checksum(config_json: str, state: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256(config_json.encode("utf-8"))
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(key.encode("utf-8"))
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


class Imputer(TransformerMixin, BaseEstimator):
    """Fill missing cells with one model family; impute new rows after ``fit``.

    Parameters
    ----------
    model
        A registered family name: the deep families (``"cissvae"``, ``"vae"``,
        ``"miwae"``, ``"notmiwae"``, ...) or the classical baselines (``"mean"``,
        ``"em"``, ``"knn"``, ``"mice"``, ``"missforest"``, fitted once in closed form); see
        :func:`ciss_autoimpute.available_models`.
    model_params
        Hyperparameters of the family; anything left out takes the family's default.
    train_params
        Flat dict of :class:`~ciss_autoimpute.training.TrainConfig` and
        :class:`~ciss_autoimpute.training.RefitConfig` fields.
    n_clusters
        KMeans clusters on the missingness pattern; ``None`` uses Leiden.
    clustering
        Leiden options (:class:`~ciss_autoimpute.ClusteringOptions` fields as a dict).
    val_proportion
        Share of observed cells held out to choose the best refit loop.
    column_kinds
        Per-column kind overrides (``"numeric"``, ``"binary"``, ``"categorical"``).
    columns_ignore
        Columns kept out of clustering and of the holdout.
    replacement_value
        Starting value of missing cells on the encoded scale.
    transform_iterations
        Rounds of impute-and-refill used on new rows in :meth:`transform`.
    seed
        Seed of clustering, holdout, initial weights and batching.
    device
        ``None`` picks CUDA when available.

    Attributes
    ----------
    model_ : ImputationModel
        The fitted model (best refit loop).
    schema_ : Schema
        Column kinds and encoding learned by ``fit``.
    history_ : dict
        ``{"epochs": [...], "loops": [...]}`` plain records of training.
    best_score_ : float
        Validation error of the kept state (lower is better).
    mnar_correction_ : SelfMaskingCorrection or None
        The self-masking correction fitted after training when
        ``train_params["mnar_correction"]`` asks for one
        (:class:`~ciss_autoimpute.selection.SelfMaskingCorrection`; its ``describe()``
        lists the process of each column); ``None`` otherwise.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> df = pd.DataFrame(rng.normal(size=(80, 3)), columns=list("abc"))
    >>> df.iloc[::5, 0] = np.nan
    >>> imp = Imputer(model="vae", train_params={"epochs": 5, "max_loops": 1}, device="cpu")
    >>> out = imp.fit_transform(df)
    >>> bool(out.isna().any().any())
    False
    """

    def __init__(
        self,
        *,
        model: str = "cissvae",
        model_params: Mapping[str, Any] | None = None,
        train_params: Mapping[str, Any] | None = None,
        n_clusters: int | None = None,
        clustering: Mapping[str, Any] | None = None,
        val_proportion: float = 0.1,
        column_kinds: Mapping[Any, str] | None = None,
        columns_ignore: Sequence[Any] | None = None,
        replacement_value: float = 0.0,
        transform_iterations: int = 5,
        seed: int = 0,
        device: str | None = None,
    ) -> None:
        self.model = model
        self.model_params = model_params
        self.train_params = train_params
        self.n_clusters = n_clusters
        self.clustering = clustering
        self.val_proportion = val_proportion
        self.column_kinds = column_kinds
        self.columns_ignore = columns_ignore
        self.replacement_value = replacement_value
        self.transform_iterations = transform_iterations
        self.seed = seed
        self.device = device

    # ------------------------------------------------------------------ sklearn
    def __sklearn_tags__(self):  # type: ignore[override]
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.non_deterministic = False
        return tags

    def _check_params(self) -> None:
        from .models.registry import get_model_class
        from .training import configs_from_dict

        cls = get_model_class(self.model)
        if self.model_params is not None and not isinstance(self.model_params, Mapping):
            raise TypeError(f"model_params must be a dict or None, got {type(self.model_params).__name__}.")
        resolved = cls.resolve_params(dict(self.model_params or {}))
        check = getattr(cls, "_check_params", None)
        if callable(check):
            # Value checks that need no data (ranges, choices) run before any clustering.
            check(resolved)
        if self.train_params is not None and not isinstance(self.train_params, Mapping):
            raise TypeError(f"train_params must be a dict or None, got {type(self.train_params).__name__}.")
        train_cfg, _ = configs_from_dict(dict(self.train_params or {}))
        if train_cfg.mnar_correction != "none" and getattr(cls, "models_missingness", False):
            raise ValueError(
                f"train_params['mnar_correction']={train_cfg.mnar_correction!r} corrects families that assume the "
                f"missingness ignorable; {self.model!r} models the missing process itself. Drop mnar_correction, "
                "or pick another family (e.g. 'missforest', 'em', 'miwae')."
            )
        ti = self.transform_iterations
        if isinstance(ti, bool) or not isinstance(ti, (int, np.integer)) or ti < 1:
            raise ValueError(f"transform_iterations must be an integer >= 1, got {ti!r}.")

    def fit(self, X: Any, y: Any = None, *, clusters: Any = None, callbacks: Sequence[Any] = ()) -> "Imputer":
        """Cluster, hold out, train with the impute-refit loop and keep the best state.

        Parameters
        ----------
        X
            DataFrame, array or tensor with missing cells (NaN / None / ``pd.NA``).
        y
            Ignored.
        clusters
            Optional cluster label per row; otherwise rows are clustered on missingness.
        callbacks
            Extra training callbacks (progress, pruning, time budget).
        """
        from .data.dataset import ClusterDataset

        self._check_params()
        ds = ClusterDataset(
            X,
            clusters=clusters,
            n_clusters=self.n_clusters,
            val_proportion=self.val_proportion,
            columns_ignore=self.columns_ignore,
            replacement_value=self.replacement_value,
            seed=self.seed,
            device=self.device,
            column_kinds=self.column_kinds,
            clustering=self.clustering,
        )
        return self.fit_dataset(ds, callbacks=callbacks)

    def fit_dataset(
        self,
        dataset: Any,
        *,
        callbacks: Sequence[Any] = (),
        keep_predictions: bool = False,
        evidence_of: Callable[[], pd.DataFrame] | None = None,
    ) -> "Imputer":
        """Fit on an existing :class:`~ciss_autoimpute.ClusterDataset` (its clusters and holdout).

        ``keep_predictions=True`` also keeps, as ``predictions_``, the encoded
        imputations the holdout was scored on and those of the missing cells (what
        :func:`~ciss_autoimpute.ensemble.select_ensemble` weighs); off by default, since
        it holds a copy of the data.

        ``evidence_of``: a callable returning
        :func:`~ciss_autoimpute.data.diagnostics.missingness_direction_evidence` of
        ``dataset``, for a caller that already holds it (``autotune``'s trials share one);
        read only by ``signs="data"`` and ``mnar_correction="selfmasking_data"``.
        """
        from .models.registry import build_model
        from .training import Trainer, configs_from_dict

        self._check_params()
        train_cfg, refit_cfg = configs_from_dict(dict(self.train_params or {}))
        if evidence_of is None:
            from .data.diagnostics import missingness_direction_evidence

            def evidence_of() -> pd.DataFrame:
                return missingness_direction_evidence(dataset)

        correction = train_cfg.mnar_correction
        evidence = None
        if correction != "none":
            if not bool(dataset.data.val_mask.any()):
                raise ValueError(
                    f"train_params['mnar_correction']={correction!r} fits the missing process on the validation "
                    "holdout, and this dataset holds out no cell; give it one (val_proportion=0.1, the default)."
                )
            if correction == "selfmasking_data":
                evidence = evidence_of()
        params = dict(self.model_params or {})
        if params.get("signs") == "data":
            from .data.diagnostics import data_signs

            # Resolved on the data being fitted; the fitted model keeps the list.
            params["signs"] = data_signs(dataset, evidence=evidence_of())
        model = build_model(self.model, dataset.layout, dataset.n_clusters, params, seed=self.seed)
        trainer = Trainer(
            model, train_cfg, refit_cfg, callbacks=list(callbacks), seed=self.seed, device=dataset.device
        )
        result = trainer.fit(dataset.data)
        self.mnar_correction_ = None
        if correction != "none":
            from .selection import SelfMaskingCorrection

            scored = result.scored_imputed if result.scored_imputed is not None else result.imputed
            fitted = SelfMaskingCorrection.fit(correction, dataset.data, result.imputed, scored, evidence)
            # What the fit returns (and what ensembles weigh) is the corrected imputation.
            result.imputed = fitted.apply(result.imputed, ~dataset.data.observed)
            self.mnar_correction_ = fitted
        self._set_fitted(dataset, result.model, result.imputed, result)
        if keep_predictions:
            self.predictions_ = FitPredictions.from_result(result, dataset.data)
        return self

    def _set_fitted(self, dataset: Any, model: Any, imputed: torch.Tensor, result: Any) -> None:
        """Store the learned state (shared by ``fit`` and by ``autotune``'s best trial)."""
        from .clustering import MissingnessAssigner

        self.model_ = model.eval()
        self.schema_ = dataset.schema
        self.n_clusters_ = int(dataset.n_clusters)
        self.cluster_labels_ = list(dataset.cluster_labels_)
        self.columns_ignore_ = sorted(dataset.columns_ignore, key=str)
        self.columns_ = list(dataset.columns)
        # New rows are assigned on their own missingness indicators, whatever the
        # clusters were fitted on (patterns, a proportion matrix or user labels).
        self.assigner_ = MissingnessAssigner().fit(
            self._cluster_mask(dataset.missing_mask_columns), dataset.clusters
        )
        self.n_features_in_ = len(dataset.columns)
        if all(isinstance(c, str) for c in dataset.columns):
            self.feature_names_in_ = np.asarray(list(dataset.columns), dtype=object)
        self.history_ = {
            "epochs": list(getattr(result, "epoch_history", []) or []),
            "loops": list(getattr(result, "loop_history", []) or []),
        }
        score = getattr(result, "best_score", None)
        self.best_score_ = float(getattr(score, "total", score)) if score is not None else float("nan")
        self.best_loop_ = getattr(result, "best_loop", None)
        self.fit_imputed_ = dataset.decode(imputed)
        self.fit_clusters_ = np.asarray(dataset.clusters).copy()

    def _cluster_mask(self, missing_cols: np.ndarray) -> np.ndarray:
        keep = np.array([c not in set(self.columns_ignore_) for c in self.columns_], dtype=bool) if hasattr(
            self, "columns_"
        ) else np.ones(missing_cols.shape[1], dtype=bool)
        return missing_cols[:, keep]

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError(
                "This Imputer is not fitted yet; call fit(X) (or use autotune(...).imputer) before transform."
            )

    def transform(self, X: Any, *, clusters: Any = None) -> Any:
        """Impute the missing cells of new rows with the fitted model.

        Rows are assigned to the fitted missingness clusters (or to ``clusters`` when
        given, using the labels seen in ``fit``). Observed cells come back unchanged.
        The result has the type of ``X`` (DataFrame, ndarray or tensor).
        """
        self._check_fitted()
        frame = _checked_frame(X, self.columns_, self.n_features_in_, "Imputer")
        values, observed = self.schema_.encode(frame)
        if not (~observed).any():
            return _like_input(X, frame.copy())
        x = self._impute_encoded(frame, values, observed, clusters)
        out = self.schema_.decode(x.cpu().numpy(), frame)
        return _like_input(X, out)

    def _impute_encoded(
        self, frame: pd.DataFrame, values: np.ndarray, observed: np.ndarray, clusters: Any,
        *, corrected: bool = True,
    ) -> torch.Tensor:
        """Encoded imputations of ``frame`` (``values``/``observed`` from ``schema_.encode``).

        ``corrected=False`` leaves out the fitted ``mnar_correction`` (the model's own imputation).
        """
        from .training import configs_from_dict, impute_all

        labels = self._assign(frame, clusters)
        dev = _model_device(self.model_)
        vals = torch.from_numpy(np.nan_to_num(values, nan=0.0)).to(dev)
        obs = torch.from_numpy(observed).to(dev)
        lab = torch.from_numpy(labels).to(dev)
        x = torch.where(obs, vals, torch.full_like(vals, float(self.replacement_value)))
        gen = torch.Generator(device=dev).manual_seed(int(self.seed))
        # A closed-form family reads only the observed cells, so refilling changes nothing.
        rounds = int(self.transform_iterations) if getattr(self.model_, "trainable", True) else 1
        # The precision the model was trained in (TrainConfig.precision) also imputes new rows.
        precision = configs_from_dict(dict(self.train_params or {}))[0].precision
        for _ in range(rounds):
            x = impute_all(self.model_, x, obs, lab, generator=gen, precision=precision)
        correction = getattr(self, "mnar_correction_", None)
        if corrected and correction is not None:
            x = correction.apply(x, ~obs)
        return x

    def _assign(self, frame: pd.DataFrame, clusters: Any) -> np.ndarray:
        n = len(frame)
        if clusters is not None:
            arr = np.asarray(clusters, dtype=object).ravel()
            if len(arr) != n:
                raise ValueError(f"clusters has {len(arr)} labels but X has {n} rows; give one label per row.")
            lookup = {lab: i for i, lab in enumerate(self.cluster_labels_)}
            unknown = sorted({repr(v) for v in arr if v not in lookup})
            if unknown:
                raise ValueError(
                    f"clusters holds label(s) {unknown[:5]} not seen in fit; known labels are "
                    f"{self.cluster_labels_[:20]}. Leave clusters=None to assign rows automatically."
                )
            return np.array([lookup[v] for v in arr], dtype=np.int64)
        if self.n_clusters_ == 1:
            return np.zeros(n, dtype=np.int64)
        missing = self.schema_.missing_matrix(frame)
        return np.asarray(self.assigner_.predict(self._cluster_mask(missing)), dtype=np.int64)

    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> Any:
        """Fit, then return the imputation of ``X`` from the kept (best) refit loop."""
        self.fit(X, y, **fit_params)
        return _like_input(X, self.fit_imputed_.copy())

    def sample(
        self,
        X: Any,
        n: int = 5,
        *,
        method: str | None = None,
        seed: int = 0,
        long: bool = False,
        **sampler_options: Any,
    ) -> list[pd.DataFrame] | pd.DataFrame:
        """Multiple imputation: ``n`` completed copies of ``X`` drawn from the model.

        Each copy fills the missing cells with a draw from the fitted model's
        conditional distribution of the missing cells given the observed ones (see
        :mod:`ciss_autoimpute.sampling`); observed cells are never changed. Analyse
        every copy and combine the results with
        :func:`ciss_autoimpute.pooling.pool_function` (Rubin's rules).

        Parameters
        ----------
        X
            DataFrame, array or tensor with the fitted columns (the training data or
            new rows).
        n
            Number of completed copies (``m`` in the multiple-imputation literature).
        method
            ``"lair"`` (latent-adaptive importance resampling), ``"mwg"``
            (Metropolis-within-Gibbs), ``"pseudo_gibbs"`` or ``"sir"`` (sampling
            importance resampling; MIWAE and not-MIWAE only). ``None``: ``"sir"`` for
            the importance-weighted families, ``"lair"`` for the other latent-variable
            families, and for the classical families (``mean``, ``em``, ``knn``, ``mice``,
            ``missforest``; no latent space, so they accept only ``None``) their own
            draws (:meth:`~ciss_autoimpute.models.families.classical.ClassicalModel.sample_imputations`).
        seed
            Seed of the draws; the same seed gives the same draws on CPU.
        long
            ``True`` returns one frame stacking the copies, with a first column
            ``imputation`` (1 .. n) and the original index repeated.
        **sampler_options
            ``chains``, ``iterations``, ``burn_in``, ``thinning`` (``"mwg"``,
            ``"pseudo_gibbs"``, ``"lair"``), ``importance_samples`` (``"lair"``,
            ``"sir"``), ``prior_proposals`` (``"lair"``); see
            :class:`~ciss_autoimpute.sampling.SamplerConfig`.

        Returns
        -------
        list of pandas.DataFrame or pandas.DataFrame
            ``n`` frames with ``X``'s index, columns and dtypes, or the long frame.

        Raises
        ------
        ValueError
            Bad ``n``, a method the family does not support (the message lists the
            valid ones), an unknown or bad sampler option, or columns that do not match.

        Examples
        --------
        >>> import numpy as np, pandas as pd
        >>> rng = np.random.default_rng(0)
        >>> df = pd.DataFrame(rng.normal(size=(60, 3)), columns=list("abc"))
        >>> df.iloc[::4, 0] = np.nan
        >>> imp = Imputer(model="vae", train_params={"epochs": 3, "max_loops": 1}, device="cpu").fit(df)
        >>> copies = imp.sample(df, n=3, method="lair", seed=0)
        >>> len(copies), bool(copies[0].isna().any().any())
        (3, False)
        """
        from .data.checks import to_frame
        from .sampling import SamplerConfig, check_method, sample_conditional

        self._check_fitted()
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be an integer >= 1 (the number of completed copies), got {n!r}.")
        n = int(n)
        own_draws = not getattr(self.model_, "trainable", True)
        if own_draws:
            # Closed-form families have no latent space for the samplers to explore.
            if method is not None:
                raise ValueError(
                    f"method={method!r} needs a latent-variable model (encoder and decoder), but this Imputer "
                    f"uses the classical {self.model_.name!r} family, which draws its own imputations; "
                    "leave method=None."
                )
            if sampler_options:
                raise ValueError(
                    f"sampler options {sorted(sampler_options)} apply to the latent-variable samplers only; the "
                    f"{self.model_.name!r} family takes none. Remove them."
                )
        else:
            method = check_method(self.model_, method)
            SamplerConfig.resolve(method, n, **sampler_options)  # every option checked before any work
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an integer, got {seed!r}.")
        if not isinstance(long, bool):
            raise TypeError(f"long must be True or False, got {long!r}.")
        frame = to_frame(X, argument="X")
        if not isinstance(X, pd.DataFrame):
            if frame.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"X has {frame.shape[1]} columns but the Imputer was fitted on {self.n_features_in_}; "
                    "pass the same columns in the same order."
                )
            frame.columns = self.columns_
        if long and "imputation" in frame.columns:
            raise ValueError(
                "X already has a column named 'imputation', which long=True adds; rename it or use long=False."
            )
        values, observed = self.schema_.encode(frame, argument="X")
        if len(frame) and (~observed).any():
            correction = getattr(self, "mnar_correction_", None)
            # The model's own single imputation is where every chain starts; a fitted
            # mnar_correction then moves every draw by what it moves that imputation.
            own = self._impute_encoded(frame, values, observed, None, corrected=False)
            shift = None if correction is None else correction.shift(own, ~torch.from_numpy(observed).to(own.device))
            filled = self.schema_.encode(self.schema_.decode(own.cpu().numpy(), frame), argument="X")[0]
            labels = self._assign(frame, None)
            dev = _model_device(self.model_)
            gen = torch.Generator(device=dev).manual_seed(int(seed))
            if own_draws:
                obs_t = torch.from_numpy(observed).to(dev)
                draws = self.model_.sample_imputations(
                    torch.from_numpy(filled).to(dev), obs_t, torch.from_numpy(labels).to(dev), n, generator=gen
                )
                logger.info("sampled %d imputations with the %s family's own draws", n, self.model_.name)
                frames = [self.schema_.decode(_shifted(d, shift), frame) for d in draws]
                return _stack_frames(frames) if long else frames
            out = sample_conditional(
                self.model_,
                torch.from_numpy(filled).to(dev),
                torch.from_numpy(observed).to(dev),
                torch.from_numpy(labels).to(dev),
                n,
                method=method,
                generator=gen,
                **sampler_options,
            )
            logger.info("sampled %d imputations with %s %s: %s", n, method, out.config.as_dict(), out.diagnostics)
            frames = [self.schema_.decode(_shifted(d, shift), frame) for d in out.draws]
        else:
            frames = [frame.copy() for _ in range(n)]
        if not long:
            return frames
        return _stack_frames(frames)

    def intervals(
        self,
        X: Any,
        level: float = 0.9,
        *,
        n: int = 100,
        method: str | None = None,
        seed: int = 0,
        **sampler_options: Any,
    ) -> pd.DataFrame:
        """Per-cell uncertainty intervals for the numeric columns.

        The equal-tailed ``level`` interval of ``n`` draws from :meth:`sample`: the
        ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of each missing cell's
        draws, on the user's scale (integer columns: of the rounded draws). An observed
        cell gets ``lower == upper ==`` its value.

        Parameters
        ----------
        X
            Data with the fitted columns.
        level
            Coverage of each interval, in ``(0, 1)``.
        n
            Draws per cell (>= 2; a few hundred give stable tail quantiles).
        method, seed, **sampler_options
            As for :meth:`sample`.

        Returns
        -------
        pandas.DataFrame
            ``X``'s index; columns ``(column, "lower")`` and ``(column, "upper")`` (a
            two-level column index named ``column``/``bound``) for each numeric column,
            float64. ``out.xs("lower", axis=1, level="bound")`` gives the lower bounds.

        Raises
        ------
        ValueError
            ``level`` outside ``(0, 1)``, ``n < 2``, or no numeric column.
        """
        self._check_fitted()
        return draw_intervals(self, X, level, n=n, method=method, seed=seed, **sampler_options)

    # ------------------------------------------------------------------ persistence
    def _config(self) -> dict[str, Any]:
        return {
            "estimator_params": _jsonable(self.get_params()),
            "model": self.model_.config(),
            "schema": self.schema_.to_dict(),
            "assigner": self.assigner_.to_dict(),
            "n_clusters": self.n_clusters_,
            "cluster_labels": _jsonable(self.cluster_labels_),
            "columns_ignore": _jsonable(self.columns_ignore_),
            "best_score": self.best_score_,
            "mnar_correction": None if getattr(self, "mnar_correction_", None) is None
            else self.mnar_correction_.to_dict(),
        }

    def save(self, path: str | Path) -> Path:
        """Write the fitted imputer to one file: a JSON config plus the weights.

        No Python objects are pickled; :meth:`load` reads it back with
        ``torch.load(weights_only=True)`` and checks its integrity.
        """
        self._check_fitted()
        path = Path(path)
        torch.save(self._payload(), path)
        return path

    def _payload(self) -> dict[str, Any]:
        """What :meth:`save` writes: format tags, JSON config, weights and their checksum."""
        config_json = json.dumps(self._config(), sort_keys=True)
        state = {k: v.detach().cpu().clone() for k, v in self.model_.state_dict().items()}
        return {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "package_version": __version__,
            "config": config_json,
            "state_dict": state,
            "checksum": _checksum(config_json, state),
        }

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None) -> Any:
        """Read an imputer written by :meth:`save`.

        A file written by :meth:`EnsembleImputer.save <ciss_autoimpute.ensemble.EnsembleImputer.save>`
        (``autotune``'s ensemble of trials) comes back as that
        :class:`~ciss_autoimpute.ensemble.EnsembleImputer`, which has the same
        ``transform``, ``sample``, ``intervals`` and ``save``.

        Raises
        ------
        ModelFileError
            The file is not an imputer file, comes from another format version, or its
            contents do not match their checksum (corrupted or tampered with).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No imputer file at {str(path)!r}.")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelFileError(
                f"{str(path)!r} is not a readable ciss_autoimpute imputer file ({type(exc).__name__}); "
                "save one with Imputer.save()."
            ) from None
        if isinstance(payload, dict) and payload.get("format") == ENSEMBLE_FORMAT:
            from .ensemble import EnsembleImputer

            return EnsembleImputer._from_payload(payload, path, device=device)
        return cls._from_payload(payload, path, device=device)

    @classmethod
    def _from_payload(cls, payload: Any, path: Path, *, device: str | None = None) -> "Imputer":
        """Rebuild a fitted imputer from what :meth:`_payload` made (checked here)."""
        from .clustering import MissingnessAssigner
        from .data.dataset import resolve_device
        from .data.layout import FeatureLayout
        from .data.schema import Schema
        from .models.registry import build_model

        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ModelFileError(f"{str(path)!r} is not a ciss_autoimpute imputer file; save one with Imputer.save().")
        check_file_payload(payload, path, what="imputer", version=_FORMAT_VERSION, redo="refit")
        config_json, state = payload.get("config"), payload.get("state_dict")
        if not isinstance(config_json, str) or not isinstance(state, dict):
            raise ModelFileError(f"{str(path)!r} is missing its config or weights; the file is damaged.")
        check_file_payload(payload, path, what="imputer", version=_FORMAT_VERSION, redo="refit",
                           checksum=_checksum(config_json, state))
        cfg = json.loads(config_json)
        imp = cls(**cfg["estimator_params"])
        if device is not None:
            imp.device = device
        mcfg = cfg["model"]
        model = build_model(
            mcfg["name"], FeatureLayout.from_dict(mcfg["layout"]), mcfg["n_clusters"], mcfg["params"], seed=imp.seed
        )
        model.load_state_dict(state)
        model.to(resolve_device(imp.device)).eval()
        imp.model_ = model
        imp.schema_ = Schema.from_dict(cfg["schema"])
        imp.assigner_ = MissingnessAssigner.from_dict(cfg["assigner"])
        imp.n_clusters_ = int(cfg["n_clusters"])
        imp.cluster_labels_ = list(cfg["cluster_labels"])
        imp.columns_ignore_ = list(cfg["columns_ignore"])
        imp.columns_ = list(imp.schema_.columns)
        imp.n_features_in_ = len(imp.columns_)
        if all(isinstance(c, str) for c in imp.columns_):
            imp.feature_names_in_ = np.asarray(imp.columns_, dtype=object)
        imp.best_score_ = float(cfg["best_score"])
        corr = cfg.get("mnar_correction")  # absent from files written before it existed
        if corr is not None:
            from .selection import SelfMaskingCorrection

            corr = SelfMaskingCorrection.from_dict(corr)
        imp.mnar_correction_ = corr
        imp.history_ = {"epochs": [], "loops": []}
        return imp


def _shifted(draw: Any, shift: torch.Tensor | None) -> np.ndarray:
    """An encoded draw (tensor or array) as a NumPy array, moved by ``shift`` when given."""
    d = draw.detach().cpu().numpy() if isinstance(draw, torch.Tensor) else np.asarray(draw)
    if shift is None:
        return d
    return d + shift.cpu().numpy().astype(d.dtype, copy=False)


def _stack_frames(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The long form of :meth:`Imputer.sample`: copies stacked, numbered in a first column."""
    stacked = []
    for i, f in enumerate(frames, start=1):
        f = f.copy()
        f.insert(0, "imputation", i)
        stacked.append(f)
    return pd.concat(stacked, axis=0)


def _model_device(model: Any) -> torch.device:
    """Where the model's tensors live: its first parameter, else its first buffer, else the CPU.

    Closed-form families (``mean``, ``knn``, ...) have buffers but no parameters.
    """
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _jsonable(value: Any) -> Any:
    """Plain JSON types (tuples as lists, numpy scalars as Python numbers)."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else list(o)))


def _like_input(X: Any, frame: pd.DataFrame) -> Any:
    """Return ``frame`` in the container type the user passed."""
    if isinstance(X, pd.DataFrame):
        return frame
    if isinstance(X, torch.Tensor):
        return torch.as_tensor(frame.to_numpy(dtype=np.float64), dtype=X.dtype if X.is_floating_point() else torch.float64)
    if isinstance(X, np.ndarray):
        if X.dtype.kind in "fiub":
            return frame.to_numpy(dtype=np.float64 if X.dtype.kind in "iub" else X.dtype)
        return frame.to_numpy()
    return frame


def _checked_frame(X: Any, columns: list, n_features: int, owner: str) -> pd.DataFrame:
    """``X`` as a frame with the fitted columns, or a clear error (shared by the imputers)."""
    from .data.checks import check_same_columns, to_frame

    frame = to_frame(X, argument="X")
    if isinstance(X, pd.DataFrame):
        check_same_columns(frame, columns)
    elif frame.shape[1] != n_features:
        raise ValueError(
            f"X has {frame.shape[1]} features, but {owner} is expecting {n_features} features "
            "as input; pass the same columns in the same order as in fit."
        )
    else:
        frame.columns = columns
    if len(frame) == 0:
        raise ValueError("X has no rows; pass at least one row to transform.")
    return frame


@dataclass(frozen=True)
class FitPredictions:
    """A fit's encoded predictions, kept for ensembles (``Imputer.fit_dataset(keep_predictions=True)``).

    Attributes
    ----------
    holdout
        float ``[n_val]``: the imputations the holdout was scored on, at the held-out
        cells in row-major order (``imputed[val_mask]``).
    missing
        float ``[n_missing]``: the imputations kept for the missing cells, in row-major
        order (``imputed[~observed]``).
    """

    holdout: torch.Tensor
    missing: torch.Tensor

    @classmethod
    def from_result(cls, result: Any, data: Any) -> "FitPredictions":
        scored = result.scored_imputed if result.scored_imputed is not None else result.imputed
        return cls(
            holdout=scored[data.val_mask].detach().clone(),
            missing=result.imputed[~data.observed].detach().clone(),
        )


def draw_intervals(
    imputer: Any, X: Any, level: float, *, n: int, method: str | None, seed: int, **sampler_options: Any
) -> pd.DataFrame:
    """Equal-tailed per-cell intervals from ``imputer.sample`` (see :meth:`Imputer.intervals`)."""
    if isinstance(level, bool) or not isinstance(level, (int, float, np.floating)) or not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be a number strictly between 0 and 1 (e.g. 0.9), got {level!r}.")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an integer >= 2 (draws per cell; e.g. 100), got {n!r}.")
    numeric = [spec.name for spec in imputer.schema_.specs if spec.kind == "numeric"]
    if not numeric:
        raise ValueError(
            "intervals() covers numeric columns and the fitted data has none; use sample() and "
            "tabulate the imputed categories instead."
        )
    draws = imputer.sample(X, n=int(n), method=method, seed=seed, **sampler_options)
    lo_q, hi_q = (1.0 - float(level)) / 2.0, (1.0 + float(level)) / 2.0
    blocks = {}
    for name in numeric:
        stacked = np.stack([d[name].to_numpy(dtype=np.float64, na_value=np.nan) for d in draws])
        # Observed cells are identical in every copy, so their quantiles are the value itself.
        blocks[(name, "lower")] = np.quantile(stacked, lo_q, axis=0)
        blocks[(name, "upper")] = np.quantile(stacked, hi_q, axis=0)
    out = pd.DataFrame(blocks, index=draws[0].index)
    out.columns = pd.MultiIndex.from_tuples(list(blocks), names=["column", "bound"])
    return out


def check_file_payload(
    payload: Mapping[str, Any], path: Path, *, what: str, version: int, redo: str, checksum: str | None = None
) -> None:
    """Refuse a saved file of another format version, or (given ``checksum``) one whose contents changed."""
    if payload.get("format_version") != version:
        raise ModelFileError(
            f"{str(path)!r} was written in {what} format {payload.get('format_version')!r} by ciss_autoimpute "
            f"{payload.get('package_version')!r}; this is format {version} (ciss_autoimpute {__version__}). "
            f"Load it with that version, or {redo}."
        )
    if checksum is not None and checksum != payload.get("checksum"):
        raise ModelFileError(
            f"{str(path)!r} does not match its checksum: it was corrupted or modified after saving. "
            f"Use the original file or {redo}."
        )
