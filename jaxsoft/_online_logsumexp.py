r"""The online logsumexp: a running max and sum of exponentials, and the empty-slice rule.

A logsumexp over entries that arrive in pieces (the key blocks of chunked
attention, the vocabulary chunks of a large softmax loss) is carried as a
:class:`Partial` state per row: :math:`m`, the largest entry seen so far, and
:math:`s = \sum_j e^{x_j - m}`. Two partial states merge by rescaling both
sums to the larger max (Milakov & Gimelshein 2018, "Online normalizer
calculation for softmax"), and a final state gives :math:`\log s + m`. The
softmax family uses the same pieces on a whole slice at once.

**The empty-slice rule.** An excluded entry is ``-inf``, and a slice may
have nothing allowed, so far or at all. Every max that is subtracted is
floored at the dtype's lowest finite number, so a subtraction is ``finite -
finite`` or ``-inf - finite``, never ``-inf - -inf`` (NaN): an excluded entry
contributes :math:`e^{-\infty} = 0`, an empty slice keeps :math:`s = 0` and
its logsumexp is :math:`\mathrm{lowest} + \log 0 = -\infty`, exactly. Where a
sum is divided by or its log subtracted, it is taken as ``s + tiny`` (the
smallest normal number): a non-empty slice has :math:`s \ge 1`, because its
max contributes :math:`e^0 = 1`, so ``tiny`` changes nothing there, and an
empty slice gets weights :math:`0 / \mathrm{tiny} = 0` and a finite
normalizer. No finite entry is below the floor, so it never changes a result.

The floor is a reduction's ``initial`` value rather than a ``where`` on the
max: XLA's CPU backend then still fuses a whole softmax into one kernel
(measured: a ``where`` there costs 30%).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


def shift(x, axis):
  """The max of ``x`` over ``axis`` (kept as size 1), floored at the lowest finite number.

  Subtracting it is exact (softmax is shift invariant) and keeps every
  exponential <= 1. It is a constant for differentiation.
  """
  lowest = jnp.finfo(x.dtype).min
  return lax.stop_gradient(jnp.max(x, axis, keepdims=True, initial=lowest))


def safe(s):
  """A sum of exponentials made safe to divide by and to take the log of: ``s + tiny``."""
  return s + jnp.finfo(s.dtype).tiny


class Partial(NamedTuple):
  """The online logsumexp state of a slice (or of the part of it seen so far).

  Attributes:
    m: the max entry, floored at the lowest finite number (never ``-inf``).
    s: the sum of ``exp(x - m)`` over the entries; 0 when nothing is allowed.
  """

  m: jax.Array
  s: jax.Array


def empty(shape, dtype) -> Partial:
  """The state of a slice with no entries yet."""
  return Partial(jnp.full(shape, jnp.finfo(dtype).min, dtype), jnp.zeros(shape, dtype))


def reduce(x, axis, where=None) -> tuple[Partial, jax.Array]:
  """The state of ``x`` over ``axis`` (kept as size 1), and ``exp(x - m)``.

  With ``where`` (boolean, broadcastable to ``x``) only the entries where it
  is True count, and the others get ``exp = 0``, without an infinite
  intermediate: an excluded entry is replaced by the floor before the max and
  its exponential by 0 after it, so ``x - m`` is never ``finite - lowest``
  (which overflows).
  """
  if where is None:
    m = shift(x, axis)
    p = jnp.exp(x - m)
  else:
    lowest = jnp.finfo(x.dtype).min
    x = jnp.where(where, x, lowest)
    m = lax.stop_gradient(jnp.max(x, axis, keepdims=True, initial=lowest))
    p = jnp.where(where, jnp.exp(x - m), 0)
  return Partial(m, jnp.sum(p, axis, keepdims=True)), p


def merge(a: Partial, b: Partial) -> tuple[Partial, jax.Array, jax.Array]:
  """The state of the union of two disjoint parts, and the factors that rescaled them.

  Returns ``(state, alpha, beta)``: anything accumulated against ``a``'s max
  (a weighted sum of values) is carried to the merged one by ``alpha``, and
  ``b``'s by ``beta``. Both maxes are finite, so ``m_a - m`` and ``m_b - m``
  are never NaN.
  """
  m = jnp.maximum(a.m, b.m)
  alpha, beta = jnp.exp(a.m - m), jnp.exp(b.m - m)
  return Partial(m, a.s * alpha + b.s * beta), alpha, beta


def logsumexp(state: Partial):
  """``m + log s``: the logsumexp of the slice, ``-inf`` exactly when it is empty."""
  return state.m + jnp.log(state.s)


def log_normalizer(state: Partial):
  """``m + log(s + tiny)``: the logsumexp where the slice is not empty, a finite number where it is.

  Subtracting it from the entries gives their log-probabilities, and an
  empty slice's ``-inf`` entries stay ``-inf`` instead of becoming NaN.
  """
  return state.m + jnp.log(safe(state.s))
