"""What the families share: parameter checks, the Gaussian encoder / decoder pair and
generator handling (the constructor and batch checks live on
:class:`~ciss_autoimpute.models.base.ImputationModel`)."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import torch

from ...data.layout import FeatureLayout
from ...tuning.params import Categorical, Int, Param
from ..base import ImputationModel
from ..layers import ACTIVATIONS, MLP, ClusterIndex, ClusterLinear
from ..likelihoods import NUMERIC_HEADS, MixedLikelihood

__all__ = [
    "LatentModel",
    "check_bool",
    "check_choice",
    "check_dims",
    "check_float",
    "check_int",
    "check_n",
    "common_space",
    "default_generator",
    "keep_observed",
    "unsort_rows",
]

#: Bounds of the encoder's log-variance (keeps exp() finite early in training).
LOGVAR_MIN = -12.0
LOGVAR_MAX = 8.0
#: Row-samples (rows x importance samples) processed at once when imputing.
ROW_SAMPLE_BUDGET = 1 << 17


# ---------------------------------------------------------------------------- param checks
def _where(model: str, key: str) -> str:
    return f"{model}: parameter {key!r}"


def check_int(model: str, key: str, value: Any, *, low: int = 1, allow_numpy: bool = False) -> int:
    """``value`` as an int ``>= low`` or a ``ValueError`` naming the parameter.

    ``allow_numpy`` also accepts numpy integers (any :class:`numbers.Integral`), as the
    scikit-learn-backed classical families do.
    """
    kind = numbers.Integral if allow_numpy else int
    if isinstance(value, bool) or not isinstance(value, kind) or value < low:
        raise ValueError(f"{_where(model, key)} must be an integer >= {low}, got {value!r}.")
    return int(value)


def check_n(n: Any, *, allow_numpy: bool = False) -> int:
    """``n`` (number of imputations) as a positive int or a ``ValueError``.

    ``allow_numpy`` also accepts numpy integers (any :class:`numbers.Integral`).
    """
    kind = numbers.Integral if allow_numpy else int
    if isinstance(n, bool) or not isinstance(n, kind) or n < 1:
        raise ValueError(f"n (number of imputations) must be a positive integer, got {n!r}.")
    return int(n)


def check_float(
    model: str, key: str, value: Any, *, low: float = 0.0, strict: bool = False, allow_numpy: bool = False
) -> float:
    """``value`` as a finite float ``>= low`` (``> low`` when ``strict``) or a ``ValueError``.

    ``allow_numpy`` also accepts numpy numbers (any :class:`numbers.Real`).
    """
    kind = numbers.Real if allow_numpy else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if not ok or not (float(value) > low if strict else float(value) >= low):
        bound = f"a finite number > {low:g}" if strict else f"a number >= {low}"
        raise ValueError(f"{_where(model, key)} must be {bound}, got {value!r}.")
    if value != value or abs(float(value)) == float("inf"):
        raise ValueError(f"{_where(model, key)} must be finite, got {value!r}.")
    return float(value)


def check_bool(model: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{_where(model, key)} must be True or False, got {value!r}.")
    return value


def check_choice(model: str, key: str, value: Any, choices: Any) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{_where(model, key)} must be one of {sorted(choices)}, got {value!r}.")
    return value


def check_dims(model: str, key: str, value: Any) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{_where(model, key)} must be a non-empty list of layer widths, e.g. [128, 64]; got {value!r}.")
    bad = [v for v in value if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if bad:
        raise ValueError(f"{_where(model, key)} must hold positive integers, got {list(value)!r}.")
    return [int(v) for v in value]


def default_generator(device: torch.device, generator: torch.Generator | None) -> torch.Generator:
    """``generator``, or a fresh one seeded with 0 on ``device`` (never the global RNG)."""
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}.")
        return generator
    return torch.Generator(device=device).manual_seed(0)


def common_space() -> dict[str, Param]:
    """Search-space entries every family shares (meta keys ``num_hidden_layers`` + ``hidden_dim``)."""
    return {
        "num_hidden_layers": Int(1, 3),
        "hidden_dim": Categorical((32, 64, 128, 256)),
        "latent_dim": Int(4, 32, log=True),
        "activation": Categorical(("relu", "elu", "tanh")),
    }


# ---------------------------------------------------------------------------- base class
class LatentModel(ImputationModel):
    """A Gaussian-latent encoder/decoder over the encoded columns.

    Subclasses describe their parameters in :meth:`default_params`, check
    family-specific ones in :meth:`_check_params` and implement the bound. The
    network is::

        x -[encoder MLP (layer_order_enc)]-> h -[latent layer]-> (mu, logvar)
        z -[decoder MLP (layer_order_dec, reversed widths)]-> h -[output layer]-> raw

    and ``raw`` is read by a :class:`~ciss_autoimpute.models.likelihoods.MixedLikelihood`.
    Families without cluster-specific structure use all-shared orders.
    """

    def __init__(self, layout: FeatureLayout, n_clusters: int = 1, *, seed: int = 0, **params: Any) -> None:
        super().__init__()
        self._setup(layout, n_clusters, seed, params)
        n_clusters = self.n_clusters
        p = self.params
        self.likelihood = MixedLikelihood(layout, p["likelihood"])
        order_enc, order_dec, latent_shared, output_shared = self._structure()
        widths = p["hidden_dims"]
        act = p["activation"]
        self.encoder = MLP(layout.n_features, widths, order_enc, n_clusters=n_clusters, activation=act)
        self.latent = ClusterLinear(
            widths[-1], 2 * p["latent_dim"], n_clusters, shared=latent_shared, float_output=True
        )
        self.decoder = MLP(p["latent_dim"], widths[::-1], order_dec, n_clusters=n_clusters, activation=act)
        self.output = ClusterLinear(
            widths[0], self.likelihood.n_params, n_clusters, shared=output_shared, float_output=True
        )
        self._build_extra()
        self._needs_index = n_clusters > 1 and any(
            not m.shared for m in self.modules() if isinstance(m, ClusterLinear)
        )
        self.reset_parameters(self.seed)

    @property
    def sorts_batches_by_cluster(self) -> bool:
        """True when a cluster-specific layer is used and :meth:`group_rows` does the sorting."""
        return self._needs_index and self._groups_rows

    #: Families whose loss calls :meth:`group_rows` (the VAE family) set this.
    _groups_rows: bool = False

    #: A training batch grouped by cluster is laid out in equal cluster blocks (see
    #: :meth:`padded_blocks`) when that adds at most this share of padding rows; None
    #: never pads. Up to about a fifth the padded layout was faster than the segment
    #: products on two threads and level on one (docs/bench_speed.md, "Padded cluster blocks").
    max_padding: float | None = 0.2

    accepts_cluster_index = True

    #: True when the family models which cells go missing, ``p(s | x)`` (not-MIWAE);
    #: conditional samplers then also weight their draws by :meth:`missingness_log_prob`.
    models_missingness: bool = False

    def missingness_log_prob(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``log p(s | x)`` per row ``[..., n]`` for completed rows ``x [..., n, d]``.

        ``s`` is ``mask`` (observed cells). Zero for families without a model of the
        missingness; not-MIWAE overrides it.
        """
        return x.new_zeros(x.shape[:-1])

    # -------------------------------------------------------------- hooks for subclasses
    @classmethod
    def _check_params(cls, p: dict[str, Any]) -> dict[str, Any]:
        """Validate and normalise the resolved parameters (JSON-compatible output)."""
        name = cls.name
        out = dict(p)
        out["hidden_dims"] = check_dims(name, "hidden_dims", p["hidden_dims"])
        out["latent_dim"] = check_int(name, "latent_dim", p["latent_dim"])
        out["likelihood"] = check_choice(name, "likelihood", p["likelihood"], NUMERIC_HEADS)
        out["activation"] = check_choice(name, "activation", p["activation"], ACTIVATIONS)
        return out

    def _structure(self) -> tuple[list[str] | None, list[str] | None, bool, bool]:
        """(encoder order, decoder order, latent shared, output shared); all shared by default."""
        return None, None, True, True

    def _build_extra(self) -> None:
        """Create extra modules (e.g. a missing-process model) before initialisation."""

    def _reset_extra(self, generator: torch.Generator) -> None:
        """Initialise the extra modules from ``generator``."""

    # -------------------------------------------------------------- weights
    def reset_parameters(self, seed: int) -> None:
        """Re-draw every weight from ``torch.Generator().manual_seed(seed)``.

        Layers are visited in registration order, so the same seed and parameters
        always give the same weights.
        """
        g = torch.Generator().manual_seed(int(seed))
        for layer in (self.encoder, self.latent, self.decoder, self.output):
            layer.reset_parameters(g)
        self._reset_extra(g)

    # -------------------------------------------------------------- network pieces
    def cluster_index(self, clusters: torch.Tensor | ClusterIndex, repeats: int = 1) -> ClusterIndex | None:
        """Rows sorted by cluster for the cluster-specific layers (None when all are shared)."""
        if not self._needs_index:
            return None
        index = clusters if isinstance(clusters, ClusterIndex) else ClusterIndex.build(clusters, self.n_clusters)
        return index.expand(repeats)

    @staticmethod
    def cluster_ids(clusters: torch.Tensor | ClusterIndex) -> torch.Tensor:
        """The cluster id of each row, from ids or from a :class:`ClusterIndex` of the rows."""
        return clusters.clusters if isinstance(clusters, ClusterIndex) else clusters

    def group_rows(
        self, x: torch.Tensor, mask: torch.Tensor, clusters: torch.Tensor | ClusterIndex
    ) -> tuple[torch.Tensor, torch.Tensor, ClusterIndex | None, torch.Tensor | None]:
        """The batch sorted by cluster once, for every cluster-specific layer of a call.

        Returns ``(x, mask, index, order)``: the rows of ``x`` and ``mask`` put in
        cluster order (``x.index_select(0, order)``), a grouped
        :class:`~ciss_autoimpute.models.layers.ClusterIndex` and the permutation
        ``order``. Models whose layers are all shared get their inputs back unchanged
        with ``index`` and ``order`` None.

        Notes
        -----
        Each cluster-specific layer then multiplies contiguous row segments, instead of
        gathering its input and scattering its output (and the reverse in the
        backward pass) itself. Per-row random draws are still made in the caller's
        row order and permuted (see :meth:`reparameterise`), so results equal those
        of the unsorted batch up to float rounding; row-wise outputs must be put back
        with :func:`unsort_rows`. A batch already sorted by cluster is returned as it is,
        with ``order`` None; so is a batch that comes with a grouped index
        (:meth:`ClusterIndex.grouped`, what the Trainer passes), with no host
        synchronisation.
        """
        if not self._needs_index:
            return x, mask, None, None
        if isinstance(clusters, ClusterIndex):
            if clusters.is_grouped:
                return x, mask, clusters, None
            clusters = clusters.clusters
        counts = torch.bincount(clusters, minlength=self.n_clusters).tolist()
        if clusters.shape[0] < 2 or bool((clusters[1:] >= clusters[:-1]).all()):
            # Already sorted (the Trainer sorts training batches): nothing to permute.
            return x, mask, ClusterIndex.grouped(counts, self.n_clusters, clusters), None
        order = torch.argsort(clusters, stable=True)
        # The sorted ids themselves are rebuilt from the counts only if a layer asks for them.
        index = ClusterIndex.grouped(counts, self.n_clusters, device=clusters.device)
        return x.index_select(0, order), mask.index_select(0, order), index, order

    def batch_padding(self, device: torch.device) -> float | None:
        """:attr:`max_padding` when this model's loss lays batches out in padded cluster blocks, else None.

        None when the loss does not group rows by cluster, no layer is cluster-specific,
        :attr:`max_padding` is None, or under CPU autocast (``bf16-mixed``), where oneDNN
        would compile a batched kernel for every new block size.
        """
        if not self.sorts_batches_by_cluster or self.max_padding is None:
            return None
        if device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            return None
        return self.max_padding

    def padded_blocks(self, index: ClusterIndex | None, device: torch.device) -> ClusterIndex | None:
        """``index``'s padded block layout (:meth:`ClusterIndex.padded_blocks`) when it pays, else None.

        None also whenever :meth:`batch_padding` is (see there).
        """
        padding = None if index is None else self.batch_padding(device)
        return None if padding is None else index.padded_blocks(padding, device)

    def encode(
        self, x: torch.Tensor, index: ClusterIndex | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance ``[n, latent_dim]`` each."""
        h = self.encoder(x, index)
        mu, logvar = self.latent(h, index).chunk(2, dim=-1)
        # hardtanh: clamp's values with a one-kernel backward (clamp's backward runs several
        # slow bool ops); the gradients differ only at exactly the bounds.
        return mu, torch.nn.functional.hardtanh(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: torch.Tensor, index: ClusterIndex | None = None) -> torch.Tensor:
        """Raw likelihood parameters ``[..., n, n_params]`` for latents ``[..., n, latent_dim]``."""
        return self.output(self.decoder(z, index), index)

    @staticmethod
    def reparameterise(
        mu: torch.Tensor,
        logvar: torch.Tensor,
        generator: torch.Generator,
        n_samples: int | None = None,
        order: torch.Tensor | None = None,
        blocks: ClusterIndex | None = None,
    ) -> torch.Tensor:
        """``mu + sigma * eps``; with ``n_samples`` a leading sample axis is added.

        ``order`` (from :meth:`group_rows`) says the rows of ``mu`` are the caller's
        rows permuted: ``eps`` is drawn in the caller's order and permuted the same
        way, so each row gets the noise it would get unsorted. ``blocks`` (from
        :meth:`padded_blocks`) says the rows are in padded cluster blocks: ``eps`` is
        drawn for the real rows and padded like them, so the draws do not depend on
        the layout.
        """
        rows = mu.shape if blocks is None else (*mu.shape[:-2], sum(blocks.counts), mu.shape[-1])
        shape = rows if n_samples is None else (n_samples, *rows)
        eps = torch.randn(shape, generator=generator, device=mu.device, dtype=mu.dtype)
        if order is not None:
            eps = eps.index_select(-2, order)
        if blocks is not None:
            eps = blocks.pad(eps)
        return mu + torch.exp(0.5 * logvar) * eps

    # -------------------------------------------------------------- chunking
    @staticmethod
    def _chunks(n_rows: int, n_samples: int) -> list[slice]:
        """Row slices that keep ``rows x samples`` under :data:`ROW_SAMPLE_BUDGET`."""
        step = max(1, ROW_SAMPLE_BUDGET // max(1, n_samples))
        return [slice(s, min(s + step, n_rows)) for s in range(0, n_rows, step)] or [slice(0, 0)]

    def _map_chunks(self, fn: Callable[[slice], torch.Tensor], n_rows: int, n_samples: int, dim: int) -> torch.Tensor:
        return torch.cat([fn(sl) for sl in self._chunks(n_rows, n_samples)], dim=dim)


def unsort_rows(values: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """Undo :meth:`LatentModel.group_rows` on the row axis (-2) of ``values``."""
    if order is None:
        return values
    inverse = torch.empty_like(order)
    inverse.scatter_(0, order, torch.arange(order.numel(), device=order.device))
    return values.index_select(-2, inverse)


def keep_observed(x: torch.Tensor, mask: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """``draws [..., n, d]`` with the cells where ``mask`` is true replaced by ``x``."""
    return torch.where(mask, x, draws)

