"""Training options grouped in two frozen dataclasses.

:class:`TrainConfig` covers the initial masked training (optimiser, learning-rate
schedule, batching); :class:`RefitConfig` covers the CISS-VAE impute-refit loop that
follows it. Both validate every field when built, so a bad value fails before any
training starts, and both round-trip through a flat dict (:meth:`TrainConfig.to_dict`,
:func:`configs_from_dict`) so Optuna trials and saved files can carry them.

Defaults are chosen for small and medium tabular data (hundreds to tens of thousands of
rows, tens of columns) on a CPU: a few hundred epochs of Adam at ``1e-3`` with
mini-batches of 256 rows (``batch_size="auto"``: 256 up to 25,600 rows, about 1 % of the
rows beyond), then up to 10 refit loops of 50 epochs each, stopped after 2
loops without improvement of the validation score. The CISS-VAE defaults (1000 epochs,
100 loops of 1000 epochs) are far slower and rarely better on data of this size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

__all__ = [
    "TrainConfig", "RefitConfig", "configs_from_dict", "resolve_batch_size", "AUTO_BATCH_SIZE", "PRECISIONS",
]


def _is_int(value: Any) -> bool:
    # bool is an int subclass; True epochs is always a mistake.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(owner: str, name: str, value: Any, minimum: int, fix: str) -> None:
    if not _is_int(value):
        raise TypeError(f"{owner}.{name} must be an integer, got {value!r} ({type(value).__name__}); {fix}.")
    if value < minimum:
        raise ValueError(f"{owner}.{name} must be >= {minimum}, got {value!r}; {fix}.")


def _check_real(owner: str, name: str, value: Any, fix: str) -> None:
    if not _is_real(value):
        raise TypeError(f"{owner}.{name} must be a finite number, got {value!r}; {fix}.")


#: The ``TrainConfig.batch_size`` value that picks the batch size from the data size.
AUTO_BATCH_SIZE = "auto"
#: Bounds and divisor of the ``"auto"`` rule (see :func:`resolve_batch_size`).
AUTO_BATCH_MIN = 256
AUTO_BATCH_MAX = 4096
AUTO_ROWS_PER_STEP_DIVISOR = 100

#: Values of ``TrainConfig.precision``: full float32, or bfloat16 matrix products with
#: float32 weights, optimiser state, likelihoods and bounds (``torch.autocast``).
PRECISIONS = ("32", "bf16-mixed")

_BATCH_FIX = 'pass a positive number of rows such as 256, or "auto" to choose it from the data size'


def _check_batch_size(value: Any, owner: str = "TrainConfig.batch_size") -> None:
    if isinstance(value, str):
        raise ValueError(f"{owner} must be a positive integer or {AUTO_BATCH_SIZE!r}, got {value!r}; {_BATCH_FIX}.")
    if not _is_int(value):
        raise TypeError(
            f"{owner} must be a positive integer or {AUTO_BATCH_SIZE!r}, got {value!r} "
            f"({type(value).__name__}); {_BATCH_FIX}."
        )
    if value < 1:
        raise ValueError(f"{owner} must be >= 1, got {value!r}; {_BATCH_FIX}.")


def resolve_batch_size(batch_size: int | Literal["auto"], n_rows: int) -> int:
    """The number of rows per optimisation step for ``batch_size`` on ``n_rows`` rows.

    An integer is returned as it is. ``"auto"`` gives
    ``min(4096, max(256, n_rows // 100))``: 256 up to 25,600 rows (the previous fixed
    default, so small data trains exactly as before), then about 1 % of the rows,
    i.e. ~100 steps per epoch, capped at 4096 rows per step. Larger batches on large
    data amortise the fixed per-step cost (small ops, clipping, Adam) over more
    rows; see ``docs/bench_speed.md``.

    Parameters
    ----------
    batch_size
        A positive integer or ``"auto"`` (:attr:`TrainConfig.batch_size`).
    n_rows
        Rows of the training data (>= 0).

    Returns
    -------
    int
        The batch size; it may exceed ``n_rows`` (the epoch is then one batch).

    Raises
    ------
    ValueError, TypeError
        If ``batch_size`` is neither ``"auto"`` nor a positive integer, or ``n_rows``
        is not a non-negative integer.

    Examples
    --------
    >>> resolve_batch_size("auto", 10_000), resolve_batch_size("auto", 100_000)
    (256, 1000)
    >>> resolve_batch_size(64, 100_000)
    64
    """
    if not _is_int(n_rows) or n_rows < 0:
        raise ValueError(f"resolve_batch_size: n_rows must be a non-negative integer, got {n_rows!r}.")
    if isinstance(batch_size, str) and batch_size == AUTO_BATCH_SIZE:
        return min(AUTO_BATCH_MAX, max(AUTO_BATCH_MIN, n_rows // AUTO_ROWS_PER_STEP_DIVISOR))
    _check_batch_size(batch_size, "batch_size")
    return int(batch_size)


@dataclass(frozen=True)
class TrainConfig:
    """Options of the initial masked training.

    Parameters
    ----------
    epochs
        Passes over all rows during initial training (>= 1). Default 200: enough for the
        small networks of the built-in families to converge on a few thousand rows.
    lr
        Adam learning rate (> 0). Default ``1e-3``, Adam's usual safe value.
    weight_decay
        Adam L2 penalty (>= 0). Default 0.
    decay_factor
        Exponential learning-rate decay per epoch, in ``(0, 1]``; the learning rate of
        epoch ``k`` (1-based) is ``lr * decay_factor ** (k - 1)``. Default 0.999 as in
        CISS-VAE; 1 keeps the rate constant.
    grad_clip
        Maximum gradient norm (> 0), or ``None`` to disable clipping. Default 5.0:
        catches the occasional exploding step of a variance head without slowing
        ordinary training.
    batch_size
        Rows per optimisation step: a positive integer, or ``"auto"`` (the default) to
        choose it from the number of training rows when :meth:`Trainer.fit
        <ciss_autoimpute.training.Trainer.fit>` starts, with
        :func:`resolve_batch_size`: ``min(4096, max(256, n_rows // 100))``. Up to
        25,600 rows that is 256, the long-standing default (a few steps per epoch on
        small data, cheap on a CPU), so results on small data are unchanged. Beyond
        that it grows to keep about 100 steps per epoch (1,000 at 100k rows): at batch
        256 a step's ~150 small operations, gradient clipping and the Adam update cost
        more than its matrix products, and the vae and cissvae families reach only
        21-33 % of the same-shape matmul rate at 100k rows, against ~45 % at batch
        1024 (``docs/bench_speed.md``). The cap bounds memory per step. The value
        actually used is recorded as ``TrainResult.batch_size`` and in every epoch
        record.
    val_every
        Score the validation holdout every ``val_every`` epochs of initial training and
        record it in the epoch history; 0 or ``None`` only scores at the end. Default 0,
        because a full imputation pass each time is wasted work unless you watch the
        curve.
    precision
        ``"32"`` (the default): every operation in float32. ``"bf16-mixed"``: the
        matrix products of the networks run in bfloat16 under :func:`torch.autocast`
        while the weights, Adam's state, the likelihoods, bounds and imputations stay
        float32 (the layers that feed them return float32). On CPUs with AMX or
        AVX-512 bfloat16 instructions (Intel Sapphire Rapids and later) and on recent
        GPUs the products run several times faster; elsewhere it may be slower. Same
        seed, same result still holds on a given machine, but results differ from
        ``"32"`` by bfloat16 rounding (8 significant bits); ``docs/bench_speed.md``
        gives the speed and accuracy measured both ways. The imputer uses the same
        precision for its imputations of new rows. Closed-form families ignore it.
    mnar_correction
        ``"none"`` (the default), ``"selfmasking"`` or ``"selfmasking_data"``: after
        training, correct the imputations of the numeric columns for values that went
        missing because they were high (or low), with a selection model fitted on the
        validation holdout (:class:`~ciss_autoimpute.selection.SelfMaskingCorrection`).
        ``"selfmasking_data"`` corrects only the columns whose direction the observed
        data also shows; ``"selfmasking"`` every numeric column with missing cells. Applied by
        :meth:`Imputer.fit_dataset <ciss_autoimpute.Imputer.fit_dataset>` (every fit of
        the package goes through it; the :class:`Trainer` itself ignores it) and to new
        rows by ``transform``. For families that assume the missingness ignorable only
        (not-MIWAE models it itself), and it needs a holdout (``val_proportion > 0``).

    Examples
    --------
    >>> TrainConfig(epochs=50, lr=3e-3).epochs
    50
    """

    epochs: int = 200
    lr: float = 1e-3
    weight_decay: float = 0.0
    decay_factor: float = 0.999
    grad_clip: float | None = 5.0
    batch_size: int | Literal["auto"] = AUTO_BATCH_SIZE
    val_every: int | None = 0
    precision: Literal["32", "bf16-mixed"] = "32"
    mnar_correction: Literal["none", "selfmasking", "selfmasking_data"] = "none"

    def __post_init__(self) -> None:
        o = "TrainConfig"
        _check_int(o, "epochs", self.epochs, 1, "pass a positive number of epochs such as 200")
        _check_real(o, "lr", self.lr, "pass a positive learning rate such as 1e-3")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr!r}; pass a positive learning rate such as 1e-3.")
        _check_real(o, "weight_decay", self.weight_decay, "pass 0 for no decay or a small value such as 1e-5")
        if self.weight_decay < 0:
            raise ValueError(
                f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay!r}; pass 0 for no decay."
            )
        _check_real(o, "decay_factor", self.decay_factor, "pass a value in (0, 1] such as 0.999")
        if not 0 < self.decay_factor <= 1:
            raise ValueError(
                f"TrainConfig.decay_factor must be in (0, 1], got {self.decay_factor!r}; "
                "pass 1 for a constant learning rate or e.g. 0.999."
            )
        if self.grad_clip is not None:
            _check_real(o, "grad_clip", self.grad_clip, "pass a positive norm such as 5.0, or None to disable clipping")
            if self.grad_clip <= 0:
                raise ValueError(
                    f"TrainConfig.grad_clip must be > 0 or None, got {self.grad_clip!r}; "
                    "pass e.g. 5.0, or None to disable clipping."
                )
        # "auto" is resolved by the Trainer, which knows the number of rows.
        if not (isinstance(self.batch_size, str) and self.batch_size == AUTO_BATCH_SIZE):
            _check_batch_size(self.batch_size)
        if self.val_every is not None:
            _check_int(o, "val_every", self.val_every, 0, "pass 0 or None to score only at the end, or e.g. 10")
        if not (isinstance(self.precision, str) and self.precision in PRECISIONS):
            raise ValueError(
                f"TrainConfig.precision must be one of {list(PRECISIONS)}, got {self.precision!r}; pass \"32\" for "
                "float32 everywhere or \"bf16-mixed\" for bfloat16 matrix products with float32 weights."
            )
        from ..selection import MNAR_CORRECTIONS

        if not (isinstance(self.mnar_correction, str) and self.mnar_correction in MNAR_CORRECTIONS):
            raise ValueError(
                f"TrainConfig.mnar_correction must be one of {list(MNAR_CORRECTIONS)}, got {self.mnar_correction!r}; "
                "pass \"none\", or \"selfmasking_data\" to correct the columns the data shows to be self-masked."
            )

    def to_dict(self) -> dict[str, Any]:
        """The fields as a flat, JSON-compatible dict."""
        return asdict(self)


@dataclass(frozen=True)
class RefitConfig:
    """Options of the impute-refit loop that follows initial training.

    Loop 0 scores the model right after initial training. Each later loop replaces the
    missing and held-out cells of the input with the model's current imputations,
    trains ``epochs_per_loop`` more epochs and scores again; the best-scoring loop's
    weights and imputations are kept.

    Parameters
    ----------
    max_loops
        Maximum number of refit loops (>= 0); 0 means initial training only. Default 10.
    patience
        Stop after this many consecutive loops without improvement (>= 1). Default 2,
        as in CISS-VAE.
    epochs_per_loop
        Epochs per refit loop (>= 1), or ``None`` for the same as
        :attr:`TrainConfig.epochs`. Default 50: the model is already trained and only
        adapts to new fillers, so a fraction of the initial epochs suffices.
    reset_lr_refit
        Reset the learning rate when the refit phase starts (to ``lr_refit``, or to
        :attr:`TrainConfig.lr` when ``lr_refit`` is ``None``); otherwise the decayed
        rate carries on. Default False.
    lr_refit
        Learning rate to reset to (> 0). Only meaningful with ``reset_lr_refit=True``;
        giving it otherwise raises ``ValueError`` rather than being silently ignored.
    decay_factor_refit
        Per-epoch decay during refit, in ``(0, 1]``, or ``None`` for
        :attr:`TrainConfig.decay_factor`.
    beta_refit
        KL weight (>= 0) to use during refit for models with a ``beta`` attribute, or
        ``None`` to keep the model's own. Models without ``beta`` ignore it.
    min_delta
        Minimum decrease of the validation score (>= 0) that counts as an improvement.
        Default 0.

    Examples
    --------
    >>> RefitConfig(max_loops=0).max_loops
    0
    """

    max_loops: int = 10
    patience: int = 2
    epochs_per_loop: int | None = 50
    reset_lr_refit: bool = False
    lr_refit: float | None = None
    decay_factor_refit: float | None = None
    beta_refit: float | None = None
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        o = "RefitConfig"
        _check_int(o, "max_loops", self.max_loops, 0, "pass 0 for no refit loop or a positive count such as 10")
        _check_int(o, "patience", self.patience, 1, "pass a positive number of loops such as 2")
        if self.epochs_per_loop is not None:
            _check_int(
                o, "epochs_per_loop", self.epochs_per_loop, 1,
                "pass a positive number of epochs, or None for the same as TrainConfig.epochs",
            )
        if not isinstance(self.reset_lr_refit, bool):
            raise TypeError(
                f"RefitConfig.reset_lr_refit must be True or False, got {self.reset_lr_refit!r}."
            )
        if self.lr_refit is not None:
            _check_real(o, "lr_refit", self.lr_refit, "pass a positive learning rate or None")
            if self.lr_refit <= 0:
                raise ValueError(f"RefitConfig.lr_refit must be > 0 or None, got {self.lr_refit!r}.")
            if not self.reset_lr_refit:
                raise ValueError(
                    f"RefitConfig.lr_refit={self.lr_refit!r} has no effect unless reset_lr_refit=True; "
                    "set reset_lr_refit=True to use it, or leave lr_refit=None."
                )
        if self.decay_factor_refit is not None:
            _check_real(o, "decay_factor_refit", self.decay_factor_refit, "pass a value in (0, 1] or None")
            if not 0 < self.decay_factor_refit <= 1:
                raise ValueError(
                    f"RefitConfig.decay_factor_refit must be in (0, 1] or None, got {self.decay_factor_refit!r}; "
                    "pass e.g. 0.999, or None to keep TrainConfig.decay_factor."
                )
        if self.beta_refit is not None:
            _check_real(o, "beta_refit", self.beta_refit, "pass a non-negative KL weight or None")
            if self.beta_refit < 0:
                raise ValueError(
                    f"RefitConfig.beta_refit must be >= 0 or None, got {self.beta_refit!r}; "
                    "pass e.g. 0.001, or None to keep the model's beta."
                )
        _check_real(o, "min_delta", self.min_delta, "pass 0 or a small positive number")
        if self.min_delta < 0:
            raise ValueError(f"RefitConfig.min_delta must be >= 0, got {self.min_delta!r}; pass 0 or e.g. 1e-4.")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a flat, JSON-compatible dict."""
        return asdict(self)


def configs_from_dict(flat: dict[str, Any]) -> tuple[TrainConfig, RefitConfig]:
    """Split a flat dict of options into a :class:`TrainConfig` and a :class:`RefitConfig`.

    Keys left out take their defaults; each value is validated by the dataclass.

    Parameters
    ----------
    flat
        ``{field name: value}`` with names of either dataclass (their names do not
        overlap), e.g. ``{"epochs": 100, "lr": 3e-3, "max_loops": 5}``.

    Returns
    -------
    (TrainConfig, RefitConfig)

    Raises
    ------
    ValueError
        If a key is not a field of either dataclass; the message lists the valid keys.

    Examples
    --------
    >>> train, refit = configs_from_dict({"epochs": 20, "patience": 3})
    >>> (train.epochs, refit.patience)
    (20, 3)
    """
    if not isinstance(flat, dict):
        raise TypeError(f"configs_from_dict expects a dict, got {type(flat).__name__}.")
    train_names = {f.name for f in fields(TrainConfig)}
    refit_names = {f.name for f in fields(RefitConfig)}
    unknown = sorted(str(k) for k in flat if k not in train_names and k not in refit_names)
    if unknown:
        raise ValueError(
            f"Unknown training option(s) {unknown}; valid keys are "
            f"{sorted(train_names)} (TrainConfig) and {sorted(refit_names)} (RefitConfig)."
        )
    train = TrainConfig(**{k: v for k, v in flat.items() if k in train_names})
    refit = RefitConfig(**{k: v for k, v in flat.items() if k in refit_names})
    return train, refit
