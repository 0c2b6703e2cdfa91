"""adam_optax: Adam (Kingma & Ba, 2015) from small, pure, composable optax pieces.

The public names are those ``__init__.pyi`` imports. Each module is imported when one of
its names is first used (``lazy_loader``), so that ``import adam_optax`` and the
``adam-optax`` command's ``--help`` do not wait for JAX until something needs it.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)

__version__ = "0.1.0"
