"""The minimization loop behind :func:`jaxsoft.mle.fit` and the profile likelihood.

One ``lax.while_loop`` around any optax optimizer, with the two stopping rules
(the gradient tolerance and the Cauchy criterion) and the :class:`Criterion`
that says which one stopped it. Public through :mod:`jaxsoft.mle`.
"""

from __future__ import annotations

import enum
import functools

import jax
import jax.numpy as jnp
import optax


class Criterion(enum.IntEnum):
  """Why a fit stopped: the value held by ``MLEResult.criterion``.

  ``MLEResult.criterion`` is an int32 array (so it passes through ``jit`` and
  ``vmap``); ``Criterion(int(result.criterion))`` turns a single fit's value
  back into the enum member, whose ``message`` says what happened.

  Attributes:
    NONE: 0, no stopping rule was met (``converged`` is False).
    GTOL: 1, the gradient's infinity norm fell to ``gtol`` or below.
    CAUCHY: 2, the parameters and the objective stopped changing.
    BOUNDARY: 3, the estimate runs off to a boundary of the parameter space
      (``converged`` is False, standard errors are not meaningful).

  Examples:
    >>> c = Criterion(2)
    >>> print(c.name, int(c))
    CAUCHY 2
    >>> print(c.message)
    the parameters and the objective stopped changing (the Cauchy criterion)
  """

  def __new__(cls, value: int, message: str):
    member = int.__new__(cls, value)
    member._value_ = value
    member.message = message
    return member

  NONE = 0, "no stopping rule was met (max_steps reached or a non-finite objective)"
  GTOL = 1, "the gradient's infinity norm fell to gtol or below"
  CAUCHY = 2, "the parameters and the objective stopped changing (the Cauchy criterion)"
  BOUNDARY = (
    3,
    "the estimate runs off to a boundary of the parameter space (a scale to 0, a probability "
    "to 0 or 1, a degrees-of-freedom to infinity): no interior maximum, standard errors not meaningful",
  )


@functools.cache
def default_optimizer() -> optax.GradientTransformationExtraArgs:
  """The optimizer :func:`jaxsoft.mle.fit` uses when none is given.

  L-BFGS (memory 10) with a zoom line search for the strong Wolfe
  conditions, its initial step guess 1 at every iteration (the quasi-Newton
  step) and at most 8 trials. Under ``vmap`` every step waits for the slowest
  line search of the batch, so the trial cap sets the batched cost: 8 halves
  the time of optax's default 20 and, on 10,000 Student's t fits, reached the
  same likelihoods (within 2e-7 relative); 4 left one fit unconverged.
  The same object is returned on every call, so ``jit`` caches keyed on it
  stay valid.
  """
  return optax.lbfgs(
    memory_size=10,
    linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=8, initial_guess_strategy="one"),
  )


def gnorm(g):
  """Infinity norm of a gradient vector (0 for an empty one)."""
  return jnp.max(jnp.abs(g)) if g.size else jnp.zeros((), g.dtype)


def minimize(objective, z0, u0, scale, optimizer, max_steps, rtol, atol, gtol):
  """Minimizes ``objective`` from ``z0``; returns ``(steps, z, f, g, criterion)``.

  The optimizer's coordinates ``z`` map to the problem's by ``u = u0 + scale *
  z``, in which the Cauchy criterion is measured; the tolerances are arrays or
  numbers.
  """
  dtype = z0.dtype
  opt = optax.with_extra_args_support(default_optimizer() if optimizer is None else optimizer)
  state0 = opt.init(z0)
  # Line searches (optax's zoom, backtracking) store the value and gradient at
  # the accepted point; reusing them saves one evaluation per step.
  reuse = optax.tree.get(state0, "value") is not None and optax.tree.get(state0, "grad") is not None
  f0, g0 = jax.value_and_grad(objective)(z0)
  rtol, atol, gtol = (jnp.asarray(t, dtype) for t in (rtol, atol, gtol))
  crit0 = jnp.where(gnorm(g0) <= gtol, Criterion.GTOL, Criterion.NONE).astype(jnp.int32)

  def cond(carry):
    step, z, state, f, g, crit = carry
    finite = jnp.isfinite(f) & jnp.all(jnp.isfinite(g))
    return (step < max_steps) & (crit == Criterion.NONE) & finite

  def body(carry):
    step, z, state, f, g, _ = carry
    # Under vmap the body also runs for fits that have already stopped (their
    # results are discarded). A constant objective makes their line search
    # accept its first trial instead of running to its step limit.
    active = cond(carry)
    value_fn = lambda z: jnp.where(active, objective(z), f)
    updates, state = opt.update(g, state, z, value=f, grad=g, value_fn=value_fn)
    z_new = optax.apply_updates(z, updates)
    if reuse:
      f_new, g_new = optax.tree.get(state, "value"), optax.tree.get(state, "grad")
    else:
      f_new, g_new = jax.value_and_grad(objective)(z_new)
    du = scale * (z_new - z)
    u_new = u0 + scale * z_new
    cauchy = jnp.all(jnp.abs(du) <= atol + rtol * jnp.abs(u_new)) & (
      jnp.abs(f_new - f) <= atol + rtol * jnp.abs(f_new)
    )
    crit = jnp.where(cauchy, Criterion.CAUCHY, Criterion.NONE)
    crit = jnp.where(gnorm(g_new) <= gtol, Criterion.GTOL, crit)
    crit = jnp.where(jnp.isfinite(f_new), crit, Criterion.NONE).astype(jnp.int32)
    return step + 1, z_new, state, f_new, g_new, crit

  carry = (jnp.zeros((), jnp.int32), z0, state0, f0, g0, crit0)
  steps, z, _, f, g, crit = jax.lax.while_loop(cond, body, carry)
  crit = jnp.where(jnp.isfinite(f) & jnp.all(jnp.isfinite(g)), crit, Criterion.NONE).astype(jnp.int32)
  return steps, z, f, g, crit
