"""Shared and cluster-specific layers, and the MLP stacks built from them.

A CISS-VAE layer is either *shared* (one weight matrix for every row) or
*cluster-specific* ("unshared": one weight matrix per missingness cluster, the row's
cluster id picks which). :class:`ClusterLinear` implements both without a Python
loop over rows, choosing between two strategies by size:

* large layers/batches: sort the rows by cluster, run one dense product per cluster
  segment and put the rows back. Measured on CPU (one thread; batch 4096,
  64 -> 128, 4 clusters, forward + backward, best of 15 rounds): ~4.3 ms against
  ~3.5 ms for the shared layer, whereas computing every cluster for every row costs
  ~15.6 ms and gathering a weight matrix per row ~200 ms.
* small ones (``rows * clusters * in * out <= 2**21``): compute every cluster for
  every row in one batched product and pick each row's result; the extra arithmetic
  is cheaper than the fixed cost of sorting and splitting (batch 64, 16 -> 16:
  ~0.14 ms against ~0.47 ms).

The sort (:class:`ClusterIndex`) is computed once per forward pass and reused by
every layer of a stack. Faster still, a caller can sort its batch by cluster once
(:meth:`ClusterIndex.grouped`, as the VAE family's loss does): every layer then
multiplies contiguous row segments, with no gather or scatter at all. At batch 256
(50 -> 128, 4 clusters, forward + backward) the per-layer sort costs 1.16 ms against
0.72 ms for the pre-sorted rows and 0.52 ms for a shared layer.

When the clusters of a sorted batch are about equally large, a caller can also lay the
rows out in *blocks* of equal size, one per cluster, padding each cluster's rows with
copies of its last row (:meth:`ClusterIndex.padded_blocks`). Every cluster-specific
layer is then one batched product (``baddbmm``) over ``[clusters, block rows, in]``,
with torch's own backward, instead of one product per segment in a Python loop; the
padding rows are computed and then left out of every sum by the caller. The VAE family's
loss does this when padding adds at most a fifth of the rows (see
``docs/bench_speed.md``, "Padded cluster blocks"). In training the
:class:`~ciss_autoimpute.training.Trainer` lays out a whole epoch's batches at once
(:func:`block_layout`) and hands each one to the loss already padded, with an index of its
blocks (:meth:`ClusterIndex.laid_out`), so no step builds a layout or pads a batch.

All weights are initialised from an explicit ``torch.Generator``; nothing here reads
the global random state.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "ACTIVATIONS",
    "BlockLayout",
    "ClusterIndex",
    "ClusterLinear",
    "MLP",
    "block_layout",
    "normalise_layer_order",
    "make_activation",
]

#: Activation names accepted by the model families.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}

#: Under autocast on CPU, cluster segments are multiplied over row windows rounded up to
#: this many rows, so that oneDNN compiles bfloat16 kernels for a few shapes only.
AUTOCAST_ROW_QUANTUM = 128

_ORDER_ALIASES = {"shared": "shared", "s": "shared", "unshared": "unshared", "u": "unshared"}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module for ``name`` (one of :data:`ACTIVATIONS`)."""
    if not isinstance(name, str) or name.lower() not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name.lower()]()


def normalise_layer_order(order: Sequence[str], *, n_layers: int, name: str = "layer_order") -> list[str]:
    """Spell a layer order out as ``"shared"`` / ``"unshared"`` entries.

    Parameters
    ----------
    order
        One entry per hidden layer: ``"shared"``/``"s"`` or ``"unshared"``/``"u"``
        (case-insensitive).
    n_layers
        The number of hidden layers the order must describe.
    name
        The argument name used in error messages.

    Returns
    -------
    list of str
        The order with every entry spelled ``"shared"`` or ``"unshared"``.

    Examples
    --------
    >>> normalise_layer_order(["s", "U"], n_layers=2)
    ['shared', 'unshared']
    """
    if isinstance(order, str) or not isinstance(order, Sequence):
        raise TypeError(f"{name} must be a list of 'shared'/'unshared' entries, got {order!r}.")
    out = []
    for entry in order:
        key = entry.lower() if isinstance(entry, str) else entry
        if key not in _ORDER_ALIASES:
            raise ValueError(
                f"{name} entries must be 'shared'/'s' or 'unshared'/'u', got {entry!r} in {list(order)!r}."
            )
        out.append(_ORDER_ALIASES[key])
    if len(out) != n_layers:
        raise ValueError(
            f"{name} has {len(out)} entries {list(order)!r} but there are {n_layers} hidden layers; "
            "give one 'shared'/'unshared' entry per entry of hidden_dims."
        )
    return out


class ClusterIndex:
    """Rows grouped by cluster: computed once, reused by every cluster-specific layer.

    Build it with :meth:`build`, which checks the ids. The constructor takes ids as
    given, with no check and no host synchronisation: it is for ids already checked,
    such as the :class:`~ciss_autoimpute.training.Trainer`'s batches of a dataset it
    validated once. The sort is computed on first use only, since small layers never
    need it.

    Attributes
    ----------
    clusters
        int64 ``[n]`` cluster id per (flattened) row.
    n_clusters
        Number of clusters the ids range over.
    """

    def __init__(self, clusters: torch.Tensor | None, n_clusters: int, device: torch.device | None = None) -> None:
        # None (grouped indexes only): rebuilt from the counts on first use, on ``device``.
        self._clusters = clusters
        self._device = device
        self.n_clusters = n_clusters
        #: True when the rows are already grouped by cluster along the row axis (see
        #: :meth:`grouped`): layers then work on contiguous segments, with no gather.
        self.is_grouped = False
        #: Rows per cluster block when the rows are laid out in equal blocks, one per
        #: cluster (see :meth:`padded_blocks`); None otherwise.
        self.block: int | None = None

    @property
    def is_padded(self) -> bool:
        """True for an index of equal, padded cluster blocks (:meth:`padded_blocks`)."""
        return self.block is not None

    @property
    def clusters(self) -> torch.Tensor:
        """int64 ``[n]`` cluster id per (flattened) row."""
        if self._clusters is None:
            sizes = (self.block,) * self.n_clusters if self.block is not None else self.counts
            counts = torch.tensor(sizes, dtype=torch.long, device=self._device)
            self._clusters = torch.repeat_interleave(torch.arange(self.n_clusters, device=self._device), counts)
        return self._clusters

    @property
    def n_rows(self) -> int:
        """Rows the index describes, read from shapes and counts (no host synchronisation).

        For padded blocks that is the padded layout's rows, ``n_clusters * block``.
        """
        if self.block is not None:
            return self.block * self.n_clusters
        if self._clusters is not None:
            return self._clusters.numel()
        return sum(self.counts)

    @classmethod
    def grouped(
        cls,
        counts: Sequence[int],
        n_clusters: int,
        clusters: torch.Tensor | None = None,
        *,
        device: torch.device | None = None,
    ) -> "ClusterIndex":
        """An index for rows that are already sorted by cluster along the row axis.

        Parameters
        ----------
        counts
            Rows of each cluster, in cluster order (``len == n_clusters``): the rows
            ``[sum(counts[:c]), sum(counts[:c + 1]))`` of every input belong to
            cluster ``c``.
        n_clusters
            Number of clusters.
        clusters
            The sorted cluster ids, if the caller has them; else they are rebuilt from
            ``counts`` (on ``device``) only if something reads :attr:`clusters`. The
            grouped layers read only the counts, so a training step skips that work.
        device
            Where to rebuild the ids when ``clusters`` is not given (default CPU).

        Notes
        -----
        Sorting a batch once per loss and passing this index saves every
        cluster-specific layer its own gather and scatter (forward and backward). The
        index applies to the row axis (``-2``) of inputs with any leading sample
        dimensions, so :meth:`expand` returns it unchanged.
        """
        counts = tuple(int(c) for c in counts)
        if len(counts) != n_clusters or any(c < 0 for c in counts):
            raise ValueError(
                f"counts must hold {n_clusters} non-negative row counts (one per cluster), got {list(counts)}."
            )
        index = cls(None if clusters is None else clusters.reshape(-1).long(), n_clusters, device)
        index.is_grouped = True
        index.__dict__["counts"] = counts
        return index

    def padded_blocks(self, max_padding: float, device: torch.device | None = None) -> "ClusterIndex | None":
        """This grouped index's rows laid out in equal blocks, one per cluster, or None.

        Block ``c`` holds cluster ``c``'s rows followed by copies of its last row up to
        ``block = max(counts)`` rows (a cluster absent from the batch gets copies of a
        neighbouring row). Put a grouped batch in that layout with :meth:`pad` and
        average per-row values over the real rows with :meth:`row_mean`; layers given
        the returned index multiply each block with its cluster's weights in one batched
        product.

        Parameters
        ----------
        max_padding
            Largest share of extra rows accepted: None is returned when
            ``n_clusters * block > (1 + max_padding) * rows``, i.e. when the clusters of
            the batch are too unequal for the padding to pay, and for indexes that are not
            grouped, have one cluster or no rows. Reads only the counts (host integers).
        device
            Where the layout's row indices live (the batch's device); default that of
            this index's ids.
        """
        if not self.is_grouped or self.block is not None or self.n_clusters < 2:
            return None
        counts = self.counts
        n = sum(counts)
        block = max(counts) if counts else 0
        if n == 0 or self.n_clusters * block > (1.0 + max_padding) * n:
            return None
        if device is None:
            device = self._device if self._clusters is None else self._clusters.device
        index = ClusterIndex(None, self.n_clusters, device)
        index.block = block
        index.__dict__["counts"] = counts
        return index

    @functools.cached_property
    def _pad_layout(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(source row of every padded row, ``1 / rows`` on real rows and 0.0 on padding), on the device."""
        counts = self.counts
        starts = [0]
        for c in counts[:-1]:
            starts.append(starts[-1] + c)
        both = torch.tensor([counts, starts], dtype=torch.long, device=self._device)
        size, start = both[0].unsqueeze(1), both[1].unsqueeze(1)
        j = torch.arange(self.block, device=self._device)
        # Row j of block c copies row start_c + min(j, size_c - 1); clamped for empty last clusters.
        source = torch.minimum(j, (size - 1).clamp_(min=0)).add_(start).clamp_(max=sum(counts) - 1).view(-1)
        return source, (j < size).view(-1).float().div_(sum(counts))

    @classmethod
    def laid_out(
        cls, counts: Sequence[int], block: int, source: torch.Tensor, weights: torch.Tensor
    ) -> "ClusterIndex":
        """An index of padded blocks whose layout was built by the caller (see :func:`block_layout`).

        ``counts`` are the batch's rows per cluster, ``block`` the rows per block
        (``max(counts)``), ``source`` the real row each padded row copies and ``weights``
        ``1 / sum(counts)`` on real rows and 0.0 on padding, as :meth:`pad` and
        :meth:`row_mean` use them. No check is made: the :class:`~ciss_autoimpute.training.Trainer`
        lays out a whole epoch at once and hands each batch its slices.
        """
        index = cls(None, len(counts), source.device)
        index.block = int(block)
        index.__dict__["counts"] = tuple(counts)
        index.__dict__["_pad_layout"] = (source, weights)
        return index

    def pad(self, values: torch.Tensor) -> torch.Tensor:
        """Rows (axis -2) of a grouped batch in this index's padded block layout."""
        if self.block is None:
            raise ValueError("pad() needs an index of padded blocks; build one with padded_blocks().")
        return values.index_select(-2, self._pad_layout[0])

    def row_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean over the real rows of per-row ``values [..., n_clusters * block]`` (padding left out)."""
        if self.block is None:
            raise ValueError("row_mean() needs an index of padded blocks; build one with padded_blocks().")
        weights = self._pad_layout[1]
        # One product with weights already divided by the row count: one op (and one autograd
        # node) where a multiply, a sum and a division took three.
        return torch.matmul(values, weights if weights.dtype == values.dtype else weights.to(values.dtype))

    @classmethod
    def build(cls, clusters: torch.Tensor, n_clusters: int) -> "ClusterIndex":
        """Group ``clusters`` (int ``[n]``, values in ``0 .. n_clusters - 1``)."""
        clusters = clusters.reshape(-1).long()
        if clusters.numel():
            lo, hi = (int(v) for v in torch.aminmax(clusters))
            if lo < 0:
                raise ValueError(f"cluster ids must be >= 0, got {lo}; number clusters 0..{n_clusters - 1}.")
            if hi >= n_clusters:
                raise ValueError(
                    f"clusters holds id {hi} but the layer has only {n_clusters} clusters "
                    f"(ids 0..{n_clusters - 1}); rebuild the model with the right n_clusters."
                )
        return cls(clusters, n_clusters)

    @functools.cached_property
    def order(self) -> torch.Tensor:
        """Row permutation that sorts rows by cluster (stable)."""
        return torch.argsort(self.clusters, stable=True)

    @functools.cached_property
    def inverse(self) -> torch.Tensor:
        """The inverse of :attr:`order` (puts sorted rows back)."""
        inverse = torch.empty_like(self.order)
        inverse[self.order] = torch.arange(self.order.numel(), device=self.order.device)
        return inverse

    @functools.cached_property
    def counts(self) -> tuple[int, ...]:
        """Rows per cluster (segment sizes of the sorted rows), ``len == n_clusters``."""
        return tuple(int(c) for c in torch.bincount(self.clusters, minlength=self.n_clusters).tolist())

    def expand(self, repeats: int) -> "ClusterIndex":
        """The index of ``repeats`` stacked copies of the rows (leading sample dims)."""
        if repeats == 1 or self.is_grouped or self.block is not None:
            return self
        return ClusterIndex(self.clusters.repeat(repeats), self.n_clusters)


class BlockLayout(NamedTuple):
    """An epoch of cluster-sorted batches laid out in padded cluster blocks (see :func:`block_layout`).

    ``source``, ``local`` and ``weights`` have one entry per laid-out row: the row of the
    epoch's batch-and-cluster-sorted order it copies, the same row counted from its
    batch's first row, and ``1 / rows of the batch`` on real rows (0.0 on padding and
    in batches left unpadded). Batch ``b`` is the laid-out rows
    ``starts[b] : starts[b] + lengths[b]``; ``blocks[b]`` is its rows per block, 0 when
    the batch is left as it is (its clusters too unequal for the padding to pay).
    """

    source: torch.Tensor
    local: torch.Tensor
    weights: torch.Tensor
    starts: list[int]
    lengths: list[int]
    blocks: list[int]

    def index(self, b: int, counts: Sequence[int], ids: torch.Tensor | None = None) -> ClusterIndex:
        """Batch ``b``'s index: of padded blocks when ``blocks[b]``, else grouped (``ids`` its sorted ids)."""
        block = self.blocks[b]
        if not block:
            return ClusterIndex.grouped(counts, len(counts), ids)
        s, e = self.starts[b], self.starts[b] + self.lengths[b]
        return ClusterIndex.laid_out(counts, block, self.local[s:e], self.weights[s:e])


def block_layout(
    counts: Sequence[Sequence[int]], max_padding: float, device: torch.device | str | None = None
) -> BlockLayout:
    """Lay every batch of an epoch out in padded cluster blocks where that pays.

    Parameters
    ----------
    counts
        Rows of each cluster in each batch (``[batches][clusters]``), the epoch's rows
        sorted by batch and, within a batch, by cluster.
    max_padding
        As in :meth:`ClusterIndex.padded_blocks`: a batch is padded when its
        ``clusters * max(counts)`` rows are at most ``1 + max_padding`` times its rows.
    device
        Where the index tensors are made.

    Returns
    -------
    BlockLayout
        Per batch, the same rows :meth:`ClusterIndex.padded_blocks` and
        :meth:`ClusterIndex.pad` would give it (or the batch unchanged), built for the
        whole epoch in a few vectorised operations: gathering the epoch's rows with
        ``source`` once replaces a layout and two pads per training step.

    Examples
    --------
    >>> layout = block_layout([[2, 1], [3, 0]], max_padding=0.5)
    >>> layout.source.tolist(), layout.blocks
    ([0, 1, 2, 2, 3, 4, 5], [2, 0])
    """
    n_clusters = len(counts[0]) if counts else 0
    blocks: list[int] = []
    lengths: list[int] = []
    group_rows: list[int] = []
    for batch in counts:
        n, block = sum(batch), max(batch, default=0)
        padded = n_clusters >= 2 and n > 0 and n_clusters * block <= (1.0 + max_padding) * n
        blocks.append(block if padded else 0)
        lengths.append(n_clusters * block if padded else n)
        group_rows.extend([block] * n_clusters if padded else batch)
    starts = [0]
    for length in lengths[:-1]:
        starts.append(starts[-1] + length)
    sizes = torch.tensor(counts, dtype=torch.long, device=device).view(len(counts), n_clusters)
    rows = sizes.sum(1)
    # Per (batch, cluster) group: its first row counted from the batch's first row, the
    # batch's first row in the sorted epoch, and the batch's rows.
    group_start = (sizes.cumsum(1) - sizes).view(-1)
    batch_start = (rows.cumsum(0) - rows).repeat_interleave(n_clusters)
    batch_rows = rows.repeat_interleave(n_clusters)
    out_rows = torch.tensor(group_rows, dtype=torch.long, device=device)
    group = torch.repeat_interleave(torch.arange(out_rows.numel(), device=device), out_rows)
    j = torch.arange(group.numel(), device=device) - (out_rows.cumsum(0) - out_rows)[group]
    size = sizes.view(-1)[group]
    # Row j of a group copies the group's row min(j, size - 1); an empty group copies the row
    # after it, the last row of the batch at most (as ClusterIndex.pad does).
    local = torch.minimum(torch.minimum(j, (size - 1).clamp_(min=0)) + group_start[group], batch_rows[group] - 1)
    weights = (j < size).float().div_(batch_rows[group])
    padded_batch = torch.tensor([b > 0 for b in blocks], dtype=torch.bool, device=device)
    weights.mul_(padded_batch.repeat_interleave(n_clusters)[group])
    return BlockLayout(local + batch_start[group], local, weights, starts, lengths, blocks)


def _uniform_(tensor: torch.Tensor, bound: float, generator: torch.Generator) -> None:
    with torch.no_grad():
        nn.init.uniform_(tensor, -bound, bound, generator=generator)


class ClusterLinear(nn.Module):
    """A linear layer that is either shared or specific to each cluster.

    Parameters
    ----------
    in_features, out_features
        Input and output widths.
    n_clusters
        Number of clusters the cluster ids in :meth:`forward` range over.
    shared
        True: one weight ``[out, in]`` and bias ``[out]`` for all rows. False: one
        weight per cluster, ``weight [C, in, out]`` and ``bias [C, out]``. With a single
        cluster a cluster-specific layer *is* a shared layer and is stored as one.
    float_output
        Return float32 even when the product ran in a lower precision (under
        ``torch.autocast``, ``TrainConfig.precision="bf16-mixed"``). Set on the layers
        whose outputs feed likelihoods, bounds or imputations; hidden layers pass
        bfloat16 on to the next product. A no-op in float32.

    Notes
    -----
    The cluster-specific path picks its strategy per call (see the module notes);
    ``all_clusters_max_work`` is the size threshold (``rows * C * in * out``).

    Weights follow PyTorch's default ``nn.Linear`` scheme (uniform in
    ``+-1/sqrt(in_features)``), drawn from the generator given to
    :meth:`reset_parameters`; until then they are zero.

    Examples
    --------
    >>> layer = ClusterLinear(3, 2, n_clusters=2, shared=False)
    >>> layer.reset_parameters(torch.Generator().manual_seed(0))
    >>> layer(torch.ones(4, 3), torch.tensor([0, 1, 1, 0])).shape
    torch.Size([4, 2])
    """

    #: Largest ``rows * n_clusters * in * out`` computed by the all-clusters product.
    all_clusters_max_work: int = 1 << 21

    def __init__(
        self, in_features: int, out_features: int, n_clusters: int = 1, shared: bool = True, *,
        float_output: bool = False,
    ) -> None:
        super().__init__()
        for label, v in (("in_features", in_features), ("out_features", out_features), ("n_clusters", n_clusters)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ClusterLinear {label} must be a positive integer, got {v!r}.")
        self.in_features = in_features
        self.out_features = out_features
        self.n_clusters = n_clusters
        self.shared = bool(shared) or n_clusters == 1
        self.float_output = bool(float_output)
        if self.shared:
            self.weight = nn.Parameter(torch.zeros(out_features, in_features))
            self.bias = nn.Parameter(torch.zeros(out_features))
        else:
            self.weight = nn.Parameter(torch.zeros(n_clusters, in_features, out_features))
            self.bias = nn.Parameter(torch.zeros(n_clusters, out_features))

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Draw fresh weights and biases from ``generator``."""
        bound = 1.0 / math.sqrt(self.in_features)
        _uniform_(self.weight, bound, generator)
        _uniform_(self.bias, bound, generator)

    def extra_repr(self) -> str:
        kind = "shared" if self.shared else f"unshared, n_clusters={self.n_clusters}"
        return f"in_features={self.in_features}, out_features={self.out_features}, {kind}"

    def forward(self, x: torch.Tensor, clusters: torch.Tensor | ClusterIndex | None = None) -> torch.Tensor:
        """Apply the layer.

        Parameters
        ----------
        x
            ``[..., n, in_features]``.
        clusters
            Cluster id per row, int ``[n]`` (broadcast over leading dimensions of
            ``x``), or a :class:`ClusterIndex` over the flattened rows of ``x``.
            Ignored by a shared layer.

        Returns
        -------
        torch.Tensor
            ``[..., n, out_features]``.
        """
        out = self._product(x, clusters)
        # Float32 products skip the call (a no-op .float() still costs a dispatch).
        return out.float() if self.float_output and out.dtype != torch.float32 else out

    def _product(self, x: torch.Tensor, clusters: torch.Tensor | ClusterIndex | None) -> torch.Tensor:
        if self.shared:
            return F.linear(x, self.weight, self.bias)
        if clusters is None:
            raise ValueError("A cluster-specific ClusterLinear needs the cluster id of each row; pass clusters=.")
        lead = x.shape[:-1]
        if isinstance(clusters, ClusterIndex) and clusters.block is not None:
            return self._forward_blocks(x, clusters)
        if isinstance(clusters, ClusterIndex) and clusters.is_grouped:
            return self._forward_grouped(x, clusters)
        flat = x.reshape(-1, self.in_features)
        index = clusters if isinstance(clusters, ClusterIndex) else _index_for(clusters, lead, self.n_clusters)
        if index.clusters.numel() != flat.shape[0]:
            raise ValueError(
                f"clusters describes {index.clusters.numel()} rows but x has {flat.shape[0]} "
                f"(shape {tuple(x.shape)}); pass one cluster id per row."
            )
        n_rows = flat.shape[0]
        if n_rows == 0:
            return x.new_zeros(*lead, self.out_features)
        if n_rows * self.n_clusters * self.in_features * self.out_features <= self.all_clusters_max_work:
            # Small: every cluster's product for every row, then each row's own.
            every = torch.baddbmm(self.bias.unsqueeze(1), flat.unsqueeze(0).expand(self.n_clusters, -1, -1), self.weight)
            out = every[index.clusters, torch.arange(n_rows, device=flat.device)]
            return out.reshape(*lead, self.out_features)
        # Large: one dense product per cluster segment of the cluster-sorted rows.
        out = self._segment_products(flat.index_select(0, index.order), index.counts)
        return out.index_select(0, index.inverse).reshape(*lead, self.out_features)

    def _segment_products(self, rows: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
        """``rows [n, in]`` sorted by cluster, ``counts`` rows per cluster: each segment's product.

        Under ``torch.autocast`` on CPU (``precision="bf16-mixed"``) each segment is padded with
        zero rows to a multiple of :data:`AUTOCAST_ROW_QUANTUM` and the product's padding
        rows are dropped. oneDNN compiles a kernel for every new bfloat16 shape (~10 ms
        each), and the segment sizes change with every batch; rounded, a handful of
        shapes recur and their kernels are cached. The zero rows add nothing to the
        weight gradient. Without gradients the window borrows neighbouring rows instead
        of copying the segment. Float32 products run on the exact segments.
        """
        if not torch.is_autocast_enabled(rows.device.type) and rows.dtype == self.weight.dtype:
            return _SegmentLinear.apply(rows, self.weight, self.bias, tuple(counts))
        # oneDNN (CPU) compiles per shape; GPU libraries do not, so exact segments there.
        cpu_autocast = rows.device.type == "cpu" and torch.is_autocast_enabled("cpu")
        # unbind: one backward op (a stack) for all clusters, where indexing weight[c]
        # would allocate and add a zero-padded [C, in, out] gradient per cluster.
        weights, biases = self.weight.unbind(0), self.bias.unbind(0)
        quantum = AUTOCAST_ROW_QUANTUM if cpu_autocast else 0
        outs = []
        # Without gradients, a window of neighbouring rows replaces the padded copy.
        borrow = quantum and not (torch.is_grad_enabled() and (rows.requires_grad or self.weight.requires_grad))
        n, start = rows.shape[0], 0
        # split, not slicing: its backward is one concatenation, where each slice's would
        # allocate and add a zero gradient of the whole matrix.
        for c, seg in enumerate(rows.split_with_sizes(list(counts))):
            size = seg.shape[0]
            start += size
            if size == 0:
                continue
            if quantum and size % quantum:
                width = -(-size // quantum) * quantum
                if borrow and width <= n:
                    first = min(start - size, n - width)
                    block = torch.addmm(biases[c], rows[first:first + width], weights[c])
                    outs.append(block[start - size - first:start - first])
                    continue
                padded = F.pad(seg, (0, 0, 0, width - size))
                outs.append(torch.addmm(biases[c], padded, weights[c])[:size])
            else:
                # A row range of a contiguous matrix is contiguous: no copy before the product.
                outs.append(torch.addmm(biases[c], seg, weights[c]))
        if not outs:
            return rows.new_zeros(0, self.out_features)
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def _forward_blocks(self, x: torch.Tensor, index: ClusterIndex) -> torch.Tensor:
        """Rows in equal cluster blocks along axis -2: one batched product for all clusters."""
        block = index.block
        assert block is not None
        if x.dim() < 2 or x.shape[-2] != block * self.n_clusters:
            raise ValueError(
                f"the cluster index describes {self.n_clusters} blocks of {block} rows but x has shape "
                f"{tuple(x.shape)}; lay the rows out with ClusterIndex.pad()."
            )
        lead = x.shape[:-2]
        blocks = x.reshape(*lead, self.n_clusters, block, self.in_features)
        if not lead:
            out = torch.baddbmm(self.bias.unsqueeze(1), blocks, self.weight)
        else:
            out = torch.matmul(blocks, self.weight) + self.bias.unsqueeze(1)
        return out.reshape(*lead, self.n_clusters * block, self.out_features)

    def _forward_grouped(self, x: torch.Tensor, index: ClusterIndex) -> torch.Tensor:
        """Rows already sorted by cluster along axis -2: one product per segment."""
        counts = index.counts
        if x.dim() < 2 or x.shape[-2] != sum(counts):
            raise ValueError(
                f"the grouped cluster index describes {sum(counts)} rows but x has shape {tuple(x.shape)}; "
                "pass x sorted by cluster with one row per counted row."
            )
        if x.dim() == 2:
            return self._segment_products(x, counts)
        weights, biases = self.weight.unbind(0), self.bias.unbind(0)
        outs = []
        for c, seg in enumerate(x.split_with_sizes(list(counts), dim=-2)):
            if seg.shape[-2] == 0:
                continue
            outs.append(torch.matmul(seg, weights[c]) + biases[c])
        if not outs:
            return x.new_zeros(*x.shape[:-1], self.out_features)
        return torch.cat(outs, dim=-2) if len(outs) > 1 else outs[0]


class _SegmentLinear(torch.autograd.Function):
    """Cluster-specific products over the row segments of cluster-sorted rows, as one graph node.

    ``rows [n, in]`` (sorted by cluster), ``weight [C, in, out]``, ``bias [C, out]``,
    ``counts`` rows per cluster. The forward writes each segment's ``addmm`` into its
    rows of one output, and the backward each segment's input gradient into its rows
    of one buffer and each cluster's weight gradient into its slice of one
    ``[C, in, out]`` tensor. The same products as one ``addmm`` per segment joined by
    ``cat`` (the values are identical), without the concatenations, the per-cluster
    weight views and their stacked gradients, and one autograd node per segment.
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,  # type: ignore[override]
                counts: tuple[int, ...]) -> torch.Tensor:
        rows = rows.contiguous()
        out = rows.new_empty(rows.shape[0], weight.shape[2])
        # split_with_sizes / unbind: every segment's view in one call (this loop's Python cost
        # counts; Tensor.split is a Python wrapper that costs twice split_with_sizes).
        for size, x, y, w, b in zip(counts, rows.split_with_sizes(counts), out.split_with_sizes(counts),
                                    weight.unbind(0), bias.unbind(0)):
            if size:
                torch.addmm(b, x, w, out=y)
        ctx.save_for_backward(rows, weight)
        ctx.counts = counts
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        rows, weight = ctx.saved_tensors
        counts = ctx.counts
        grad = grad.contiguous()
        need_rows, need_weight, need_bias, _ = ctx.needs_input_grad
        n_clusters = weight.shape[0]
        grad_rows = rows.new_empty(rows.shape) if need_rows else None
        grad_weight = torch.empty_like(weight) if need_weight else None
        grad_bias = weight.new_empty(n_clusters, weight.shape[2]) if need_bias else None
        none = (None,) * n_clusters
        # The transposed segments and weights as views of one call each, not one .t() per cluster.
        for size, g, xt, wt, gx, gw, gb in zip(
            counts, grad.split_with_sizes(counts), rows.t().split_with_sizes(counts, 1),
            weight.transpose(1, 2).unbind(0),
            none if grad_rows is None else grad_rows.split_with_sizes(counts),
            none if grad_weight is None else grad_weight.unbind(0),
            none if grad_bias is None else grad_bias.unbind(0),
        ):
            if not size:
                # A cluster absent from the batch gets a zero gradient.
                for buffer in (gw, gb):
                    if buffer is not None:
                        buffer.zero_()
                continue
            if gx is not None:
                torch.mm(g, wt, out=gx)
            if gw is not None:
                torch.mm(xt, g, out=gw)
            if gb is not None:
                torch.sum(g, 0, out=gb)
        return grad_rows, grad_weight, grad_bias, None


def _index_for(clusters: torch.Tensor, lead: torch.Size, n_clusters: int) -> ClusterIndex:
    """Index for cluster ids ``[n]`` broadcast against rows of shape ``lead`` (``[..., n]``)."""
    if not isinstance(clusters, torch.Tensor):
        raise TypeError(f"clusters must be a torch.Tensor of cluster ids, got {type(clusters).__name__}.")
    if clusters.dim() == 1 and len(lead) >= 1 and clusters.shape[0] == lead[-1]:
        clusters = clusters.expand(*lead)
    elif tuple(clusters.shape) != tuple(lead):
        raise ValueError(
            f"clusters has shape {tuple(clusters.shape)} but x has rows of shape {tuple(lead)}; "
            "pass one cluster id per row."
        )
    return ClusterIndex.build(clusters, n_clusters)


class MLP(nn.Module):
    """A stack of :class:`ClusterLinear` blocks with an activation after each.

    Parameters
    ----------
    in_features
        Input width.
    widths
        Output width of each block.
    order
        ``"shared"``/``"unshared"`` (or ``"s"``/``"u"``) per block, in any order;
        ``None`` means all shared.
    n_clusters
        Number of clusters for the unshared blocks.
    activation
        Name of the activation placed after every block (see :data:`ACTIVATIONS`).

    Examples
    --------
    >>> mlp = MLP(4, [8, 6], order=["u", "s"], n_clusters=3)
    >>> mlp.reset_parameters(torch.Generator().manual_seed(0))
    >>> mlp(torch.zeros(5, 4), torch.tensor([0, 1, 2, 1, 0])).shape
    torch.Size([5, 6])
    """

    def __init__(
        self,
        in_features: int,
        widths: Sequence[int],
        order: Sequence[str] | None = None,
        *,
        n_clusters: int = 1,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        order = ["shared"] * len(widths) if order is None else normalise_layer_order(order, n_layers=len(widths))
        self.order = order
        self.n_clusters = n_clusters
        self.out_features = widths[-1] if widths else in_features
        self.blocks = nn.ModuleList()
        self.activations = nn.ModuleList()
        prev = in_features
        for width, kind in zip(widths, order):
            self.blocks.append(ClusterLinear(prev, width, n_clusters, shared=kind == "shared"))
            self.activations.append(make_activation(activation))
            prev = width

    @property
    def needs_clusters(self) -> bool:
        """True when some block is cluster-specific."""
        return any(not b.shared for b in self.blocks)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Re-draw every block's weights from ``generator``, first block first."""
        for block in self.blocks:
            block.reset_parameters(generator)

    def forward(self, x: torch.Tensor, clusters: torch.Tensor | ClusterIndex | None = None) -> torch.Tensor:
        """Run ``x`` ``[..., n, in]`` through the blocks; ``clusters`` as in :class:`ClusterLinear`."""
        if isinstance(clusters, torch.Tensor) and self.needs_clusters:
            # Sort the rows by cluster once for all blocks.
            clusters = _index_for(clusters, x.shape[:-1], self.n_clusters)
        for block, act in zip(self.blocks, self.activations):
            x = act(block(x, clusters))
        return x
