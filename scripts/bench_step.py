"""Time one training step of each family, split into forward, backward and optimiser step.

``scripts/bench_speed.py`` measures whole epochs against a matmul reference; this script
looks inside a step, for finding where the time outside the products goes::

    .venv/bin/python scripts/bench_step.py --families cissvae notmiwae --batch-size 1000
    .venv/bin/python scripts/bench_step.py --families notmiwae --profile 20   # + torch.profiler table

Same synthetic data as ``bench_speed.py`` (correlated numeric columns, 30 % MCAR, 4 random
clusters), one torch thread by default, median of ``--rounds`` rounds of ``--steps`` steps
after a warm-up. With one thread the times are CPU time (``time.process_time``, the work
done even on a loaded machine); with ``--threads N`` above one they are wall-clock time,
since CPU time then adds up the threads. Batches are contiguous slices of rows sorted by
cluster within each batch, with their cluster ids as a ``ClusterIndex`` (grouped for
cissvae, and for cissvae's batches of about equally large clusters laid out in padded cluster
blocks beforehand), as the Trainer hands them to the model (``--plain-ids`` also times the
steps with the ids as a plain tensor, interleaved; ``--segments`` with the padded cluster
blocks switched off, i.e. one product per cluster segment; ``--loss-pads`` with the loss
laying out each grouped batch itself); the optimiser is fused
Adam with gradient clipping at 5, by default ``torch.optim.Adam`` with
``clip_grad_norm_``, and with ``--trainer-step`` the Trainer's own lean plumbing (one
buffer each for the values, gradients and Adam moments, ``FlatAdam.lean_step``; a few
percent faster). Run it on two checkouts (e.g. a
``git worktree`` of the previous commit, with ``PYTHONPATH`` pointing at it) for an A/B
of a change. A tiny batch (``--batch-size 16``) leaves almost no arithmetic in a step, so
its time is the step's fixed cost: Python, operator dispatch and autograd::

    .venv/bin/python scripts/bench_step.py --families vae cissvae --batch-size 16 --threads 2 --trainer-step

``--count-ops N`` counts what pays that fixed cost, per step over ``N`` profiled steps: the
top-level operator calls (ATen ops not made inside another ATen op: the forward's calls from
Python and the backward's from autograd nodes, each paying dispatch and usually an
allocation) and the autograd nodes the backward ran, with the most frequent of each.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=["vae", "cissvae", "miwae", "notmiwae"])
    parser.add_argument("--rows", type=int, default=20000, help="rows of synthetic data (default 20000)")
    parser.add_argument("--cols", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=50, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="also profile this many steps with torch.profiler and print the top ops")
    parser.add_argument("--count-ops", type=int, default=0, metavar="STEPS",
                        help="also count the top-level operator calls and autograd nodes per step over this many "
                             "profiled steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: CPU time per step; more: wall-clock time)")
    parser.add_argument("--trainer-step", action="store_true",
                        help="zero, clip and step as the Trainer does (packed buffers, FlatAdam.lean_step) instead "
                             "of torch.optim.Adam(fused=True) with clip_grad_norm_")
    parser.add_argument("--package-arch", action="store_true",
                        help="the CISS-VAE package's architecture and optimiser (as in bench_speed.py's package "
                             "comparison): batch 4000, no clipping; use with --families cissvae")
    parser.add_argument("--plain-ids", action="store_true",
                        help="also time every step with the batch's cluster ids as a plain tensor, which the loss "
                             "checks and (cissvae) groups itself with host reads, interleaved round by round with "
                             "the Trainer's ClusterIndex: an in-process A/B of the two")
    parser.add_argument("--segments", action="store_true",
                        help="also time every step with the model's max_padding=None (no padded cluster blocks: one "
                             "product per cluster segment), interleaved round by round: an in-process A/B")
    parser.add_argument("--loss-pads", action="store_true",
                        help="also time every step with each batch handed to the loss grouped by cluster, the loss "
                             "laying it out in padded blocks itself, instead of the epoch's layout made beforehand "
                             "(block_layout), interleaved round by round: an in-process A/B")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")

    import torch

    torch.set_num_threads(args.threads)
    # CPU time adds up the threads, so with more than one the wall clock is the step's time.
    clock, clock_name = (time.process_time, "CPU") if args.threads == 1 else (time.perf_counter, "wall-clock")
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_speed import PACKAGE_TRAIN, make_data, package_settings

    from ciss_autoimpute.data.dataset import ClusterDataset
    from ciss_autoimpute.models.layers import block_layout
    from ciss_autoimpute.models.registry import build_model
    from ciss_autoimpute.training._flat import FlatAdam, FlatGrads
    from ciss_autoimpute.training.trainer import batch_clusters

    params: dict = {}
    clip: float | None = 5.0
    if args.package_arch:
        params = package_settings()[0]
        args.batch_size, clip = PACKAGE_TRAIN["batch_size"], None
    x, labels = make_data(args.rows, args.cols, args.seed)
    ds = ClusterDataset(x, clusters=labels, val_proportion=0.1, seed=args.seed, device="cpu")
    d = ds.data
    bs = min(args.batch_size, d.n_rows)
    n_batches = d.n_rows // bs
    # Rows sorted by cluster within each batch (what the Trainer does for cissvae; harmless otherwise).
    key = torch.arange(d.n_rows) // bs * ds.n_clusters + d.clusters
    order = torch.argsort(key, stable=True)
    xs = torch.where(d.train_mask, torch.nan_to_num(d.x), 0.0)[order]
    mask, clusters, observed = d.train_mask[order], d.clusters[order], d.observed[order]
    # Each batch's rows per cluster, for the grouped index the Trainer passes to the loss.
    counts = torch.bincount(key, minlength=(n_batches + 1) * ds.n_clusters).view(-1, ds.n_clusters).tolist()

    threads = f"{args.threads} thread{'s' if args.threads > 1 else ''}"
    optimiser = "the Trainer's step (FlatAdam)" if args.trainer_step else "torch.optim.Adam + clip_grad_norm_"
    print(f"torch {torch.__version__}, {threads}; {d.n_rows} x {args.cols}, batch {bs}; {optimiser}; "
          f"{clock_name} ms per step (median of {args.rounds} rounds of {args.steps} steps)")
    print("| family | forward | backward | optimiser | step |")
    print("|---|---:|---:|---:|---:|")
    for family in args.families:
        model = build_model(family, ds.layout, ds.n_clusters, params, seed=args.seed)
        if args.trainer_step:
            grads = FlatGrads(list(model.parameters()))
            opt = FlatAdam(grads, lr=1e-3)
            clipper = None if clip is None else functools.partial(grads.clip_grad_norm_, clip)
            update = opt.lean_step
        else:
            opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
            update = opt.step
            clipper = None if clip is None else functools.partial(torch.nn.utils.clip_grad_norm_,
                                                                  list(model.parameters()), clip)
        gen = torch.Generator().manual_seed(args.seed)
        extra = {"observed": None} if getattr(model, "models_missingness", False) else {}
        # Batches in padded cluster blocks where they pay, laid out for all of them at once, as the
        # Trainer does each epoch (block_layout); the "plain ids" and "segments" steps keep the rows.
        padding = model.batch_padding(torch.device("cpu"))
        layout = None if padding is None else block_layout(counts[:n_batches], padding)
        laid = None if layout is None else tuple(t.index_select(0, layout.source) for t in (xs, mask, clusters))

        def step(i: int, parts: list[float] | None = None, way: str = "") -> None:
            if way != "segments":
                return timed_step(i, parts, way)
            model.max_padding = None  # this step only: an instance attribute over the class default
            try:
                return timed_step(i, parts, way)
            finally:
                del model.max_padding

        def timed_step(i: int, parts: list[float] | None, way: str) -> None:
            b = i % n_batches
            plain = way == "plain ids"
            s = b * bs
            kw = {k: observed[s:s + bs] for k in extra}
            t0 = clock()
            if layout is not None and laid is not None and not way:
                s, e = layout.starts[b], layout.starts[b] + layout.lengths[b]
                out = model.loss(laid[0][s:e], laid[1][s:e], layout.index(b, counts[b], laid[2][s:e]),
                                 generator=gen, **kw)
            else:
                ids = clusters[s:s + bs]
                if not plain:  # the Trainer's way: a ClusterIndex where the model takes one
                    ids = batch_clusters(model, ids, counts[b] if model.sorts_batches_by_cluster else None)
                out = model.loss(xs[s:s + bs], mask[s:s + bs], ids, generator=gen, **kw)
            t1 = clock()
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            t2 = clock()
            if clipper is not None:
                clipper()
            update()
            t3 = clock()
            if parts is not None:
                parts[0] += t1 - t0
                parts[1] += t2 - t1
                parts[2] += t3 - t2

        # Each round also times the other ways asked for, right after the Trainer's way.
        ways = [""] + ["plain ids"] * args.plain_ids + ["segments"] * args.segments + ["loss pads"] * args.loss_pads
        for i in range(10):
            for way in ways:
                step(i, way=way)
        rounds: dict[str, list[list[float]]] = {way: [] for way in ways}
        for r in range(args.rounds):
            for way in ways:
                parts = [0.0, 0.0, 0.0]
                for i in range(args.steps):
                    step(r * args.steps + i, parts, way)
                rounds[way].append([1e3 * p / args.steps for p in parts])
        for way in ways:
            med = [statistics.median(r[j] for r in rounds[way]) for j in range(3)]
            label = f"{family} ({way})" if way else family
            print(f"| {label} | {med[0]:.2f} | {med[1]:.2f} | {med[2]:.2f} | {sum(med):.2f} |")
        if args.profile:
            prof = profiled(step, args.profile)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        if args.count_ops:
            ops, nodes = count_ops(profiled(step, args.count_ops).events(), args.count_ops)
            print(f"\n{family}: per step {sum(ops.values()):.1f} top-level operator calls and "
                  f"{sum(nodes.values()):.1f} autograd nodes")
            for label, tally in (("top-level operator calls", ops), ("autograd nodes", nodes)):
                top = ", ".join(f"{name} {n:g}" for name, n in tally.most_common(15))
                print(f"- {label}: {top}")
    return 0


def profiled(step, n: int):
    """torch.profiler's record (CPU activities) of ``n`` calls ``step(0) .. step(n - 1)``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(n):
            step(i)
    return prof


def count_ops(events, steps: int) -> tuple[Counter, Counter]:
    """Per-step counts of top-level ATen calls and autograd nodes in profiler ``events``.

    A top-level call is an ``aten::`` event with no ``aten::`` event among its ancestors
    (the ops a step asks for, not the ones they call inside); autograd nodes are the
    ``autograd::engine::evaluate_function: <Node>`` events, counted by node name.
    """
    prefix = "autograd::engine::evaluate_function: "
    ops: Counter = Counter()
    nodes: Counter = Counter()
    for event in events:
        name = event.name
        if name.startswith(prefix):
            nodes[name[len(prefix):].split("::")[-1]] += 1
            continue
        if not name.startswith("aten::"):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        if parent is None:
            ops[name] += 1
    per_step = max(1, steps)
    return (Counter({k: v / per_step for k, v in ops.items()}),
            Counter({k: v / per_step for k, v in nodes.items()}))


if __name__ == "__main__":
    raise SystemExit(main())
