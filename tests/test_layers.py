"""Shared and cluster-specific layers and the MLP stacks built from them."""

from __future__ import annotations

import math

import pytest
import torch

from ciss_autoimpute.models.layers import (
    MLP,
    ClusterIndex,
    ClusterLinear,
    block_layout,
    _SegmentLinear,
    make_activation,
    normalise_layer_order,
)

# The two strategies of the cluster-specific path: per-segment products (0) and the
# all-clusters batched product (large threshold).
STRATEGIES = {"segments": 0, "all_clusters": 1 << 40}


def _layer(in_f, out_f, n_clusters, shared, seed=0, strategy="segments"):
    layer = ClusterLinear(in_f, out_f, n_clusters, shared=shared)
    layer.reset_parameters(torch.Generator().manual_seed(seed))
    layer.all_clusters_max_work = STRATEGIES[strategy]
    return layer


def _naive(layer, x, clusters):
    """Row by row: x_i @ W[c_i] + b[c_i]."""
    rows = [x[i] @ layer.weight[int(c)] + layer.bias[int(c)] for i, c in enumerate(clusters)]
    return torch.stack(rows)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cluster_specific_output_matches_per_row_computation(strategy):
    g = torch.Generator().manual_seed(1)
    layer = _layer(5, 3, 4, shared=False, strategy=strategy)
    x = torch.randn(50, 5, generator=g)
    clusters = torch.randint(0, 4, (50,), generator=g)
    torch.testing.assert_close(layer(x, clusters), _naive(layer, x, clusters))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cluster_specific_handles_leading_sample_dims(strategy):
    g = torch.Generator().manual_seed(2)
    layer = _layer(4, 2, 3, shared=False, strategy=strategy)
    x = torch.randn(6, 10, 4, generator=g)  # [K, n, in]
    clusters = torch.randint(0, 3, (10,), generator=g)
    out = layer(x, clusters)
    assert out.shape == (6, 10, 2)
    for k in range(6):
        torch.testing.assert_close(out[k], _naive(layer, x[k], clusters))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_gradient_reaches_only_the_rows_clusters(strategy):
    layer = _layer(4, 3, 3, shared=False, strategy=strategy)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(3))
    clusters = torch.tensor([0, 2, 2, 0, 2])  # cluster 1 absent
    layer(x, clusters).square().sum().backward()
    assert layer.weight.grad[1].abs().sum() == 0 and layer.bias.grad[1].abs().sum() == 0
    assert layer.weight.grad[0].abs().sum() > 0 and layer.weight.grad[2].abs().sum() > 0

    # One row: only its own cluster's slice gets a gradient, and it is x^T * dL/dy.
    layer.zero_grad()
    y = layer(x[1:2], clusters[1:2])
    y.sum().backward()
    expected = x[1].unsqueeze(1).expand(4, 3)
    torch.testing.assert_close(layer.weight.grad[2], expected)
    assert layer.weight.grad[[0, 1]].abs().sum() == 0


def test_segment_and_all_cluster_strategies_agree_in_gradients():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, 6, generator=g)
    clusters = torch.randint(0, 3, (40,), generator=g)
    grads = []
    for strategy in STRATEGIES:
        layer = _layer(6, 5, 3, shared=False, strategy=strategy)
        layer(x, clusters).tanh().sum().backward()
        grads.append((layer.weight.grad, layer.bias.grad))
    torch.testing.assert_close(grads[0], grads[1])


def test_shared_layer_is_a_plain_linear_map_and_ignores_clusters():
    layer = _layer(4, 2, 3, shared=True)
    assert layer.weight.shape == (2, 4)
    x = torch.randn(7, 4, generator=torch.Generator().manual_seed(5))
    expected = x @ layer.weight.T + layer.bias
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer(x, torch.zeros(7, dtype=torch.long)), expected)


def test_single_cluster_unshared_layer_is_stored_as_shared():
    layer = ClusterLinear(3, 2, n_clusters=1, shared=False)
    assert layer.shared and layer.weight.shape == (2, 3)


def test_initialisation_comes_only_from_the_generator():
    state = torch.random.get_rng_state()
    a = _layer(8, 4, 2, shared=False, seed=7)
    b = _layer(8, 4, 2, shared=False, seed=7)
    c = _layer(8, 4, 2, shared=False, seed=8)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert not torch.equal(a.weight, c.weight)
    bound = 1 / math.sqrt(8)
    assert a.weight.abs().max() <= bound and a.weight.abs().max() > bound / 2


def test_cluster_index_is_reusable_across_layers():
    g = torch.Generator().manual_seed(6)
    mlp = MLP(4, [6, 5, 3], order=["u", "s", "unshared"], n_clusters=3)
    mlp.reset_parameters(g)
    x = torch.randn(20, 4, generator=g)
    clusters = torch.randint(0, 3, (20,), generator=g)
    index = ClusterIndex.build(clusters, 3)
    assert sum(index.counts) == 20 and len(index.counts) == 3
    torch.testing.assert_close(mlp(x, clusters), mlp(x, index))
    # The expanded index serves [K, n] inputs.
    xk = torch.randn(2, 20, 4, generator=g)
    torch.testing.assert_close(mlp(xk, index.expand(2)), mlp(xk, clusters))


def test_mlp_follows_any_layer_order():
    g = torch.Generator().manual_seed(7)
    mlp = MLP(3, [4, 4, 2], order=["s", "U", "shared"], n_clusters=2, activation="tanh")
    mlp.reset_parameters(g)
    assert mlp.order == ["shared", "unshared", "shared"]
    assert [b.shared for b in mlp.blocks] == [True, False, True]
    assert mlp.needs_clusters
    x = torch.randn(5, 3, generator=g)
    clusters = torch.tensor([0, 1, 0, 1, 1])
    # Manual composition: block, activation, block, activation, ...
    h = x
    for block in mlp.blocks:
        h = torch.tanh(block(h, clusters))
    torch.testing.assert_close(mlp(x, clusters), h)
    # Rows of different clusters see different weights in the unshared block.
    same_x = x[:1].expand(2, 3)
    out = mlp(same_x, torch.tensor([0, 1]))
    assert not torch.allclose(out[0], out[1])


def test_all_shared_mlp_needs_no_clusters():
    mlp = MLP(3, [4], n_clusters=5)
    mlp.reset_parameters(torch.Generator().manual_seed(0))
    assert not mlp.needs_clusters
    assert mlp(torch.zeros(2, 3)).shape == (2, 4)


def test_layer_order_validation():
    assert normalise_layer_order(["S", "u"], n_layers=2) == ["shared", "unshared"]
    with pytest.raises(ValueError, match="'shared'/'s' or 'unshared'/'u', got 'x'"):
        normalise_layer_order(["s", "x"], n_layers=2)
    with pytest.raises(ValueError, match="has 1 entries .* 2 hidden layers"):
        normalise_layer_order(["s"], n_layers=2)
    with pytest.raises(TypeError, match="must be a list"):
        normalise_layer_order("shared", n_layers=1)
    with pytest.raises(ValueError, match="Unknown activation 'swish'"):
        make_activation("swish")


def test_bad_cluster_inputs_raise():
    layer = _layer(3, 2, 2, shared=False)
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="needs the cluster id of each row"):
        layer(x)
    with pytest.raises(ValueError, match="holds id 2 but the layer has only 2 clusters"):
        layer(x, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="must be >= 0"):
        layer(x, torch.tensor([0, -1, 1, 0]))
    with pytest.raises(ValueError, match="clusters has shape \\(3,\\)"):
        layer(x, torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="positive integer"):
        ClusterLinear(0, 2)


def test_grouped_index_matches_per_row_computation_and_gradients():
    # Rows sorted by cluster once (as LatentModel.group_rows does): every layer works on
    # contiguous segments, with the same outputs and gradients as the per-row maths.
    g = torch.Generator().manual_seed(8)
    layer = _layer(5, 4, 3, shared=False, seed=3)
    clusters = torch.tensor([2, 0, 2, 2, 0, 2, 0])  # cluster 1 has no rows
    order = torch.argsort(clusters, stable=True)
    x = torch.randn(7, 5, generator=g)
    xs = x.index_select(0, order)
    index = ClusterIndex.grouped(torch.bincount(clusters, minlength=3).tolist(), 3)
    assert index.is_grouped and index.counts == (3, 0, 4)
    assert index.clusters.tolist() == [0, 0, 0, 2, 2, 2, 2]
    out = layer(xs, index)
    torch.testing.assert_close(out, _naive(layer, xs, clusters.index_select(0, order)))
    # Gradients: the same as the unsorted (gather / scatter) path on the same rows.
    out.square().sum().backward()
    grads = (layer.weight.grad.clone(), layer.bias.grad.clone())
    layer.zero_grad()
    layer(x, clusters).square().sum().backward()
    torch.testing.assert_close(grads[0], layer.weight.grad)
    torch.testing.assert_close(grads[1], layer.bias.grad)
    assert torch.count_nonzero(grads[0][1]) == 0  # the empty cluster's weights get nothing
    # Leading sample dims: the index applies to the row axis, expand() is a no-op.
    xk = torch.randn(3, 7, 5, generator=g)
    assert index.expand(3) is index
    torch.testing.assert_close(layer(xk, index), torch.stack([_naive(layer, xk[k], index.clusters) for k in range(3)]))
    # A whole MLP shares the one grouped index.
    mlp = MLP(5, [6, 4], order=["u", "u"], n_clusters=3)
    mlp.reset_parameters(torch.Generator().manual_seed(1))
    torch.testing.assert_close(mlp(xs, index), mlp(x, clusters).index_select(0, order))


def test_grouped_index_checks_its_counts_and_rows():
    with pytest.raises(ValueError, match="counts must hold 3 non-negative"):
        ClusterIndex.grouped([2, 1], 3)
    with pytest.raises(ValueError, match="counts must hold 2 non-negative"):
        ClusterIndex.grouped([2, -1], 2)
    layer = _layer(3, 2, 2, shared=False)
    with pytest.raises(ValueError, match="describes 3 rows but x has shape"):
        layer(torch.zeros(4, 3), ClusterIndex.grouped([1, 2], 2))
    # No rows at all: an empty result of the right width.
    assert layer(torch.zeros(0, 3), ClusterIndex.grouped([0, 0], 2)).shape == (0, 2)


def test_segment_products_are_one_node_with_exact_gradients():
    # The float32 segment path runs as one autograd node that writes every segment's product
    # (and, backwards, every segment's gradients) into one buffer: the values must be those of
    # one addmm per segment joined by cat, bit for bit, and the gradients check numerically.
    g = torch.Generator().manual_seed(11)
    layer = _layer(6, 5, 4, shared=False, seed=2)
    counts = (3, 0, 5, 2)  # cluster 1 absent from the batch
    x = torch.randn(10, 6, generator=g, requires_grad=True)
    out = layer(x, ClusterIndex.grouped(counts, 4))
    assert out.grad_fn is not None and "SegmentLinear" in type(out.grad_fn).__name__
    weight, bias = layer.weight.detach(), layer.bias.detach()
    want = torch.cat([torch.addmm(bias[c], seg, weight[c]) for c, seg in enumerate(x.detach().split(counts)) if len(seg)])
    assert torch.equal(out, want)
    upstream = torch.randn(10, 5, generator=g)
    out.backward(upstream)
    assert torch.count_nonzero(layer.weight.grad[1]) == 0 and torch.count_nonzero(layer.bias.grad[1]) == 0
    start = 0
    for c, size in enumerate(counts):
        rows, up = x.detach()[start:start + size], upstream[start:start + size]
        if size:
            assert torch.equal(layer.weight.grad[c], rows.t() @ up)
        torch.testing.assert_close(x.grad[start:start + size], up @ weight[c].t())
        start += size
    # Finite differences in float64, through the input, the weights and the biases.
    xd = torch.randn(7, 4, dtype=torch.float64, generator=g, requires_grad=True)
    wd = torch.randn(3, 4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    bd = torch.randn(3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w, b: _SegmentLinear.apply(a, w, b, (2, 0, 5)), (xd, wd, bd))
    # No gradient wanted for the input (first layer of a stack): none computed.
    layer.zero_grad()
    layer(x.detach(), ClusterIndex.grouped(counts, 4)).sum().backward()
    torch.testing.assert_close(layer.bias.grad[2], torch.full((5,), 5.0))


def test_padded_blocks_lay_out_equal_cluster_blocks():
    # Each cluster's rows, then copies of its last row up to the largest cluster's size;
    # an absent cluster (here the second and the last) gets copies of a neighbouring row.
    index = ClusterIndex.grouped((3, 0, 4, 0), 4)
    assert index.padded_blocks(max_padding=10.0) is not None
    blocks = index.padded_blocks(max_padding=3.0)
    assert blocks.is_padded and not blocks.is_grouped and blocks.block == 4
    assert blocks.counts == (3, 0, 4, 0) and blocks.n_rows == 16
    assert blocks.clusters.tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    rows = torch.arange(7.0).unsqueeze(1)
    assert blocks.pad(rows).squeeze(1).tolist() == [0, 1, 2, 2, 3, 3, 3, 3, 3, 4, 5, 6, 6, 6, 6, 6]
    # Leading sample axes: the layout applies to the row axis (-2).
    assert blocks.pad(torch.arange(14.0).view(2, 7, 1)).shape == (2, 16, 1)
    # The mean over rows leaves the padding out: the real rows' values only.
    values = torch.tensor([1.0, 2, 3, 100, 100, 100, 100, 100, 4, 5, 6, 7, 100, 100, 100, 100])
    assert blocks.row_mean(values).item() == pytest.approx(28 / 7)
    # Too unequal (16 rows for 7 is 129 % padding), one cluster, not grouped, or no rows: None.
    assert index.padded_blocks(max_padding=1.2) is None
    assert ClusterIndex.grouped((5,), 1).padded_blocks(1.0) is None
    assert ClusterIndex(torch.tensor([0, 1, 1]), 2).padded_blocks(1.0) is None
    assert ClusterIndex.grouped((0, 0), 2).padded_blocks(1.0) is None
    assert ClusterIndex.grouped((50, 55, 60), 3).padded_blocks(0.2).block == 60  # 180 for 165 rows: 9 %
    assert ClusterIndex.grouped((50, 30, 60), 3).padded_blocks(0.2) is None  # 180 for 140: 29 %
    with pytest.raises(ValueError, match="padded_blocks"):
        index.pad(rows)
    with pytest.raises(ValueError, match="padded_blocks"):
        index.row_mean(values)


def test_block_layout_lays_out_a_whole_epoch_as_padded_blocks_would_each_batch():
    # Four batches of rows sorted by cluster: equal enough (padded), unequal (left as is),
    # with an absent middle cluster (padded) and with an absent last one (unequal). Each batch's slice of the
    # epoch layout must hold the rows, index, noise layout and weights that padded_blocks()
    # and pad() give that batch alone.
    counts = [[3, 2, 3], [6, 1, 1], [3, 0, 3], [3, 1, 0]]
    layout = block_layout(counts, max_padding=0.5)
    assert layout.blocks == [3, 0, 3, 0] and layout.lengths == [9, 8, 9, 4]
    assert layout.starts == [0, 9, 17, 26]
    assert layout.source.tolist() == [0, 1, 2, 3, 4, 4, 5, 6, 7,  # 3 / 2 (+1 copy) / 3
                                      *range(8, 16),  # 8 rows, 6 / 1 / 1: 112 % padding, unpadded
                                      16, 17, 18, 19, 19, 19, 19, 20, 21,  # the empty cluster copies the next row
                                      22, 23, 24, 25]  # 3 / 1 / 0 would be 9 rows for 4: unpadded
    offset = 0
    for b, batch in enumerate(counts):
        n = sum(batch)
        rows = torch.arange(offset, offset + n, dtype=torch.float32).unsqueeze(1)
        ids = torch.repeat_interleave(torch.arange(3), torch.tensor(batch))
        index = layout.index(b, batch, ids)
        alone = ClusterIndex.grouped(batch, 3).padded_blocks(0.5)
        s, e = layout.starts[b], layout.starts[b] + layout.lengths[b]
        if alone is None:
            assert index.is_grouped and not index.is_padded and index.counts == tuple(batch)
            assert layout.source[s:e].tolist() == rows.squeeze(1).long().tolist()
            assert not layout.weights[s:e].any()
        else:
            assert index.is_padded and index.block == alone.block and index.counts == alone.counts
            assert layout.source[s:e].tolist() == alone.pad(rows).squeeze(1).long().tolist()
            assert torch.equal(index.pad(rows), alone.pad(rows))
            values = torch.rand(e - s, generator=torch.Generator().manual_seed(b))
            assert torch.equal(index._pad_layout[1], alone._pad_layout[1])
            torch.testing.assert_close(index.row_mean(values), alone.row_mean(values))
        offset += n
    # 2 / 2 / 0: 6 rows for 4, exactly the 50 % allowed; the empty last block copies the last row.
    wide = block_layout([[2, 2, 0]], max_padding=0.5)
    assert wide.blocks == [2] and wide.source.tolist() == [0, 1, 2, 3, 3, 3]
    assert wide.weights.tolist() == [0.25] * 4 + [0.0] * 2


def test_padded_blocks_give_the_segment_products_and_their_gradients():
    # One batched product over the blocks: on the real rows the same values as the per-segment
    # products; gradients through the real rows equal theirs, and padding adds nothing.
    g = torch.Generator().manual_seed(12)
    layer = _layer(6, 5, 4, shared=False, seed=4)
    counts = (3, 0, 5, 2)
    index = ClusterIndex.grouped(counts, 4)
    blocks = index.padded_blocks(max_padding=4.0)
    x = torch.randn(10, 6, generator=g, requires_grad=True)
    out = layer(x, index)
    padded = layer(blocks.pad(x), blocks)
    assert padded.shape == (20, 5)
    assert "Baddbmm" in type(padded.grad_fn.next_functions[0][0]).__name__  # under the final view
    real = padded.view(4, 5, 5)
    torch.testing.assert_close(torch.cat([real[c, :size] for c, size in enumerate(counts)]), out)
    upstream = torch.randn(10, 5, generator=g)
    want = torch.autograd.grad(out, (x, layer.weight, layer.bias), upstream)
    # The upstream gradient of a padded layout: the real rows', zero on the padding.
    up_blocks = torch.zeros(4, 5, 5)
    for c, seg in enumerate(upstream.split(counts)):
        up_blocks[c, :len(seg)] = seg
    got = torch.autograd.grad(padded, (x, layer.weight, layer.bias), up_blocks.view(20, 5))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    # Leading sample axes run as one broadcast product.
    xk = torch.randn(3, 10, 6, generator=g)
    torch.testing.assert_close(layer(blocks.pad(xk), blocks).view(3, 4, 5, 5)[:, 2, :5], layer(xk, index)[:, 3:8])
    # A shared layer ignores the layout; a wrong row count is refused.
    assert layer(torch.zeros(20, 6), blocks).shape == (20, 5)
    with pytest.raises(ValueError, match="4 blocks of 5 rows but x has shape"):
        layer(torch.zeros(10, 6), blocks)
