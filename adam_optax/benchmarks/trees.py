"""The parameter trees the benchmark times, as shapes, at three scales.

``full`` is the size on a GPU (and the one the design's H100 table uses);
``cpu`` is scaled down to run in minutes on a few cores; ``quick`` runs in
seconds (CI). The GPT-2-small tree follows GPT-2 small's configuration
(vocabulary 50,257, context 1,024, width 768, 12 layers): token and position
embeddings, two layer norms, the attention's ``c_attn``/``c_proj`` and the
MLP's ``c_fc``/``c_proj`` (weights and biases) per layer, and the final layer
norm: 2 + 12 x 12 + 2 = 148 leaves, 124M parameters.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

Shapes = dict[str, tuple[int, ...]]
_FLOAT32 = np.dtype(np.float32)


@dataclasses.dataclass(frozen=True)
class TreeSpec:
  """One benchmark tree: leaf shapes, the params' dtype and the moments' dtype.

  Attributes:
    name: the name shown in the table and accepted by ``--trees``.
    shapes: leaf name -> shape (the tree is a flat dict of them).
    dtype: the params' (and gradients') dtype.
    moment_dtype: the storage dtype asked for the moments.
  """

  name: str
  shapes: Shapes
  dtype: np.dtype = _FLOAT32
  moment_dtype: np.dtype = _FLOAT32

  @property
  def size(self) -> int:
    """The number of parameters."""
    return sum(math.prod(s) for s in self.shapes.values())


def gpt2_shapes(vocab: int, context: int, width: int, layers: int) -> Shapes:
  """The 4 + 12 * layers leaves of a GPT-2 model of this configuration."""
  shapes: Shapes = {"wte": (vocab, width), "wpe": (context, width)}
  for layer in range(layers):
    for name, shape in {
      "ln_1.g": (width,),
      "ln_1.b": (width,),
      "attn.c_attn.w": (width, 3 * width),
      "attn.c_attn.b": (3 * width,),
      "attn.c_proj.w": (width, width),
      "attn.c_proj.b": (width,),
      "ln_2.g": (width,),
      "ln_2.b": (width,),
      "mlp.c_fc.w": (width, 4 * width),
      "mlp.c_fc.b": (4 * width,),
      "mlp.c_proj.w": (4 * width, width),
      "mlp.c_proj.b": (width,),
    }.items():
      shapes[f"h{layer:02d}.{name}"] = shape
  shapes["ln_f.g"], shapes["ln_f.b"] = (width,), (width,)
  return shapes


_SCALES = {
  # one leaf, GPT-2 (vocab, context, width, layers), many leaves (count, size)
  "full": (1 << 28, (50257, 1024, 768, 12), (2000, 4096)),
  "cpu": (1 << 24, (50257, 1024, 96, 12), (2000, 4096)),
  "quick": (1 << 16, (1000, 64, 16, 1), (8, 256)),
}

TREE_NAMES = ("one-leaf", "gpt2", "many-leaves", "gpt2-bf16")


def tree_specs(scale: str) -> dict[str, TreeSpec]:
  """The benchmark trees at ``scale`` (``"full"``, ``"cpu"`` or ``"quick"``)."""
  one, gpt2, (count, size) = _SCALES[scale]
  gpt2_tree = gpt2_shapes(*gpt2)
  specs = [
    TreeSpec("one-leaf", {"w": (one,)}),
    TreeSpec("gpt2", gpt2_tree),
    TreeSpec("many-leaves", {f"w{i:04d}": (size,) for i in range(count)}),
    TreeSpec("gpt2-bf16", gpt2_tree, dtype=jnp.dtype(jnp.bfloat16)),
  ]
  return {spec.name: spec for spec in specs}


def arrays(spec: TreeSpec, value: float) -> dict[str, np.ndarray]:
  """Host arrays of ``spec``'s shapes filled with ``value`` (cheap to make)."""
  return {name: np.full(shape, value, spec.dtype) for name, shape in spec.shapes.items()}
