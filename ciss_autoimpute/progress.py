"""Progress bars for training runs, drawn with tqdm on stderr.

Bars are the only thing this package writes to the terminal by itself; everything else
goes through :mod:`logging`. A bar only reads the records the
:class:`~ciss_autoimpute.training.Trainer` hands to its callbacks: it never touches the
model, the optimiser or the schedule.

The bar over trials is Optuna's own (``autotune(..., show_progress=True)``); a
:class:`TrainingProgress` passed as a training callback adds, inside it, a bar over the
epochs of each fit with the current refit loop and validation error.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from .training.callbacks import Callback

__all__ = ["TrainingProgress"]


class TrainingProgress(Callback):
    """A tqdm bar over the epochs of one fit, showing the refit loop and validation error.

    The bar's length is the most epochs the run can take (initial epochs plus
    ``max_loops`` refit loops); a run stopped early by patience, a time budget or a
    pruner simply ends short. One instance can watch many fits in turn (the trials of a
    study): each fit gets a fresh bar, and a bar left open by a fit that raised (a
    pruned or diverged trial) is closed when the next fit starts or on :meth:`close`.

    Parameters
    ----------
    disable
        ``True`` shows nothing (``--quiet`` / ``show_progress=False``).
    leave
        Keep each finished bar on screen; default ``False`` so the bars of a study's
        trials do not pile up under the trial bar.
    file
        Stream to draw on; default ``sys.stderr``.
    description
        Text before the bar; default ``"<model> fit"``.
    mininterval
        Minimum seconds between redraws (keeps very fast epochs cheap).

    Examples
    --------
    >>> from ciss_autoimpute import Imputer
    >>> from ciss_autoimpute.progress import TrainingProgress
    >>> Imputer(model="vae").fit(df, callbacks=[TrainingProgress()])  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        disable: bool = False,
        leave: bool = False,
        file: IO[str] | None = None,
        description: str | None = None,
        mininterval: float = 0.1,
    ) -> None:
        self.disable = bool(disable)
        self.leave = bool(leave)
        self.file = file
        self.description = description
        self.mininterval = float(mininterval)
        self.bar: Any = None
        self._fits = 0

    def _new_bar(self, total: int, desc: str) -> Any:
        from tqdm.auto import tqdm

        return tqdm(
            total=total,
            desc=desc,
            unit="epoch",
            leave=self.leave,
            file=self.file if self.file is not None else sys.stderr,
            disable=self.disable,
            mininterval=self.mininterval,
            dynamic_ncols=True,
        )

    def close(self) -> None:
        """Close the current bar, if any (safe to call twice)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_fit_start(self, trainer: Any, data: Any) -> None:
        # A previous fit that raised (pruned, diverged) never reached on_fit_end.
        self.close()
        self._fits += 1
        tc, rc = trainer.train_config, trainer.refit_config
        per_loop = rc.epochs_per_loop if rc.epochs_per_loop is not None else tc.epochs
        total = int(tc.epochs + rc.max_loops * per_loop)
        desc = self.description or f"{getattr(trainer.model, 'name', '') or type(trainer.model).__name__} fit"
        self.bar = self._new_bar(total, desc)
        self.bar.set_postfix_str("initial training", refresh=False)

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if record.get("phase") == "initial":
            self.bar.set_postfix_str(f"initial training, loss {record['loss']:.4g}", refresh=False)

    def on_loop_end(self, trainer: Any, record: dict[str, Any]) -> None:
        if self.bar is None:
            return
        loop, val, best = record["loop"], record["val"], record.get("best_val", record["val"])
        max_loops = trainer.refit_config.max_loops
        self.bar.set_postfix_str(f"loop {loop}/{max_loops}, val {val:.4g}, best {best:.4g}", refresh=True)

    def on_fit_end(self, trainer: Any, result: Any) -> None:
        if self.bar is None:
            return
        score = getattr(result.best_score, "total", result.best_score)
        self.bar.set_postfix_str(
            f"done ({result.stop_reason}): best val {score:.4g} at loop {result.best_loop}", refresh=True
        )
        self.close()

