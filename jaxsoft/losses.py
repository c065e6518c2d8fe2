r"""Classification losses: cross-entropy, negative log-likelihood, entropy, KL.

The options follow :func:`torch.nn.functional.cross_entropy` exactly
(``weight``, ``ignore_index``, ``label_smoothing``, ``reduction``), so results
can be checked against PyTorch. One deliberate difference: a ``"mean"`` over
zero counting examples (all ignored, or zero total weight) is 0 with zero
gradients, where PyTorch returns NaN.

Cross-entropy of a softmax is the negative log-likelihood of a categorical
model: minimizing :func:`cross_entropy` is maximum likelihood.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.scipy import special

from jaxsoft import _validate as v
from jaxsoft._dtypes import compute_dtype
from jaxsoft._reduction import REDUCTIONS, reduce_loss
from jaxsoft.softmax import log_softmax, logsumexp

__all__ = [
  "cross_entropy",
  "nll_loss",
  "entropy",
  "kl_divergence",
  "linear_cross_entropy",
  "sampled_softmax_cross_entropy",
]


def _check_common(fn, scores, axis, weight, label_smoothing, reduction):
  v.check_array(fn, "logits" if fn == "cross_entropy" else "log_probs", scores)
  name = "logits" if fn == "cross_entropy" else "log_probs"
  scores = jnp.asarray(scores)
  v.check_floating(fn, name, scores)
  v.check_min_ndim(fn, name, scores, 1)
  (axis,) = v.normalize_axes(fn, "axis", axis, scores.ndim)
  v.check_option(fn, "reduction", reduction, REDUCTIONS)
  v.check_range(fn, "label_smoothing", label_smoothing, 0.0, 1.0)
  num_classes = scores.shape[axis]
  if weight is not None:
    weight = jnp.asarray(weight)
    v.check_floating(fn, "weight", weight)
    v.check_shape(fn, "weight", weight, (num_classes,), f" (one per class of axis {axis})")
  # Classes last: every later step indexes the final axis.
  return jnp.moveaxis(scores, axis, -1), axis, weight, num_classes


def _check_where(fn, where, shape):
  if where is None:
    return None
  where = jnp.asarray(where)
  v.check_bool(fn, "where", where)
  v.check_broadcastable(fn, "where", where.shape, shape, " (the per-example loss shape)")
  return jnp.broadcast_to(where, shape)


def _is_zero(value) -> bool:
  """True for a concrete 0; a traced value is kept (it may be a sweep's tracer)."""
  return isinstance(value, (int, float)) and value == 0


def _index_loss(
  fn,
  scores,
  labels,
  nll_at,
  smooth_fn,
  *,
  axis,
  weight,
  ignore_index,
  label_smoothing,
  where,
  reduction,
  num_classes,
):
  """The integer-label path shared by cross_entropy and nll_loss.

  ``nll_at(safe_labels)`` gives -log p at the label, ``smooth_fn(w)`` gives
  -sum_c w_c log p_c; both per example. Mirrors PyTorch: the per-example loss
  is (1 - eps) w_y nll_y + eps / C * sum_c w_c nll_c, and the mean divides by
  the sum of w_y over the examples that count.
  """
  batch_shape = scores.shape[:-1]
  v.check_shape(
    fn,
    "labels",
    labels,
    batch_shape,
    f" (the shape of {'logits' if fn == 'cross_entropy' else 'log_probs'} without axis {axis})",
  )
  keep = jnp.ones(batch_shape, bool)
  if ignore_index is not None:
    v.check_int(fn, "ignore_index", ignore_index)
    keep = labels != ignore_index
  where = _check_where(fn, where, batch_shape)
  if where is not None:
    keep = keep & where
  in_range = (labels >= 0) & (labels < num_classes)
  concrete, keep_c = v.concrete(labels), v.concrete(keep)
  # Only examples that count are checked: one excluded by ignore_index or by
  # where may hold any label, as it may under jit.
  if concrete is not None and keep_c is not None:
    counted = concrete[keep_c]
    bad = counted[(counted < 0) | (counted >= num_classes)]
    if bad.size:
      v.fail(
        fn,
        "labels",
        f"be in [0, {num_classes}) or ignore_index={ignore_index}",
        f"{bad.ravel()[:5].tolist()}",
      )
  # Ignored examples may hold any label (PyTorch's -100): index with 0 instead,
  # so neither pass ever touches an out-of-range position.
  safe = jnp.where(keep & in_range, labels, 0).astype(jnp.int32)
  w_y = jnp.ones(batch_shape, scores.dtype) if weight is None else weight.astype(scores.dtype)[safe]
  per = w_y * nll_at(safe)
  if not _is_zero(label_smoothing):
    w = jnp.ones((num_classes,), scores.dtype) if weight is None else weight.astype(scores.dtype)
    per = (1 - label_smoothing) * per + label_smoothing / num_classes * smooth_fn(w)
  # Under jit an out-of-range label cannot raise: its loss is NaN, loudly.
  per = jnp.where(keep, jnp.where(in_range, per, jnp.nan), 0)
  return reduce_loss(per, jnp.where(keep, w_y, 0), reduction)


def _prob_loss(
  fn, log_p, targets, *, axis, weight, ignore_index, label_smoothing, where, reduction, num_classes
):
  """Probability targets: -sum_c w_c t_c log p_c, mean over counted examples."""
  if ignore_index is not None:
    v.fail(fn, "ignore_index", "be None with probability labels (PyTorch's rule too)", ignore_index)
  targets = jnp.moveaxis(targets, axis, -1).astype(log_p.dtype)
  if not _is_zero(label_smoothing):
    targets = targets * (1 - label_smoothing) + label_smoothing / num_classes
  if weight is not None:
    targets = targets * weight.astype(log_p.dtype)
  # 0 * log 0 = 0: a class with no target mass contributes nothing, even at -inf.
  per = -jnp.sum(jnp.where(targets == 0, 0, targets * log_p), axis=-1)
  keep = _check_where(fn, where, log_p.shape[:-1])
  if keep is None:
    keep = jnp.ones(per.shape, bool)
  per = jnp.where(keep, per, 0)
  return reduce_loss(per, keep.astype(per.dtype), reduction)


def _dispatch(fn, scores, labels, log_p_fn, nll_at_fn, smooth_fn, **opts):
  labels = jnp.asarray(labels)
  if jnp.issubdtype(labels.dtype, jnp.integer):
    return _index_loss(fn, scores, labels, nll_at_fn, smooth_fn, **opts)
  if jnp.issubdtype(labels.dtype, jnp.floating):
    # Probability targets carry the class axis where the scores have it.
    expected = list(scores.shape[:-1])
    expected.insert(opts["axis"], scores.shape[-1])
    v.check_shape(
      fn, "labels", labels, expected, " (floating labels are probabilities shaped like the scores)"
    )
    return _prob_loss(fn, log_p_fn(), labels, **opts)
  v.fail(
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
    where: optional boolean, shape of the per-example loss; False skips an
      example exactly like ``ignore_index``.
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
  scores, axis_n, weight, num_classes = _check_common(fn, logits, axis, weight, label_smoothing, reduction)
  out_dtype = scores.dtype
  z = scores.astype(compute_dtype(out_dtype))
  lse_box = []

  def lse():
    # One logsumexp shared by the label term and the smoothing term.
    if not lse_box:
      lse_box.append(logsumexp(z, -1))
    return lse_box[0]

  # -log p_y = lse - z_y: the normalizer is subtracted only at the label, so no
  # [.., C] log-probability array is built for integer labels.
  nll_at = lambda y: lse() - jnp.take_along_axis(z, y[..., None], -1)[..., 0]
  # -sum_c w_c log p_c = lse * sum(w) - sum_c w_c z_c; a -inf logit makes it inf.
  smooth = lambda w: lse() * jnp.sum(w) - jnp.sum(jnp.where(w == 0, 0, w * z), -1)
  out = _dispatch(
    fn,
    z,
    labels,
    lambda: log_softmax(z, -1),
    nll_at,
    smooth,
    axis=axis_n,
    weight=weight,
    ignore_index=ignore_index,
    label_smoothing=label_smoothing,
    where=where,
    reduction=reduction,
    num_classes=num_classes,
  )
  return out.astype(out_dtype)


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
  scores, axis_n, weight, num_classes = _check_common(fn, log_probs, axis, weight, label_smoothing, reduction)
  out_dtype = scores.dtype
  lp = scores.astype(compute_dtype(out_dtype))
  nll_at = lambda y: -jnp.take_along_axis(lp, y[..., None], -1)[..., 0]
  smooth = lambda w: -jnp.sum(jnp.where(w == 0, 0, w * lp), -1)
  out = _dispatch(
    fn,
    lp,
    labels,
    lambda: lp,
    nll_at,
    smooth,
    axis=axis_n,
    weight=weight,
    ignore_index=ignore_index,
    label_smoothing=label_smoothing,
    where=where,
    reduction=reduction,
    num_classes=num_classes,
  )
  return out.astype(out_dtype)


def entropy(probs, *, axis=-1):
  r"""Shannon entropy (nats) of probability vectors, with :math:`0 \log 0 = 0`.

  .. math::
    H(p) = -\sum_x p(x) \log p(x)

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
  v.check_array("entropy", "probs", probs)
  probs = jnp.asarray(probs)
  v.check_floating("entropy", "probs", probs)
  axes = v.normalize_axes("entropy", "axis", axis, probs.ndim)
  p = probs.astype(compute_dtype(probs.dtype))
  return jnp.sum(special.entr(p), axes).astype(probs.dtype)


def kl_divergence(p, q, *, axis=-1):
  r"""Kullback-Leibler divergence :math:`KL(p \| q)` in nats.

  .. math::
    KL(p \| q) = \sum_x p(x) \log \frac{p(x)}{q(x)}

  with :math:`0 \log (0 / q) = 0`; it is ``inf`` where ``q`` is 0 and ``p`` is not.
  ``cross_entropy(log q, p) = entropy(p) + kl_divergence(p, q)``.

  Args:
    p, q: floating probabilities of the same shape.
    axis: int or tuple of ints.

  Returns:
    The divergence, reduced over ``axis``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoft import kl_divergence
    >>> print(kl_divergence(jnp.array([0.5, 0.5]), jnp.array([0.9, 0.1])).round(4))
    0.5108
  """
  fn = "kl_divergence"
  v.check_array(fn, "p", p)
  v.check_array(fn, "q", q)
  p, q = jnp.asarray(p), jnp.asarray(q)
  v.check_floating(fn, "p", p)
  v.check_floating(fn, "q", q)
  v.check_shape(fn, "q", q, p.shape, " (the shape of p)")
  axes = v.normalize_axes(fn, "axis", axis, p.ndim)
  dtype = compute_dtype(jnp.result_type(p, q))
  return jnp.sum(special.rel_entr(p.astype(dtype), q.astype(dtype)), axes).astype(jnp.result_type(p, q))


# The large-vocabulary losses live in their own private module (chunking and a
# custom VJP make them long); this is their public home.
from jaxsoft._vocab import linear_cross_entropy, sampled_softmax_cross_entropy  # noqa: E402
