"""The sparse problem of figure 1 (right): bag-of-words documents.

The paper's IMDB reviews are bags of the 10,000 most frequent words; no
package bundles them, so :func:`synthetic_reviews` generates documents with
Zipf-distributed word frequencies and a sentiment carried by the words
(a user brings the real ones with ``--data``,
:func:`~adam_optax.experiments.loaders.load_bag_of_words`). A document is
the list of its distinct words with their values, so a minibatch's
gradient touches only the weights of the words it contains: a sparse
gradient, the case the paper built Adam for.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse

from adam_optax.experiments.data import Dataset, split

VOCABULARY = 10_000
DOCUMENTS = 5_000
WORDS_PER_DOCUMENT = 100
ZIPF_EXPONENT = 1.0
# The most frequent words carry no sentiment (like "the", "a", "movie").
STOP_WORDS = 100
LABEL_NOISE = 0.5
GENERATOR_SEED = 0


class BagOfWords(NamedTuple):
  """Documents as padded lists of distinct words: ``(n, slots)`` each.

  Sparse on purpose: dropout draws one number per word of a document rather
  than one per word of the vocabulary, the cost of a training step on CPU.

  Attributes:
    indices: the word of each slot, int32 in ``0..vocabulary-1``.
    values: its feature value (1 for a binary bag of words), 0 on padding.
  """

  indices: np.ndarray
  values: np.ndarray


def from_csr(matrix: scipy.sparse.csr_matrix) -> BagOfWords:
  """Padded word lists from a sparse document-term matrix (one row per document).

  Examples:
    >>> bag = from_csr(scipy.sparse.csr_matrix([[0, 2, 0], [1, 0, 3]]))
    >>> bag.indices.tolist(), bag.values.tolist()
    ([[1, 0], [0, 2]], [[2.0, 0.0], [1.0, 3.0]])
  """
  matrix = scipy.sparse.csr_matrix(matrix)
  matrix.eliminate_zeros()
  lengths = np.diff(matrix.indptr)
  slots = max(1, int(lengths.max(initial=0)))
  rows = np.repeat(np.arange(matrix.shape[0]), lengths)
  columns = np.arange(matrix.nnz) - np.repeat(matrix.indptr[:-1], lengths)
  indices = np.zeros((matrix.shape[0], slots), np.int32)
  values = np.zeros((matrix.shape[0], slots), np.float32)
  indices[rows, columns] = matrix.indices
  values[rows, columns] = matrix.data
  return BagOfWords(indices, values)


def split_bag(bag: BagOfWords, labels: np.ndarray, vocabulary: int, source: str) -> Dataset:
  """The fixed stratified 80/20 split of :func:`~adam_optax.experiments.data.split`, for a bag."""
  dataset = split(np.arange(len(labels)), labels, source)
  return dataset._replace(
    x_train=BagOfWords(bag.indices[dataset.x_train], bag.values[dataset.x_train]),
    x_test=BagOfWords(bag.indices[dataset.x_test], bag.values[dataset.x_test]),
    input_shape=(vocabulary,),
  )


def synthetic_reviews(
  documents: int = DOCUMENTS, vocabulary: int = VOCABULARY, seed: int = GENERATOR_SEED
) -> Dataset:
  r"""Synthetic binary bag-of-words reviews with Zipf word frequencies.

  Each document draws :data:`WORDS_PER_DOCUMENT` words with
  :math:`p(\text{word } r) \propto r^{-s}` (:data:`ZIPF_EXPONENT`), keeps
  each distinct word once (value 1), and is positive when

  .. math::  \frac{1}{\sqrt{|d|}} \sum_{r \in d} w_r + \sigma \xi > 0,
    \qquad w_r \sim \mathcal N(0, 1),\ \xi \sim \mathcal N(0, 1)

  with :math:`w_r = 0` for the :data:`STOP_WORDS` most frequent words: the
  signal sits in rarer words, whose gradients are sparse.

  Examples:
    >>> reviews = synthetic_reviews(documents=50, vocabulary=300)
    >>> reviews.x_train.indices.shape, reviews.input_shape, sorted(set(reviews.y_train.tolist()))
    ((40, 100), (300,), [0, 1])

  Args:
    documents: the number of documents (80% train, 20% test).
    vocabulary: the number of distinct words.
    seed: the generator's seed.

  Returns:
    The :class:`~adam_optax.experiments.data.Dataset` of
    :class:`BagOfWords`, marked ``synthetic``, its ``source`` saying so.

  References:
    Maas et al., "Learning Word Vectors for Sentiment Analysis", ACL 2011
    (the IMDB reviews); Kingma & Ba, 2015, section 6.1 and figure 1.
  """
  rng = np.random.default_rng(seed)
  frequencies = np.arange(1, vocabulary + 1, dtype=np.float64) ** -ZIPF_EXPONENT
  words = np.sort(
    rng.choice(vocabulary, (documents, WORDS_PER_DOCUMENT), p=frequencies / frequencies.sum()),
    axis=1,
  )
  first = np.ones_like(words, dtype=bool)
  first[:, 1:] = words[:, 1:] != words[:, :-1]  # a repeated word counts once
  sentiment = rng.standard_normal(vocabulary)
  sentiment[:STOP_WORDS] = 0.0
  score = (sentiment[words] * first).sum(axis=1) / np.sqrt(first.sum(axis=1))
  labels = (score + LABEL_NOISE * rng.standard_normal(documents) > 0).astype(np.int32)
  bag = BagOfWords(words.astype(np.int32), first.astype(np.float32))  # repeats have value 0
  source = (
    f"synthetic bag-of-words reviews (not IMDB): {documents:,} documents, {vocabulary:,} words "
    f"with Zipf frequencies (s = {ZIPF_EXPONENT:g}); bring real ones with --data"
  )
  return split_bag(bag, labels, vocabulary, source)._replace(synthetic=True)
