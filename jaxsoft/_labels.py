"""Integer class labels: which examples count, the range check, a safe gather index.

Every loss that takes class indices (``cross_entropy``, ``nll_loss``,
``linear_cross_entropy``, ``sampled_softmax_cross_entropy``) resolves them
here, so that they agree on one rule: an example excluded by ``ignore_index``
or by ``where`` is never looked at, whatever its label, eagerly and under
``jit``; a counted label outside ``[0, C)`` is an error when it can be seen
(concrete labels and mask) and a NaN loss when it cannot (under ``jit``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxsoft import _validate as V


class ClassLabels(NamedTuple):
  """Integer labels resolved against ``C`` classes; each field has the labels' shape."""

  index: jax.Array  # int32: the label where it counts and is in [0, C), else 0 (safe to gather)
  keep: jax.Array  # bool: the example counts (not ignore_index, where True)
  in_range: jax.Array  # bool: the label is in [0, C)

  def loss(self, per_example):
    """``per_example`` with excluded examples 0 and counted out-of-range labels NaN.

    Under ``jit`` an out-of-range label cannot raise: its loss is NaN, loudly.
    The outer ``where`` also gives excluded examples a zero gradient, whatever
    their (safe-index) loss was.
    """
    return jnp.where(self.keep, jnp.where(self.in_range, per_example, jnp.nan), 0)


def check_where(fn: str, where, shape) -> jax.Array:
  """The per-example mask ``where`` broadcast to ``shape`` (all True when None)."""
  if where is None:
    return jnp.ones(shape, bool)
  where = jnp.asarray(where)
  V.check_bool(fn, "where", where)
  V.check_broadcastable(fn, "where", where.shape, shape, " (the per-example loss shape)")
  return jnp.broadcast_to(where, shape)


def class_labels(fn: str, labels, num_classes: int, *, ignore_index=None, where=None) -> ClassLabels:
  """Resolves integer ``labels`` (already shape-checked by the caller) against ``num_classes``.

  Raises, naming ``labels``, when a counted label is out of range and both
  the labels and the mask are concrete. An example excluded by
  ``ignore_index`` or ``where`` may hold any label (PyTorch's -100, padding):
  it is gathered at class 0 and its loss is 0.
  """
  if ignore_index is not None:
    V.check_int(fn, "ignore_index", ignore_index)
  keep = check_where(fn, where, labels.shape)
  if ignore_index is not None:
    keep = keep & (labels != ignore_index)
  in_range = (labels >= 0) & (labels < num_classes)
  labels_c, keep_c = V.concrete(labels), V.concrete(keep)
  if labels_c is not None and keep_c is not None:
    counted = labels_c[keep_c]
    bad = counted[(counted < 0) | (counted >= num_classes)]
    if bad.size:
      also = "" if ignore_index is None else f" or ignore_index={ignore_index}"
      V.fail(fn, "labels", f"be in [0, {num_classes}){also}", f"{bad.ravel()[:5].tolist()}")
  index = jnp.where(keep & in_range, labels, 0).astype(jnp.int32)
  return ClassLabels(index, keep, in_range)
