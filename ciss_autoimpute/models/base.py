"""The interface every model family implements.

A model owns its layers, its likelihood and its bound; it owns no optimiser and no
loop (those live in :mod:`ciss_autoimpute.training`). Everything is in the encoded
space described by :class:`~ciss_autoimpute.data.layout.FeatureLayout`.

Conventions for every method taking ``(x, mask, clusters)``:

* ``x`` — float ``[n, d]``: encoded values. Cells where ``mask`` is false hold a
  filler (the replacement value at first, the model's own imputations during the
  impute-refit loop); the likelihood never reads them.
* ``mask`` — bool ``[n, d]``: cells the model may learn from (observed, not held out).
* ``clusters`` — int64 ``[n]``: cluster id of each row.
* ``generator`` — a ``torch.Generator`` on the same device, the only source of
  randomness (reparameterisation, importance samples). No global RNG is touched.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..data.layout import FeatureLayout

__all__ = ["ImputationModel", "LossOutput", "UpdateStep"]


@dataclass
class LossOutput:
    """What :meth:`ImputationModel.loss` returns.

    ``loss`` is the scalar to minimise (mean over rows of the negative bound);
    ``parts`` holds detached scalar tensors for the history (e.g. ``nll``, ``kl``).
    """

    loss: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


#: Signature of an update step's loss: ``(x, mask, clusters, *, generator) -> LossOutput``.
LossFn = Callable[..., LossOutput]


@dataclass(frozen=True)
class UpdateStep:
    """One optimiser update of a training batch (see :meth:`ImputationModel.update_steps`).

    Attributes
    ----------
    name
        Name of the parameter group (``"model"`` for single-objective families;
        ``"discriminator"`` / ``"generator"`` for GAIN). Names the step's entries in
        the training history when a model has several steps.
    parameters
        The parameters this step's optimiser updates; no parameter may appear in two
        steps.
    loss
        Called as ``loss(x, mask, clusters, generator=generator)`` on the batch and
        returning a :class:`LossOutput`; only the gradients of ``parameters`` are used.
    """

    name: str
    parameters: Sequence[nn.Parameter]
    loss: LossFn


class ImputationModel(nn.Module, abc.ABC):
    """Base class of the model families.

    Subclasses set ``name``, implement :meth:`default_params`, :meth:`search_space`,
    :meth:`loss`, :meth:`impute` and :meth:`sample_imputations`, and register
    themselves with :func:`ciss_autoimpute.models.registry.register_model`.

    The constructor signature is ``(layout, n_clusters=1, *, seed=0, **params)``
    where ``params`` are exactly the keys of :meth:`default_params` (missing keys take
    the default; unknown keys raise ``ValueError``). Weights are initialised from a
    ``torch.Generator`` seeded with ``seed``.
    """

    name: ClassVar[str] = ""
    #: False for families fitted in closed form (the classical ``mean``, ``knn``,
    #: ``mice``, ``missforest``): they implement ``fit(x, mask, clusters, *, generator)``
    #: instead of a loss, and the Trainer fits them once, with no optimiser or epochs.
    trainable: ClassVar[bool] = True
    #: True when single imputations are importance-weighted (MIWAE, not-MIWAE).
    importance_weighted: ClassVar[bool] = False

    layout: FeatureLayout
    n_clusters: int
    params: dict[str, Any]

    @classmethod
    @abc.abstractmethod
    def default_params(cls) -> dict[str, Any]:
        """The family's hyperparameters and their default values (JSON-compatible)."""

    @classmethod
    @abc.abstractmethod
    def search_space(cls) -> dict[str, Any]:
        """The family's default tuning space: ``{param name: typed Param}``.

        Uses :mod:`ciss_autoimpute.tuning.params` (``Float``, ``Int``,
        ``Categorical``, ``Fixed``). Per-layer widths are ``hidden_dim_0``,
        ``hidden_dim_1``, ... next to ``num_hidden_layers``.
        """

    @abc.abstractmethod
    def loss(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        clusters: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> LossOutput:
        """Negative bound averaged over the rows of the batch."""

    @abc.abstractmethod
    def impute(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        clusters: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Single imputation ``[n, d]`` in the encoded space.

        Numeric columns get the (conditional) mean, binary columns the probability of
        1, categorical groups the class probabilities. Cells where ``mask`` is true may
        hold anything; callers keep the observed values there.
        """

    @abc.abstractmethod
    def sample_imputations(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        clusters: torch.Tensor,
        n: int,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``n`` draws ``[n, rows, d]`` of the missing cells (observed cells as given).

        Binary cells are drawn as 0/1 and categorical groups as one-hot vectors.
        """

    # ------------------------------------------------------------------ training hook
    def update_steps(self) -> list[UpdateStep]:
        """The optimiser updates of one training batch, run in order by the trainer.

        The trainer creates one Adam optimiser (and ``ExponentialLR`` schedule) per
        step once per run and, for every batch, runs each step in turn: evaluate its
        loss, zero the gradients, back-propagate, clip the gradients of its
        parameters, step its optimiser. A step sees the parameters as left by the
        steps before it (as in alternating adversarial training).

        The default is a single step ``"model"`` minimising :meth:`loss` over every
        trainable parameter; families with several objectives (GAIN: a discriminator
        and a generator) override it.

        Returns
        -------
        list of UpdateStep
        """
        return [UpdateStep("model", [p for p in self.parameters() if p.requires_grad], self.loss)]

    # ------------------------------------------------------------------ helpers
    @classmethod
    def resolve_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Defaults updated by ``params``; unknown names raise ``ValueError``."""
        defaults = cls.default_params()
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise ValueError(
                f"Unknown parameter(s) {unknown} for model {cls.name!r}; "
                f"it accepts {sorted(defaults)}."
            )
        out = dict(defaults)
        out.update(params)
        return out

    def config(self) -> dict[str, Any]:
        """A JSON-compatible description that rebuilds this model (weights aside)."""
        return {
            "name": self.name,
            "layout": self.layout.to_dict(),
            "n_clusters": int(self.n_clusters),
            "params": dict(self.params),
        }
