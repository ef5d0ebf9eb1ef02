"""How much of not-MIWAE's published UCI margin comes from the standardisation.

A small, self-contained not-MIWAE (known-sign self-masking, two tanh layers of 128,
latent D-1, K=20, Adam 1e-3, batch 16 — the paper's UCI setting) trained on the
paper's protocol: the first half of the columns lose every value above their mean.
Two ways to standardise before training:

* ``complete``: with the complete data's mean and standard deviation, as the paper's
  code does. The masking threshold is then exactly 0, which is also where the
  missing process's threshold ``b`` starts.
* ``observed``: with the observed cells' statistics — all a user with holes has, and
  what :class:`ciss_autoimpute.ClusterDataset` does.

The RMSE over the hidden cells is computed on the complete-data scale whichever scale the
model trained on (the benchmark's scale, so it compares with docs/bench_accuracy.md's
tables), beside mean imputation's and their ratio. Two estimates of the imputation: the
importance-weighted draws of the missing values, and the importance-weighted decoder means
(what the paper's code reports). Used for the diagnosis in docs/bench_accuracy.md::

    python scripts/diag_notmiwae_scale.py --dataset breast_cancer --steps 5000
    python scripts/diag_notmiwae_scale.py --dataset concrete --steps 100000 --seed 1  # the paper's length

This is a diagnostic, not part of the package: it sets torch's global seed.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ciss_autoimpute.datasets.benchmarks import load_benchmark


def run(dataset: str, scale: str, steps: int, batch: int, seed: int) -> tuple[float, float, float]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    X = load_benchmark(dataset).select_dtypes("number").to_numpy(float)
    X = (X - X.mean(0)) / X.std(0)
    n, d = X.shape
    S = np.ones_like(X)
    half = d // 2
    S[:, :half] = X[:, :half] <= X[:, :half].mean(0)
    complete = X.copy()  # the comparison scale (the benchmark's): complete-data statistics
    centre, spread = np.zeros(d), np.ones(d)
    if scale == "observed":
        held = np.where(S == 1, X, np.nan)
        centre, spread = np.nanmean(held, 0), np.nanstd(held, 0)
        X = (X - centre) / spread
    Xz = np.where(S == 1, X, 0.0)  # the paper fills holes with 0 on the chosen scale
    x_t, s_t = torch.tensor(Xz, dtype=torch.float32), torch.tensor(S, dtype=torch.float32)
    hidden, latent, k = 128, d - 1, 20
    enc = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                        nn.Linear(hidden, 2 * latent))
    dec = nn.Sequential(nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                        nn.Linear(hidden, 2 * d))
    w, b = nn.Parameter(torch.zeros(d)), nn.Parameter(torch.zeros(d))
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters(), w, b], lr=1e-3)
    normal = torch.distributions.Normal

    def log_weights(x, s, samples):
        out = enc(x)
        mu, logvar = out[:, :latent], out[:, latent:].clamp(-10, 10)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(samples, *mu.shape)
        raw = dec(z)
        mean, sd = raw[..., :d], F.softplus(raw[..., d:]) + 1e-3
        log_px = (normal(mean, sd).log_prob(x) * s).sum(-1)
        x_full = (mean + sd * torch.randn_like(mean)) * (1 - s) + x * s
        logits = -F.softplus(w) * (x_full - b)  # known sign: high values go missing
        log_ps = -F.binary_cross_entropy_with_logits(logits, s.expand_as(logits), reduction="none").sum(-1)
        log_pz = normal(0.0, 1.0).log_prob(z).sum(-1)
        log_qz = normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
        return log_px + log_ps + log_pz - log_qz, x_full, mean

    for _ in range(steps):
        idx = torch.from_numpy(rng.integers(0, n, batch))
        lw, _, _ = log_weights(x_t[idx], s_t[idx], k)
        loss = -(torch.logsumexp(lw, 0) - math.log(k)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        lw, x_full, dec_mean = log_weights(x_t, s_t, 1000)
        weights = torch.softmax(lw, 0).unsqueeze(-1)
        # The self-normalised estimate of E[x_m | x_o, s] weights the draws of x_m; the paper's
        # code weights the decoder means of the same samples instead. Both are reported.
        imp = (weights * x_full).sum(0).numpy()
        imp_means = (weights * dec_mean).sum(0).numpy()
    # Scored on the complete-data scale whichever scale the model saw, so the two runs and the
    # benchmark's tables (which use that scale) compare directly.
    imp, imp_means = imp * spread + centre, imp_means * spread + centre
    miss = S == 0
    rmse = float(np.sqrt(((imp - complete)[miss] ** 2).mean()))
    rmse_means = float(np.sqrt(((imp_means - complete)[miss] ** 2).mean()))
    mean_imp = np.where(miss, np.nanmean(np.where(miss, np.nan, complete), 0), complete)
    return rmse, rmse_means, float(np.sqrt(((mean_imp - complete)[miss] ** 2).mean()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="breast_cancer")
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scales", nargs="+", choices=["complete", "observed"], default=["complete", "observed"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    for scale in args.scales:
        t = time.perf_counter()
        rmse, rmse_means, mean_rmse = run(args.dataset, scale, args.steps, args.batch, args.seed)
        print(f"{args.dataset} standardised with {scale:8s} statistics, seed {args.seed}, {args.steps} steps: "
              f"not-MIWAE RMSE {rmse:.3f} (weighted decoder means, as the paper's code: {rmse_means:.3f}), "
              f"mean imputation {mean_rmse:.3f}, ratio {rmse / mean_rmse:.2f} / {rmse_means / mean_rmse:.2f} "
              f"({time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
