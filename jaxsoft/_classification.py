r"""Classification losses: cross-entropy, negative log-likelihood, entropy, KL.

The options follow :func:`torch.nn.functional.cross_entropy` exactly
(``weight``, ``ignore_index``, ``label_smoothing``, ``reduction``), so results
can be checked against PyTorch. One deliberate difference: a ``"mean"`` over
zero counting examples (all ignored, or zero total weight) is 0 with zero
gradients, where PyTorch returns NaN.

Cross-entropy of a softmax is the negative log-likelihood of a categorical
model: minimizing :func:`cross_entropy` is maximum likelihood.

Public through :mod:`jaxsoft.losses` and :mod:`jaxsoft`.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from jaxsoft import _validate as V
from jaxsoft._dtypes import compute_dtype
from jaxsoft._labels import check_where, class_labels
from jaxsoft._reduction import REDUCTIONS, reduce_loss
from jaxsoft.softmax import log_softmax, logsumexp


def _check_scores(fn, name, scores, axis, weight, label_smoothing, reduction):
  """The checks shared by cross_entropy and nll_loss; returns the scores with classes last."""
  V.check_array(fn, name, scores)
  scores = jnp.asarray(scores)
  V.check_floating(fn, name, scores)
  V.check_min_ndim(fn, name, scores, 1)
  (axis,) = V.normalize_axes(fn, "axis", axis, scores.ndim)
  V.check_option(fn, "reduction", reduction, REDUCTIONS)
  V.check_range(fn, "label_smoothing", label_smoothing, 0.0, 1.0)
  if weight is not None:
    weight = jnp.asarray(weight)
    V.check_floating(fn, "weight", weight)
    V.check_shape(fn, "weight", weight, (scores.shape[axis],), f" (one per class of axis {axis})")
  # Classes last: every later step indexes the final axis.
  return jnp.moveaxis(scores, axis, -1), axis, weight


def _times_log(t, log_x):
  """``t * log_x`` with the rule 0 log 0 = 0 where ``log_x`` is -inf and ``t`` is 0, and only there.

  Elsewhere the product stays, so its derivative in ``t`` is ``log_x`` even
  where ``t`` is 0: distillation and label learning differentiate through
  the targets, and a zero target is not a constant. The inner ``where`` keeps
  the cotangent of a ruled-out entry 0 instead of 0 * -inf = NaN.
  """
  return t * jnp.where((t == 0) & (log_x == -jnp.inf), 0, log_x)


def _is_zero(value) -> bool:
  """True for a concrete 0; a traced value is kept (it may be a sweep's tracer)."""
  return isinstance(value, (int, float)) and value == 0


def _index_loss(
  fn, name, scores, labels, nll_at, smooth, *, axis, weight, ignore_index, label_smoothing, where, reduction
):
  """The integer-label path shared by cross_entropy and nll_loss.

  ``nll_at(index)`` gives -log p at the label, ``smooth(w)`` gives
  -sum_c w_c log p_c; both per example. Mirrors PyTorch: the per-example loss
  is (1 - eps) w_y nll_y + eps / C * sum_c w_c nll_c, and the mean divides by
  the sum of w_y over the examples that count.
  """
  num_classes = scores.shape[-1]
  V.check_shape(fn, "labels", labels, scores.shape[:-1], f" (the shape of {name} without axis {axis})")
  y = class_labels(fn, labels, num_classes, ignore_index=ignore_index, where=where)
  dtype = scores.dtype
  w_y = jnp.ones(labels.shape, dtype) if weight is None else weight.astype(dtype)[y.index]
  per = w_y * nll_at(y.index)
  if not _is_zero(label_smoothing):
    w = jnp.ones((num_classes,), dtype) if weight is None else weight.astype(dtype)
    per = (1 - label_smoothing) * per + label_smoothing / num_classes * smooth(w)
  return reduce_loss(y.loss(per), jnp.where(y.keep, w_y, 0), reduction)


def _prob_loss(fn, name, log_p, targets, *, axis, weight, ignore_index, label_smoothing, where, reduction):
  """Probability targets: -sum_c w_c t_c log p_c, mean over counted examples."""
  if ignore_index is not None:
    V.fail(fn, "ignore_index", "be None with probability labels (PyTorch's rule too)", ignore_index)
  num_classes = log_p.shape[-1]
  # Probability targets carry the class axis where the scores have it.
  expected = list(log_p.shape[:-1])
  expected.insert(axis, num_classes)
  V.check_shape(fn, "labels", targets, expected, f" (floating labels are probabilities shaped like {name})")
  targets = jnp.moveaxis(targets, axis, -1).astype(log_p.dtype)
  if not _is_zero(label_smoothing):
    targets = targets * (1 - label_smoothing) + label_smoothing / num_classes
  if weight is not None:
    targets = targets * weight.astype(log_p.dtype)
  per = -jnp.sum(_times_log(targets, log_p), axis=-1)
  keep = check_where(fn, where, per.shape)
  return reduce_loss(jnp.where(keep, per, 0), keep.astype(per.dtype), reduction)


def _loss(fn, name, scores, labels, log_p, nll_at, smooth, **opts):
  """Integer labels go to the index path, floating ones to the probability path."""
  V.check_array(fn, "labels", labels)
  labels = jnp.asarray(labels)
  if jnp.issubdtype(labels.dtype, jnp.integer):
    return _index_loss(fn, name, scores, labels, nll_at, smooth, **opts)
  if jnp.issubdtype(labels.dtype, jnp.floating):
    return _prob_loss(fn, name, log_p(), labels, **opts)
  V.fail(
    fn,
    "labels",
    "have an integer dtype (class indices) or a floating dtype (probabilities)",
    labels.dtype,
    exc=TypeError,
  )


def cross_entropy(
  logits,
  labels,
  *,
  axis=-1,
  weight=None,
  ignore_index=None,
  label_smoothing=0.0,
  where=None,
  reduction="mean",
):
  r"""Cross-entropy between ``softmax(logits)`` and integer or soft labels.

  With class indices :math:`y_i`, class weights :math:`w` and smoothing
  :math:`\varepsilon` over :math:`C` classes, per example

  .. math::
    \ell_i = (1 - \varepsilon)\, w_{y_i} (-\log p_{i y_i})
      + \frac{\varepsilon}{C} \sum_c w_c (-\log p_{ic}),
    \qquad p_i = \mathrm{softmax}(\mathrm{logits}_i)

  and ``"mean"`` is :math:`\sum_i \ell_i / \sum_i w_{y_i}` over the examples
  that count (not ``ignore_index``, ``where`` True), as in PyTorch. With
  probability labels :math:`q_i` (floating, shaped like ``logits``),
  :math:`\ell_i = -\sum_c w_c q_{ic} \log p_{ic}` (after smoothing
  :math:`q \to (1-\varepsilon) q + \varepsilon / C`) and ``"mean"`` divides by
  the number of counted examples. The lecture's
  :math:`H(p, q) = \sum_x p(x) \log 1/q(x)` is
  ``cross_entropy(jnp.log(q), p, reduction="none")``.

  Args:
    logits: floating scores ``[..., C, ...]`` with classes on ``axis``.
    labels: integer class indices shaped like ``logits`` without ``axis``, or
      floating probabilities shaped like ``logits``.
    axis: the class axis.
    weight: optional per-class weights ``[C]``.
    ignore_index: optional label value whose examples are skipped (integer
      labels only).
    label_smoothing: in ``[0, 1]``; mixes the target with the uniform one.
    where: optional boolean broadcastable to the per-example loss shape;
      False skips an example exactly like ``ignore_index``, whatever its label.
    reduction: ``"mean"``, ``"sum"`` or ``"none"``.

  Returns:
    A scalar, or the per-example losses (``logits.shape`` without ``axis``)
    for ``reduction="none"``; skipped examples are 0. In the dtype of logits
    (half precision is computed in float32).

  Raises:
    ValueError: labels out of ``[0, C)`` (other than ``ignore_index`` and
      examples excluded by ``where``) when the labels are concrete. Under
      ``jit`` they cannot be checked; such an example's loss is NaN.

  Examples:
    The lecture's example: logits [0.9, 1.2, -0.4], true class 1.

    >>> import jax.numpy as jnp
    >>> from jaxsoft import cross_entropy
    >>> print(cross_entropy(jnp.array([[0.9, 1.2, -0.4]]), jnp.array([1])).round(4))
    0.6641
    >>> print(cross_entropy(jnp.array([[0.9, 1.2, -0.4]]), jnp.array([[0.0, 1.0, 0.0]])).round(4))
    0.6641

  References:
    PyTorch, ``torch.nn.functional.cross_entropy``;
    Szegedy et al., 2016, "Rethinking the Inception Architecture" (label smoothing).
  """
  fn = "cross_entropy"
  scores, axis, weight = _check_scores(fn, "logits", logits, axis, weight, label_smoothing, reduction)
  z = scores.astype(compute_dtype(scores.dtype))
  # One logsumexp, computed on first use, shared by the label and smoothing terms.
  lse = functools.cache(lambda: logsumexp(z, -1))
  # -log p_y = lse - z_y: the normalizer is subtracted only at the label, so no
  # [.., C] log-probability array is built for integer labels.
  nll_at = lambda y: lse() - jnp.take_along_axis(z, y[..., None], -1)[..., 0]
  # -sum_c w_c log p_c = lse * sum(w) - sum_c w_c z_c; a -inf logit makes it inf.
  smooth = lambda w: lse() * jnp.sum(w) - jnp.sum(_times_log(w, z), -1)
  log_p = lambda: log_softmax(z, -1)
  opts = dict(
    axis=axis,
    weight=weight,
    ignore_index=ignore_index,
    label_smoothing=label_smoothing,
    where=where,
    reduction=reduction,
  )
  return _loss(fn, "logits", z, labels, log_p, nll_at, smooth, **opts).astype(scores.dtype)


def nll_loss(
  log_probs,
  labels,
  *,
  axis=-1,
  weight=None,
  ignore_index=None,
  label_smoothing=0.0,
  where=None,
  reduction="mean",
):
  r"""Negative log-likelihood of labels under given log-probabilities.

  .. math::
    \ell_i = -w_{y_i} \log p_{i y_i}

  with the options and reductions of :func:`cross_entropy` (PyTorch's
  ``nll_loss``; ``label_smoothing`` is an addition with the same meaning as in
  ``cross_entropy``). ``cross_entropy(x, y)`` equals
  ``nll_loss(log_softmax(x), y)``.

  Args:
    log_probs: floating log-probabilities ``[..., C, ...]`` (classes on ``axis``).
    labels: integer class indices, or floating target probabilities.
    axis, weight, ignore_index, label_smoothing, where, reduction: as in
      :func:`cross_entropy`.

  Returns:
    A scalar, or per-example losses for ``reduction="none"``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoft import nll_loss
    >>> print(nll_loss(jnp.log(jnp.array([[0.25, 0.75]])), jnp.array([1])).round(4))
    0.2877
  """
  fn = "nll_loss"
  scores, axis, weight = _check_scores(fn, "log_probs", log_probs, axis, weight, label_smoothing, reduction)
  lp = scores.astype(compute_dtype(scores.dtype))
  nll_at = lambda y: -jnp.take_along_axis(lp, y[..., None], -1)[..., 0]
  smooth = lambda w: -jnp.sum(_times_log(w, lp), -1)
  opts = dict(
    axis=axis,
    weight=weight,
    ignore_index=ignore_index,
    label_smoothing=label_smoothing,
    where=where,
    reduction=reduction,
  )
  return _loss(fn, "log_probs", lp, labels, lambda: lp, nll_at, smooth, **opts).astype(scores.dtype)


def _probabilities(fn, name, x):
  """A floating array of probabilities (not checked to sum to one: it may be traced)."""
  V.check_array(fn, name, x)
  x = jnp.asarray(x)
  V.check_floating(fn, name, x)
  return x


def _xlogx(p):
  """``p log p`` with 0 log 0 = 0 and derivative 0 at ``p = 0`` (the derivative ``log p + 1`` is -inf there).

  The finite convention keeps the chain rule through an underflowed
  probability (``entropy(softmax(z))``, whose ``dp/dz`` is 0 there) free of
  0 * inf = NaN; the double ``where`` keeps ``log`` from seeing a 0.
  """
  return p * jnp.log(jnp.where(p == 0, 1, p))


def entropy(probs, *, axis=-1):
  r"""Shannon entropy (nats) of probability vectors, with :math:`0 \log 0 = 0`.

  .. math::
    H(p) = -\sum_x p(x) \log p(x), \qquad
    \frac{\partial H}{\partial p(x)} = -\log p(x) - 1

  The derivative is taken as 0 where :math:`p(x) = 0` (it is :math:`+\infty`
  there), so the gradient through probabilities that underflowed to 0
  (``entropy(softmax(z))``) stays finite.

  Args:
    probs: floating probabilities, summing to one along ``axis``.
    axis: int or tuple of ints.

  Returns:
    ``probs`` reduced over ``axis``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoft import entropy
    >>> print(entropy(jnp.array([0.5, 0.5, 0.0])).round(4))
    0.6931
  """
  probs = _probabilities("entropy", "probs", probs)
  axes = V.normalize_axes("entropy", "axis", axis, probs.ndim)
  p = probs.astype(compute_dtype(probs.dtype))
  return -jnp.sum(_xlogx(p), axes).astype(probs.dtype)


def _divergence(fn, p, q, axis, where, generalized):
  """``sum_x p log(p / q)`` (``- p + q`` when generalized) over ``axis``, entries with ``where`` False left out."""
  p, q = _probabilities(fn, "p", p), _probabilities(fn, "q", q)
  V.check_shape(fn, "q", q, p.shape, " (the shape of p)")
  axes = V.normalize_axes(fn, "axis", axis, p.ndim)
  out_dtype = jnp.result_type(p, q)
  dtype = compute_dtype(out_dtype)
  p, q = p.astype(dtype), q.astype(dtype)
  if where is not None:
    where = jnp.asarray(where)
    V.check_bool(fn, "where", where)
    V.check_broadcastable(fn, "where", where.shape, p.shape, " (the shape of p)")
    # Left-out entries become p = q = 1 (a zero term) before any log: a
    # masked inf or NaN must not reach the sum or the gradient.
    p, q = jnp.where(where, p, 1), jnp.where(where, q, 1)
  # p log p - p log q. The 0 log 0 rule of the second product applies only
  # where q is 0 too, so d/dp = log(p / q) + 1 wherever q > 0 (-log q at
  # p = 0, by the convention of _xlogx), as for cross-entropy's labels.
  terms = _xlogx(p) - p * jnp.log(jnp.where((p == 0) & (q == 0), 1, q))
  if generalized:
    terms = terms - p + q
  if where is not None:
    terms = jnp.where(where, terms, 0)
  return jnp.sum(terms, axes).astype(out_dtype)


def kl_divergence(p, q, *, axis=-1, where=None):
  r"""Kullback-Leibler divergence :math:`KL(p \| q)` in nats.

  .. math::
    KL(p \| q) = \sum_{x \in W} p(x) \log \frac{p(x)}{q(x)}, \qquad
    \frac{\partial KL}{\partial p(x)} = \log \frac{p(x)}{q(x)} + 1, \quad
    \frac{\partial KL}{\partial q(x)} = -\frac{p(x)}{q(x)}

  over the entries :math:`W` that ``where`` keeps (optax's ``where``), with
  :math:`0 \log (0 / q) = 0`; it is ``inf`` where ``q`` is 0 and ``p`` is
  not. As in :func:`entropy`, the :math:`\log p + 1` part of the derivative
  in ``p`` is taken as 0 where ``p`` is 0 (it is :math:`-\infty` there), so
  that derivative is :math:`-\log q(x)`, finite.
  ``cross_entropy(log q, p) = entropy(p) + kl_divergence(p, q)``, gradients
  included. Argument order: optax's ``kl_divergence(log_predictions,
  targets)`` is ``kl_divergence(targets, exp(log_predictions))`` here.

  Args:
    p, q: floating probabilities of the same shape.
    axis: int or tuple of ints.
    where: optional boolean broadcastable to ``p``; False entries drop out of
      the sum (and get zero gradients).

  Returns:
    The divergence, reduced over ``axis``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoft import kl_divergence
    >>> print(kl_divergence(jnp.array([0.5, 0.5]), jnp.array([0.9, 0.1])).round(4))
    0.5108
    >>> print(kl_divergence(jnp.array([0.5, 0.5]), jnp.array([0.25, 0.75]), where=jnp.array([True, False])).round(4))
    0.3466
  """
  return _divergence("kl_divergence", p, q, axis, where, generalized=False)


def generalized_kl_divergence(p, q, *, axis=-1, where=None):
  r"""Generalized Kullback-Leibler divergence between nonnegative measures.

  .. math::
    D(p \| q) = \sum_{x \in W} \Big(p(x) \log \frac{p(x)}{q(x)} - p(x) + q(x)\Big)

  the Bregman divergence of :math:`x \log x - x`: nonnegative for any
  nonnegative :math:`p, q` (no need to sum to one), 0 exactly when
  :math:`p = q` on :math:`W`, and equal to :func:`kl_divergence` when both
  sum to one over the reduced axes. Same conventions (``0 log 0``,
  derivatives, ``where``) as :func:`kl_divergence`. optax's
  ``generalized_kl_divergence(log_predictions, targets)`` (also
  ``convex_kl_divergence``) is ``generalized_kl_divergence(targets,
  exp(log_predictions))`` here.

  Args:
    p, q: floating nonnegative measures of the same shape.
    axis: int or tuple of ints.
    where: optional boolean broadcastable to ``p``; False entries drop out.

  Returns:
    The divergence, reduced over ``axis``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoft import generalized_kl_divergence
    >>> print(generalized_kl_divergence(jnp.array([1.0, 2.0]), jnp.array([2.0, 2.0])).round(4))
    0.3069

  References:
    Boyd & Vandenberghe, 2004, "Convex Optimization", p. 90; optax,
    ``optax.losses.generalized_kl_divergence``.
  """
  return _divergence("generalized_kl_divergence", p, q, axis, where, generalized=True)
