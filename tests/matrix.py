"""The optimizers under test: one table that every test file draws from.

As optax's ``_OPTIMIZERS_UNDER_TEST``: each entry pairs an adam_optax
optimizer with the optax optimizer of the same name, which takes the same
positional parameters, so a test can build both from one set of arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import optax

import adam_optax as ao

Factory = Callable[..., optax.GradientTransformation]

OPTIMIZERS: dict[str, tuple[Factory, Factory]] = {
  "adam": (ao.adam, optax.adam),
  "adamw": (ao.adamw, optax.adamw),
  "nadam": (ao.nadam, optax.nadam),
  "nadamw": (ao.nadamw, optax.nadamw),
  "adamax": (ao.adamax, optax.adamax),
  "amsgrad": (ao.amsgrad, optax.amsgrad),
}
NAMES = sorted(OPTIMIZERS)

#: The optimizers whose moments take ``mu_dtype``/``nu_dtype`` (AdaMax's do not).
WITH_STORAGE = tuple(name for name in NAMES if name != "adamax")

#: Params dtypes every optimizer supports.
FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def both(name: str, *args: Any, **kwargs: Any) -> tuple[optax.GradientTransformation, ...]:
  """``(ao.<name>(*args, **kwargs), optax.<name>(*args, **kwargs))``."""
  ours, theirs = OPTIMIZERS[name]
  return ours(*args, **kwargs), theirs(*args, **kwargs)


def ours(name: str, *args: Any, **kwargs: Any) -> optax.GradientTransformation:
  """``ao.<name>(*args, **kwargs)``."""
  return OPTIMIZERS[name][0](*args, **kwargs)
