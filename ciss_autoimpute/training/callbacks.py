"""Callbacks: code that watches a training run without being part of it.

A :class:`Callback` gets four hooks, called by :class:`~ciss_autoimpute.training.Trainer`:

* ``on_fit_start(trainer, data)`` — once, after the model and data are on the device and
  the optimiser exists;
* ``on_epoch_end(trainer, record)`` — after every epoch, with the epoch record;
* ``on_loop_end(trainer, record)`` — after every impute-refit loop (loop 0 is the score
  right after initial training), with the loop record. ``record["loop"]`` is the step
  index and ``record["val"]`` the validation score (lower is better), so a pruning
  callback can call ``trial.report(record["val"], step=record["loop"])`` and raise
  ``optuna.TrialPruned``;
* ``on_fit_end(trainer, result)`` — once, with the :class:`TrainResult`.

Records are plain dicts of Python scalars (see :class:`~ciss_autoimpute.training.Trainer`).
Exceptions raised by a hook propagate out of ``fit`` unchanged. To end training
gracefully instead (the best state so far is kept), call
``trainer.request_stop(reason)``; the trainer checks ``trainer.should_stop`` after every
epoch and every loop.

The refit patience rule (stop after ``RefitConfig.patience`` loops without
improvement) lives in the Trainer itself, because the Trainer must also keep the best
weights; its state is readable as ``trainer.best_loop``, ``trainer.best_score`` and
``trainer.loops_since_improvement``, and each loop record carries ``improved`` and
``best_loop``. There is deliberately no second early-stopping callback.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..data.layout import EncodedData
    from .trainer import Trainer, TrainResult

__all__ = ["Callback", "History", "ProgressLogger", "TimeBudget", "history_frame"]

_LOGGER = logging.getLogger("ciss_autoimpute.training")


class Callback:
    """Base class with no-op hooks; override the ones you need."""

    def on_fit_start(self, trainer: "Trainer", data: "EncodedData") -> None:
        """Called once before the first epoch."""

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        """Called after every epoch with its record."""

    def on_loop_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        """Called after every impute-refit loop (loop 0 included) with its record."""

    def on_fit_end(self, trainer: "Trainer", result: "TrainResult") -> None:
        """Called once after the best state has been loaded."""


def history_frame(records: list[dict[str, Any]]):
    """A pandas DataFrame of history records, one row per record.

    Nested ``per_cluster`` dicts become columns ``per_cluster_<id>``. Built only when
    asked for, so training never copies DataFrames.

    Parameters
    ----------
    records
        Epoch or loop records, e.g. ``result.epoch_history``.

    Returns
    -------
    pandas.DataFrame
    """
    import pandas as pd  # lazily: training itself does not need pandas

    rows = []
    for record in records:
        row = {}
        for key, value in record.items():
            if isinstance(value, dict):
                for sub, v in value.items():
                    row[f"{key}_{sub}"] = v
            else:
                row[key] = value
        rows.append(row)
    return pd.DataFrame.from_records(rows)


class History(Callback):
    """Collects epoch and loop records of the latest fit.

    Attributes
    ----------
    epochs
        Epoch records, in order.
    loops
        Loop records, in order (loop 0 first).
    """

    def __init__(self) -> None:
        self.epochs: list[dict[str, Any]] = []
        self.loops: list[dict[str, Any]] = []

    def on_fit_start(self, trainer: "Trainer", data: "EncodedData") -> None:
        # A new run starts a new history; records of an earlier fit are dropped.
        self.epochs = []
        self.loops = []

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        self.epochs.append(record)

    def on_loop_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        self.loops.append(record)

    def frame(self, kind: str = "epochs"):
        """The ``"epochs"`` or ``"loops"`` records as a DataFrame (see :func:`history_frame`)."""
        if kind not in ("epochs", "loops"):
            raise ValueError(f"kind must be 'epochs' or 'loops', got {kind!r}.")
        return history_frame(self.epochs if kind == "epochs" else self.loops)


class ProgressLogger(Callback):
    """Logs progress through :mod:`logging` (logger ``ciss_autoimpute.training``).

    Only reads records; it never touches the model, the optimiser or the schedule.

    Parameters
    ----------
    every
        Log every ``every``-th epoch (>= 1); every loop is logged.
    level
        Logging level, default ``logging.INFO``.
    logger
        Logger to use instead of ``ciss_autoimpute.training``.
    """

    def __init__(self, every: int = 10, *, level: int = logging.INFO, logger: logging.Logger | None = None) -> None:
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"ProgressLogger every must be a positive integer, got {every!r}; pass e.g. 10.")
        self.every = every
        self.level = level
        self.logger = logger if logger is not None else _LOGGER

    def on_fit_start(self, trainer: "Trainer", data: "EncodedData") -> None:
        self.logger.log(
            self.level,
            "training %s on %d rows x %d encoded columns (%d clusters) on %s",
            type(trainer.model).__name__, data.n_rows, data.x.shape[1], data.n_clusters, trainer.device,
        )

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        if record["epoch"] % self.every:
            return
        val = record.get("val")
        self.logger.log(
            self.level,
            "%s loop %d epoch %d: loss %.4f, lr %.3g%s",
            record["phase"], record["loop"], record["epoch"], record["loss"], record["lr"],
            f", val {val:.4f}" if val is not None else "",
        )

    def on_loop_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        self.logger.log(
            self.level,
            "loop %d: val %.4f (best %.4f at loop %d, %d loop(s) without improvement)",
            record["loop"], record["val"], record["best_val"], record["best_loop"],
            record["loops_since_improvement"],
        )

    def on_fit_end(self, trainer: "Trainer", result: "TrainResult") -> None:
        self.logger.log(
            self.level,
            "done after %d epochs in %.1fs (%s): best val %.4f at loop %d",
            result.n_epochs, result.seconds, result.stop_reason, result.best_score.total, result.best_loop,
        )


class TimeBudget(Callback):
    """Ends training gracefully once ``seconds`` of wall time have passed.

    Checked after every epoch; the run then finishes the current loop's scoring and
    returns the best state so far with ``stop_reason == "time_budget"``.

    Parameters
    ----------
    seconds
        Wall-time budget (> 0) counted from the start of ``fit``.
    shared
        Count the budget from the first ``fit`` this callback sees and share it with
        every later ``fit`` (all the trials of one time-bounded study), instead of
        restarting it per fit.
    """

    def __init__(self, seconds: float, *, shared: bool = False) -> None:
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not math.isfinite(seconds) \
                or seconds <= 0:
            raise ValueError(f"TimeBudget seconds must be a positive number, got {seconds!r}; pass e.g. 600.")
        self.seconds = float(seconds)
        self.shared = bool(shared)
        self._start: float | None = None

    def on_fit_start(self, trainer: "Trainer", data: "EncodedData") -> None:
        if not (self.shared and self._start is not None):
            self._start = time.perf_counter()

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        if self._start is not None and time.perf_counter() - self._start >= self.seconds:
            trainer.request_stop("time_budget")
