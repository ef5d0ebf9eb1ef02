"""The one training loop: initial masked training, then the impute-refit loop.

The procedure follows CISS-VAE:

1. **Initial training.** ``TrainConfig.epochs`` epochs of mini-batch Adam on the
   encoded data, the loss reading only the training cells (observed, not held out).
2. **Loop 0.** Impute every row in one batched no-grad pass and score the held-out
   cells (:func:`~ciss_autoimpute.training.metrics.validation_score`).
3. **Refit loops 1..max_loops.** Replace the missing and held-out cells of the input
   with the current imputations (training cells keep their values), train
   ``epochs_per_loop`` more epochs, impute again and score. The best-scoring loop's
   weights and imputations are kept; the loop ends after ``patience`` loops without
   improvement, at ``max_loops``, or when a callback asks to stop.

The optimiser and the learning-rate schedule are created once per ``fit`` and live
through both phases; a refit only adjusts the learning rate or the decay factor in
place. Held-out values (``EncodedData.x_val``) are read by the metric only, never by
the model.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from ..data.layout import EncodedData
from ..exceptions import TrainingDivergedError
from ..models.base import ImputationModel, UpdateStep
from ..models.layers import BlockLayout, ClusterIndex, block_layout
from ..models.likelihoods import float_mask
from .callbacks import Callback, History, history_frame
from ._flat import FlatAdam, FlatGrads, can_flatten
from .config import PRECISIONS, RefitConfig, TrainConfig, resolve_batch_size
from .metrics import MetricWeights, ValidationScore, held_out_counts, validation_score

__all__ = ["Trainer", "TrainResult", "impute_all", "precision_context", "resolve_device"]

_LOGGER = logging.getLogger("ciss_autoimpute.training")

#: Rows per chunk of a no-grad imputation pass: large enough to be one pass on small
#: data, small enough to bound memory on large data.
IMPUTE_CHUNK_ROWS = 8192

_HOOKS = ("on_fit_start", "on_epoch_end", "on_loop_end", "on_fit_end")

# Keys of an epoch record that a model's loss parts must not overwrite.
_EPOCH_KEYS = frozenset({"phase", "loop", "epoch", "loss", "lr", "val", "seconds"})


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"cuda"`` when available and ``device`` is ``None``, else ``torch.device(device)``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be None, a string or a torch.device, got {type(device).__name__}.")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"Unknown device {device!r}; pass 'cpu', 'cuda', 'cuda:0' or None for automatic.") from err


def precision_context(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The context a forward pass runs in for ``TrainConfig.precision``.

    ``"32"`` gives a null context (float32 throughout). ``"bf16-mixed"`` gives
    :func:`torch.autocast` to bfloat16 on ``device``'s type: linear layers and other
    matrix products run in bfloat16 on float32 weights; the models' output layers
    return float32, so likelihoods and bounds are computed in float32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}.")
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse ``"bf16-mixed"`` on a CUDA device without bfloat16 support, before training."""
    if precision == "bf16-mixed" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(
            f"TrainConfig.precision='bf16-mixed' needs bfloat16 support, which {torch.cuda.get_device_name(device)} "
            'lacks; use precision="32".'
        )


def _fused_adam_supported(params: Sequence[torch.Tensor]) -> bool:
    """True when PyTorch's fused Adam kernel can update ``params`` (float32/64 on CPU or CUDA).

    The fused kernel updates each parameter in one vectorised pass instead of the
    default per-parameter sequence of small ops; on CPU that makes an Adam step of
    our small networks ~3.5x faster (measured 470 us vs 130 us for the default
    VAE's 12 parameters) and a batch-256 epoch ~10 % faster. Same seed, same result
    still holds; the values differ from the unfused update only by rounding.
    """
    return bool(params) and all(
        p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64) for p in params
    )


def _scalar_parts(out: Any, device: torch.device) -> bool:
    """True when a step's loss and parts are float32 scalars on ``device`` (they stack as they are)."""
    return all(
        v.dim() == 0 and v.dtype == torch.float32 and v.device == device
        for v in (out.loss, *out.parts.values())
    )


def batch_clusters(
    model: ImputationModel, ids: torch.Tensor, counts: Sequence[int] | None = None
) -> torch.Tensor | ClusterIndex:
    """A training batch's cluster ids as the Trainer passes them to the model's loss.

    ``ids`` are ids of a dataset the Trainer has checked. A family that sets
    ``accepts_cluster_index`` gets them as a :class:`ClusterIndex` taken as checked,
    grouped by cluster when ``counts`` (the batch's rows per cluster, its rows sorted
    by cluster) are given; other families get ``ids`` themselves.
    """
    if not getattr(model, "accepts_cluster_index", False):
        return ids
    n_clusters = int(model.n_clusters)
    if counts is not None:
        return ClusterIndex.grouped(counts, n_clusters, ids)
    return ClusterIndex(ids, n_clusters)


def _unstack(
    stacked: dict[str, tuple[tuple[str, ...], torch.Tensor]], single: bool, loss_sum: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The per-step ``[loss, *parts]`` sum vectors of an epoch as the loss sum and per-part sums.

    A single step's vector holds the loss sum itself; several steps keep their own
    running ``loss_sum`` and add ``<step>_loss`` and ``<step>_<part>`` entries.
    """
    part_sums: dict[str, torch.Tensor] = {}
    for step_name, (names, vector) in stacked.items():
        values = vector.unbind(0)
        if single:
            loss_sum = values[0].clone()
            part_sums.update((k, v.clone()) for k, v in zip(names, values[1:]))
        else:
            part_sums[f"{step_name}_loss"] = values[0].clone()
            part_sums.update((f"{step_name}_{k}", v.clone()) for k, v in zip(names, values[1:]))
    return loss_sum, part_sums


def _checked_steps(model: ImputationModel) -> list[UpdateStep]:
    """``model.update_steps()`` checked: named, non-empty, disjoint groups of the model's parameters.

    Returned with each step's parameters as a list, so they can be read every batch.
    """
    steps = model.update_steps()
    label = type(model).__name__
    if not isinstance(steps, (list, tuple)) or not steps or not all(isinstance(s, UpdateStep) for s in steps):
        raise TypeError(f"{label}.update_steps() must return a non-empty list of UpdateStep, got {steps!r}.")
    owned = {id(p) for p in model.parameters()}
    seen: dict[int, str] = {}
    names: set[str] = set()
    checked: list[UpdateStep] = []
    for step in steps:
        if not isinstance(step.name, str) or not step.name or step.name in names:
            raise ValueError(
                f"{label}.update_steps(): step names must be distinct non-empty strings, got {step.name!r} "
                f"(names so far: {sorted(names)})."
            )
        names.add(step.name)
        if not callable(step.loss):
            raise TypeError(f"{label}.update_steps(): the loss of step {step.name!r} is not callable.")
        params = list(step.parameters)
        if not params:
            raise ValueError(f"{label}.update_steps(): step {step.name!r} has no parameters to update.")
        for p in params:
            if id(p) not in owned or not p.requires_grad:
                raise ValueError(
                    f"{label}.update_steps(): step {step.name!r} lists a parameter that is not a trainable "
                    "parameter of the model."
                )
            if id(p) in seen:
                raise ValueError(
                    f"{label}.update_steps(): a parameter is updated by both {seen[id(p)]!r} and {step.name!r}; "
                    "give each parameter to one step."
                )
            seen[id(p)] = step.name
        checked.append(UpdateStep(step.name, params, step.loss))
    return checked


def impute_all(
    model: ImputationModel,
    x: torch.Tensor,
    mask: torch.Tensor,
    clusters: torch.Tensor,
    batch_size: int = IMPUTE_CHUNK_ROWS,
    *,
    generator: torch.Generator | None = None,
    keep_observed: bool = True,
    observed: torch.Tensor | None = None,
    precision: str = "32",
) -> torch.Tensor:
    """Single imputations of every row, in chunks, without gradients.

    Parameters
    ----------
    model
        A trained model; it is put in eval mode for the pass and restored afterwards.
    x, mask, clusters
        Encoded values ``[n, d]``, the cells the model may read ``[n, d]`` and cluster
        ids ``[n]``, on the model's device.
    batch_size
        Rows per chunk (>= 1).
    generator
        Source of randomness for models whose imputation samples (importance-weighted
        families).
    keep_observed
        Return ``x`` where ``mask`` is true and the imputations elsewhere (default);
        ``False`` returns the model's output for every cell.
    observed
        For models of the missingness (``models_missingness``): the cells observed in
        the data ``[n, d]``, a superset of ``mask`` when cells are held out for
        validation. It is what ``p(s|x)`` reads as ``s``; ``None`` means ``mask``.
    precision
        ``TrainConfig.precision`` of the model: ``"bf16-mixed"`` runs the pass under
        :func:`precision_context` (trainable models only; closed-form families always
        run in float32).

    Returns
    -------
    torch.Tensor
        float ``[n, d]`` on the device of ``x``.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    n = x.shape[0]
    was_training = model.training
    model.eval()
    if not getattr(model, "trainable", True):
        precision = "32"
    try:
        with torch.no_grad(), precision_context(precision, x.device):
            extra = (lambda s: {}) if observed is None else (lambda s: {"observed": observed[s:s + batch_size]})
            chunks = [
                model.impute(x[s:s + batch_size], mask[s:s + batch_size], clusters[s:s + batch_size],
                             generator=generator, **extra(s))
                for s in range(0, n, batch_size)
            ]
    finally:
        model.train(was_training)
    out = torch.cat(chunks, dim=0) if chunks else x.new_empty(x.shape)
    out = out.to(dtype=x.dtype)
    if keep_observed:
        out = torch.where(mask, x, out)
    return out


@dataclass
class TrainResult:
    """Everything a :meth:`Trainer.fit` run produced.

    Attributes
    ----------
    model
        The trained model with the best state loaded.
    best_state
        Deep copy of the best loop's ``state_dict`` (on the training device).
    imputed
        float ``[n, d]`` encoded values: every observed cell (held-out ones included)
        as in the data, the kept model's imputations on the missing cells (see
        :attr:`scored_imputed`).
    best_score
        :class:`ValidationScore` of the best loop.
    best_loop
        Index of the best loop (0 = right after initial training).
    epoch_history
        One record per epoch (see :class:`Trainer`).
    loop_history
        One record per loop, loop 0 first.
    n_epochs
        Epochs trained in total.
    seconds
        Wall time of the whole fit.
    stop_reason
        ``"no_refit"`` (``max_loops == 0``), ``"max_loops"``, ``"patience"``,
        ``"closed_form"`` (a family fitted once, ``trainable = False``), or the
        reason a callback passed to :meth:`Trainer.request_stop`.
    batch_size
        Rows per optimisation step actually used: ``TrainConfig.batch_size``, or what
        ``"auto"`` resolved to for this data (:func:`resolve_batch_size`). ``None``
        for closed-form families, which take no steps.
    scored_imputed
        The imputations :attr:`best_score` was computed from (same shape as
        :attr:`imputed`), made with the held-out cells hidden. :attr:`imputed` is
        what the kept model gives with every observed cell visible: for trained
        families one more imputation pass of the kept loop's model with the held-out
        values as inputs; for a closed-form family a refit on every observed cell.
        The two are the same tensor when nothing was held out. Ensembles of trials
        weigh their members on these held-out predictions.
    """

    model: ImputationModel
    best_state: dict[str, torch.Tensor]
    imputed: torch.Tensor
    best_score: ValidationScore
    best_loop: int
    epoch_history: list[dict[str, Any]] = field(default_factory=list)
    loop_history: list[dict[str, Any]] = field(default_factory=list)
    n_epochs: int = 0
    seconds: float = 0.0
    stop_reason: str = ""
    batch_size: int | None = None
    scored_imputed: torch.Tensor | None = None

    def epoch_frame(self):
        """:attr:`epoch_history` as a pandas DataFrame."""
        return history_frame(self.epoch_history)

    def loop_frame(self):
        """:attr:`loop_history` as a pandas DataFrame."""
        return history_frame(self.loop_history)


class Trainer:
    """Trains an :class:`~ciss_autoimpute.models.base.ImputationModel` on encoded data.

    Parameters
    ----------
    model
        The model to train (moved to ``device`` and trained in place).
    train_config
        Initial-training options.
    refit_config
        Impute-refit loop options.
    callbacks
        :class:`Callback` instances (or objects with the same four hooks), called in
        order after the trainer's own :class:`History`.
    seed
        Seed of the ``torch.Generator`` behind batch order and every sample the model
        draws. Same seed, same result on CPU.
    device
        ``None`` picks ``"cuda"`` when available, else ``"cpu"``.
    metric_weights
        Weights of the validation metric (default equal weights).

    Attributes
    ----------
    optimizers, schedulers
        ``{step name: Adam}`` and ``{step name: ExponentialLR}``: one optimiser and
        schedule per update step of the model
        (:meth:`~ciss_autoimpute.models.base.ImputationModel.update_steps`), created
        once per :meth:`fit`. Most families have one step, ``"model"``; GAIN has
        ``"discriminator"`` and ``"generator"``.
    optimizer, scheduler
        The first step's optimiser and schedule (the only ones for single-step
        families).
    epoch, loop
        Epochs trained so far in this run, and the current loop (0 during initial
        training).
    best_score, best_loop, loops_since_improvement
        State of the refit patience rule.
    batch_size
        Rows per optimisation step of the current run: ``TrainConfig.batch_size``, with
        ``"auto"`` resolved from the number of rows when :meth:`fit` starts
        (:func:`~ciss_autoimpute.training.resolve_batch_size`).
    history
        A :class:`History` of the latest run.

    Notes
    -----
    Every batch runs the model's update steps in order; each step evaluates its loss,
    zeroes the gradients, back-propagates, clips the gradients of its own parameters
    (``TrainConfig.grad_clip``) and steps its own optimiser. Learning rate, weight
    decay, decay factor and the refit adjustments apply to every step alike.

    Epoch records hold ``phase`` (``"initial"`` or ``"refit"``), ``loop``, ``epoch``
    (1-based, counted over the whole run), ``loss`` (row-weighted mean over the epoch),
    the model's loss parts (e.g. ``nll``, ``kl``), ``lr`` (the rate used during the
    epoch), ``val`` (only when scored, see ``TrainConfig.val_every``) and ``seconds``.
    With several update steps, ``loss`` is the sum of the steps' losses and each step
    adds ``<step>_loss`` and its parts as ``<step>_<part>`` (e.g.
    ``discriminator_loss``, ``generator_mse``).
    Loop records hold ``loop``, ``val`` and the other fields of
    :meth:`ValidationScore.to_dict` (``per_cluster``, ``numeric_rmse``, ...),
    ``improved``, ``best_loop``, ``best_val``, ``loops_since_improvement``, ``epochs``
    (trained in that loop), ``lr``, ``batch_size`` (rows per step, ``"auto"``
    resolved; ``None`` for closed-form families) and ``seconds``.

    Examples
    --------
    >>> from ciss_autoimpute.training import Trainer, TrainConfig, RefitConfig
    >>> trainer = Trainer(model, TrainConfig(epochs=100), RefitConfig(max_loops=5), seed=0)  # doctest: +SKIP
    >>> result = trainer.fit(encoded)  # doctest: +SKIP
    >>> result.best_loop, result.best_score.total  # doctest: +SKIP
    """

    def __init__(
        self,
        model: ImputationModel,
        train_config: TrainConfig = TrainConfig(),
        refit_config: RefitConfig = RefitConfig(),
        *,
        callbacks: Sequence[Callback] = (),
        seed: int = 0,
        device: str | torch.device | None = None,
        metric_weights: MetricWeights | None = None,
    ) -> None:
        if not isinstance(model, ImputationModel):
            raise TypeError(
                f"model must be an ImputationModel, got {type(model).__name__}; "
                "build one with ciss_autoimpute.models.registry.build_model."
            )
        if not isinstance(train_config, TrainConfig):
            raise TypeError(f"train_config must be a TrainConfig, got {type(train_config).__name__}.")
        if not isinstance(refit_config, RefitConfig):
            raise TypeError(f"refit_config must be a RefitConfig, got {type(refit_config).__name__}.")
        if isinstance(callbacks, Callback):
            callbacks = (callbacks,)
        callbacks = tuple(callbacks)
        for cb in callbacks:
            # Subclassing Callback is the norm; any object with all four hooks also works.
            missing = [h for h in _HOOKS if not callable(getattr(cb, h, None))]
            if not isinstance(cb, Callback) and missing:
                raise TypeError(
                    f"callbacks must be Callback instances, got {type(cb).__name__} (missing {missing}); "
                    "subclass ciss_autoimpute.training.Callback."
                )
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
        if metric_weights is not None and not isinstance(metric_weights, MetricWeights):
            raise TypeError(f"metric_weights must be a MetricWeights or None, got {type(metric_weights).__name__}.")

        self.model = model
        self.train_config = train_config
        self.refit_config = refit_config
        self.callbacks = callbacks
        self.seed = seed
        self.device = resolve_device(device)
        self.metric_weights = metric_weights if metric_weights is not None else MetricWeights()

        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.ExponentialLR | None = None
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.ExponentialLR] = {}
        self._steps: list[UpdateStep] = []
        self._flat: list[FlatGrads] = []
        self.generator: torch.Generator | None = None
        self.history = History()
        self._reset_run_state()

    # ------------------------------------------------------------------ control
    def _reset_run_state(self) -> None:
        self.epoch = 0
        self.loop = 0
        self.best_score: ValidationScore | None = None
        self.best_loop = 0
        self.loops_since_improvement = 0
        self._stop_reason: str | None = None
        # Rows per step of this run: TrainConfig.batch_size with "auto" resolved in fit.
        self.batch_size: int | None = None
        # data.train_mask as 0/1 floats, made on the first imputation pass of a run.
        self._train_weight: torch.Tensor | None = None

    def request_stop(self, reason: str = "callback") -> None:
        """Ask the run to end gracefully after the current epoch (best state kept).

        The current loop is still scored, so its weights can win. ``reason`` becomes
        :attr:`TrainResult.stop_reason`; the first request wins.
        """
        if self._stop_reason is None:
            self._stop_reason = str(reason)

    @property
    def should_stop(self) -> bool:
        """True once :meth:`request_stop` has been called in this run."""
        return self._stop_reason is not None

    # ------------------------------------------------------------------ checks
    def _check_data(self, data: EncodedData) -> None:
        if not isinstance(data, EncodedData):
            raise TypeError(
                f"Trainer.fit expects an EncodedData, got {type(data).__name__}; "
                "encode your table first (ClusterDataset does this)."
            )
        n, d = data.n_rows, data.x.shape[1] if data.x.dim() == 2 else -1
        if data.x.dim() != 2 or n == 0:
            raise ValueError(f"data.x must be a non-empty 2-D tensor, got shape {tuple(data.x.shape)}.")
        expected = self.model.layout.n_features
        if d != expected:
            raise ValueError(
                f"data has {d} encoded columns but the model was built for {expected}; "
                "build the model from this data's layout."
            )
        ml, dl = self.model.layout, data.layout
        if (ml.numeric, ml.binary, ml.categorical) != (dl.numeric, dl.binary, dl.categorical):
            raise ValueError(
                "data.layout does not match the model's layout (numeric/binary/categorical columns differ); "
                "build the model from this data's layout."
            )
        for name in ("observed", "train_mask", "val_mask", "x_val"):
            t = getattr(data, name)
            if tuple(t.shape) != (n, d):
                raise ValueError(f"data.{name} has shape {tuple(t.shape)}, expected {(n, d)}.")
        for name in ("observed", "train_mask", "val_mask"):
            if getattr(data, name).dtype != torch.bool:
                raise TypeError(f"data.{name} must be a bool tensor, got {getattr(data, name).dtype}.")
        if not data.x.is_floating_point():
            raise TypeError(f"data.x must be a float tensor, got {data.x.dtype}.")
        if tuple(data.clusters.shape) != (n,):
            raise ValueError(f"data.clusters has shape {tuple(data.clusters.shape)}, expected ({n},).")
        if data.clusters.dtype != torch.long:
            raise TypeError(f"data.clusters must be an int64 tensor, got {data.clusters.dtype}; use .long().")
        lo, hi = int(data.clusters.min()), int(data.clusters.max())
        if lo < 0 or hi >= self.model.n_clusters or hi >= data.n_clusters:
            raise ValueError(
                f"data.clusters holds ids {lo}..{hi} but the model has n_clusters={self.model.n_clusters} "
                f"and the data n_clusters={data.n_clusters}; ids must lie in 0..n_clusters-1."
            )
        if not bool(torch.isfinite(data.x).all()):
            raise ValueError(
                "data.x contains NaN or infinite values; missing cells must hold the finite replacement value."
            )
        if self.refit_config.max_loops > 0:
            counts = held_out_counts(data.val_mask, data.layout)
            w = self.metric_weights
            weighted = w.numeric * counts["numeric"] + w.binary * counts["binary"] + w.categorical * counts["categorical"]
            if weighted <= 0:
                raise ValueError(
                    f"The impute-refit loop (max_loops={self.refit_config.max_loops}) selects the best loop on "
                    f"held-out cells, but the data holds none that the metric weights count ({counts}); "
                    "hold out some observed cells (val_proportion > 0) or pass RefitConfig(max_loops=0)."
                )

    # ------------------------------------------------------------------ training
    def _run_epoch(self, x: torch.Tensor, mask: torch.Tensor, clusters: torch.Tensor,
                   phase: str, observed: torch.Tensor | None = None) -> dict[str, Any]:
        """One pass over all rows in a random order; returns the epoch record.

        ``observed`` (models of the missingness only) reaches the loss as the cells
        observed in the data, held-out cells included.
        """
        start = time.perf_counter()
        model, opt, gen = self.model, self.optimizer, self.generator
        assert opt is not None and self.scheduler is not None and gen is not None and self._steps
        n = x.shape[0]
        bs = self.batch_size
        assert bs is not None
        clip = self.train_config.grad_clip
        precision = self.train_config.precision
        lr = float(opt.param_groups[0]["lr"])
        steps = []
        for step in self._steps:
            step_opt = self.optimizers[step.name]
            flat = isinstance(step_opt, FlatAdam)
            if clip is None:
                clipper = None
            elif flat:
                clipper = functools.partial(step_opt.flat.clip_grad_norm_, clip)
            else:
                clipper = functools.partial(nn.utils.clip_grad_norm_, step.parameters, clip)
            steps.append((step, step_opt, clipper, step_opt.lean_step if flat else step_opt.step))
        # One step keeps the model's part names; several prefix them with the step name.
        single = len(steps) == 1
        model.train()
        perm = torch.randperm(n, generator=gen, device=self.device)
        # Families that take a ClusterIndex get one per batch (batch_clusters): its ids count as
        # checked (the data's were, in _check_data), so a step makes no host synchronisation.
        batch_counts: list[list[int]] | None = None
        layout: BlockLayout | None = None
        if getattr(model, "sorts_batches_by_cluster", False):
            # The same batches, each with its rows in cluster order: the loss then skips its
            # per-batch sort and gathers (one stable sort of the epoch's keys instead).
            n_clusters = int(model.n_clusters)
            key = torch.arange(n, device=self.device).div_(bs, rounding_mode="floor")
            key.mul_(n_clusters).add_(clusters.index_select(0, perm))
            perm = perm.index_select(0, torch.argsort(key, stable=True))
            if getattr(model, "accepts_cluster_index", False):
                # Rows of each cluster in every batch, read to the host once per epoch.
                n_batches = -(-n // bs)
                batch_counts = torch.bincount(key, minlength=n_batches * n_clusters).view(
                    n_batches, n_clusters).tolist()
                with precision_context(precision, self.device):
                    padding = model.batch_padding(self.device)
                if padding is not None:
                    # Batches whose clusters are about equally large laid out in padded
                    # cluster blocks for the whole epoch: the gather below then makes the
                    # layout, where each step would otherwise build it and pad x and mask.
                    layout = block_layout(batch_counts, padding, self.device)
                    perm = perm.index_select(0, layout.source)
        # Batches: (first row, end row, real rows) in the shuffled copies made below.
        if layout is None:
            batches = [(s, min(s + bs, n), min(bs, n - s)) for s in range(0, n, bs)]
        else:
            batches = [(s, s + length, sum(c)) for s, length, c in zip(layout.starts, layout.lengths, batch_counts)]
        # Shuffle the rows once per epoch so that every batch is a contiguous slice (a view).
        # The batches are the same rows as gathering perm[s:s + bs] per batch, but 390
        # small random-row gathers per epoch cost ~0.4 ms each at 100k x 50 (cache and TLB
        # misses), against ~22 ms for the whole shuffle. The price is one transient copy
        # of x, mask and clusters (~260 MB at 1M x 50; up to a fifth more when padded).
        x, mask, clusters = x.index_select(0, perm), mask.index_select(0, perm), clusters.index_select(0, perm)
        if observed is not None:
            observed = observed.index_select(0, perm)
        # Sums stay on the device; one synchronisation per epoch, not per batch.
        loss_sum = torch.zeros((), device=self.device)
        part_sums: dict[str, torch.Tensor] = {}
        # Per step, while its parts keep the same names and are float32 scalars on the device
        # (checked every batch): [loss, *parts] as one vector, summed with one stack and one
        # multiply-add per batch instead of a detach/to/reshape/add per part.
        stacked: dict[str, tuple[tuple[str, ...], torch.Tensor]] = {}
        general = False
        for b, (s, e, rows) in enumerate(batches):
            xb, mb = x[s:e], mask[s:e]
            if layout is not None:
                assert batch_counts is not None
                cb = layout.index(b, batch_counts[b], clusters[s:e])
            else:
                cb = batch_clusters(model, clusters[s:e], None if batch_counts is None else batch_counts[b])
            extra = {} if observed is None else {"observed": observed[s:e]}
            for step, step_opt, clipper, update in steps:
                with precision_context(precision, self.device):
                    out = step.loss(xb, mb, cb, generator=gen, **extra)
                step_opt.zero_grad(set_to_none=True)
                out.loss.backward()
                if clipper is not None:
                    clipper()
                update()
                # In-place multiply-adds: one small op per sum and batch instead of two.
                if not single:
                    loss_sum.add_(out.loss.detach(), alpha=rows)
                if not general:
                    names = tuple(out.parts)
                    entry = stacked.get(step.name)
                    if entry is None and s == 0:
                        entry = stacked[step.name] = (names, torch.zeros(1 + len(names), device=self.device))
                    # The vector's own device: "cuda" in self.device resolves to "cuda:0" in tensors.
                    if entry is not None and entry[0] == names and _scalar_parts(out, entry[1].device):
                        with torch.no_grad():
                            entry[1].add_(torch.stack([out.loss, *out.parts.values()]), alpha=rows)
                        continue
                    # Parts changed shape, type or names: fold the vectors into per-part sums.
                    general = True
                    loss_sum, part_sums = _unstack(stacked, single, loss_sum)
                if single:
                    loss_sum.add_(out.loss.detach(), alpha=rows)
                parts = out.parts if single else {
                    f"{step.name}_loss": out.loss, **{f"{step.name}_{k}": v for k, v in out.parts.items()}
                }
                for k, v in parts.items():
                    v = v.detach().to(self.device, torch.float32).reshape(())
                    if k in part_sums:
                        part_sums[k].add_(v, alpha=rows)
                    else:
                        part_sums[k] = v * rows
        self.epoch += 1
        if not general:
            loss_sum, part_sums = _unstack(stacked, single, loss_sum)
        values = torch.stack([loss_sum, *part_sums.values()]).div(n).tolist()
        loss = values[0]
        if not math.isfinite(loss):
            which = "" if single else " (" + ", ".join(
                f"{k}={v:.4g}" for k, v in zip(part_sums, values[1:]) if k.endswith("_loss")
            ) + ")"
            raise TrainingDivergedError(
                f"The training loss became {loss}{which} in epoch {self.epoch} ({phase} phase, loop {self.loop}) "
                f"at learning rate {lr:.3g}; lower TrainConfig.lr, enable TrainConfig.grad_clip "
                "(e.g. 5.0) or check the data scaling."
            )
        record: dict[str, Any] = {"phase": phase, "loop": self.loop, "epoch": self.epoch, "loss": loss}
        for k, v in zip(part_sums, values[1:]):
            record[f"part_{k}" if k in _EPOCH_KEYS else k] = v
        record["lr"] = lr
        for scheduler in self.schedulers.values():
            scheduler.step()
        record["seconds"] = time.perf_counter() - start
        return record

    def _impute_every_observed(self, data: EncodedData, best_imp: torch.Tensor) -> torch.Tensor:
        """The kept model's imputations of the missing cells given *every* observed cell.

        During training the held-out cells are hidden (the holdout must stay unseen),
        so the kept loop's imputations condition each row on its training cells only.
        Once the holdout has scored the loops, one more pass puts the held-out values
        back as inputs, as ``Imputer.transform`` of the same rows would; the missing
        cells' fillers are the kept loop's imputations. Without a holdout this is the
        kept imputations as they are.
        """
        if not bool(data.val_mask.any()):
            return best_imp
        x_all = torch.where(data.val_mask, data.x_val, best_imp)
        imp = impute_all(
            self.model, x_all, data.observed, data.clusters,
            max(IMPUTE_CHUNK_ROWS, self.batch_size or 0), generator=self.generator,
            observed=self._observed(data), precision=self.train_config.precision,
        )
        if not math.isfinite(float(imp.sum())) and not bool(torch.isfinite(imp).all()):
            raise TrainingDivergedError(
                "The kept model produced NaN or infinite imputations when given every observed cell; "
                "lower TrainConfig.lr or enable TrainConfig.grad_clip (e.g. 5.0)."
            )
        return imp

    def _observed(self, data: EncodedData) -> torch.Tensor | None:
        """``data.observed`` for models of the missingness, else ``None``.

        A held-out cell was observed: to ``p(s|x)`` it must look observed (``s = 1``)
        even though its value is hidden from the likelihood. Treating it as missing
        would teach the missing process that ordinary values go missing too, and would
        score the holdout with imputations meant for truly missing cells.
        """
        return data.observed if getattr(self.model, "models_missingness", False) else None

    def _impute(self, data: EncodedData, x_current: torch.Tensor) -> torch.Tensor:
        """Training cells from ``data.x``, the model's imputations everywhere else."""
        imp = impute_all(
            self.model, x_current, data.train_mask, data.clusters,
            max(IMPUTE_CHUNK_ROWS, self.batch_size or 0), generator=self.generator,
            observed=self._observed(data), precision=self.train_config.precision, keep_observed=False,
        )
        # x_current equals data.x on training cells; take data.x explicitly anyway so
        # observed values can never drift through repeated refits. lerp with a 0/1 weight
        # returns either end bit for bit (while their difference is finite; otherwise the
        # check below fails the run) and is ~5x faster than a bool torch.where on CPU.
        if self._train_weight is None or self._train_weight.shape != imp.shape:
            self._train_weight = float_mask(data.train_mask, imp.dtype)
        imp = torch.lerp(imp, data.x, self._train_weight)
        # A finite sum proves every cell finite (a NaN or an infinity makes the sum NaN or
        # infinite); only a non-finite sum, possibly an overflow, needs the cell-wise check,
        # which costs ~4 times as much on [100k, 50].
        if not math.isfinite(float(imp.sum())) and not bool(torch.isfinite(imp).all()):
            raise TrainingDivergedError(
                f"The model produced NaN or infinite imputations after epoch {self.epoch} (loop {self.loop}); "
                "lower TrainConfig.lr or enable TrainConfig.grad_clip (e.g. 5.0)."
            )
        return imp

    def _notify(self, hook: str, *args: Any) -> None:
        # The trainer's own History first, so user callbacks see a complete history.
        for cb in (self.history, *self.callbacks):
            getattr(cb, hook)(self, *args)

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def _train_epochs(self, n_epochs: int, data: EncodedData, x: torch.Tensor, phase: str,
                      val_every: int) -> int:
        done = 0
        for _ in range(n_epochs):
            record = self._run_epoch(x, data.train_mask, data.clusters, phase, self._observed(data))
            done += 1
            if val_every and done % val_every == 0:
                record["val"] = validation_score(self._impute(data, x), data, weights=self.metric_weights).total
            self._notify("on_epoch_end", record)
            if self.should_stop:
                break
        return done

    def fit(self, data: EncodedData) -> TrainResult:
        """Train on ``data`` and return the best loop's model and imputations.

        Parameters
        ----------
        data
            Encoded tensors; only ``x`` at ``train_mask`` cells is ever shown to the
            model, ``x_val`` only to the metric. ``data`` is not modified.

        Returns
        -------
        TrainResult

        Raises
        ------
        TrainingDivergedError
            If the loss or the imputations become NaN or infinite.
        """
        self._check_data(data)
        tc, rc = self.train_config, self.refit_config
        t0 = time.perf_counter()
        self._reset_run_state()

        model = self.model.to(self.device)
        data = data.to(self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)
        # Resolved once per run from the row count; "auto" is 256 up to 25,600 rows.
        self.batch_size = resolve_batch_size(tc.batch_size, data.n_rows)
        _LOGGER.debug("batch size %d (TrainConfig.batch_size=%r, %d rows)", self.batch_size, tc.batch_size, data.n_rows)
        if not getattr(model, "trainable", True):
            return self._fit_closed_form(model, data, t0)
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(f"{type(model).__name__} has no trainable parameters; nothing to train.")
        check_precision(tc.precision, self.device)
        self._steps = _checked_steps(model)
        # Created once per run, one per update step; the refit phase only edits lr / gamma in place.
        # Where the fused kernel applies, a step's parameter values, gradients and Adam moments
        # live in one buffer each for the run: zeroing, clipping and the Adam update are a few
        # ops on whole buffers instead of a few per parameter tensor (see _flat.py).
        self._flat = []
        self.optimizers = {}
        for step in self._steps:
            fused = _fused_adam_supported(step.parameters)
            if fused and can_flatten(step.parameters):
                grads = FlatGrads(step.parameters)
                self._flat.append(grads)
                self.optimizers[step.name] = FlatAdam(grads, lr=tc.lr, weight_decay=tc.weight_decay)
            else:
                self.optimizers[step.name] = torch.optim.Adam(
                    step.parameters, lr=tc.lr, weight_decay=tc.weight_decay, fused=fused
                )
        self.schedulers = {
            name: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=tc.decay_factor)
            for name, opt in self.optimizers.items()
        }
        self.optimizer = self.optimizers[self._steps[0].name]
        self.scheduler = self.schedulers[self._steps[0].name]

        has_beta = hasattr(model, "beta")
        original_beta = getattr(model, "beta", None)
        try:
            self._notify("on_fit_start", data)

            # --- initial training + loop 0
            loop_start = time.perf_counter()
            done = self._train_epochs(tc.epochs, data, data.x, "initial", tc.val_every or 0)
            imp = self._impute(data, data.x)
            score = validation_score(imp, data, weights=self.metric_weights)
            self.best_score, self.best_loop = score, 0
            best_state, best_imp = self._snapshot(), imp
            self._end_loop(score, True, done, loop_start)

            # --- impute-refit loops
            stop_reason = "no_refit" if rc.max_loops == 0 else "max_loops"
            if rc.max_loops > 0 and not self.should_stop:
                if rc.beta_refit is not None:
                    if has_beta:
                        model.beta = rc.beta_refit
                    else:
                        _LOGGER.debug("%s has no beta; beta_refit ignored", type(model).__name__)
                if rc.reset_lr_refit:
                    new_lr = rc.lr_refit if rc.lr_refit is not None else tc.lr
                    for opt in self.optimizers.values():
                        for group in opt.param_groups:
                            group["lr"] = new_lr
                if rc.decay_factor_refit is not None:
                    for scheduler in self.schedulers.values():
                        scheduler.gamma = rc.decay_factor_refit
                epochs_per_loop = rc.epochs_per_loop if rc.epochs_per_loop is not None else tc.epochs

                for loop in range(1, rc.max_loops + 1):
                    self.loop = loop
                    loop_start = time.perf_counter()
                    # Missing and held-out cells take the latest imputations as fillers.
                    x_current = imp
                    done = self._train_epochs(epochs_per_loop, data, x_current, "refit", 0)
                    imp = self._impute(data, x_current)
                    score = validation_score(imp, data, weights=self.metric_weights)
                    improved = score.total < self.best_score.total - rc.min_delta
                    if improved:
                        self.best_score, self.best_loop = score, loop
                        best_state, best_imp = self._snapshot(), imp
                        self.loops_since_improvement = 0
                    else:
                        self.loops_since_improvement += 1
                    self._end_loop(score, improved, done, loop_start)
                    if self.should_stop:
                        break
                    if self.loops_since_improvement >= rc.patience:
                        stop_reason = "patience"
                        break
            if self._stop_reason is not None:
                stop_reason = self._stop_reason

            model.load_state_dict(best_state)
            final_imp = self._impute_every_observed(data, best_imp)
        finally:
            if has_beta:
                model.beta = original_beta
            # Parameters and gradients get their own storage back: the model leaves as an ordinary module.
            for grads in self._flat:
                grads.release()

        result = TrainResult(
            model=model,
            best_state=best_state,
            imputed=final_imp,
            best_score=self.best_score,
            best_loop=self.best_loop,
            epoch_history=self.history.epochs,
            loop_history=self.history.loops,
            n_epochs=self.epoch,
            seconds=time.perf_counter() - t0,
            stop_reason=stop_reason,
            batch_size=self.batch_size,
            scored_imputed=best_imp,
        )
        self._notify("on_fit_end", result)
        return result

    def _fit_closed_form(self, model: ImputationModel, data: EncodedData, t0: float) -> TrainResult:
        """A family with ``trainable = False``: fit once, impute, score the holdout.

        The score comes from a fit that never saw the holdout; the model kept (and its
        imputations) is then refit on every observed cell, holdout included.
        No optimiser, no epochs: one loop (loop 0) whose record carries ``epochs = 0``
        and ``lr = None``; ``epoch_history`` stays empty. The callbacks' hooks run as
        usual (``on_fit_start``, ``on_loop_end`` once, ``on_fit_end``), so pruning,
        time budgets and the history see the trial like any other.
        """
        self.optimizer, self.scheduler, self.optimizers, self.schedulers = None, None, {}, {}
        self.batch_size = None  # no optimisation steps: the imputation pass uses its own chunks
        self._steps = []
        self._notify("on_fit_start", data)
        loop_start = time.perf_counter()
        model.fit(data.x, data.train_mask, data.clusters, generator=self.generator)
        imp = self._impute(data, data.x)
        score = validation_score(imp, data, weights=self.metric_weights)
        self.best_score, self.best_loop = score, 0
        scored = imp
        if bool(data.val_mask.any()):
            # Scored, refit on every observed cell: the holdout has done its job (an honest
            # score, comparable across trials), and a closed-form fit costs little, so the
            # model kept is the one that saw all the data, as GridSearchCV's refit does.
            # MICE on a 1000 x 8 Gaussian table moved from 0.66 to 0.55 RMSE this way.
            x_all = torch.where(data.val_mask, data.x_val, data.x)
            model.fit(x_all, data.observed, data.clusters, generator=self.generator)
            imp = impute_all(model, x_all, data.observed, data.clusters, generator=self.generator)
        best_state = self._snapshot()
        self._end_loop(score, True, 0, loop_start)
        result = TrainResult(
            model=model,
            best_state=best_state,
            imputed=imp,
            best_score=score,
            best_loop=0,
            epoch_history=self.history.epochs,
            loop_history=self.history.loops,
            n_epochs=0,
            seconds=time.perf_counter() - t0,
            stop_reason=self._stop_reason or "closed_form",
            scored_imputed=scored,
        )
        self._notify("on_fit_end", result)
        return result

    def _end_loop(self, score: ValidationScore, improved: bool, epochs: int, start: float) -> None:
        assert self.best_score is not None
        record: dict[str, Any] = {"loop": self.loop}
        record.update(score.to_dict())
        record.update({
            "improved": bool(improved),
            "best_loop": self.best_loop,
            "best_val": self.best_score.total,
            "loops_since_improvement": self.loops_since_improvement,
            "epochs": epochs,
            # None for closed-form families, which have no optimiser.
            "lr": float(self.optimizer.param_groups[0]["lr"]) if self.optimizer is not None else None,
            # Rows per step after resolving batch_size="auto" (None for closed-form families).
            "batch_size": self.batch_size,
            "seconds": time.perf_counter() - start,
        })
        self._notify("on_loop_end", record)
