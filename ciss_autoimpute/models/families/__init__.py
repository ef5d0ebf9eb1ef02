"""The built-in model families; importing this package registers them.

Each module registers its class with
:func:`~ciss_autoimpute.models.registry.register_model` explicitly.
"""

from .cissvae import CISSVAE, layer_order
from .classical import KNNFamily, MeanFamily, MICEFamily, MissForestFamily
from .gaussian_em import GaussianEMFamily
from .gain import GAIN
from .mida import MIDA
from .miwae import MIWAE
from .notmiwae import NotMIWAE
from .vae import VAE

__all__ = [
    "CISSVAE", "GAIN", "GaussianEMFamily", "KNNFamily", "MICEFamily", "MIDA", "MIWAE", "MeanFamily", "MissForestFamily",
    "NotMIWAE",
    "VAE", "layer_order",
]
