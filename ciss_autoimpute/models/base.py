"""The interface every model family implements.

A model owns its layers, its likelihood and its bound; it owns no optimiser and no
loop (those live in :mod:`ciss_autoimpute.training`). Everything is in the encoded
space described by :class:`~ciss_autoimpute.data.layout.FeatureLayout`.

Conventions for every method taking ``(x, mask, clusters)``:

* ``x`` — float ``[n, d]``: encoded values. Cells where ``mask`` is false hold a
  filler (the replacement value at first, the model's own imputations during the
  impute-refit loop); the likelihood never reads them.
* ``mask`` — bool ``[n, d]``: cells the model may learn from (observed, not held out).
* ``clusters`` — int64 ``[n]``: cluster id of each row. Families that set
  :attr:`ImputationModel.accepts_cluster_index` also take a
  :class:`~ciss_autoimpute.models.layers.ClusterIndex` of the rows, whose ids count as
  checked (the :class:`~ciss_autoimpute.training.Trainer` passes one per training
  batch, so a step needs no host synchronisation to check or group the ids).
* ``generator`` — a ``torch.Generator`` on the same device, the only source of
  randomness (reparameterisation, importance samples). No global RNG is touched.
"""

from __future__ import annotations

import abc
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..data.layout import FeatureLayout
from .layers import ClusterIndex

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
        Called as ``loss(x, mask, clusters, generator=generator)`` on the batch (plus
        ``observed=`` for models of the missingness) and returning a
        :class:`LossOutput`; only the gradients of ``parameters`` are used.
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
    ``torch.Generator`` seeded with ``seed``. Constructors start with :meth:`_setup`
    (argument checks, ``params`` through :meth:`_check_params`) and methods taking a
    batch start with :meth:`check_batch`, so every family rejects bad input alike.
    """

    name: ClassVar[str] = ""
    #: False for families fitted in closed form (the classical ``mean``, ``knn``,
    #: ``mice``, ``missforest``): they implement ``fit(x, mask, clusters, *, generator)``
    #: instead of a loss, and the Trainer fits them once, with no optimiser or epochs.
    trainable: ClassVar[bool] = True
    #: True when single imputations are importance-weighted (MIWAE, not-MIWAE).
    importance_weighted: ClassVar[bool] = False
    #: True when the methods taking a batch also accept ``clusters`` as a
    #: :class:`~ciss_autoimpute.models.layers.ClusterIndex` of its rows, taken as checked:
    #: :meth:`check_batch` then reads only its row and cluster counts, with no host
    #: synchronisation. The Trainer passes such an index to these families' losses.
    accepts_cluster_index: ClassVar[bool] = False

    @property
    def sorts_batches_by_cluster(self) -> bool:
        """True when :meth:`loss` works faster on a batch whose rows come sorted by cluster.

        The :class:`~ciss_autoimpute.training.Trainer` then orders the rows of each
        training batch by cluster id (the batches hold the same rows). False by default.
        """
        return False

    def batch_padding(self, device: torch.device) -> float | None:
        """Largest share of padding rows for batches handed to :meth:`loss` in padded cluster blocks.

        None (the default) when the loss takes batches only as they are. A float means
        the loss also accepts a batch already laid out in equal cluster blocks, with a
        :class:`~ciss_autoimpute.models.layers.ClusterIndex` of those blocks as
        ``clusters`` (:meth:`ClusterIndex.laid_out`), and averages over its real rows:
        the :class:`~ciss_autoimpute.training.Trainer` then lays a whole epoch out at once
        (:func:`~ciss_autoimpute.models.layers.block_layout`) instead of the loss padding
        every batch. Asked once per epoch, under the training precision's autocast.
        """
        return None

    layout: FeatureLayout
    n_clusters: int
    seed: int
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
    def _setup(self, layout: FeatureLayout, n_clusters: Any, seed: Any, params: dict[str, Any]) -> None:
        """Check the constructor's arguments and set ``params``, ``layout``, ``n_clusters``, ``seed``.

        Every family's ``__init__`` calls this first, so bad arguments fail the same way
        before any layer is built. ``params`` are resolved against
        :meth:`default_params` and normalised by :meth:`_check_params`.
        """
        if not isinstance(layout, FeatureLayout):
            raise TypeError(f"layout must be a FeatureLayout, got {type(layout).__name__}.")
        if isinstance(n_clusters, bool) or not isinstance(n_clusters, numbers.Integral) or n_clusters < 1:
            raise ValueError(f"n_clusters must be a positive integer, got {n_clusters!r}.")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an integer, got {seed!r}.")
        self.params = self._check_params(self.resolve_params(params))
        self.layout = layout
        self.n_clusters = int(n_clusters)
        self.seed = int(seed)

    @classmethod
    def _check_params(cls, p: dict[str, Any]) -> dict[str, Any]:
        """Validate and normalise the resolved parameters (families override this)."""
        return dict(p)

    def check_batch(self, x: Any, mask: Any, clusters: Any) -> None:
        """Raise ``TypeError``/``ValueError`` unless ``(x, mask, clusters)`` fit this model."""
        d = self.layout.n_features
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point torch.Tensor [n, {d}], got {_describe(x)}.")
        if x.dim() != 2 or x.shape[1] != d:
            raise ValueError(f"x must have shape [n, {d}] (the layout's encoded width), got {tuple(x.shape)}.")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool torch.Tensor shaped like x, got {_describe(mask)}; use mask.bool().")
        if mask.shape != x.shape:
            raise ValueError(f"mask has shape {tuple(mask.shape)} but x has {tuple(x.shape)}; they must match.")
        if self.accepts_cluster_index and isinstance(clusters, ClusterIndex):
            # Ids were checked when the index was made; its sizes are host-side numbers.
            if clusters.n_clusters != self.n_clusters:
                raise ValueError(
                    f"the ClusterIndex ranges over {clusters.n_clusters} clusters but the model was built with "
                    f"n_clusters={self.n_clusters}; build the index with the model's n_clusters."
                )
            if clusters.n_rows != x.shape[0]:
                raise ValueError(
                    f"the ClusterIndex describes {clusters.n_rows} rows but x has {x.shape[0]}; "
                    "index exactly the rows of the batch."
                )
            return
        if not isinstance(clusters, torch.Tensor) or clusters.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"clusters must be an int64 torch.Tensor [n], got {_describe(clusters)}.")
        if clusters.shape != (x.shape[0],):
            raise ValueError(f"clusters must have shape [{x.shape[0]}] (one id per row), got {tuple(clusters.shape)}.")
        if clusters.numel():
            lo, hi = int(clusters.min()), int(clusters.max())
            if lo < 0 or hi >= self.n_clusters:
                raise ValueError(
                    f"clusters holds ids {lo}..{hi} but the model was built with n_clusters={self.n_clusters}; "
                    "ids must lie in 0..n_clusters-1."
                )

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


def _describe(v: Any) -> str:
    """What an argument is, for error messages: dtype and shape of a tensor, else its type."""
    if isinstance(v, torch.Tensor):
        return f"a {v.dtype} tensor of shape {tuple(v.shape)}"
    return type(v).__name__
