"""Built-in search spaces.

The presets live here, in code; ``search_spaces/<name>.json`` at the repository root
are user-facing copies written by ``scripts/write_presets.py`` (a test checks that
they still match).

* ``default`` — every built-in family that assumes the missingness ignorable (MCAR or
  MAR) with its own space; moderate training ranges. This includes the classical
  baselines ``mean``, ``em``, ``knn``, ``mice`` and ``missforest`` (closed form, small spaces),
  so a study can pick them when they win. not-MIWAE is left to ``mnar``: see
  :func:`_ignorable_families`.
* ``quick`` — the same families, small networks, 20-60 epochs, at most 4 refit loops, and the classical
  baselines with cheap settings (at most 4 MissForest rounds of 10-30 shallow trees): a
  time-bounded ``run_imputation(model="auto")`` on small data.
* ``mnar`` — not-MIWAE alone with a self-masking missing process whose directions are read from
  the data (``signs="data"``), starting from its defaults (the holdout cannot judge MNAR corrections).
* ``mnar_correction`` — the ``default`` preset's closed-form families (``mean``, ``em``,
  ``knn``, ``mice``, ``missforest``), each trial's imputations then corrected for
  self-masking where the data shows a direction
  (``mnar_correction="selfmasking_data"``, :mod:`ciss_autoimpute.selection`).
* ``cissvae`` — the CISS-VAE package's own space, with epochs and loops sized for a CPU.
"""

from __future__ import annotations

from collections.abc import Callable

from .params import Categorical, Fixed, Float, Int
from .search_space import SearchSpace, default_train_space

__all__ = ["available_presets", "get_preset"]

_BUILTIN_MODULE = "ciss_autoimpute.models.families"


def _builtin_families() -> list[str]:
    """Registered families shipped with the package.

    Families registered by the user (or by a test) are left out so a preset means the
    same thing everywhere and matches its file in ``search_spaces/``.
    """
    from ..models import registry

    return [
        name
        for name in registry.available_models()
        if registry.get_model_class(name).__module__.startswith(_BUILTIN_MODULE)
    ]


def _ignorable_families() -> list[str]:
    """Built-in families that do not model the missingness mechanism (all but not-MIWAE).

    The validation holdout hides observed cells, which are observed whatever the
    mechanism; a model of p(s | x) imputes them as cells that were observed, while it
    shifts the truly missing ones by what it learned about p(s | x). So the holdout
    scores not-MIWAE's MAR-like part and is blind to the shift. Under MAR a spurious
    self-masking fit then wins the holdout and loses on the missing cells: on the
    benchmark, studies over all families picked not-MIWAE on wine (MAR, 30 %) and
    penguins (MAR) and scored 0.994 and 0.764 standardised RMSE where KNN and
    HyperImpute reached 0.755 and 0.579. Data believed MNAR goes to the ``mnar`` preset.
    """
    from ..models import registry

    return [n for n in _builtin_families() if not getattr(registry.get_model_class(n), "models_missingness", False)]


def _default() -> SearchSpace:
    """The ignorable-missingness families, each with its own space, and :func:`default_train_space`."""
    return SearchSpace(_ignorable_families(), train=default_train_space())


def _quick() -> SearchSpace:
    """Small and fast, for a time-bounded tuning run on small data.

    One or two hidden layers of 32 or 64 units, a latent space of 2-16 dimensions,
    10 importance samples for the importance-weighted families; 20-60 epochs of
    initial training and at most 4 refit loops of 20 epochs. The classical baselines
    are in too, kept cheap: ``knn`` with 3-15 neighbours, ``mice`` with 3-10 rounds,
    ``missforest`` with 2-4 rounds of 10-30 trees of depth 8 or 16 on ``sqrt(d)``
    features per split (its default takes minutes on a few thousand rows).
    """
    small = {
        "num_hidden_layers": Int(1, 2),
        "hidden_dim": Categorical((32, 64)),
        "latent_dim": Int(2, 16, log=True),
    }
    per_family = {
        "cissvae": {**small, "num_shared_encode": Categorical((0, 1)), "num_shared_decode": Categorical((0, 1))},
        "vae": dict(small),
        "miwae": {**small, "n_samples": Fixed(10)},
        "gain": {"num_hidden_layers": Int(1, 2), "hidden_dim": Categorical((32, 64))},
        "mida": {"n_layers": Int(1, 2)},
        # The classical baselines, kept cheap: few rounds, small forests.
        "knn": {"n_neighbors": Int(3, 15)},
        "mice": {"max_iter": Int(2, 6)},
        # MissForest costs about max_iter x columns forest fits; its default (5 rounds of
        # 50 full-depth trees) took 80 s on 2000 x 10 on a busy 2-core machine, so quick
        # keeps it to 2-4 rounds of 10-30 depth-limited trees on sqrt(d) features.
        "missforest": {
            "n_estimators": Int(10, 30, step=10),
            "max_depth": Categorical((8, 16)),
            "max_features": Fixed("sqrt"),
            "max_iter": Int(2, 4),
        },
    }
    families = {name: per_family.get(name, {}) for name in _ignorable_families()}
    train = {
        "epochs": Int(20, 60, step=20),
        "lr": Float(1e-3, 1e-2, log=True),
        "batch_size": Categorical((64, 128)),
        "decay_factor": Fixed(1.0),
        "max_loops": Fixed(4),
        "patience": Fixed(2),
        "epochs_per_loop": Fixed(20),
    }
    return SearchSpace(families, train=train)


def _mnar() -> SearchSpace:
    """not-MIWAE alone, with a self-masking missing process, over the usual architecture ranges.

    For data you believe to be missing not at random. The study's first trial is
    not-MIWAE's default configuration (the warm start of a single-family space), so the
    tested defaults are always among the finished trials.

    MIWAE (which assumes MAR) is not in it: the validation holdout is a random share of
    the *observed* cells, so it cannot reward a model for getting the missing cells'
    shift right, and a MAR model that predicts observed-like values well would win it
    for the wrong reason. The same blind spot is why the missing process is fixed to
    ``"selfmasking"``: given the choice, the holdout preferred the ``linear`` and
    ``nonlinear`` processes, whose missing cells can drift far beyond the observed
    values where the holdout cannot see (under the not-MIWAE paper's protocol,
    concrete 2.16 and yeast 2.51 RMSE against the column mean's 1.85 and 1.73). Use
    them through ``SearchSpace({"notmiwae": {"missing_process": ...}})`` if you can
    validate on planted MNAR masks.

    The self-masking directions come from the data: ``"selfmasking_known_signs"`` with
    ``signs="data"`` fixes each numeric column's direction where
    :func:`~ciss_autoimpute.data.diagnostics.missingness_direction_evidence` calls one
    and learns the others. Learned freely, a trial can settle on the wrong direction for
    a column, which the holdout cannot see. If you know the directions, pass them:
    ``SearchSpace({"notmiwae": {"missing_process": "selfmasking_known_signs", "signs": [...]}})``.
    """
    families = {"notmiwae": {"missing_process": Fixed("selfmasking_known_signs"), "signs": Fixed("data")}}
    return SearchSpace(families, train=default_train_space())


def _mnar_correction() -> SearchSpace:
    """The closed-form families of the ``default`` preset with a self-masking correction on every trial.

    For data believed missing not at random by self-masking when some values beyond
    the threshold are still observed (a column loses part of its high values, not all
    of them). The holdout picks the family (``mean``, ``em``, ``knn``, ``mice``,
    ``missforest``, each with its own space) that predicts a column best from the
    others, as under MAR, which is what the correction needs; each trial then fits a
    selection model per numeric column on its holdout predictions
    (:class:`~ciss_autoimpute.selection.SelfMaskingCorrection`) and moves the missing
    cells of the columns where
    :func:`~ciss_autoimpute.data.diagnostics.missingness_direction_evidence` calls the
    same direction. The holdout score itself is not changed by the correction (it is
    made on observed cells), so trials are compared as under the ``default`` preset.

    The trained families are left out: the correction moved their imputations less
    (wine, every column self-masked, 30 %: EM 1.051 -> 0.859, MissForest 1.006 -> 0.833,
    MIWAE 1.072 -> 0.964, VAE 1.079 -> 1.002), and a study that could pick them chose
    MIWAE there on the holdout and scored 0.920 after the correction. When a column's every
    value beyond a threshold is missing (a censored column, as in the not-MIWAE paper's
    protocol) the selection model has no observed value past the threshold to fit its
    shape on, and the ``mnar`` preset (not-MIWAE) does better: see
    ``docs/bench_accuracy.md``.
    """
    from ..models import registry

    closed_form = [n for n in _ignorable_families() if not getattr(registry.get_model_class(n), "trainable", True)]
    return SearchSpace(closed_form, train={"mnar_correction": Fixed("selfmasking_data")})


def _cissvae() -> SearchSpace:
    """The CISS-VAE package's default autotune space, sized for a CPU.

    Kept from CISS-VAE: 1-4 hidden layers, each 64 or 512 units; latent dimension 10
    or 100; latent and output layers shared or not; 0, 1 or 3 shared encoder and
    decoder layers placed at the start, at the end, alternating or at random;
    lr in ``[1e-4, 1e-3]``; per-epoch decay in ``[0.9, 0.999]``; beta 0.01; batch
    size 64; refit patience 2; learning rate reset for refit or not; ReLU
    activations and the masked squared-error loss (``likelihood="gaussian_fixed"``),
    which CISS-VAE does not tune.

    Departures: 200 initial epochs instead of 1000, at most 20 refit loops of 50
    epochs instead of 100 loops of 1000 (patience 2 stops far earlier anyway); the
    learning rate is sampled on a log scale (CISS-VAE samples it uniformly, which
    spends 90 % of trials in the top decade); 3 shared layers in a network of fewer
    layers means all layers shared.
    """
    placements = Categorical(("at_end", "at_start", "alternating", "random"))
    families = {
        "cissvae": {
            "num_hidden_layers": Int(1, 4),
            "hidden_dim": Categorical((64, 512)),
            "latent_dim": Categorical((10, 100)),
            "latent_shared": Categorical((True, False)),
            "output_shared": Categorical((True, False)),
            "beta": Fixed(0.01),
            "activation": Fixed("relu"),
            "likelihood": Fixed("gaussian_fixed"),
            "num_shared_encode": Categorical((0, 1, 3)),
            "num_shared_decode": Categorical((0, 1, 3)),
            "encoder_shared_placement": placements,
            "decoder_shared_placement": placements,
        }
    }
    train = {
        "epochs": Fixed(200),
        "lr": Float(1e-4, 1e-3, log=True),
        "decay_factor": Float(0.9, 0.999),
        "batch_size": Fixed(64),
        "max_loops": Fixed(20),
        "patience": Fixed(2),
        "epochs_per_loop": Fixed(50),
        "reset_lr_refit": Categorical((True, False)),
    }
    return SearchSpace(families, train=train)


_PRESETS: dict[str, Callable[[], SearchSpace]] = {
    "cissvae": _cissvae,
    "default": _default,
    "mnar": _mnar,
    "mnar_correction": _mnar_correction,
    "quick": _quick,
}


def available_presets() -> list[str]:
    """Names of the built-in search spaces, sorted.

    Examples
    --------
    >>> available_presets()
    ['cissvae', 'default', 'mnar', 'mnar_correction', 'quick']
    """
    return sorted(_PRESETS)


def get_preset(name: str) -> SearchSpace:
    """The built-in search space ``name`` (also :meth:`SearchSpace.preset`).

    Raises
    ------
    ValueError
        If ``name`` is not a preset; the message lists the presets.
    """
    if not isinstance(name, str) or name not in _PRESETS:
        raise ValueError(f"Unknown search-space preset {name!r}; available presets are {available_presets()}.")
    return _PRESETS[name]()
