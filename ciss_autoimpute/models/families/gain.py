"""GAIN (Yoon, Jordon & van der Schaar, 2018): generative adversarial imputation nets.

A generator fills the missing cells; a discriminator, given the completed row and a
*hint* about the mask, guesses which cells were observed. The generator is trained to
make the discriminator wrong on the cells it filled while reconstructing the
observed cells; the two networks are updated by two optimisers, declared through
:meth:`~ciss_autoimpute.models.base.ImputationModel.update_steps`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from ...data.layout import FeatureLayout
from ...tuning.params import Categorical, Float, Int, Param
from ..base import ImputationModel, LossOutput, UpdateStep
from ..layers import ACTIVATIONS, MLP, ClusterLinear
from ..likelihoods import MixedLikelihood
from ..registry import register_model
from ._common import check_choice, check_dims, check_float, check_n, default_generator, keep_observed

__all__ = ["GAIN"]


def unit_mask(likelihood: MixedLikelihood, mask: torch.Tensor) -> torch.Tensor:
    """Per-unit mask ``[..., n_units]`` from a per-column one: numeric columns, binary
    columns, then one entry per categorical group (read at its first column)."""
    return torch.cat(
        [mask[..., likelihood.numeric_idx], mask[..., likelihood.binary_idx], mask[..., likelihood.cat_group_first]],
        dim=-1,
    )


def reconstruction_error(
    likelihood: MixedLikelihood, raw: torch.Tensor, x: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Mean reconstruction error over the observed units of a batch.

    Squared error for numeric cells, binary cross-entropy for binary cells and
    cross-entropy for categorical groups (each group is one unit), all read from the
    ``"gaussian_fixed"`` head's raw output ``raw [n, n_params]``. Returns ``total`` (the
    mean over every observed unit, differentiable) and the detached means ``mse``,
    ``bce``, ``ce`` of each kind (0 when the batch has none).
    """
    units = likelihood.log_prob_units(raw, x, mask)
    m_num = mask[..., likelihood.numeric_idx]
    x_num = torch.where(m_num, x[..., likelihood.numeric_idx], torch.zeros((), dtype=x.dtype, device=x.device))
    # The squared error directly (not -2 * log-density) so no constant enters the parts.
    se = (x_num - likelihood.split(raw)["mean"]) ** 2 * m_num
    bce, ce = -units["binary"], -units["categorical"]
    counts = [m_num.sum(), mask[..., likelihood.binary_idx].sum(), mask[..., likelihood.cat_group_first].sum()]
    sums = [se.sum(), bce.sum(), ce.sum()]
    total = (sums[0] + sums[1] + sums[2]) / (counts[0] + counts[1] + counts[2]).clamp_min(1)
    out = {"total": total}
    for key, s, c in zip(("mse", "bce", "ce"), sums, counts):
        out[key] = (s / c.clamp_min(1)).detach()
    return out


@register_model
class GAIN(ImputationModel):
    """Generative adversarial imputation nets with the hint mechanism.

    * **Generator** ``G``: reads the row with its missing cells set to the current
      filler plus Gaussian noise (``noise_scale`` on the standardised scale) and the
      mask, and outputs every cell: numeric values (linear), binary probabilities
      (sigmoid), categorical class probabilities (softmax within each group). The
      completed row ``x_hat`` keeps the observed cells and takes ``G``'s output
      elsewhere.
    * **Discriminator** ``D``: reads ``x_hat`` and the hint ``h`` and outputs, per
      *unit* (numeric column, binary column, categorical group), the probability that
      the unit was observed. Hint: ``b ~ Bernoulli(hint_rate)`` per unit and
      ``h = b * m + 0.5 * (1 - b)``, so ``D`` is told the truth on the units with
      ``b = 1`` and must guess on the others.
    * **Discriminator loss**: binary cross-entropy between ``D(x_hat, h)`` and the
      mask, averaged over the units with ``b = 0`` (the paper's form: revealed units
      teach ``D`` nothing).
    * **Generator loss**: ``-mean log D(x_hat, h)`` over the missing units with
      ``b = 0`` (fool ``D`` where it must guess) plus ``alpha`` times the
      reconstruction error on the observed units (squared error for numeric cells,
      binary cross-entropy, categorical cross-entropy; each averaged per unit).

    Each training batch first updates ``D`` (with ``G`` fixed), then ``G`` (see
    :meth:`update_steps`); the trainer gives each its own Adam optimiser.

    Parameters
    ----------
    layout
        Encoded schema.
    n_clusters
        Number of missingness clusters (every layer is shared; ids only need to be valid).
    seed
        Seed of the generator all weights are drawn from.
    **params
        See :meth:`default_params`: ``hidden_dims`` (widths of both networks'
        hidden layers), ``activation``, ``hint_rate`` (probability that a unit's
        mask is revealed to ``D``; in ``[0, 1)``), ``alpha`` (weight of the
        reconstruction term), ``noise_scale`` (standard deviation of the input noise
        of the missing cells).

    Notes
    -----
    * ``alpha``: the paper's 100 is for data scaled to ``[0, 1]``. Our numeric
      columns are standardised, where squared errors are about 12 times larger (a
      uniform ``[0, 1]`` column has variance 1/12), so 100 there is about 8 here.
      Because ``G`` sees the observed cells, the reconstruction term mostly teaches
      it to copy its input, which also pulls the missing cells towards their filler
      (the column mean at first): the larger ``alpha``, the closer to mean
      imputation. On small correlated test sets (300 rows, 30 % missing) ``alpha =
      3`` gave 10-25 % lower validation error than 10 and much lower than 100, so
      the default is 3 and the search space spans ``[0.5, 50]``.
    * :meth:`impute` is deterministic: the noise is set to its mean (zero), so a
      single imputation does not depend on the generator.
    * :meth:`sample_imputations` runs ``G`` with fresh noise for every draw; binary
      cells are then drawn from ``G``'s probabilities and categorical groups from its
      class probabilities, numeric cells take ``G``'s output. GAIN has no noise model
      of its own, so these draws reflect the input noise only and are usually far
      narrower than the real uncertainty: prefer a latent-variable family for
      multiple imputation. The conditional samplers of :mod:`ciss_autoimpute.sampling`
      need a latent-variable family and reject GAIN.
    * :meth:`loss` is the generator's objective (what a single-objective caller
      would minimise); the discriminator's is :meth:`discriminator_loss`.

    References
    ----------
    Yoon, Jordon & van der Schaar (2018), GAIN: Missing data imputation using
    generative adversarial nets, ICML.

    Examples
    --------
    >>> from ciss_autoimpute.data.layout import FeatureLayout
    >>> model = GAIN(FeatureLayout.all_numeric(3), hidden_dims=[8])
    >>> [step.name for step in model.update_steps()]
    ['discriminator', 'generator']
    >>> x = torch.zeros(4, 3); mask = torch.ones(4, 3, dtype=torch.bool)
    >>> model.impute(x, mask, torch.zeros(4, dtype=torch.long)).shape
    torch.Size([4, 3])
    """

    name = "gain"
    accepts_cluster_index = True  # clusters only need to be valid ids here

    def __init__(self, layout: FeatureLayout, n_clusters: int = 1, *, seed: int = 0, **params: Any) -> None:
        super().__init__()
        self._setup(layout, n_clusters, seed, params)
        p = self.params
        d = layout.n_features
        # Fixed unit variance: the numeric output is a plain mean, read by the squared error.
        self.likelihood = MixedLikelihood(layout, "gaussian_fixed")
        n_units = self.likelihood.n_num + self.likelihood.n_bin + self.likelihood.n_groups
        self.n_units = n_units
        widths, act = p["hidden_dims"], p["activation"]
        self.generator_net = MLP(2 * d, widths, activation=act)
        self.generator_out = ClusterLinear(widths[-1], self.likelihood.n_params, float_output=True)
        self.discriminator_net = MLP(d + n_units, widths, activation=act)
        self.discriminator_out = ClusterLinear(widths[-1], n_units, float_output=True)
        self.reset_parameters(self.seed)

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {
            "hidden_dims": [64, 64],
            "activation": "relu",
            "hint_rate": 0.9,
            "alpha": 3.0,
            "noise_scale": 0.1,
        }

    @classmethod
    def search_space(cls) -> dict[str, Param]:
        return {
            "num_hidden_layers": Int(1, 3),
            "hidden_dim": Categorical((32, 64, 128, 256)),
            "activation": Categorical(("relu", "elu", "tanh")),
            "hint_rate": Float(0.5, 0.95),
            "alpha": Float(0.5, 50.0, log=True),
            "noise_scale": Float(0.01, 0.5, log=True),
        }

    @classmethod
    def _check_params(cls, p: dict[str, Any]) -> dict[str, Any]:
        name = cls.name
        out = dict(p)
        out["hidden_dims"] = check_dims(name, "hidden_dims", p["hidden_dims"])
        out["activation"] = check_choice(name, "activation", p["activation"], ACTIVATIONS)
        out["hint_rate"] = check_float(name, "hint_rate", p["hint_rate"])
        if not out["hint_rate"] < 1.0:
            raise ValueError(
                f"{name}: parameter 'hint_rate' must be in [0, 1), got {p['hint_rate']!r}; with 1 the "
                "discriminator is told every mask value and nothing is learned (the paper uses 0.9)."
            )
        out["alpha"] = check_float(name, "alpha", p["alpha"])
        out["noise_scale"] = check_float(name, "noise_scale", p["noise_scale"])
        return out

    def reset_parameters(self, seed: int) -> None:
        """Re-draw every weight from ``torch.Generator().manual_seed(seed)`` (generator first)."""
        g = torch.Generator().manual_seed(int(seed))
        for layer in (self.generator_net, self.generator_out, self.discriminator_net, self.discriminator_out):
            layer.reset_parameters(g)

    # ------------------------------------------------------------------ networks
    def generator_parameters(self) -> list[torch.nn.Parameter]:
        """Weights of ``G``."""
        return [*self.generator_net.parameters(), *self.generator_out.parameters()]

    def discriminator_parameters(self) -> list[torch.nn.Parameter]:
        """Weights of ``D``."""
        return [*self.discriminator_net.parameters(), *self.discriminator_out.parameters()]

    def generate(self, x: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """``G``'s raw output ``[..., n, n_params]``.

        ``x`` ``[n, d]`` holds fillers in the cells where ``mask`` is false; ``noise``
        (standard normal, ``[..., n, d]``, or ``None`` for none) is scaled by
        ``noise_scale`` and added to those cells only.
        """
        m = mask.to(x.dtype)
        x_in = x if noise is None else torch.where(mask, x, x + self.params["noise_scale"] * noise)
        m = m.expand_as(x_in)
        return self.generator_out(self.generator_net(torch.cat([x_in, m], dim=-1)))

    def complete(self, x: torch.Tensor, mask: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        """``x_hat``: observed cells from ``x``, ``G``'s expected values elsewhere."""
        return keep_observed(x, mask, self.likelihood.mean(raw))

    def hint(self, mask_units: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h, b)``: the hint ``b * m + 0.5 * (1 - b)`` and the reveal indicator ``b`` (bool)."""
        u = torch.rand(mask_units.shape, generator=generator, device=mask_units.device)
        b = u < self.params["hint_rate"]
        h = torch.where(b, mask_units.float(), torch.full((), 0.5, device=mask_units.device))
        return h, b

    def discriminate(self, x_hat: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``D``'s logits ``[n, n_units]`` that each unit was observed."""
        return self.discriminator_out(self.discriminator_net(torch.cat([x_hat, h.to(x_hat.dtype)], dim=-1)))

    def _noise(self, shape: torch.Size | tuple[int, ...], like: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return torch.randn(shape, generator=g, device=like.device, dtype=like.dtype)

    def _adversarial_pass(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        clusters: torch.Tensor,
        generator: torch.Generator | None,
        *,
        train_generator: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """What both losses compute: ``G`` completes the batch, ``D`` guesses with a hint.

        Draws the input noise, then the hint, from ``generator`` (in that order, for
        both losses). With ``train_generator`` false ``G`` runs without gradients.
        Returns ``(raw, m_units, b, logits)``: ``G``'s raw output, the per-unit mask,
        the reveal indicator and ``D``'s logits.
        """
        self.check_batch(x, mask, clusters)
        g = default_generator(x.device, generator)
        with torch.set_grad_enabled(train_generator and torch.is_grad_enabled()):
            raw = self.generate(x, mask, self._noise(x.shape, x, g))
            x_hat = self.complete(x, mask, raw)
        m_units = unit_mask(self.likelihood, mask)
        h, b = self.hint(m_units, g)
        return raw, m_units, b, self.discriminate(x_hat, h)

    # ------------------------------------------------------------------ losses
    def discriminator_loss(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        clusters: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> LossOutput:
        """Cross-entropy of ``D``'s guesses on the units whose mask was not revealed (``G`` fixed)."""
        _, m_units, b, logits = self._adversarial_pass(x, mask, clusters, generator, train_generator=False)
        guess = ~b
        bce = F.binary_cross_entropy_with_logits(logits, m_units.to(logits.dtype), reduction="none")
        loss = (bce * guess).sum() / guess.sum().clamp_min(1)
        # Accuracy on the guessed units: 0.5 means G fools D.
        correct = ((logits > 0) == m_units) & guess
        acc = correct.sum() / guess.sum().clamp_min(1)
        return LossOutput(loss=loss, parts={"accuracy": acc.detach().float()})

    def loss(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        clusters: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> LossOutput:
        """The generator's objective: adversarial term + ``alpha`` * reconstruction error."""
        raw, m_units, b, logits = self._adversarial_pass(x, mask, clusters, generator, train_generator=True)
        # -log D on the filled units D had to guess: G wants them called "observed".
        target = ~m_units & ~b
        adv = (F.softplus(-logits) * target).sum() / target.sum().clamp_min(1)
        rec = reconstruction_error(self.likelihood, raw, x, mask)
        loss = adv + self.params["alpha"] * rec["total"]
        parts = {"adversarial": adv.detach(), "reconstruction": rec["total"].detach()}
        for key in ("mse", "bce", "ce"):
            parts[key] = rec[key]
        return LossOutput(loss=loss, parts=parts)

    def update_steps(self) -> list[UpdateStep]:
        """Discriminator first (``G`` fixed), then generator; each with its own optimiser."""
        return [
            UpdateStep("discriminator", self.discriminator_parameters(), self.discriminator_loss),
            UpdateStep("generator", self.generator_parameters(), self.loss),
        ]

    # ------------------------------------------------------------------ imputation
    @torch.no_grad()
    def impute(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        clusters: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        self.check_batch(x, mask, clusters)
        return self.likelihood.mean(self.generate(x, mask, None))

    @torch.no_grad()
    def sample_imputations(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        clusters: torch.Tensor,
        n: int,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        self.check_batch(x, mask, clusters)
        check_n(n)
        g = default_generator(x.device, generator)
        raw = self.generate(x, mask, self._noise((n, *x.shape), x, g))
        draws = self.likelihood.sample(raw, g, numeric_noise=False)
        return keep_observed(x, mask, draws)
