"""Conditional sampling of a trained model: several plausible completions per row.

A single filled-in value hides how unsure the model is. This module draws the missing
cells of each row from the model's conditional distribution ``p(x_mis | x_obs)``, where
the model is the generative part of a latent-variable family:

* ``p(z) = N(0, I)`` and ``p(x | z)`` the family's likelihood head
  (:class:`~ciss_autoimpute.models.likelihoods.MixedLikelihood`);
* for not-MIWAE also ``p(s | x)``, the model of which cells go missing, so the target
  is ``p(x_mis | x_obs, s)``.

The encoder ``q(z | x)`` is only a *proposal*: it was fitted to the completed rows and
is never exact for a partly observed one. Four samplers use it differently:

``"pseudo_gibbs"``
    Alternate ``z ~ q(z | x)`` and ``x_mis ~ p(x_mis | z)`` (Rezende et al., 2014).
    Cheap, but its stationary distribution is only right when the encoder is exact;
    an over-confident encoder gives draws that are too narrow.
``"mwg"``
    Metropolis-within-Gibbs (Mattei & Frellsen, 2018): propose ``z' ~ q(z | x)``,
    accept with the Metropolis-Hastings ratio of ``p(x | z) p(z) / q(z | x)``, then draw
    ``x_mis ~ p(x_mis | z)``. Asymptotically exact, but a chain can get stuck: when
    the latent space is clustered, ``q(z | x)`` follows the current imputation and
    rarely proposes the other mode (Simkus & Gutmann, 2023).
``"lair"``
    Latent-adaptive importance resampling (Simkus & Gutmann, 2023): a few particles
    per row; each round proposes latents from the mixture of the encoder at every
    particle and the prior, weights them by ``p(x_obs | z) p(z) / mixture(z)``
    (deterministic-mixture weights) and resamples the particles. Proposals from the
    rounds after burn-in are pooled and the draws are resampled from the pool, so the
    prior component keeps every mode reachable.
``"sir"``
    Sampling importance resampling: many proposals ``z ~ q(z | x)`` from the single
    imputation, weights ``p(x_obs | z) p(z) / q(z | x)``, resample. For the
    importance-weighted families (MIWAE, not-MIWAE), whose encoders are trained as
    importance proposals; a plain ELBO encoder is too narrow for it.

In every sampler the observed cells are copied back unchanged, and all randomness
comes from one ``torch.Generator``. Rows are independent, so they are processed in
chunks (bounded memory) with all chains / particles of a chunk batched on the device.

Notes
-----
With the ``"gaussian_fixed"`` numeric head the unit variance is a loss weight, not a
fitted noise level. The samplers give it the noise level that weight implies: a
``beta``-weighted ELBO with unit variance is, up to a constant factor, the ELBO of a
Gaussian with variance ``beta``, so the numeric noise is ``sqrt(beta)`` (families with
``beta``: VAE, CISS-VAE) or 1 (MIWAE, not-MIWAE), floored at
``exp(LOG_SCALE_MIN)`` like a fitted scale.

References
----------
Rezende, Mohamed & Wierstra (2014), Stochastic backpropagation and approximate
inference in deep generative models. Mattei & Frellsen (2018), Leveraging the exact
likelihood of deep latent variable models. Simkus & Gutmann (2023), Conditional
sampling of variational autoencoders via iterated approximate ancestral sampling, TMLR.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .exceptions import SamplingWarning
from .models.bounds import gaussian_log_prob, standard_normal_log_prob
from .models.families.vae import VAE
from .models.likelihoods import LOG_SCALE_MIN

__all__ = [
    "METHODS",
    "ConditionalDraws",
    "LinearGaussianVAE",
    "SamplerConfig",
    "check_method",
    "default_method",
    "sample_conditional",
    "valid_methods",
]

#: The sampler names, in the order they are listed in messages.
METHODS: tuple[str, ...] = ("lair", "mwg", "pseudo_gibbs", "sir")

#: Options each sampler accepts (``sample(..., **options)``).
METHOD_OPTIONS: dict[str, tuple[str, ...]] = {
    "pseudo_gibbs": ("chains", "iterations", "burn_in", "thinning"),
    "mwg": ("chains", "iterations", "burn_in", "thinning"),
    "lair": ("chains", "iterations", "burn_in", "thinning", "importance_samples", "prior_proposals"),
    "sir": ("importance_samples",),
}

#: Defaults per sampler. ``chains=None`` means one chain per draw (MCMC samplers);
#: ``iterations=None`` means "just enough": burn-in plus what the draws need.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "pseudo_gibbs": {"chains": None, "iterations": None, "burn_in": 50, "thinning": 1},
    "mwg": {"chains": None, "iterations": None, "burn_in": 100, "thinning": 1},
    "lair": {
        "chains": 5,
        "iterations": None,
        "burn_in": 10,
        "thinning": 1,
        "importance_samples": 10,
        "prior_proposals": 1,
    },
    "sir": {"importance_samples": 1000},
}
#: Rounds of LAIR after burn-in whose proposals feed the final pool when ``iterations`` is None.
_LAIR_POOLED_ROUNDS = 20

#: Budget of (rows x particles) processed at once, and of the elements of the
#: LAIR mixture-density tensor; bounds memory whatever the data size.
_ROW_PARTICLE_BUDGET = 1 << 17
_MIXTURE_BUDGET = 1 << 22
#: Proposals per row drawn at once by SIR.
_SIR_BATCH = 200


# ---------------------------------------------------------------------------- methods
def _is_latent_model(model: Any) -> bool:
    return all(hasattr(model, a) for a in ("encode", "decode", "likelihood", "cluster_index"))


def valid_methods(model: Any) -> tuple[str, ...]:
    """The samplers available for ``model``.

    Every latent-variable family supports ``"lair"``, ``"mwg"`` and
    ``"pseudo_gibbs"``; ``"sir"`` needs an encoder trained as an importance proposal,
    i.e. a family with ``importance_weighted = True`` (MIWAE, not-MIWAE).
    """
    base = ("lair", "mwg", "pseudo_gibbs")
    return base + ("sir",) if getattr(model, "importance_weighted", False) else base


def default_method(model: Any) -> str:
    """``"sir"`` for importance-weighted families, ``"lair"`` otherwise."""
    return "sir" if getattr(model, "importance_weighted", False) else "lair"


def check_method(model: Any, method: Any) -> str:
    """``method`` checked against :func:`valid_methods` (``None`` -> :func:`default_method`).

    Raises
    ------
    ValueError
        The method is unknown or not available for the model's family; the message
        lists the valid ones.
    """
    if method is None:
        return default_method(model)
    allowed = valid_methods(model)
    if not isinstance(method, str) or method not in allowed:
        name = getattr(model, "name", type(model).__name__)
        extra = ""
        if method == "sir":
            extra = (
                " 'sir' needs an encoder trained as an importance proposal (miwae, notmiwae); "
                f"a {name!r} encoder is too narrow for it."
            )
        raise ValueError(
            f"method={method!r} is not available for a {name!r} model; choose one of {list(allowed)}.{extra}"
        )
    return method


# ---------------------------------------------------------------------------- options
def _check_count(key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"sampler option {key!r} must be an integer >= {low}, got {value!r}.")
    return int(value)


@dataclass(frozen=True)
class SamplerConfig:
    """Resolved, validated settings of one sampling run.

    Build it with :meth:`resolve`; fields a method does not use are ``None``.

    Attributes
    ----------
    method
        One of :data:`METHODS`.
    n
        Number of draws per row.
    chains
        MCMC chains per row (``pseudo_gibbs``, ``mwg``; default one per draw) or LAIR
        particles per row (default 5).
    iterations
        Total sweeps of each chain / rounds of LAIR, burn-in included.
    burn_in
        Leading sweeps / rounds that are discarded.
    thinning
        Keep every ``thinning``-th sweep after burn-in (LAIR: pool every
        ``thinning``-th round).
    importance_samples
        LAIR: proposals per mixture component per round; SIR: proposals per row.
    prior_proposals
        LAIR: prior components in the proposal mixture (keep modes reachable).
    """

    method: str
    n: int
    chains: int | None = None
    iterations: int | None = None
    burn_in: int | None = None
    thinning: int | None = None
    importance_samples: int | None = None
    prior_proposals: int | None = None

    @classmethod
    def resolve(cls, method: str, n: int, **options: Any) -> "SamplerConfig":
        """Check ``options`` for ``method`` and fill in the defaults.

        Raises
        ------
        ValueError
            Unknown method, an option the method does not take, a bad value, or
            settings that cannot give ``n`` draws (the message says what to raise).
        """
        if method not in METHOD_OPTIONS:
            raise ValueError(f"Unknown sampling method {method!r}; choose one of {list(METHODS)}.")
        n = _check_count("n", n, 1)
        allowed = METHOD_OPTIONS[method]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(
                f"method {method!r} does not take option(s) {unknown}; its options are {list(allowed)}."
            )
        values = dict(_DEFAULTS[method])
        values.update({k: v for k, v in options.items() if v is not None})
        lows = {"chains": 1, "iterations": 1, "burn_in": 0, "thinning": 1, "importance_samples": 1, "prior_proposals": 0}
        for key, value in values.items():
            if value is not None:
                values[key] = _check_count(key, value, lows[key])
        if method in ("pseudo_gibbs", "mwg"):
            chains = values["chains"] if values["chains"] is not None else n
            per_chain = math.ceil(n / chains)
            needed = values["burn_in"] + values["thinning"] * per_chain
            iterations = values["iterations"] if values["iterations"] is not None else needed
            if iterations < needed:
                kept = max(0, (iterations - values["burn_in"]) // values["thinning"])
                raise ValueError(
                    f"{method}: {chains} chain(s) x {kept} kept sweep(s) (iterations={iterations}, "
                    f"burn_in={values['burn_in']}, thinning={values['thinning']}) give fewer than n={n} draws; "
                    f"use iterations >= {needed} or more chains."
                )
            values.update(chains=chains, iterations=iterations)
        elif method == "lair":
            if values["iterations"] is None:
                values["iterations"] = values["burn_in"] + values["thinning"] * _LAIR_POOLED_ROUNDS
            if values["iterations"] < values["burn_in"] + values["thinning"]:
                raise ValueError(
                    f"lair: iterations={values['iterations']} leaves no round after burn_in={values['burn_in']} "
                    f"(thinning={values['thinning']}); use iterations >= {values['burn_in'] + values['thinning']}."
                )
        return cls(method=method, n=n, **values)

    def kept_sweeps(self) -> list[int]:
        """1-based sweeps whose states are kept after burn-in and thinning."""
        first = self.burn_in + self.thinning
        return list(range(first, self.iterations + 1, self.thinning))

    def chosen_sweeps(self) -> list[int]:
        """The kept sweeps the draws are taken from (MCMC samplers), latest first.

        Spread evenly over the kept sweeps, always including the last, so the draws of
        one chain are as far apart as the run allows.
        """
        kept = self.kept_sweeps()
        q = math.ceil(self.n / self.chains)
        return [kept[len(kept) - 1 - (i * len(kept)) // q] for i in range(q)]

    def as_dict(self) -> dict[str, Any]:
        """The options this method uses (for logs and reports)."""
        return {k: getattr(self, k) for k in METHOD_OPTIONS[self.method]}


# ---------------------------------------------------------------------------- result
@dataclass
class ConditionalDraws:
    """What :func:`sample_conditional` returns.

    Attributes
    ----------
    draws
        float ``[n, rows, d]`` in the encoded space; observed cells equal ``x``.
    config
        The resolved :class:`SamplerConfig`.
    diagnostics
        ``acceptance_rate`` (``mwg``: share of accepted latent proposals; with a
        missingness model also ``acceptance_rate_missing``), ``ess_mean`` / ``ess_min``
        (``lair``, ``sir``: effective sample size of the pooled importance weights per
        row, mean and minimum over rows).
    """

    draws: torch.Tensor
    config: SamplerConfig
    diagnostics: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------- the target
def _fixed_noise_sd(model: Any) -> float:
    """Numeric noise of a ``"gaussian_fixed"`` head (see the module notes)."""
    beta = getattr(model, "beta", None)
    var = float(beta) if beta is not None else 1.0
    return max(math.sqrt(max(var, 0.0)), math.exp(LOG_SCALE_MIN))


class _Target:
    """The model pieces the samplers need, for tensors with leading particle axes."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.lik = model.likelihood
        self.fixed_sd = _fixed_noise_sd(model) if self.lik.numeric == "gaussian_fixed" else None
        self.mnar = bool(getattr(model, "models_missingness", False))
        self._indices: dict[int, Any] = {}
        self._clusters: torch.Tensor | None = None

    def set_rows(self, clusters: torch.Tensor) -> None:
        self._clusters = clusters
        self._indices = {}

    def _index(self, repeats: int) -> Any:
        if repeats not in self._indices:
            self._indices[repeats] = self.model.cluster_index(self._clusters, repeats)
        return self._indices[repeats]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``q(z | x)`` mean and log-variance for ``x [P, r, d]``."""
        return self.model.encode(x, self._index(x.shape[0]))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw likelihood parameters for ``z [P, r, L]``."""
        return self.model.decode(z, self._index(z.shape[0]))

    def log_lik(self, raw: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``log p(x | z)`` of the cells where ``mask`` is true, per row ``[P, r]``."""
        parts = self.lik.log_prob_units(raw, x, mask)
        num = parts["numeric"]
        if self.fixed_sd is not None and num.shape[-1]:
            lik = self.lik
            mu = lik.split(raw)["mean"]
            m_num = mask[..., lik.numeric_idx].expand_as(mu)
            x_num = torch.where(m_num, x[..., lik.numeric_idx].expand_as(mu), mu)
            sd = self.fixed_sd
            num = (-0.5 * ((x_num - mu) / sd) ** 2 - math.log(sd) - 0.5 * math.log(2 * math.pi)) * m_num
        return num.sum(-1) + parts["binary"].sum(-1) + parts["categorical"].sum(-1)

    def draw(self, raw: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One draw of every cell from ``p(x | z)`` ``[P, r, d]``."""
        if self.fixed_sd is None:
            return self.lik.sample(raw, generator)
        out = self.lik.sample(raw, generator, numeric_noise=False)
        idx = self.lik.numeric_idx
        if idx.numel():
            shape = (*out.shape[:-1], idx.numel())
            eps = torch.randn(shape, generator=generator, device=out.device, dtype=out.dtype)
            out = out.index_add(-1, idx, self.fixed_sd * eps)
        return out

    def log_missing(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``log p(s | x)`` per row (zero without a missingness model)."""
        if not self.mnar:
            return x.new_zeros(x.shape[:-1])
        return self.model.missingness_log_prob(x, mask)


def _gaussian_draw(mu: torch.Tensor, logvar: torch.Tensor, g: torch.Generator, lead: tuple[int, ...] = ()) -> torch.Tensor:
    eps = torch.randn((*lead, *mu.shape), generator=g, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


def _clean_log_weights(log_w: torch.Tensor) -> torch.Tensor:
    """NaN -> -inf (a proposal the model cannot score gets no weight)."""
    return torch.nan_to_num(log_w, nan=float("-inf"), posinf=torch.finfo(log_w.dtype).max)


def _resample(log_w: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """``k`` indices per row into the proposal axis of ``log_w [P, r]``, drawn with
    probabilities proportional to ``exp(log_w)`` (multinomial, with replacement).
    Rows whose weights are all zero fall back to uniform."""
    lw = _clean_log_weights(log_w)
    dead = ~torch.isfinite(lw.max(0).values)
    lw = torch.where(dead.unsqueeze(0), torch.zeros_like(lw), lw)
    probs = torch.softmax(lw, dim=0).T.contiguous()
    return torch.multinomial(probs, k, replacement=True, generator=g)


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x [P, r, ...]`` picked per row by ``idx [r, k]`` -> ``[k, r, ...]``."""
    moved = x.movedim(0, 1)  # [r, P, ...]
    tail = moved.shape[2:]
    gather_idx = idx.reshape(*idx.shape, *([1] * len(tail))).expand(*idx.shape, *tail)
    return moved.gather(1, gather_idx).movedim(1, 0)


class _Pool:
    """Resampling from a stream of weighted proposals without storing them.

    Each of ``m`` slots holds, after any number of :meth:`add` calls, one draw from
    all proposals seen so far with probability proportional to their weights: a new
    batch replaces a slot with probability (batch weight) / (total weight), with a
    draw from within the batch. Memory stays ``m x rows x d``.
    """

    def __init__(self, init: torch.Tensor, m: int) -> None:
        self.slots = init.unsqueeze(0).expand(m, *init.shape).clone()
        self.m = m
        r = init.shape[0]
        self.log_total = init.new_full((r,), float("-inf"))
        self.log_sq = init.new_full((r,), float("-inf"))

    def add(self, log_w: torch.Tensor, x: torch.Tensor, g: torch.Generator) -> None:
        lw = _clean_log_weights(log_w)
        log_batch = torch.logsumexp(lw, 0)
        new_total = torch.logaddexp(self.log_total, log_batch)
        p_new = torch.nan_to_num(torch.exp(log_batch - new_total), nan=0.0)
        idx = _resample(lw, self.m, g)
        cand = _take(x, idx)
        u = torch.rand((self.m, x.shape[1]), generator=g, device=x.device, dtype=x.dtype)
        self.slots = torch.where((u < p_new).unsqueeze(-1), cand, self.slots)
        self.log_total = new_total
        self.log_sq = torch.logaddexp(self.log_sq, torch.logsumexp(2.0 * lw, 0))

    def ess(self) -> torch.Tensor:
        """Effective sample size ``(sum w)^2 / sum w^2`` per row (0 when nothing had weight)."""
        return torch.nan_to_num(torch.exp(2.0 * self.log_total - self.log_sq), nan=0.0)


# ---------------------------------------------------------------------------- samplers (one chunk of rows)
_ChunkFn = Callable[[_Target, torch.Tensor, torch.Tensor, SamplerConfig, torch.Generator], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def _mcmc_collect(cfg: SamplerConfig) -> dict[int, int]:
    """Sweep -> position in the draw order (latest chosen sweep first)."""
    return {sweep: pos for pos, sweep in enumerate(cfg.chosen_sweeps())}


def _stack_draws(states: dict[int, torch.Tensor], cfg: SamplerConfig) -> torch.Tensor:
    ordered = [states[s] for s in cfg.chosen_sweeps()]  # each [C, r, d]
    return torch.cat(ordered, dim=0)[: cfg.n]


def _pseudo_gibbs(
    t: _Target, x: torch.Tensor, mask: torch.Tensor, cfg: SamplerConfig, g: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    c = cfg.chains
    state = x.unsqueeze(0).expand(c, *x.shape)
    keep = _mcmc_collect(cfg)
    states: dict[int, torch.Tensor] = {}
    for sweep in range(1, cfg.iterations + 1):
        mu, logvar = t.encode(state)
        z = _gaussian_draw(mu, logvar, g)
        state = torch.where(mask, x, t.draw(t.decode(z), g))
        if sweep in keep:
            states[sweep] = state
    return _stack_draws(states, cfg), {}


def _mwg(
    t: _Target, x: torch.Tensor, mask: torch.Tensor, cfg: SamplerConfig, g: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    c = cfg.chains
    everything = torch.ones_like(mask)
    state = x.unsqueeze(0).expand(c, *x.shape)
    # Initialise (z, x_mis) with one ancestral step from the single imputation.
    mu, logvar = t.encode(state)
    z = _gaussian_draw(mu, logvar, g)
    raw = t.decode(z)
    state = torch.where(mask, x, t.draw(raw, g))
    keep = _mcmc_collect(cfg)
    states: dict[int, torch.Tensor] = {}
    accepted = x.new_zeros(())
    accepted_x = x.new_zeros(())
    for sweep in range(1, cfg.iterations + 1):
        # z-step: independence proposal q(z | x) given the current completion x.
        mu, logvar = t.encode(state)
        z_new = _gaussian_draw(mu, logvar, g)
        raw_new = t.decode(z_new)
        log_new = t.log_lik(raw_new, state, everything) + standard_normal_log_prob(z_new) - gaussian_log_prob(z_new, mu, logvar)
        log_old = t.log_lik(raw, state, everything) + standard_normal_log_prob(z) - gaussian_log_prob(z, mu, logvar)
        u = torch.rand(log_new.shape, generator=g, device=x.device, dtype=x.dtype)
        # NaN ratios (a proposal the model cannot score) are rejected.
        accept = torch.log(u) < torch.nan_to_num(log_new - log_old, nan=float("-inf"))
        z = torch.where(accept.unsqueeze(-1), z_new, z)
        raw = torch.where(accept.unsqueeze(-1), raw_new, raw)
        accepted = accepted + accept.to(x.dtype).mean()
        # x-step: exact Gibbs draw from p(x_mis | z); with p(s | x) an independence
        # Metropolis step whose ratio is p(s | x') / p(s | x).
        proposal = torch.where(mask, x, t.draw(raw, g))
        if t.mnar:
            log_ratio = t.log_missing(proposal, mask) - t.log_missing(state, mask)
            u = torch.rand(log_ratio.shape, generator=g, device=x.device, dtype=x.dtype)
            ok = torch.log(u) < torch.nan_to_num(log_ratio, nan=float("-inf"))
            state = torch.where(ok.unsqueeze(-1), proposal, state)
            accepted_x = accepted_x + ok.to(x.dtype).mean()
        else:
            state = proposal
        if sweep in keep:
            states[sweep] = state
    diag = {"acceptance_rate": accepted / cfg.iterations}
    if t.mnar:
        diag["acceptance_rate_missing"] = accepted_x / cfg.iterations
    return _stack_draws(states, cfg), diag


def _lair(
    t: _Target, x: torch.Tensor, mask: torch.Tensor, cfg: SamplerConfig, g: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    k, n_imp, n_prior = cfg.chains, cfg.importance_samples, cfg.prior_proposals
    n_comp = k + n_prior
    particles = x.unsqueeze(0).expand(k, *x.shape)
    pool = _Pool(x, cfg.n)
    kept = set(cfg.kept_sweeps())
    log_n_comp = math.log(n_comp)
    for sweep in range(1, cfg.iterations + 1):
        mu, logvar = t.encode(particles)  # [K, r, L]
        if n_prior:
            zeros = mu.new_zeros((n_prior, *mu.shape[1:]))
            mu, logvar = torch.cat([mu, zeros]), torch.cat([logvar, zeros])
        z = _gaussian_draw(mu, logvar, g, (n_imp,))  # [I, J, r, L]
        # Deterministic-mixture weights: each proposal is scored against the whole
        # mixture, not only the component that drew it (lower-variance weights).
        log_q = gaussian_log_prob(z.unsqueeze(2), mu, logvar)  # [I, J, J, r]
        log_mix = torch.logsumexp(log_q, dim=2) - log_n_comp  # [I, J, r]
        z = z.flatten(0, 1)  # [I*J, r, L]
        raw = t.decode(z)
        proposals = torch.where(mask, x, t.draw(raw, g))
        log_w = t.log_lik(raw, x, mask) + standard_normal_log_prob(z) - log_mix.flatten(0, 1)
        if t.mnar:
            log_w = log_w + t.log_missing(proposals, mask)
        particles = _take(proposals, _resample(log_w, k, g))
        if sweep in kept:
            pool.add(log_w, proposals, g)
    ess = pool.ess()
    return pool.slots, {"ess_mean": ess.mean(), "ess_min": ess.min()}


def _sir(
    t: _Target, x: torch.Tensor, mask: torch.Tensor, cfg: SamplerConfig, g: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    mu, logvar = t.encode(x.unsqueeze(0))  # [1, r, L]
    pool = _Pool(x, cfg.n)
    left = cfg.importance_samples
    while left > 0:
        b = min(left, _SIR_BATCH)
        left -= b
        z = _gaussian_draw(mu[0], logvar[0], g, (b,))  # [B, r, L]
        raw = t.decode(z)
        proposals = torch.where(mask, x, t.draw(raw, g))
        log_w = t.log_lik(raw, x, mask) + standard_normal_log_prob(z) - gaussian_log_prob(z, mu, logvar)
        if t.mnar:
            log_w = log_w + t.log_missing(proposals, mask)
        pool.add(log_w, proposals, g)
    ess = pool.ess()
    return pool.slots, {"ess_mean": ess.mean(), "ess_min": ess.min()}


_SAMPLERS: dict[str, _ChunkFn] = {"pseudo_gibbs": _pseudo_gibbs, "mwg": _mwg, "lair": _lair, "sir": _sir}


def _rows_per_chunk(cfg: SamplerConfig, latent_dim: int) -> int:
    if cfg.method in ("pseudo_gibbs", "mwg"):
        per_row = cfg.chains
        return max(1, _ROW_PARTICLE_BUDGET // per_row)
    if cfg.method == "lair":
        comps = cfg.chains + cfg.prior_proposals
        per_row = cfg.importance_samples * comps
        by_mixture = _MIXTURE_BUDGET // max(1, per_row * comps * latent_dim)
        return max(1, min(_ROW_PARTICLE_BUDGET // per_row, by_mixture))
    return max(1, _ROW_PARTICLE_BUDGET // min(cfg.importance_samples, _SIR_BATCH))


# ---------------------------------------------------------------------------- entry point
def sample_conditional(
    model: Any,
    x: torch.Tensor,
    mask: torch.Tensor,
    clusters: torch.Tensor,
    n: int,
    *,
    method: str | None = None,
    generator: torch.Generator | None = None,
    **options: Any,
) -> ConditionalDraws:
    """Draw ``n`` completions of every row from the model's conditional distribution.

    Parameters
    ----------
    model
        A trained latent-variable family (``encode``, ``decode``, ``likelihood``,
        ``cluster_index``; every built-in family).
    x
        float ``[rows, d]`` encoded rows; cells where ``mask`` is false hold a starting
        fill (the single imputation is a good one) and are never read as data.
    mask
        bool ``[rows, d]``: observed cells.
    clusters
        int64 ``[rows]``: cluster id of each row.
    n
        Draws per row.
    method
        ``"lair"``, ``"mwg"``, ``"pseudo_gibbs"`` or ``"sir"`` (see the module notes);
        ``None`` picks :func:`default_method`.
    generator
        The only source of randomness; ``None`` uses a generator seeded with 0.
    **options
        Sampler options (see :class:`SamplerConfig`): ``chains``, ``iterations``,
        ``burn_in``, ``thinning`` (MCMC and LAIR), ``importance_samples`` (LAIR, SIR),
        ``prior_proposals`` (LAIR).

    Returns
    -------
    ConditionalDraws
        ``draws [n, rows, d]`` (observed cells bit-identical to ``x``; binary cells 0/1,
        categorical groups one-hot) and diagnostics.

    Raises
    ------
    TypeError
        ``model`` is not a latent-variable model, or a tensor has the wrong type.
    ValueError
        Unknown method or option, a bad option value, or shapes that do not match.

    Examples
    --------
    >>> import torch
    >>> from ciss_autoimpute.data.layout import FeatureLayout
    >>> from ciss_autoimpute.models.families.vae import VAE
    >>> model = VAE(FeatureLayout.all_numeric(3), hidden_dims=[8], latent_dim=2).eval()
    >>> x = torch.zeros(4, 3); mask = torch.ones(4, 3, dtype=torch.bool); mask[:, 0] = False
    >>> out = sample_conditional(model, x, mask, torch.zeros(4, dtype=torch.long), 3,
    ...                          method="lair", generator=torch.Generator().manual_seed(0))
    >>> tuple(out.draws.shape), bool((out.draws[:, :, 1:] == 0).all())
    ((3, 4, 3), True)
    """
    if not _is_latent_model(model):
        raise TypeError(
            f"model must be a trained latent-variable family (with encode/decode/likelihood), "
            f"got {type(model).__name__}."
        )
    method = check_method(model, method)
    cfg = SamplerConfig.resolve(method, n, **options)
    if hasattr(model, "check_batch"):
        model.check_batch(x, mask, clusters)
    g = generator if generator is not None else torch.Generator(device=x.device).manual_seed(0)
    if not isinstance(g, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(g).__name__}.")
    target = _Target(model)
    if target.fixed_sd is not None and target.lik.n_num:
        warnings.warn(
            f"{getattr(model, 'name', type(model).__name__)!r} uses the 'gaussian_fixed' numeric head, which "
            f"fits no noise level: numeric draws get sd = {target.fixed_sd:.3g} on the standardised scale "
            "(sqrt(beta)), so their spread, and intervals, are not calibrated (usually far too narrow). "
            "For multiple imputation fit the model with likelihood='gaussian' (and beta=1).",
            SamplingWarning,
            stacklevel=2,
        )
    latent_dim = int(getattr(model, "params", {}).get("latent_dim", 16))
    step = _rows_per_chunk(cfg, latent_dim)
    rows = x.shape[0]
    was_training = model.training
    model.eval()
    chunks: list[torch.Tensor] = []
    diag_sums: dict[str, list[tuple[torch.Tensor, int]]] = {}
    try:
        with torch.no_grad():
            for start in range(0, rows, step):
                sl = slice(start, min(start + step, rows))
                target.set_rows(clusters[sl])
                draws, diag = _SAMPLERS[method](target, x[sl], mask[sl], cfg, g)
                chunks.append(draws)
                for key, value in diag.items():
                    diag_sums.setdefault(key, []).append((value, sl.stop - sl.start))
    finally:
        model.train(was_training)
    if chunks:
        draws = torch.cat(chunks, dim=1)
    else:
        draws = x.new_zeros((cfg.n, 0, x.shape[1]))
    # Observed cells are the caller's values, bit for bit, whatever the sampler did.
    draws = torch.where(mask, x, draws)
    diagnostics: dict[str, float] = {}
    for key, parts in diag_sums.items():
        if key.endswith("_min"):
            diagnostics[key] = float(min(float(v) for v, _ in parts))
        else:
            total = sum(w for _, w in parts)
            diagnostics[key] = float(sum(float(v) * w for v, w in parts) / max(total, 1))
    return ConditionalDraws(draws=draws, config=cfg, diagnostics=diagnostics)


# ---------------------------------------------------------------------------- reference model
class LinearGaussianVAE(VAE):
    """Probabilistic PCA as an imputation model: a reference with a known conditional.

    ``z ~ N(0, I_L)``, ``x = W z + mu + sigma * eps`` with ``W = U diag(s)`` and
    orthonormal ``U``, so the exact posterior ``p(z | x)`` is a diagonal Gaussian the
    encoder can represent, and ``p(x_mis | x_obs)`` is Gaussian in closed form
    (:meth:`conditional`). Used to check the samplers (tests,
    ``scripts/eval_samplers.py``).

    Parameters
    ----------
    loadings
        ``W`` ``[d, L]`` with orthogonal columns.
    mean
        ``mu`` ``[d]``.
    noise
        ``sigma > 0``; kept inside the Gaussian head's scale bounds.
    encoder_shift, encoder_scale
        Deliberate encoder errors: the encoder returns the exact posterior mean plus
        ``encoder_shift`` times the posterior standard deviation, and
        ``encoder_scale`` times the posterior standard deviation (``1`` and ``0``:
        exact). Amortised encoders are typically over-confident (``scale < 1``).

    Examples
    --------
    >>> import torch
    >>> m = LinearGaussianVAE(torch.tensor([[2.0], [1.0], [0.0]]), torch.zeros(3), 0.5)
    >>> mean, var = m.conditional(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[True, False, False]]))
    >>> round(float(mean[0, 1]), 4), round(float(var[0, 2]), 4)
    (0.4706, 0.25)
    """

    def __init__(
        self,
        loadings: torch.Tensor,
        mean: torch.Tensor,
        noise: float,
        *,
        encoder_shift: float = 0.0,
        encoder_scale: float = 1.0,
    ) -> None:
        from .data.layout import FeatureLayout

        w = torch.as_tensor(loadings, dtype=torch.float32)
        if w.dim() != 2:
            raise ValueError(f"loadings must be a [d, L] matrix, got shape {tuple(w.shape)}.")
        d, latent = w.shape
        gram = w.T @ w
        if not torch.allclose(gram, torch.diag(torch.diagonal(gram)), atol=1e-4 * float(gram.abs().max() + 1)):
            raise ValueError("loadings must have orthogonal columns (W^T W diagonal) for an exact diagonal posterior.")
        if not (math.exp(LOG_SCALE_MIN) < float(noise) < math.exp(4.0)):
            raise ValueError(f"noise must lie in (0.018, 54.6) (the Gaussian head's scale range), got {noise!r}.")
        if float(encoder_scale) <= 0:
            raise ValueError(f"encoder_scale must be > 0, got {encoder_scale!r}.")
        super().__init__(FeatureLayout.all_numeric(d), 1, hidden_dims=[1], latent_dim=latent, likelihood="gaussian")
        self.register_buffer("w", w.clone())
        self.register_buffer("mu_x", torch.as_tensor(mean, dtype=torch.float32).reshape(d).clone())
        self.noise = float(noise)
        self.encoder_shift = float(encoder_shift)
        self.encoder_scale = float(encoder_scale)
        s2 = torch.diagonal(gram)
        # Posterior of z given a full row: N(A (x - mu), diag(v)), A = M^-1 W^T, M = W^T W + sigma^2 I.
        self.register_buffer("post_a", w.T / (s2 + self.noise**2).unsqueeze(1))
        self.register_buffer("post_var", self.noise**2 / (s2 + self.noise**2))

    def encode(self, x: torch.Tensor, index: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        sd = torch.sqrt(self.post_var)
        mu = (x - self.mu_x) @ self.post_a.T + self.encoder_shift * sd
        logvar = torch.log(self.post_var * self.encoder_scale**2).expand_as(mu)
        return mu, logvar

    def decode(self, z: torch.Tensor, index: Any = None) -> torch.Tensor:
        mean = z @ self.w.T + self.mu_x
        return torch.cat([mean, torch.full_like(mean, math.log(self.noise))], dim=-1)

    def covariance(self) -> torch.Tensor:
        """Marginal covariance ``W W^T + sigma^2 I`` of ``x`` (float64)."""
        w = self.w.double()
        return w @ w.T + self.noise**2 * torch.eye(w.shape[0], dtype=torch.float64)

    def conditional(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact ``E[x | x_obs]`` and ``Var[x_j | x_obs]`` per cell (float64 ``[n, d]``).

        Observed cells get their value and variance 0. Rows are grouped by pattern,
        one solve per distinct pattern.
        """
        x = x.double()
        cov = self.covariance()
        mu = self.mu_x.double()
        mean = torch.where(mask, x, mu.expand_as(x)).clone()
        var = torch.zeros_like(x)
        patterns, inverse = torch.unique(mask, dim=0, return_inverse=True)
        for p, pattern in enumerate(patterns):
            rows = inverse == p
            o, m = pattern, ~pattern
            if not m.any():
                continue
            if not o.any():
                var[rows] = torch.where(m, torch.diagonal(cov), torch.zeros(()).double())
                continue
            s_oo = cov[o][:, o]
            s_mo = cov[m][:, o]
            gain = torch.linalg.solve(s_oo, s_mo.T).T  # [m, o]
            dev = x[rows][:, o] - mu[o]
            cm = mu[m] + dev @ gain.T
            block = mean[rows]
            block[:, m] = cm
            mean[rows] = block
            cond_var = torch.diagonal(cov[m][:, m] - gain @ s_mo.T)
            v = var[rows]
            v[:, m] = cond_var
            var[rows] = v
        return mean, var
