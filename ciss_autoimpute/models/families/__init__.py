"""The built-in model families; importing this package registers them.

Each module registers its class with
:func:`~ciss_autoimpute.models.registry.register_model` explicitly.
"""

from .cissvae import CISSVAE, layer_order
from .miwae import MIWAE
from .notmiwae import NotMIWAE
from .vae import VAE

__all__ = ["CISSVAE", "MIWAE", "NotMIWAE", "VAE", "layer_order"]
