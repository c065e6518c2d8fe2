"""Gradient checks against finite differences, compiled once.

The checks of :func:`jax.test_util.check_grads` (one random direction, central
differences, up to second order), but every derivative and difference is
computed by one jitted function: ``check_grads`` transforms and runs its
functions op by op, which costs seconds of compilation per call on the CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _vdot(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _numerical_jvp(g, x, d, eps):
  """The central difference of ``g`` at ``x`` along ``d``: no autodiff involved."""
  plus = g(jax.tree.map(lambda a, b: a + eps * b, x, d))
  minus = g(jax.tree.map(lambda a, b: a - eps * b, x, d))
  return jax.tree.map(lambda p, m: (p - m) / (2 * eps), plus, minus)


def _jvp(g, x, d):
  return jax.jvp(g, (x,), (d,))[1]


def _vjp(g, x, c):
  return jax.vjp(g, x)[1](c)[0]


def check_grads(f, args, order, modes=("fwd", "rev"), *, eps, atol, rtol, seed=0):
  """``jax.test_util.check_grads(f, args, order, modes)`` (order 1 or 2) in one compile.

  ``fwd`` compares ``jvp(f)(t)`` with the central difference along ``t``;
  ``rev`` compares ``<vjp(f)(c), t>`` with ``<c, difference>``. At order 2
  the same checks run on the function ``x -> jvp(f)(t)`` (for ``fwd``) and
  ``x -> vjp(f)(c)`` (for ``rev``), in every mode.
  """
  rng = np.random.default_rng(seed)
  x = tuple(jnp.asarray(a) for a in args)
  draw = lambda tree: jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype), tree)
  F = lambda x: f(*x)
  t, t2, ct = draw(x), draw(x), draw(jax.eval_shape(F, x))

  def checks(g, x, c, d):
    out = {}
    if "fwd" in modes:
      out["JVP"] = (_jvp(g, x, d), _numerical_jvp(g, x, d, eps))
    if "rev" in modes:
      out["VJP"] = (_vdot(_vjp(g, x, c), d), _vdot(c, _numerical_jvp(g, x, d, eps)))
    return out

  @jax.jit
  def run(x, t, t2, ct):
    res = checks(F, x, ct, t)
    if order > 1:
      if "fwd" in modes:
        res |= {f"{k} of JVP": v for k, v in checks(lambda x: _jvp(F, x, t), x, ct, t2).items()}
      if "rev" in modes:
        res |= {f"{k} of VJP": v for k, v in checks(lambda x: _vjp(F, x, ct), x, t, t2).items()}
    return res

  for name, (autodiff, numeric) in run(x, t, t2, ct).items():
    for a, b in zip(jax.tree.leaves(autodiff), jax.tree.leaves(numeric)):
      np.testing.assert_allclose(a, b, atol=atol, rtol=rtol, err_msg=name)
