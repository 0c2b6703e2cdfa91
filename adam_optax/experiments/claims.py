"""The paper's claims of section 6, split into parts that one run can check.

A :class:`Claim` is what the paper says about one figure; its :class:`Part` s
are the separate statements in it ("faster than AdaGrad", "as fast as
SGD-Nesterov"), each judged on its own by
:mod:`~adam_optax.experiments.verdicts`. The text of every part is this
project's paraphrase, not a quotation of the paper.

A comparison part orders two settings ``a`` and ``b`` (optimizers, or in
figure 4 Adam with and without bias correction at one ``b1, b2``) on the
claim's statistics, with the claim's :attr:`Claim.margin` fixed here, before
any run:

* ``"better"``: ``a``'s statistic is below ``b``'s by more than the margin;
* ``"not worse"``: ``a``'s is not above ``b``'s by more than the margin;
* ``"similar"``: they are within the margin of each other, either way.

Figure 4's other two parts count step sizes instead: ``"unstable"`` (without
bias correction some step sizes diverge, or end
:data:`INSTABILITY` above Adam with bias correction at the same step size and
seed) and ``"never diverges"``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from adam_optax.experiments.problems import PROBLEMS
from adam_optax.experiments.report import AREA, EARLY, FINAL, Record, selection

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
# A setting: an optimizer's name, or (variant, b1, b2) in the bias-correction study.
Key = str | tuple[str, float, float]
Kind = Literal["better", "not worse", "similar", "unstable", "never diverges"]

# The margins, fixed before any run (see the module docstring of verdicts for the reason).
# Losses that fall towards 0 (the classifiers, drawn on a log axis): a factor 1.1.
CLASSIFIER_MARGIN = 0.10
# The VAE's -ELBO stays far above 0 (the data's own entropy): 1%.
VAE_MARGIN = 0.01
# Figure 4: a step size is unstable without bias correction where a run diverges or ends
# (or passes the first tenth) this much above Adam with bias correction.
INSTABILITY = 0.10
# Figure 4: "beta2 close to 1", the largest beta2 of the study.
NEAR_ONE = 0.9999
UNCORRECTED = "adam_no_bias_correction"


@dataclasses.dataclass(frozen=True)
class Part:
  """One statement of a claim, judged on its own.

  Attributes:
    text: the statement, in this project's words (a paraphrase of the paper).
    kind: how it is judged (see the module docstring).
    pairs: the ``(a, b)`` settings it orders (every pair must hold); for
      ``"unstable"``, ``(without, with)`` bias correction at one ``b1, b2``.
    settings: for ``"never diverges"``, the settings none of whose runs may diverge.
  """

  text: str
  kind: Kind
  pairs: tuple[tuple[Key, Key], ...] = ()
  settings: tuple[Key, ...] = ()


@dataclasses.dataclass(frozen=True)
class Claim:
  """What the paper says about one figure of section 6.

  Attributes:
    figure: the paper's figure, e.g. ``"1 (left)"``.
    section: the paper's section, e.g. ``"6.1"``.
    problem: the problem that reruns it.
    topic: what the figure shows, in a few words.
    parts: its statements.
    margin: the relative margin of its comparisons.
    statistics: the statistics each comparison is judged on (each must hold).
    check: a statistic that does not judge but can contradict: where a seed
      is lower on the judged statistic and higher on this one (or the
      reverse), the curves cross and the verdict is inconclusive.
    select: the statistic that picks each setting's best learning rate, at
      which every statistic is read (one curve per setting, as drawn); or
      ``None``: each statistic at its own best (figure 4 draws each
      checkpoint's loss against the step size).
  """

  figure: str
  section: str
  problem: str
  topic: str
  parts: tuple[Part, ...]
  margin: float = CLASSIFIER_MARGIN
  statistics: tuple[str, ...] = (AREA,)
  check: str | None = FINAL
  select: str | None = AREA

  @property
  def reference(self) -> str:
    """Where in the paper: ``"§6.1, fig. 1 (left)"``."""
    return f"§{self.section}, fig. {self.figure}"


def _faster(a: str, b: str, label_a: str, label_b: str) -> Part:
  return Part(f"{label_a} converges faster than {label_b}", "better", ((a, b),))


SGD = "SGD with Nesterov momentum"
_BETAS = tuple((b1, b2) for b1 in (0.0, 0.9) for b2 in (0.99, 0.999, 0.9999))

CLAIMS = (
  Claim(
    "1 (left)",
    "6.1",
    "logreg",
    "L2-regularized logistic regression",
    (
      _faster("adam", "adagrad", "Adam", "AdaGrad"),
      Part(f"Adam converges at least as fast as {SGD}", "not worse", (("adam", "sgd_nesterov"),)),
    ),
  ),
  Claim(
    "1 (right)",
    "6.1",
    "bow",
    "logistic regression on sparse bag-of-words features",
    (
      Part("Adam and AdaGrad converge about equally fast", "similar", (("adam", "adagrad"),)),
      _faster("adam", "sgd_nesterov", "Adam", SGD),
      _faster("adagrad", "sgd_nesterov", "AdaGrad", SGD),
    ),
  ),
  Claim(
    "2",
    "6.2",
    "mlp",
    "multilayer perceptron with dropout",
    tuple(
      _faster("adam", other, "Adam", label)
      for other, label in (
        ("sgd_nesterov", SGD),
        ("adagrad", "AdaGrad"),
        ("rmsprop", "RMSProp"),
        ("adadelta", "AdaDelta"),
      )
    ),
  ),
  Claim(
    "3",
    "6.3",
    "cnn",
    "convolutional network",
    (
      _faster("adam", "adagrad", "Adam", "AdaGrad"),
      _faster("sgd_nesterov", "adagrad", SGD, "AdaGrad"),
      Part(f"Adam converges at least as fast as {SGD}", "not worse", (("adam", "sgd_nesterov"),)),
    ),
  ),
  Claim(
    "4",
    "6.4",
    "vae",
    "variational autoencoder, Adam with and without bias correction",
    (
      Part(
        f"Without bias correction, β2 close to 1 ({NEAR_ONE:g}) makes large step sizes unstable",
        "unstable",
        tuple(((UNCORRECTED, b1, NEAR_ONE), ("adam", b1, NEAR_ONE)) for b1 in (0.0, 0.9)),
      ),
      Part(
        "With bias correction, Adam at its best step size is never worse than without",
        "not worse",
        tuple((("adam", b1, b2), (UNCORRECTED, b1, b2)) for b1, b2 in _BETAS),
      ),
      Part(
        "With bias correction, no step size of the sweep diverges",
        "never diverges",
        settings=tuple(("adam", b1, b2) for b1, b2 in _BETAS),
      ),
    ),
    margin=VAE_MARGIN,
    statistics=(EARLY, FINAL),
    check=None,
    select=None,
  ),
)


def key_of(record: Record) -> Key:
  """The setting of a record, as parts name it: the optimizer, or (variant, b1, b2)."""
  if PROBLEMS[record["problem"]].study == "bias_correction":
    return (record["optimizer"], record["b1"], record["b2"])
  return record["optimizer"]


def name_of(key: Key) -> str:
  """A setting's name in the text: ``"adam"``, ``"adam (β1 0.9, β2 0.999)"``."""
  if isinstance(key, str):
    return key
  variant, b1, b2 = key
  return f"{variant} (β1 {b1:g}, β2 {b2:g})"


def selecting(problem: str) -> tuple[str, ...]:
  """The statistics whose best learning rates ``problem``'s verdicts read (and must bracket)."""
  claim = next((c for c in CLAIMS if c.problem == problem), None)
  if claim is None:
    return (selection(problem),)
  return (claim.select,) if claim.select else claim.statistics
