r"""The fast path: parameters in one flat buffer per dtype, the tree a view of it.

An Adam step reads :math:`p, g, m, v` and writes :math:`p, m, v`: 28 bytes per
float32 parameter, and nothing else. Over a tree of many arrays the time goes
elsewhere: every array that crosses the ``jit`` boundary costs a few
microseconds of host dispatch, and every leaf is its own kernel. Keeping the
parameters in a :class:`FlatParams` (one 1-D buffer per dtype) removes both:
:func:`ao.adam <adam_optax.adam>` on it sees one leaf per dtype (a flat
buffer is a pytree), the model sees :meth:`FlatParams.tree`, a view made by
static slicing inside the jitted step, and the gradient of a loss of that view
comes out flat. :func:`update_and_apply` runs the update and
:func:`optax.apply_updates`, and :func:`flat_train_step` puts it together into
a jitted step that donates its buffers, so that it needs params + grads +
state and no further full-size copy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from adam_optax._flat_buffers import FlatParams, Layout, flatten_params

__all__ = [
  "FlatParams",
  "Layout",
  "flat_train_step",
  "flatten_params",
  "update_and_apply",
]


def update_and_apply(
  tx: optax.GradientTransformation,
  grads: optax.Updates,
  opt_state: optax.OptState,
  params: optax.Params,
  **extra_args: Any,
) -> tuple[optax.Params, optax.OptState]:
  r"""``tx.update`` followed by :func:`optax.apply_updates`.

  .. math::

    (u_t, s_t) = \mathrm{tx.update}(g_t, s_{t-1}, \theta_{t-1}), \qquad
    \theta_t = \theta_{t-1} + u_t

  Exactly these two calls, for writing a jitted step of one's own
  (:func:`flat_train_step` is one); on a :class:`FlatParams` both see one
  leaf per dtype.

  Examples:
    >>> import jax.numpy as jnp, adam_optax as ao
    >>> from adam_optax.flat import update_and_apply
    >>> tx = ao.adam(0.1)
    >>> params = jnp.zeros(3)
    >>> params, state = update_and_apply(tx, jnp.ones(3), tx.init(params), params)
    >>> params
    Array([-0.1, -0.1, -0.1], dtype=float32)

  Args:
    tx: any gradient transformation.
    grads: the gradients, like ``params``.
    opt_state: the state of ``tx``.
    params: the parameters.
    **extra_args: passed on to ``tx.update``.

  Returns:
    ``(new_params, new_opt_state)``.

  References:
    Kingma & Ba, 2015, Algorithm 1, lines 7-12.
  """
  updates, opt_state = tx.update(grads, opt_state, params, **extra_args)
  return optax.apply_updates(params, updates), opt_state


def flat_train_step(
  loss_fn: Callable[..., Any],
  tx: optax.GradientTransformation,
  *,
  has_aux: bool = False,
) -> Callable[..., tuple[FlatParams, optax.OptState, Any]]:
  r"""A jitted training step that keeps the parameters flat and donates them.

  .. math::

    g_t = \nabla_\theta\, \mathrm{loss}(\mathrm{tree}(\theta_{t-1}), \ldots),
    \qquad (\theta_t, s_t) = \mathrm{update\_and\_apply}(g_t, s_{t-1}, \theta_{t-1})

  ``loss_fn`` sees the tree (:meth:`FlatParams.tree`), the gradient comes
  out as a :class:`FlatParams`, and the params and optimizer state are
  donated (``donate_argnums=(0, 1)``), so the step needs params + grads +
  state and no further full-size copy. Do not use the arrays passed in
  after the call.

  Examples:
    >>> import jax.numpy as jnp, adam_optax as ao
    >>> from adam_optax.flat import flat_train_step, flatten_params
    >>> loss = lambda p, x: jnp.sum((p["w"] * x - 1.0) ** 2)
    >>> flat = flatten_params({"w": jnp.zeros(2)})
    >>> tx = ao.adam(0.1)
    >>> step = flat_train_step(loss, tx)
    >>> flat, state, value = step(flat, tx.init(flat), jnp.ones(2))
    >>> flat.tree()["w"]
    Array([0.1, 0.1], dtype=float32)

  Args:
    loss_fn: ``loss_fn(params_tree, *args) -> loss`` (or ``(loss, aux)``).
    tx: any gradient transformation, e.g. :func:`ao.adam <adam_optax.adam>`.
    has_aux: ``loss_fn`` returns ``(loss, aux)``.

  Returns:
    ``step(flat_params, opt_state, *args) -> (flat_params, opt_state, loss)``
    (``loss`` is ``(loss, aux)`` with ``has_aux``).

  References:
    Kingma & Ba, 2015, Algorithm 1.
  """

  def step(flat: FlatParams, opt_state: optax.OptState, *args: Any) -> tuple[Any, Any, Any]:
    value, grads = jax.value_and_grad(lambda f: loss_fn(f.tree(), *args), has_aux=has_aux)(flat)
    flat, opt_state = update_and_apply(tx, grads, opt_state, flat)
    return flat, opt_state, value

  return jax.jit(step, donate_argnums=(0, 1))
