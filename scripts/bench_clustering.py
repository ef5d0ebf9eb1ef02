"""Time missingness clustering on synthetic masks and print a Markdown table.

Each case runs in a fresh Python process so its peak RSS is its own.

    .venv/bin/python scripts/bench_clustering.py                 # 10k and 100k rows
    .venv/bin/python scripts/bench_clustering.py --rows 2000 --kinds structured mcar
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings

import numpy as np

# name -> (description, cluster_missingness keyword arguments)
KINDS = {
    "structured": ("5 planted patterns + 2% noise", {}),
    "structured-kmeans": ("5 planted patterns + 2% noise, KMeans k=5", {"n_clusters": 5}),
    "noisy": ("5 groups, block cells missing w.p. 0.8, 5% noise", {}),
    "mcar": ("MCAR 30%", {}),
    "mcar-nochecks": ("MCAR 30%, pooling checks off", {"min_silhouette": None}),
}


def make_mask(kind: str, n_rows: int, n_cols: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mask ``[n_rows, n_cols]`` and the planted group of each row (zeros for MCAR)."""
    rng = np.random.default_rng(seed)
    if kind.startswith("mcar"):
        return rng.random((n_rows, n_cols)) < 0.3, np.zeros(n_rows, dtype=np.int64)
    n_groups = 5
    group = rng.integers(0, n_groups, n_rows)
    width = n_cols // (n_groups + 1)
    mask = np.zeros((n_rows, n_cols), dtype=bool)
    p_block, noise = (0.8, 0.05) if kind == "noisy" else (1.0, 0.02)
    for g in range(n_groups):
        rows = np.flatnonzero(group == g)
        block = rng.random((rows.size, width)) < p_block
        mask[rows[:, None], np.arange(g * width, (g + 1) * width)[None, :]] = block
    mask ^= rng.random((n_rows, n_cols)) < noise
    return mask, group


def run_one(kind: str, n_rows: int, n_cols: int, seed: int) -> dict:
    from sklearn.metrics import adjusted_rand_score

    from ciss_autoimpute.clustering import cluster_missingness

    # Import the lazily loaded dependencies first so the timing is the clustering
    # alone; the import cost is reported in its own column.
    start = time.perf_counter()
    import igraph  # noqa: F401
    import leidenalg  # noqa: F401
    import scipy.stats  # noqa: F401
    import sklearn.cluster  # noqa: F401
    import torch  # noqa: F401

    import_seconds = time.perf_counter() - start
    mask, group = make_mask(kind, n_rows, n_cols, seed)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = cluster_missingness(mask, seed=seed, **KINDS[kind][1])
    seconds = time.perf_counter() - start
    return {
        "rows": n_rows,
        "kind": kind,
        "method": result.method,
        "seconds": seconds,
        "import_seconds": import_seconds,
        "n_clusters": result.n_clusters,
        "patterns": result.n_patterns,
        "ari": adjusted_rand_score(group, result.labels) if not kind.startswith("mcar") else None,
        "rss_before_mb": rss_before,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000], help="row counts to time")
    parser.add_argument("--cols", type=int, default=50, help="mask columns (default 50)")
    parser.add_argument(
        "--kinds", nargs="+", default=["structured", "mcar", "noisy", "mcar-nochecks", "structured-kmeans"],
        choices=sorted(KINDS), help="mask kinds to time",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args(argv)

    if args.one:
        print(json.dumps(run_one(args.kinds[0], args.rows[0], args.cols, args.seed)))
        return 0

    print(f"CPUs: {os.cpu_count()}, load average at start: {os.getloadavg()[0]:.1f}\n")
    print(
        "| rows | columns | mask | method | seconds | clusters | distinct patterns | ARI vs planted "
        "| peak RSS (MB) | imports (s, not in seconds) |"
    )
    print("|---:|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for n_rows in args.rows:
        for kind in args.kinds:
            cmd = [sys.executable, os.path.abspath(__file__), "--one", "--rows", str(n_rows),
                   "--cols", str(args.cols), "--kinds", kind, "--seed", str(args.seed)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            ari = "-" if r["ari"] is None else f"{r['ari']:.3f}"
            print(
                f"| {r['rows']:,} | {args.cols} | {KINDS[kind][0]} | {r['method']} | {r['seconds']:.1f} | "
                f"{r['n_clusters']} | {r['patterns']:,} | {ari} | {r['peak_rss_mb']:.0f} | "
                f"{r['import_seconds']:.1f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
