"""Check the conditional samplers against conditionals known in closed form.

Three experiments, each drawing ``m`` completions of every test row with every sampler
and comparing them with exact draws from the true ``p(x_mis | x_obs)``:

A1  probabilistic PCA *as the model* (``LinearGaussianVAE``) with a deliberately wrong,
    over-confident encoder: the model's conditional is exact, so any error is the
    sampler's own.
A2  PPCA *data*, models fitted by ``Imputer`` (VAE, MIWAE): sampler error plus model error.
B   a mixture of three Gaussians where, with only two columns observed, the
    conditional of the other four is bimodal; a VAE fitted to it has a clustered latent
    space, where Metropolis-within-Gibbs tends to stay in the mode it starts in.

Metrics (missing cells only):

* coverage: share of the exact conditional's mass inside each cell's equal-tailed 90%
  interval of the draws (0.90 is calibrated), and the share of held-out true values
  inside it;
* energy distance between the draws and exact conditional draws, per row on the
  standardised scale, averaged (0 for a perfect sampler; the "exact" row shows the
  Monte Carlo floor of two independent sets of exact draws);
* B only: mode error, mean over the ambiguous rows of |share of draws in the upper
  mode - its true probability|.

Usage::

    python scripts/eval_samplers.py                 # full run, prints markdown tables
    python scripts/eval_samplers.py --quick         # smaller, for a smoke test
    python scripts/eval_samplers.py --figure docs/sampler_modes.png --json results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import stats

from ciss_autoimpute import Imputer
from ciss_autoimpute.exceptions import CissAutoimputeWarning
from ciss_autoimpute.sampling import LinearGaussianVAE, sample_conditional


# ---------------------------------------------------------------------------- ground truth
@dataclass
class Mixture:
    """A Gaussian mixture: weights ``pi [K]``, means ``mu [K, d]``, covariances ``cov [K, d, d]``."""

    pi: np.ndarray
    mu: np.ndarray
    cov: np.ndarray

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        comp = rng.choice(len(self.pi), size=n, p=self.pi)
        chol = np.linalg.cholesky(self.cov)
        eps = rng.normal(size=(n, self.mu.shape[1]))
        return self.mu[comp] + np.einsum("nij,nj->ni", chol[comp], eps), comp

    def conditional(self, x: np.ndarray, mask: np.ndarray):
        """Per row: component weights ``[r, K]``, conditional means ``[K, r, d]`` and
        covariances of the missing block (dict pattern -> (rows, [K, m, m]))."""
        r, d = x.shape
        k = len(self.pi)
        log_w = np.zeros((r, k))
        means = np.repeat(x[None].astype(np.float64), k, axis=0)
        blocks = {}
        patterns, inverse = np.unique(mask, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        for p, pattern in enumerate(patterns):
            rows = np.flatnonzero(inverse == p)
            o, m = pattern, ~pattern
            covs = np.zeros((k, m.sum(), m.sum()))
            for c in range(k):
                s = self.cov[c]
                s_oo, s_mo, s_mm = s[np.ix_(o, o)], s[np.ix_(m, o)], s[np.ix_(m, m)]
                dev = x[np.ix_(rows, o)] - self.mu[c, o]
                if o.any():
                    gain = np.linalg.solve(s_oo, s_mo.T).T
                    log_w[rows, c] = np.log(self.pi[c]) + stats.multivariate_normal(self.mu[c, o], s_oo).logpdf(
                        x[np.ix_(rows, o)]
                    ).reshape(-1)
                    cm = self.mu[c, m] + dev @ gain.T
                    covs[c] = s_mm - gain @ s_mo.T
                else:
                    log_w[rows, c] = np.log(self.pi[c])
                    cm = np.broadcast_to(self.mu[c, m], (len(rows), m.sum()))
                    covs[c] = s_mm
                means[c][np.ix_(rows, m)] = cm
            blocks[p] = (rows, m, covs)
        w = np.exp(log_w - log_w.max(1, keepdims=True))
        return w / w.sum(1, keepdims=True), means, blocks

    def conditional_draws(self, x, mask, m_draws, rng):
        w, means, blocks = self.conditional(x, mask)
        out = np.repeat(x[None].astype(np.float64), m_draws, axis=0)
        for rows, miss, covs in blocks.values():
            if not miss.any():
                continue
            chol = np.linalg.cholesky(covs + 1e-12 * np.eye(miss.sum()))
            for i in rows:
                comp = rng.choice(len(self.pi), size=m_draws, p=w[i])
                eps = rng.normal(size=(m_draws, miss.sum()))
                out[:, i, miss] = means[comp, i][:, miss] + np.einsum("nij,nj->ni", chol[comp], eps)
        return out

    def cell_cdf(self, x, mask, values):
        """Mixture CDF of each cell's conditional at ``values [..., r, d]`` (observed cells: NaN)."""
        w, means, blocks = self.conditional(x, mask)
        sd = np.zeros_like(means)
        for rows, miss, covs in blocks.values():
            diag = np.sqrt(np.maximum(np.diagonal(covs, axis1=1, axis2=2), 1e-300))  # [K, m]
            for c in range(len(self.pi)):
                block = sd[c][rows]
                block[:, miss] = diag[c]
                sd[c][rows] = block
        z = (values[..., None, :, :] - means) / np.where(sd > 0, sd, 1.0)
        cdf = (w.T[:, :, None] * stats.norm.cdf(z)).sum(-3)
        return np.where(mask, np.nan, cdf)


def ppca_truth(w: np.ndarray, mean: np.ndarray, noise: float) -> Mixture:
    cov = w @ w.T + noise**2 * np.eye(len(mean))
    return Mixture(np.ones(1), mean[None], cov[None])


# ---------------------------------------------------------------------------- metrics
def energy_distance(draws: np.ndarray, exact: np.ndarray, scale: np.ndarray, rows: np.ndarray) -> float:
    """Mean over ``rows`` of the energy distance between two draw sets ``[m, r, d]``.

    Observed cells are equal in both sets, so full-row distances are distances between
    the missing blocks. U-statistics for the within-set terms (unbiased).
    """
    a = torch.from_numpy(draws[:, rows] / scale).double().permute(1, 0, 2)
    b = torch.from_numpy(exact[:, rows] / scale).double().permute(1, 0, 2)
    ma, mb = a.shape[1], b.shape[1]
    ab = torch.cdist(a, b).mean((1, 2))
    aa = torch.cdist(a, a).sum((1, 2)) / (ma * (ma - 1))
    bb = torch.cdist(b, b).sum((1, 2)) / (mb * (mb - 1))
    return float((2 * ab - aa - bb).mean())


def coverage(draws, truth: Mixture, x_obs, mask, x_true, level=0.9):
    """(exact-conditional mass inside, share of true values inside) of the ``level`` intervals."""
    lo = np.quantile(draws, (1 - level) / 2, axis=0)
    hi = np.quantile(draws, (1 + level) / 2, axis=0)
    mass = truth.cell_cdf(x_obs, mask, hi) - truth.cell_cdf(x_obs, mask, lo)
    miss = ~mask
    inside = (x_true >= lo) & (x_true <= hi)
    return float(np.nanmean(mass[miss])), float(inside[miss].mean())


# ---------------------------------------------------------------------------- experiments
SAMPLERS = ("pseudo_gibbs", "mwg", "lair", "sir")


def _row(name, method, draws, exact, truth, x_obs, mask, x_true, scale, seconds, extra=None):
    rows = np.flatnonzero((~mask).any(1))
    cov_exact, cov_true = coverage(draws, truth, x_obs, mask, x_true)
    out = {
        "experiment": name,
        "sampler": method,
        "coverage (exact)": round(cov_exact, 3),
        "coverage (held-out)": round(cov_true, 3),
        "energy distance": round(energy_distance(draws, exact, scale, rows), 4),
        "seconds": round(seconds, 1),
    }
    out.update(extra or {})
    return out


def _mcar(rng, n, d, rate):
    mask = rng.random((n, d)) > rate
    mask[np.arange(n), rng.integers(0, d, n)] = True  # every row keeps some evidence
    return mask


def _orthogonal_loadings(rng, d, scales):
    q, _ = np.linalg.qr(rng.normal(size=(d, len(scales))))
    return q * np.asarray(scales)


def experiment_a1(args, rng):
    d, noise = 8, 0.5
    w = _orthogonal_loadings(rng, d, [2.5, 1.5])
    mu = rng.normal(size=d)
    truth = ppca_truth(w, mu, noise)
    x_true, _ = truth.sample(args.rows, rng)
    mask = _mcar(rng, args.rows, d, 0.4)
    exact = truth.conditional_draws(x_true, mask, args.draws, rng)
    floor = truth.conditional_draws(x_true, mask, args.draws, rng)
    scale = x_true.std(0)
    kw = dict(encoder_shift=0.5, encoder_scale=0.5)
    wt, mt = torch.tensor(w, dtype=torch.float32), torch.tensor(mu, dtype=torch.float32)

    class _IW(LinearGaussianVAE):
        importance_weighted = True

    model = _IW(wt, mt, noise, **kw)
    xt = torch.tensor(x_true, dtype=torch.float32)
    mt_mask = torch.from_numpy(mask)
    clusters = torch.zeros(args.rows, dtype=torch.long)
    filled = torch.where(mt_mask, xt, torch.zeros(()))
    for _ in range(5):  # start from the model's single imputation, as Imputer.sample does
        filled = torch.where(mt_mask, xt, model.impute(filled, mt_mask, clusters))
    results = [_row("A1 PPCA model, wrong encoder", "exact", floor, exact, truth, x_true, mask, x_true, scale, 0.0)]
    for method in SAMPLERS:
        t0 = time.perf_counter()
        out = sample_conditional(model, filled, mt_mask, clusters, args.draws, method=method,
                                 generator=torch.Generator().manual_seed(args.seed))
        draws = out.draws.double().numpy()
        results.append(_row("A1 PPCA model, wrong encoder", method, draws, exact, truth, x_true, mask, x_true,
                            scale, time.perf_counter() - t0))
    return results


def _fit(family, frame, args, **params):
    model_params = {"hidden_dims": [64, 64], "latent_dim": 2, **params}
    train = {"epochs": args.epochs, "max_loops": 0, "batch_size": 128, "lr": 2e-3}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CissAutoimputeWarning)  # clustering fallback on MCAR data
        return Imputer(model=family, model_params=model_params, train_params=train, n_clusters=1,
                       device="cpu", seed=args.seed).fit(frame)


def _imputer_rows(name, families, truth, x_train, x_true, mask, args, rng, extra_fn=None, variants=()):
    d = x_true.shape[1]
    cols = [f"x{j}" for j in range(d)]
    train_mask = _mcar(rng, len(x_train), d, 0.1)
    train = pd.DataFrame(np.where(train_mask, x_train, np.nan), columns=cols)
    test = pd.DataFrame(np.where(mask, x_true, np.nan), columns=cols)
    exact = truth.conditional_draws(x_true, mask, args.draws, rng)
    floor = truth.conditional_draws(x_true, mask, args.draws, rng)
    scale = x_true.std(0)
    results = [_row(name, "exact", floor, exact, truth, x_true, mask, x_true, scale, 0.0,
                    extra_fn(floor) if extra_fn else None)]
    kept = {}
    for model_label, family, params in families:
        imp = _fit(family, train, args, **params)
        methods = [(m, {}) for m in SAMPLERS if m != "sir" or family in ("miwae", "notmiwae")]
        methods += [v for v in variants if family == "vae"]
        for method, options in methods:
            label = f"{model_label}: {method}" + (f" ({options['label']})" if "label" in options else "")
            opts = {k: v for k, v in options.items() if k != "label"}
            t0 = time.perf_counter()
            copies = imp.sample(test, n=args.draws, method=method, seed=args.seed, **opts)
            draws = np.stack([c.to_numpy(dtype=np.float64) for c in copies])
            results.append(_row(name, label, draws, exact, truth, x_true, mask, x_true, scale,
                                time.perf_counter() - t0, extra_fn(draws) if extra_fn else None))
            kept[label] = draws
    kept["exact"] = exact
    return results, kept


def experiment_a2(args, rng):
    d, noise = 8, 0.5
    w = _orthogonal_loadings(rng, d, [2.5, 1.5])
    truth = ppca_truth(w, rng.normal(size=d), noise)
    x_train, _ = truth.sample(args.train_rows, rng)
    x_true, _ = truth.sample(args.rows, rng)
    mask = _mcar(rng, args.rows, d, 0.4)
    families = [
        ("vae", "vae", {}),
        ("miwae", "miwae", {}),
        # CISS-VAE as tuned for single imputation (unit-variance head, beta = 0.001) and
        # with a fitted noise scale: only the latter knows how unsure it is.
        ("cissvae (defaults)", "cissvae", {}),
        ("cissvae (gaussian, beta=1)", "cissvae", {"likelihood": "gaussian", "beta": 1.0}),
    ]
    results, _ = _imputer_rows("A2 PPCA data, fitted models", families, truth, x_train, x_true, mask, args, rng)
    return results


def experiment_b(args, rng):
    d = 6
    mu = np.array([
        [0.0, 0.0, 2.5, 2.5, 2.5, 2.5],
        [0.0, 0.0, -2.5, -2.5, -2.5, -2.5],
        [3.0, -3.0, 0.0, 0.0, 0.0, 0.0],
    ])
    base = 0.5 * np.eye(d) + 0.15
    truth = Mixture(np.array([0.35, 0.35, 0.3]), mu, np.stack([0.5 * base] * 3))
    x_train, _ = truth.sample(args.train_rows, rng)
    x_true, comp = truth.sample(args.rows, rng)
    mask = _mcar(rng, args.rows, d, 0.3)
    # Half of the rows keep only the first two columns: for rows of the first two
    # components the other four are bimodal given them.
    half = np.arange(args.rows) < args.rows // 2
    mask[half] = np.array([True, True, False, False, False, False])
    w_true, _, _ = truth.conditional(x_true, mask)
    ambiguous = half & (np.minimum(w_true[:, 0], w_true[:, 1]) > 0.1)

    def mode_error(draws):
        upper = (draws[:, ambiguous][..., 2:].mean(-1) > 0).mean(0)
        p_upper = w_true[ambiguous, 0] / (w_true[ambiguous, 0] + w_true[ambiguous, 1])
        return {"mode error": round(float(np.abs(upper - p_upper).mean()), 3)}

    n_draws = args.draws
    variants = [("mwg", {"label": "1 chain", "chains": 1, "burn_in": 100, "thinning": 5})]
    results, kept = _imputer_rows("B mixture of Gaussians", [("vae", "vae", {})], truth, x_train, x_true, mask,
                                  args, rng, extra_fn=mode_error, variants=variants)
    example = int(np.flatnonzero(ambiguous)[np.argmin(np.abs(w_true[ambiguous, 0] - 0.5))])
    return results, kept, example, n_draws


def figure(path, kept, example):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["exact", "vae: pseudo_gibbs", "vae: mwg", "vae: mwg (1 chain)", "vae: lair"]
    fig, axes = plt.subplots(1, len(labels), figsize=(3.0 * len(labels), 2.8), sharex=True, sharey=True)
    for ax, label in zip(axes, labels):
        d = kept[label][:, example]
        ax.scatter(d[:, 2], d[:, 3], s=4, alpha=0.5)
        ax.set_title(label.replace("vae: ", ""), fontsize=10)
        ax.set_xlabel("x2")
    axes[0].set_ylabel("x3")
    fig.suptitle("Draws of two missing cells of one row (x0, x1 observed; true conditional bimodal)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(rows):
    frame = pd.DataFrame(rows).astype(object).where(lambda f: f.notna(), "")
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in frame.iterrows():
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows, draws and epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure", help="write the mode figure (PNG) here")
    parser.add_argument("--json", help="write all results as JSON here")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args(argv)
    args.rows, args.draws, args.train_rows, args.epochs = (120, 60, 1500, 40) if args.quick else (400, 200, 4000, 150)
    torch.set_num_threads(args.threads)  # a script, not the library: it may set the process's threads
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    results = experiment_a1(args, rng) + experiment_a2(args, rng)
    b_rows, kept, example, _ = experiment_b(args, rng)
    results += b_rows
    sys.stdout.write(markdown(results) + "\n")
    sys.stdout.write(f"\n{args.rows} test rows, {args.draws} draws per row, seed {args.seed}; "
                     f"{time.perf_counter() - t0:.0f} s in total\n")
    if args.figure:
        figure(args.figure, kept, example)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"settings": {k: getattr(args, k) for k in ("rows", "draws", "train_rows", "epochs", "seed")},
                       "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
