"""The softmax family: ``softmax``, ``log_softmax`` and ``logsumexp``.

All three share one preparation step (checks, masking, temperature) and the
online logsumexp's rule for empty slices, and they are exact and NaN-free:

* shift invariant, exact for logits up to the dtype's maximum;
* ``-inf`` entries and entries excluded by ``where`` get probability 0;
* a slice whose entries are all excluded (or ``-inf``) gives softmax 0,
  log_softmax ``-inf``, logsumexp ``-inf`` and zero gradients;
* NaN only when the input holds NaN or ``+inf``.

Half precision inputs are computed in float32 and returned in their own dtype.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxsoft import _online_logsumexp as online
from jaxsoft import _validate as V
from jaxsoft._dtypes import compute_dtype

__all__ = ["softmax", "log_softmax", "logsumexp"]


def _prepare(fn, x, axis, where, temperature):
  """Checks arguments; returns shifted/scaled logits in the compute dtype."""
  V.check_array(fn, "x", x)
  x = jnp.asarray(x)
  V.check_floating(fn, "x", x)
  axes = V.normalize_axes(fn, "axis", tuple(range(x.ndim)) if axis is None else axis, x.ndim)
  V.check_positive(fn, "temperature", temperature)
  out_dtype = x.dtype
  x = x.astype(compute_dtype(x.dtype))
  if where is not None:
    where = jnp.asarray(where)
    V.check_bool(fn, "where", where)
    V.check_broadcastable(fn, "where", where.shape, x.shape, " (the shape of x)")
    # Excluded entries become -inf: from here on one rule covers both.
    x = jnp.where(where, x, -jnp.inf)
  if not (isinstance(temperature, (int, float)) and temperature == 1):
    # Shift before dividing: x / T can overflow for T < 1, (x - max) / T cannot
    # push the largest entry past 0.
    x = (x - online.shift(x, axes)) / jnp.asarray(temperature, x.dtype)
  return x, axes, out_dtype


# Custom JVPs: the derivative of the textbook formulas is fine for finite
# logits, but produces 0 * inf = NaN for -inf entries and all-excluded slices.
# These rules state the derivative directly and keep it exactly 0 there.


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _softmax(x, axes):
  state, e = online.reduce(x, axes)
  return e / online.safe(state.s)


@_softmax.defjvp
def _softmax_jvp(axes, primals, tangents):
  (x,), (t,) = primals, tangents
  p = _softmax(x, axes)
  # p == 0 on excluded entries, so their tangents drop out.
  return p, p * (t - jnp.sum(p * t, axes, keepdims=True))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _log_softmax(x, axes):
  state, _ = online.reduce(x, axes)
  # Shift first, then subtract the log-sum: x - (m + log s) would round away
  # log s next to a huge m. In an empty slice every entry stays -inf.
  return (x - state.m) - jnp.log(online.safe(state.s))


@_log_softmax.defjvp
def _log_softmax_jvp(axes, primals, tangents):
  (x,), (t,) = primals, tangents
  y = _log_softmax(x, axes)
  p = jnp.exp(y)
  # A -inf output (excluded entry) has a constant value: zero tangent. This also
  # zeroes whole empty slices, where p == 0 everywhere.
  return y, jnp.where(y > -jnp.inf, t - jnp.sum(p * t, axes, keepdims=True), 0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _logsumexp(x, axes):
  state, _ = online.reduce(x, axes)
  # A +inf entry makes the sum NaN (x - m is inf - inf there): say +inf exactly.
  out = jnp.where(state.m == jnp.inf, jnp.inf, online.logsumexp(state))
  return jnp.squeeze(out, axes)


@_logsumexp.defjvp
def _logsumexp_jvp(axes, primals, tangents):
  (x,), (t,) = primals, tangents
  return _logsumexp(x, axes), jnp.sum(_softmax(x, axes) * t, axes)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _logsumexp_scaled(x, b, axes):
  """``(log |sum b e^x|, sign of the sum)``; entries with ``b = 0`` are left out of the max."""
  # A huge x under b = 0 must not set the shift, or every other entry underflows.
  m = online.shift(jnp.where(b != 0, x, -jnp.inf), axes)
  s = jnp.sum(jnp.where(b != 0, b * jnp.exp(x - m), 0), axes, keepdims=True)
  return jnp.squeeze(m + jnp.log(jnp.abs(s)), axes), jnp.squeeze(jnp.sign(s), axes)


@_logsumexp_scaled.defjvp
def _logsumexp_scaled_jvp(axes, primals, tangents):
  (x, b), (tx, tb) = primals, tangents
  out = _logsumexp_scaled(x, b, axes)
  m = online.shift(jnp.where(b != 0, x, -jnp.inf), axes)
  e = jnp.where(b != 0, jnp.exp(x - m), 0)  # b = 0 entries may overflow: keep them out of b * e
  s = jnp.sum(b * e, axes, keepdims=True)
  # d log|s| = ds / s, with ds = sum_i b_i e_i dx_i + e_i db_i. An entry with
  # b = 0 still has d/db = e^{x - lse} (not 0); it is capped at the largest
  # finite number so that a zero tangent times it stays 0. An empty sum gets a
  # zero tangent.
  e_b = jnp.exp(jnp.minimum(x - m, math.log(jnp.finfo(x.dtype).max)))
  ds = b * e * tx + e_b * tb
  t = jnp.where(s == 0, 0, jnp.sum(ds, axes, keepdims=True) / jnp.where(s == 0, 1, s))
  return out, (jnp.squeeze(t, axes), jnp.zeros_like(out[1]))


def softmax(x, axis=-1, *, where=None, temperature=1.0):
  r"""Softmax: exponentials normalized to sum to one along ``axis``.

  .. math::
    \mathrm{softmax}(x)_i = \frac{\exp(x_i / T)}{\sum_{j \in W} \exp(x_j / T)}
    \quad (i \in W), \qquad 0 \quad (i \notin W)

  where :math:`W` is the set of entries allowed by ``where`` and :math:`T` the
  temperature.

  Args:
    x: floating logits, any shape.
    axis: int, tuple of ints, or None (every axis) to normalize over.
    where: optional boolean mask broadcastable to ``x``; False entries are
      excluded (probability 0). A slice with nothing allowed gives all zeros.
    temperature: positive scalar dividing the logits (``> 1`` flattens,
      ``< 1`` sharpens).

  Returns:
    An array of the shape and dtype of ``x``.

  Examples:
    The lecture's worked example:

    >>> import jax.numpy as jnp
    >>> from jaxsoft import softmax
    >>> print(softmax(jnp.array([0.9, 1.2, -0.4])).round(4))
    [0.3813 0.5147 0.1039]
    >>> import numpy as np  # NumPy rounds float32 exactly for printing; jnp.round can be 1 ulp off
    >>> print(np.asarray(softmax(jnp.array([1.0, 2.0, 3.0]), where=jnp.array([True, True, False]))).round(4))
    [0.2689 0.7311 0.    ]
  """
  x, axes, dtype = _prepare("softmax", x, axis, where, temperature)
  return _softmax(x, axes).astype(dtype)


def log_softmax(x, axis=-1, *, where=None, temperature=1.0):
  r"""Logarithm of :func:`softmax`, computed without forming the softmax.

  .. math::
    \mathrm{log\_softmax}(x)_i = x_i / T - \log \sum_{j \in W} \exp(x_j / T)

  Excluded entries (``where`` False) are ``-inf`` and have zero gradient.

  Args:
    x: floating logits, any shape.
    axis: int, tuple of ints, or None (every axis) to normalize over.
    where: optional boolean mask broadcastable to ``x``.
    temperature: positive scalar dividing the logits.

  Returns:
    An array of the shape and dtype of ``x``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from jaxsoft import log_softmax
    >>> print(np.asarray(log_softmax(jnp.array([0.9, 1.2, -0.4]))).round(4))
    [-0.9641 -0.6641 -2.2641]
  """
  x, axes, dtype = _prepare("log_softmax", x, axis, where, temperature)
  return _log_softmax(x, axes).astype(dtype)


def logsumexp(x, axis=-1, *, b=None, where=None, keepdims=False, return_sign=False):
  r"""Log of the sum of (scaled) exponentials along ``axis``, without overflow.

  .. math::
    \mathrm{logsumexp}(x) = m + \log \Big|\sum_{j \in W} b_j \exp(x_j - m)\Big|,
    \qquad m = \max_{j \in W,\, b_j \ne 0} x_j

  with :math:`b = 1` by default. An empty slice (nothing allowed by
  ``where``, all ``-inf``, or all :math:`b_j = 0`) gives ``-inf`` with zero
  gradient. The scale ``b`` and ``return_sign`` are :func:`jax.nn.logsumexp`'s:
  ``b`` may be negative, and then the sum's sign is returned by
  ``return_sign=True`` (without it, a negative sum gives NaN). The gradient
  in ``b`` is :math:`\mathrm{sign} \cdot e^{x_j - \mathrm{lse}}`, also where
  :math:`b_j = 0`. Unlike :func:`jax.nn.logsumexp`, ``axis`` defaults to the
  last axis; ``axis=None`` reduces every axis.

  Args:
    x: floating array.
    axis: int, tuple of ints, or None (every axis) to reduce.
    b: optional scale broadcastable to ``x``.
    where: optional boolean mask broadcastable to ``x``.
    keepdims: keep the reduced axes with size 1.
    return_sign: return ``(log |sum|, sign)`` instead of ``log sum``.

  Returns:
    ``x`` reduced over ``axis``, in the dtype of ``x``; with ``return_sign``,
    also the sign of the sum (1, -1, or 0 for an empty slice).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoft import logsumexp
    >>> print(logsumexp(jnp.array([0.9, 1.2, -0.4])).round(4))
    1.8641
    >>> print(logsumexp(jnp.array([1e30, 1e30])))
    1e+30
    >>> lse, sign = logsumexp(jnp.array([0.0, 1.0]), b=jnp.array([1.0, -1.0]), return_sign=True)
    >>> print(lse.round(4), sign)
    0.5413 -1.0
  """
  x, axes, dtype = _prepare("logsumexp", x, axis, where, 1.0)
  if not isinstance(return_sign, bool):
    V.fail("logsumexp", "return_sign", "be a bool", repr(return_sign), exc=TypeError)
  if b is None:
    out = _logsumexp(x, axes)
    sign = jnp.where(out == -jnp.inf, 0, 1).astype(out.dtype)
  else:
    V.check_array("logsumexp", "b", b)
    b = jnp.asarray(b)
    if not (jnp.issubdtype(b.dtype, jnp.floating) or jnp.issubdtype(b.dtype, jnp.integer)):
      V.fail("logsumexp", "b", "have a numeric dtype", b.dtype, exc=TypeError)
    V.check_broadcastable("logsumexp", "b", b.shape, x.shape, " (the shape of x)")
    out, sign = _logsumexp_scaled(x, jnp.broadcast_to(b.astype(x.dtype), x.shape), axes)
    if not return_sign:
      out = jnp.where(sign < 0, jnp.nan, out)
  if keepdims:
    out, sign = jnp.expand_dims(out, axes), jnp.expand_dims(sign, axes)
  if return_sign:
    return out.astype(dtype), sign.astype(dtype)
  return out.astype(dtype)
