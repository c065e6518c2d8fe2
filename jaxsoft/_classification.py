r"""Classification losses: cross-entropy, negative log-likelihood, entropy, KL.

The options follow :func:`torch.nn.functional.cross_entropy` exactly
(``weight``, ``ignore_index``, ``label_smoothing``, ``reduction``), so results
can be checked against PyTorch. One deliberate difference: a ``"mean"`` over
zero counting examples (all ignored, or zero total weight) is 0 with zero
gradients, where PyTorch returns NaN.

Cross-entropy of a softmax is the negative log-likelihood of a categorical
model: minimizing :func:`cross_entropy` is maximum likelihood. Beyond
PyTorch's options it takes optax's per-class mask (``class_where``) and tuple
of class axes, and the language-model options ``z_loss``,
``logit_soft_cap`` and ``return_aux``, which the vocabulary losses share
(``soft_cap``, ``check_lm_options``).

Every ``0 log 0 = 0`` here applies only where the log is ``-inf``: a zero
label or weight is not a constant, so the gradients with respect to them
stay ``-log p`` (distillation and label learning differentiate through
them).

Public through :mod:`jaxsoft.losses` and :mod:`jaxsoft`.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsoft import _validate as V
from jaxsoft._dtypes import compute_dtype
from jaxsoft._labels import check_where, class_labels
from jaxsoft._reduction import REDUCTIONS, reduce_loss
from jaxsoft.softmax import log_softmax, logsumexp


def _class_axes(fn, scores, axis):
  """The class axes in the order given (labels index them flattened in that order), checked."""
  V.normalize_axes(fn, "axis", axis, scores.ndim)
  return (
    (axis % scores.ndim,)
    if isinstance(axis, (int, np.integer))
    else tuple(int(a) % scores.ndim for a in axis)
  )


def _classes_last(x, axes):
  """``x`` with the class axes moved last, in the order given, and flattened into one."""
  batch = tuple(a for a in range(x.ndim) if a not in axes)
  x = jnp.transpose(x, batch + axes)
  return x.reshape(x.shape[: len(batch)] + (math.prod(x.shape[len(batch) :]),))


def _check_scores(fn, name, scores, axis, weight, label_smoothing, reduction):
  """The checks shared by cross_entropy and nll_loss.

  Returns the scores with the class axes flattened last, the class axes, and
  the flat weights.
  """
  V.check_array(fn, name, scores)
  scores = jnp.asarray(scores)
  V.check_floating(fn, name, scores)
  V.check_min_ndim(fn, name, scores, 1)
  axes = _class_axes(fn, scores, axis)
  V.check_option(fn, "reduction", reduction, REDUCTIONS)
  V.check_range(fn, "label_smoothing", label_smoothing, 0.0, 1.0)
  if weight is not None:
    weight = jnp.asarray(weight)
    V.check_floating(fn, "weight", weight)
    V.check_shape(
      fn,
      "weight",
      weight,
      tuple(scores.shape[a] for a in axes),
      f" (one per class of axis {_axis_text(axes)})",
    )
    weight = weight.reshape(-1)
  return _classes_last(scores, axes), axes, weight


def _axis_text(axes):
  return str(axes[0]) if len(axes) == 1 else str(axes)


def _times_log(t, log_x):
  """``t * log_x`` with the rule 0 log 0 = 0 where ``log_x`` is -inf and ``t`` is 0, and only there.

  Elsewhere the product stays, so its derivative in ``t`` is ``log_x`` even
  where ``t`` is 0: distillation and label learning differentiate through
  the targets, and a zero target is not a constant. The inner ``where`` keeps
  the cotangent of a ruled-out entry 0 instead of 0 * -inf = NaN.
  """
  return t * jnp.where((t == 0) & (log_x == -jnp.inf), 0, log_x)


def is_zero(value) -> bool:
  """True for a concrete 0; a traced value is kept (it may be a sweep's tracer)."""
  return isinstance(value, (int, float)) and value == 0


class _Classes(NamedTuple):
  """What the loss paths need to know about the classes of each example.

  ``allowed`` (``[..., C]`` bool, or None for all) is ``class_where``;
  ``count`` the number of allowed classes per example (``C`` without it).
  """

  allowed: jax.Array | None
  count: jax.Array | int


def _index_terms(
  fn, name, scores, labels, nll_at, smooth, classes, *, axes, weight, ignore_index, label_smoothing, where
):
  """The integer-label path shared by cross_entropy and nll_loss.

  ``nll_at(index)`` gives -log p at the label, ``smooth(w)`` gives
  -sum_c w_c log p_c; both per example. Mirrors PyTorch: the per-example loss
  is (1 - eps) w_y nll_y + eps / C * sum_c w_c nll_c, and the mean divides by
  the sum of w_y over the examples that count. With ``class_where``, C is the
  number of allowed classes of the example and the sum runs over them.
  Returns ``(per_example, mean_weight, keep, safe label index)``.
  """
  num_classes = scores.shape[-1]
  V.check_shape(
    fn, "labels", labels, scores.shape[:-1], f" (the shape of {name} without axis {_axis_text(axes)})"
  )
  where = _and_some_class(fn, where, labels.shape, classes)
  y = class_labels(fn, labels, num_classes, ignore_index=ignore_index, where=where)
  dtype = scores.dtype
  w_y = jnp.ones(labels.shape, dtype) if weight is None else weight.astype(dtype)[y.index]
  # A skipped example's label (gathered at class 0) may be a -inf logit: its
  # nll becomes 0 before the product, or 0 * inf would reach w's gradient.
  per = w_y * jnp.where(y.keep, nll_at(y.index), 0)
  if not is_zero(label_smoothing):
    w = jnp.ones((num_classes,), dtype) if weight is None else weight.astype(dtype)
    if classes.allowed is not None:
      w = jnp.where(classes.allowed, w, 0)
    per = (1 - label_smoothing) * per + label_smoothing / jnp.maximum(classes.count, 1) * smooth(w)
  return y.loss(per), jnp.where(y.keep, w_y, 0), y.keep, y.index


def _and_some_class(fn, where, shape, classes):
  """The per-example mask, False also where ``class_where`` allows no class."""
  keep = check_where(fn, where, shape)
  return keep if classes.allowed is None else keep & (classes.count > 0)


def _prob_terms(
  fn, name, log_p, targets, classes, *, shape, axes, weight, ignore_index, label_smoothing, where
):
  """Probability targets: -sum_c w_c t_c log p_c, mean over counted examples.

  With ``class_where`` the sum runs over the allowed classes only (target
  mass elsewhere is ignored, optax's rule) and smoothing spreads over them.
  Returns ``(per_example, mean_weight, keep, None)``.
  """
  if ignore_index is not None:
    V.fail(fn, "ignore_index", "be None with probability labels (PyTorch's rule too)", ignore_index)
  # Probability targets carry the class axes where the scores have them.
  V.check_shape(fn, "labels", targets, shape, f" (floating labels are probabilities shaped like {name})")
  targets = _classes_last(targets, axes).astype(log_p.dtype)
  if not is_zero(label_smoothing):
    targets = (
      targets * (1 - label_smoothing)
      + label_smoothing / jnp.maximum(jnp.asarray(classes.count, log_p.dtype), 1)[..., None]
    )
  if classes.allowed is not None:
    targets = jnp.where(classes.allowed, targets, 0)
  weighted = targets if weight is None else targets * weight.astype(log_p.dtype)
  per = -jnp.sum(_times_log(weighted, log_p), axis=-1)
  keep = _and_some_class(fn, where, per.shape, classes)
  return jnp.where(keep, per, 0), keep.astype(per.dtype), keep, None


def _terms(fn, name, scores, labels, log_p, nll_at, smooth, classes, **opts):
  """Integer labels go to the index path, floating ones to the probability path."""
  V.check_array(fn, "labels", labels)
  labels = jnp.asarray(labels)
  if jnp.issubdtype(labels.dtype, jnp.integer):
    opts.pop("shape")
    return _index_terms(fn, name, scores, labels, nll_at, smooth, classes, **opts)
  if jnp.issubdtype(labels.dtype, jnp.floating):
    return _prob_terms(fn, name, log_p(), labels, classes, **opts)
  V.fail(
    fn,
    "labels",
    "have an integer dtype (class indices) or a floating dtype (probabilities)",
    labels.dtype,
    exc=TypeError,
  )


def _check_class_where(fn, class_where, shape, axes):
  """``class_where`` broadcast to the logits, classes flattened last; None stays None."""
  if class_where is None:
    return None
  class_where = jnp.asarray(class_where)
  V.check_bool(fn, "class_where", class_where)
  V.check_broadcastable(fn, "class_where", class_where.shape, shape, " (the shape of logits)")
  return _classes_last(jnp.broadcast_to(class_where, shape), axes)


def cross_entropy(
  logits,
  labels,
  *,
  axis=-1,
  weight=None,
  ignore_index=None,
  label_smoothing=0.0,
  where=None,
  class_where=None,
  reduction="mean",
  z_loss=0.0,
  logit_soft_cap=None,
  return_aux=False,
):
  r"""Cross-entropy between ``softmax(logits)`` and integer or soft labels.

  With class indices :math:`y_i`, class weights :math:`w` and smoothing
  :math:`\varepsilon` over :math:`C` classes, per example

  .. math::
    \ell_i = (1 - \varepsilon)\, w_{y_i} (-\log p_{i y_i})
      + \frac{\varepsilon}{C} \sum_c w_c (-\log p_{ic})
      + \lambda_z\, \mathrm{lse}_i^2,
    \qquad p_i = \mathrm{softmax}(\mathrm{logits}_i),
    \quad \mathrm{lse}_i = \log \sum_c e^{\mathrm{logits}_{ic}}

  and ``"mean"`` is :math:`\sum_i \ell_i / \sum_i w_{y_i}` over the examples
  that count (not ``ignore_index``, ``where`` True), as in PyTorch, except
  that the z-loss term :math:`\lambda_z \mathrm{lse}^2` (``z_loss``) is not
  weighted: it is averaged over the counted examples (summed under
  ``"sum"``). With probability labels :math:`q_i` (floating, shaped like
  ``logits``), :math:`\ell_i = -\sum_c w_c q_{ic} \log p_{ic}` (after
  smoothing :math:`q \to (1-\varepsilon) q + \varepsilon / C`) and
  ``"mean"`` divides by the number of counted examples. The lecture's
  :math:`H(p, q) = \sum_x p(x) \log 1/q(x)` is
  ``cross_entropy(jnp.log(q), p, reduction="none")``.

  Two masks, told apart by name: ``where`` is per example (False skips the
  example, as ``ignore_index`` does); ``class_where`` is per class,
  broadcastable to ``logits`` (optax's ``where``): False classes leave the
  softmax (their probability is 0), the sums over classes and the smoothing
  (:math:`C` becomes the number of allowed classes of the example); target
  mass on them is ignored, an integer label on one has loss ``inf``, and an
  example with no allowed class is skipped.

  ``logit_soft_cap`` :math:`c` (Gemma 2) replaces the logits by
  :math:`c \tanh(\mathrm{logits} / c)` before everything else (a ``-inf``
  logit becomes :math:`-c`: exclude classes with ``class_where``).
  ``z_loss`` :math:`\lambda_z` (PaLM uses 1e-4) keeps the normalizer near
  0. Both are differentiable (they may be traced).

  Args:
    logits: floating scores ``[..., C, ...]`` with classes on ``axis``.
    labels: integer class indices shaped like ``logits`` without the class
      axes, or floating probabilities shaped like ``logits``.
    axis: the class axis, or a tuple of class axes: their entries are the
      classes, and an integer label is a flat index into them in the order
      given (optax's rule; ``jnp.ravel_multi_index``).
    weight: optional per-class weights, shaped like the class axes (``[C]``).
    ignore_index: optional label value whose examples are skipped (integer
      labels only).
    label_smoothing: in ``[0, 1]``; mixes the target with the uniform one.
    where: optional boolean broadcastable to the per-example loss shape;
      False skips an example exactly like ``ignore_index``, whatever its label.
    class_where: optional boolean broadcastable to ``logits``; False
      excludes a class from the softmax of that example.
    reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    z_loss: :math:`\lambda_z \ge 0`, the weight of :math:`\mathrm{lse}^2`.
    logit_soft_cap: None, or :math:`c > 0`.
    return_aux: also return per-example ``{"lse", "log_prob", "entropy"}``.

  Returns:
    A scalar, or the per-example losses (``logits.shape`` without the class
    axes) for ``reduction="none"``; skipped examples are 0. In the dtype of
    logits (half precision is computed in float32). With ``return_aux``,
    ``(loss, aux)``: ``aux["lse"]`` the log normalizer,
    ``aux["log_prob"]`` :math:`\log p_{iy_i}` (with probability labels,
    :math:`\sum_c q_{ic} \log p_{ic}`, before smoothing), ``aux["entropy"]``
    :math:`-\sum_c p_{ic} \log p_{ic}`, each of the per-example shape, 0 for
    skipped examples, after the soft cap and ``class_where``.

  Raises:
    ValueError: labels out of ``[0, C)`` (other than ``ignore_index`` and
      examples excluded by ``where``) when the labels are concrete; negative
      ``z_loss``; ``logit_soft_cap <= 0``. Under ``jit`` labels cannot be
      checked; such an example's loss is NaN.

  Examples:
    The lecture's example: logits [0.9, 1.2, -0.4], true class 1.

    >>> import jax.numpy as jnp
    >>> from jaxsoft import cross_entropy
    >>> print(cross_entropy(jnp.array([[0.9, 1.2, -0.4]]), jnp.array([1])).round(4))
    0.6641
    >>> print(cross_entropy(jnp.array([[0.9, 1.2, -0.4]]), jnp.array([[0.0, 1.0, 0.0]])).round(4))
    0.6641

    z-loss (0.6641 + 1e-2 * 1.8641**2), soft cap, and the per-example outputs:

    >>> x, y = jnp.array([[0.9, 1.2, -0.4]]), jnp.array([1])
    >>> print(round(float(cross_entropy(x, y, z_loss=1e-2)), 4))
    0.6988
    >>> loss, aux = cross_entropy(x, y, logit_soft_cap=1.0, return_aux=True)
    >>> print(round(float(loss), 4), round(float(aux["log_prob"][0]), 4), round(float(aux["entropy"][0]), 4))
    0.7823 -0.7823 0.9949

  References:
    PyTorch, ``torch.nn.functional.cross_entropy``;
    Szegedy et al., 2016, "Rethinking the Inception Architecture" (label
    smoothing); Chowdhery et al., 2022, "PaLM" (z-loss); Gemma Team, 2024,
    "Gemma 2" (logit soft-capping).
  """
  fn = "cross_entropy"
  scores, axes, weight = _check_scores(fn, "logits", logits, axis, weight, label_smoothing, reduction)
  check_lm_options(fn, z_loss, logit_soft_cap, return_aux)
  z = soft_cap(scores.astype(compute_dtype(scores.dtype)), logit_soft_cap)
  allowed = _check_class_where(fn, class_where, jnp.shape(logits), axes)
  if allowed is None:
    classes = _Classes(None, z.shape[-1])
  else:
    count = jnp.sum(allowed, -1)
    # An example with no allowed class is skipped; its logits stay finite so
    # that no -inf - -inf reaches its (zero) gradient.
    z = jnp.where(allowed | (count == 0)[..., None], z, -jnp.inf)
    classes = _Classes(allowed, count)
  # One logsumexp, computed on first use, shared by the label, smoothing,
  # z-loss and aux terms.
  lse = functools.cache(lambda: logsumexp(z, -1))
  log_p = functools.cache(lambda: log_softmax(z, -1))
  # -log p_y = lse - z_y: the normalizer is subtracted only at the label, so no
  # [.., C] log-probability array is built for integer labels.
  nll_at = lambda y: lse() - jnp.take_along_axis(z, y[..., None], -1)[..., 0]
  # -sum_c w_c log p_c = lse * sum(w) - sum_c w_c z_c; a -inf logit makes it inf.
  smooth = lambda w: lse() * jnp.sum(w, -1) - jnp.sum(_times_log(w, z), -1)
  per, den, keep, index = _terms(
    fn,
    "logits",
    z,
    labels,
    log_p,
    nll_at,
    smooth,
    classes,
    shape=jnp.shape(logits),
    axes=axes,
    weight=weight,
    ignore_index=ignore_index,
    label_smoothing=label_smoothing,
    where=where,
  )
  loss = reduce_loss(per, den, reduction)
  if not is_zero(z_loss) or return_aux:
    # Skipped examples (an all-excluded one has lse = -inf) become 0 before
    # squaring, so no 0 * inf reaches a gradient.
    lse_kept = jnp.where(keep, lse(), 0)
  if not is_zero(z_loss):
    loss = loss + reduce_loss(z_loss * jnp.square(lse_kept), keep.astype(z.dtype), reduction)
  loss = loss.astype(scores.dtype)
  if not return_aux:
    return loss
  if index is not None:
    log_prob = -nll_at(index)
  else:
    t = _classes_last(jnp.asarray(labels), axes).astype(z.dtype)
    log_prob = jnp.sum(_times_log(t if allowed is None else jnp.where(allowed, t, 0), log_p()), -1)
  aux = {
    "lse": lse_kept,
    "log_prob": log_prob,
    "entropy": -jnp.sum(_times_log(jnp.exp(log_p()), log_p()), -1),
  }
  return loss, {k: jnp.where(keep, v, 0).astype(scores.dtype) for k, v in aux.items()}


def check_lm_options(fn, z_loss, logit_soft_cap, return_aux):
  """The language-model options shared by every softmax loss."""
  V.check_nonnegative(fn, "z_loss", z_loss)
  if logit_soft_cap is not None:
    V.check_positive(fn, "logit_soft_cap", logit_soft_cap)
  if not isinstance(return_aux, bool):
    V.fail(fn, "return_aux", "be a bool", repr(return_aux), exc=TypeError)


def soft_cap(z, cap):
  """``cap * tanh(z / cap)`` (Gemma 2's logit soft-capping); ``z`` itself for None."""
  if cap is None:
    return z
  cap = jnp.asarray(cap, z.dtype)
  return cap * jnp.tanh(z / cap)


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
  scores, axes, weight = _check_scores(fn, "log_probs", log_probs, axis, weight, label_smoothing, reduction)
  lp = scores.astype(compute_dtype(scores.dtype))
  nll_at = lambda y: -jnp.take_along_axis(lp, y[..., None], -1)[..., 0]
  smooth = lambda w: -jnp.sum(_times_log(w, lp), -1)
  per, den, _, _ = _terms(
    fn,
    "log_probs",
    lp,
    labels,
    lambda: lp,
    nll_at,
    smooth,
    _Classes(None, lp.shape[-1]),
    shape=jnp.shape(log_probs),
    axes=axes,
    weight=weight,
    ignore_index=ignore_index,
    label_smoothing=label_smoothing,
    where=where,
  )
  return reduce_loss(per, den, reduction).astype(scores.dtype)


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
