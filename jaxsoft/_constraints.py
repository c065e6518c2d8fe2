r"""Parameter constraints as smooth bijections from an unconstrained space.

:func:`jaxsoft.mle.fit` optimizes in unconstrained coordinates :math:`u` and
maps them onto the constrained parameters :math:`\theta = T(u)`; this module
holds the bijections :math:`T`, the names that select them and the matching of
a ``constraints`` tree to the leaves of ``params``. Public through
:mod:`jaxsoft.mle` (``jaxsoft.mle.bijection``, ``jaxsoft.mle.Bijection``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsoft import _validate as V


class Bijection(NamedTuple):
  """A smooth bijection from an unconstrained space onto a constrained set.

  Attributes:
    name: the constraint's name, e.g. ``"positive"``.
    forward: unconstrained array -> constrained array.
    inverse: constrained array -> unconstrained array (NaN or inf outside the set).
    contains: constrained array -> boolean array, True inside the set; used
      to check concrete starting points.
  """

  name: str
  forward: Callable
  inverse: Callable
  contains: Callable


def _simplex_forward(u):
  # Additive log-ratio: the last category is the reference with logit 0.
  zeros = jnp.zeros(u.shape[:-1] + (1,), u.dtype)
  return jax.nn.softmax(jnp.concatenate([u, zeros], axis=-1), axis=-1)


def _simplex_inverse(p):
  logp = jnp.log(p)
  return logp[..., :-1] - logp[..., -1:]


def _simplex_contains(p):
  p = np.asarray(p, dtype=np.float64)
  tol = 16 * p.shape[-1] * np.finfo(np.float32).eps
  return np.all(p > 0, axis=-1) & (np.abs(p.sum(-1) - 1) <= tol)


def _lower(a: float) -> Bijection:
  return Bijection(
    f"lower_bounded:{a:g}", lambda u: a + jnp.exp(u), lambda x: jnp.log(x - a), lambda x: np.asarray(x) > a
  )


def _upper(b: float) -> Bijection:
  return Bijection(
    f"upper_bounded:{b:g}", lambda u: b - jnp.exp(u), lambda x: jnp.log(b - x), lambda x: np.asarray(x) < b
  )


def _interval(a: float, b: float) -> Bijection:
  return Bijection(
    f"interval:{a:g},{b:g}",
    lambda u: a + (b - a) * jax.nn.sigmoid(u),
    lambda x: jnp.log(x - a) - jnp.log(b - x),
    lambda x: (np.asarray(x) > a) & (np.asarray(x) < b),
  )


_NAMED = {
  "real": Bijection("real", lambda u: u, lambda x: x, lambda x: np.isfinite(np.asarray(x))),
  # exp rather than softplus: scale-like parameters span orders of magnitude,
  # and standard errors of log-scales are the usual ones.
  "positive": Bijection("positive", jnp.exp, jnp.log, lambda x: np.asarray(x) > 0),
  "unit_interval": Bijection(
    "unit_interval",
    jax.nn.sigmoid,
    lambda x: jnp.log(x) - jnp.log1p(-x),
    lambda x: (np.asarray(x) > 0) & (np.asarray(x) < 1),
  ),
  "simplex": Bijection("simplex", _simplex_forward, _simplex_inverse, _simplex_contains),
}
_SPEC_HELP = (
  "'real', 'positive', 'unit_interval', 'simplex', 'lower_bounded:<a>', "
  "'upper_bounded:<b>', 'interval:<a>,<b>', None (real) or a Bijection"
)


# Parsed once per name: the same object keeps jit's cache keys stable.
@functools.lru_cache(maxsize=256)
def _parse(spec: str) -> Bijection | None:
  head, _, tail = spec.partition(":")
  try:
    if head == "lower_bounded" and tail:
      return _lower(float(tail))
    if head == "upper_bounded" and tail:
      return _upper(float(tail))
    if head == "interval" and tail:
      a, b = (float(t) for t in tail.split(","))
      if a < b:
        return _interval(a, b)
  except ValueError:
    pass
  return None


def bijection(spec, *, fn: str = "bijection") -> Bijection:
  r"""The bijection for a constraint name.

  ============================  ==========================================
  ``"real"``                    identity
  ``"positive"``                :math:`x = e^u`
  ``"unit_interval"``           :math:`x = \sigma(u)` (open interval)
  ``"simplex"``                 :math:`x = \mathrm{softmax}([u, 0])` on the
                                last axis (additive log-ratio, K-1 coordinates)
  ``"lower_bounded:<a>"``       :math:`x = a + e^u`
  ``"upper_bounded:<b>"``       :math:`x = b - e^u`
  ``"interval:<a>,<b>"``        :math:`x = a + (b - a)\sigma(u)`
  ============================  ==========================================

  Args:
    spec: a name from the table, ``None`` (same as ``"real"``) or a
      :class:`Bijection` (returned as is).

  Returns:
    A :class:`Bijection`.

  Examples:
    >>> b = bijection("lower_bounded:2")
    >>> print(float(b.forward(0.0)), float(b.inverse(3.0)))
    3.0 0.0
  """
  if spec is None:
    return _NAMED["real"]
  if isinstance(spec, Bijection):
    return spec
  if not isinstance(spec, str):
    V.fail(fn, "constraints", f"contain only {_SPEC_HELP}", repr(spec), exc=TypeError)
  out = _NAMED.get(spec) or _parse(spec)
  if out is None:
    V.fail(fn, "constraints", f"contain only {_SPEC_HELP}", repr(spec))
  return out


def leaf_bijections(fn: str, constraints, params) -> tuple[Bijection, ...]:
  """One bijection per leaf of ``params``; ``constraints`` may be a prefix tree."""
  if constraints is None:
    return (_NAMED["real"],) * len(jax.tree.leaves(params))
  is_leaf = lambda c: c is None or isinstance(c, (str, Bijection))
  c_leaves, c_def = jax.tree.flatten(constraints, is_leaf=is_leaf)
  try:
    subtrees = c_def.flatten_up_to(params)
  except (ValueError, TypeError) as e:
    V.fail(
      fn,
      "constraints",
      f"be a tree matching params (or a prefix of it), structure {jax.tree.structure(params)}",
      f"{c_def} ({str(e).splitlines()[0][:120]})",
    )
  out = []
  for c, sub in zip(c_leaves, subtrees):
    out += [bijection(c, fn=fn)] * len(jax.tree.leaves(sub))
  return tuple(out)
