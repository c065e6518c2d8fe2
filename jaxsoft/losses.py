"""Losses: classification (cross-entropy, NLL, entropy, KL) and large-vocabulary softmax losses.

* :func:`cross_entropy` and :func:`nll_loss` take the logits or
  log-probabilities themselves, with PyTorch's options (``weight``,
  ``ignore_index``, ``label_smoothing``, ``reduction``); :func:`entropy` and
  :func:`kl_divergence` take probabilities.
* :func:`linear_cross_entropy` is ``cross_entropy(hidden @ weight + bias,
  labels)`` without materializing the ``[tokens, vocab]`` logits (with
  ``mesh=``/``axis_name=``, the vocabulary split over devices), and
  :func:`sampled_softmax_cross_entropy` estimates the normalizer from a few
  sampled classes.
* :func:`adaptive_log_softmax` and :func:`adaptive_log_prob` are the
  adaptive softmax (Grave et al., 2017) with PyTorch's parameter layout,
  made by :func:`init_adaptive_softmax`.

Integer labels mean the same to every loss that takes them: a counted label
outside ``[0, C)`` raises when the labels are concrete and gives a NaN loss
under ``jit``; an example excluded by ``ignore_index`` or ``where`` (where a
loss offers them) contributes exactly 0 whatever its label; a ``"mean"`` over
no counted example is 0.
"""

from jaxsoft._adaptive_softmax import (
  AdaptiveSoftmaxOutput,
  adaptive_log_prob,
  adaptive_log_softmax,
  init_adaptive_softmax,
)
from jaxsoft._classification import cross_entropy, entropy, generalized_kl_divergence, kl_divergence, nll_loss
from jaxsoft._vocab import linear_cross_entropy, sampled_softmax_cross_entropy

__all__ = [
  "cross_entropy",
  "nll_loss",
  "entropy",
  "kl_divergence",
  "generalized_kl_divergence",
  "linear_cross_entropy",
  "sampled_softmax_cross_entropy",
  "AdaptiveSoftmaxOutput",
  "adaptive_log_softmax",
  "adaptive_log_prob",
  "init_adaptive_softmax",
]
