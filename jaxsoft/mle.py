r"""Maximum likelihood by gradient descent, with standard errors.

``fit(log_prob, params, data)`` maximizes :math:`\sum_i w_i \log p(x_i \mid
\theta)` over any pytree of parameters :math:`\theta`, in an unconstrained space
reached through smooth bijections (``constraints``), and reports standard
errors from the observed Fisher information mapped back by the delta method.
It is one pure function: ``jax.jit`` compiles it and ``jax.vmap`` fits many
datasets (and starting points) in one call.

``fit_distribution(family, data)`` does the same for the families of
:mod:`jaxsoft.distributions` with a method-of-moments starting point.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from jaxsoft import _validate as V
from jaxsoft import distributions
from jaxsoft._constraints import Bijection, bijection, leaf_bijections
from jaxsoft._dtypes import compute_dtype
from jaxsoft._interval import Interval

__all__ = [
  "Bijection",
  "bijection",
  "Criterion",
  "MLEResult",
  "Interval",
  "fit",
  "fit_distribution",
  "aic",
  "bic",
  "confidence_intervals",
  "default_optimizer",
]


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------


class Criterion(enum.IntEnum):
  """Why a fit stopped: the value held by ``MLEResult.criterion``.

  ``MLEResult.criterion`` is an int32 array (so it passes through ``jit`` and
  ``vmap``); ``Criterion(int(result.criterion))`` turns a single fit's value
  back into the enum member, whose ``message`` says what happened.

  Attributes:
    NONE: 0, no stopping rule was met (``converged`` is False).
    GTOL: 1, the gradient's infinity norm fell to ``gtol`` or below.
    CAUCHY: 2, the parameters and the objective stopped changing.

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


class MLEResult(NamedTuple):
  """Result of :func:`fit` (a pytree: passes through ``jit`` and ``vmap``).

  Attributes:
    params: the estimate, same structure as the starting ``params``.
    nll: total (weighted) negative log-likelihood at ``params``, shape ().
    stderr: standard errors, same structure as ``params`` (NaN where the
      Hessian is singular or not positive definite).
    covariance: [P, P] covariance of the flattened constrained parameters, in
      the order of ``jax.flatten_util.ravel_pytree(params)``.
    grad_norm: infinity norm of the gradient of the *mean* negative
      log-likelihood in the optimizer's (scaled, unconstrained) coordinates.
    steps: number of optimizer steps taken, int32.
    converged: True exactly when a stopping criterion was met.
    criterion: int32, the :class:`Criterion` that stopped the fit (0 none,
      1 gtol, 2 cauchy); ``Criterion(int(result.criterion)).message`` says it
      in words.
    n_params: number of free parameters (unconstrained coordinates), int32;
      used by :func:`aic` and :func:`bic`.
  """

  params: Any
  nll: jax.Array
  stderr: Any
  covariance: jax.Array
  grad_norm: jax.Array
  steps: jax.Array
  converged: jax.Array
  criterion: jax.Array
  n_params: jax.Array


# --------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------


@functools.cache
def default_optimizer() -> optax.GradientTransformationExtraArgs:
  """The optimizer :func:`fit` uses when none is given.

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


def _check_options(fn: str, log_prob, max_steps, rtol, atol, gtol) -> int:
  if not callable(log_prob):
    V.fail(fn, "log_prob", "be callable", type(log_prob).__name__, exc=TypeError)
  max_steps = V.check_int(fn, "max_steps", max_steps, minimum=0)
  for name, tol in (("rtol", rtol), ("atol", atol), ("gtol", gtol)):
    V.check_nonnegative(fn, name, tol)
  return max_steps


def _check_params(fn: str, params):
  leaves, treedef = jax.tree.flatten(params)
  if not leaves:
    V.fail(fn, "params", "contain at least one array", repr(params))
  for leaf in leaves:
    V.check_array(fn, "params", leaf)
    V.check_floating(fn, "params", leaf)
  return leaves, treedef


def _check_data(fn: str, data) -> int:
  """The number of observations, after checking that ``data`` holds them on its leading axis."""
  leaves = jax.tree.leaves(data)
  if not leaves:
    V.fail(fn, "data", "be a non-empty array or pytree of arrays", repr(data))
  lead = set()
  for leaf in leaves:
    V.check_array(fn, "data", leaf)
    V.check_min_ndim(fn, "data", leaf, 1, " (observations on the leading axis)")
    lead.add(np.shape(leaf)[0])
  if len(lead) != 1:
    V.fail(
      fn, "data", "have the same leading (observation) axis in every leaf", f"leading sizes {sorted(lead)}"
    )
  n = lead.pop()
  if n == 0:
    V.fail(fn, "data", "have at least one observation", "0 observations (empty data)")
  for leaf in leaves:
    c = V.concrete(leaf)
    if c is not None and c.dtype.kind in "fc" and np.isnan(c).any():
      V.fail(fn, "data", "not contain NaN", f"{int(np.isnan(c).sum())} NaN value(s)")
  return n


def _check_start(fn: str, params, bijections) -> None:
  """A concrete starting point must lie inside its constraints (a traced one cannot be checked)."""
  for b, (path, leaf) in zip(bijections, jax.tree.leaves_with_path(params)):
    where = jax.tree_util.keystr(path) or "params"
    if b.name == "simplex" and np.ndim(leaf) < 1:
      V.fail(
        fn, "params", f"have rank >= 1 where the constraint is 'simplex' ({where})", f"shape {np.shape(leaf)}"
      )
    c = V.concrete(leaf)
    if c is not None and not np.all(b.contains(c.astype(np.float64))):
      V.fail(
        fn,
        "params",
        f"satisfy their constraints ({where} is '{b.name}')",
        np.array2string(c, precision=6, threshold=8),
      )


def _check_weights(fn: str, weights, n: int) -> None:
  if weights is None:
    return
  V.check_array(fn, "weights", weights)
  V.check_shape(fn, "weights", weights, (n,), " (one per observation)")
  c = V.concrete(weights)
  if c is not None and not (np.all(np.isfinite(c)) and np.all(c >= 0) and c.sum() > 0):
    V.fail(fn, "weights", "be finite, >= 0 and not all 0", np.array2string(c, threshold=8))


def _check_log_prob(fn: str, log_prob, params, data) -> None:
  """``log_prob(params, x)`` must be a scalar for one observation ``x``; traced on shapes only."""
  struct = lambda a, shape: jax.ShapeDtypeStruct(shape, jnp.result_type(a))
  one_obs = jax.tree.map(lambda a: struct(a, np.shape(a)[1:]), data)
  out = jax.eval_shape(log_prob, jax.tree.map(lambda a: struct(a, np.shape(a)), params), one_obs)
  if not isinstance(out, jax.ShapeDtypeStruct):
    V.fail(fn, "log_prob", "return a scalar", type(out).__name__, exc=TypeError)
  if out.shape != ():
    V.fail(fn, "log_prob", "return a scalar", f"shape {out.shape}")


def fit(
  log_prob: Callable,
  params,
  data,
  *,
  constraints=None,
  weights=None,
  optimizer: optax.GradientTransformation | None = None,
  max_steps: int = 2000,
  rtol: float = 1e-6,
  atol: float = 1e-8,
  gtol: float = 1e-5,
) -> MLEResult:
  r"""Maximum-likelihood estimate of ``params`` by gradient descent.

  Minimizes the mean negative log-likelihood in unconstrained coordinates
  :math:`u` (with :math:`\theta = T(u)` the constraint bijections):

  .. math::
    \bar\ell(u) = -\frac{\sum_i w_i \log p(x_i \mid T(u))}{\sum_i w_i}.

  The optimizer sees :math:`z` with :math:`u = u_0 + s \odot z`, where
  :math:`s_j = 1/\sqrt{\partial^2_{u_j} \bar\ell(u_0)}` (1 where that is not
  positive): the problem is then unit-free, so one ``gtol`` suits data in
  millimetres or kilometres. The loop stops after ``max_steps`` steps or when

  * (``gtol``) :math:`\|\nabla_z \bar\ell\|_\infty \le` ``gtol``, or
  * (Cauchy) :math:`|\Delta u_j| \le` ``atol`` + ``rtol`` :math:`|u_j|` for
    every :math:`j` and :math:`|\Delta \bar\ell| \le` ``atol`` + ``rtol``
    :math:`|\bar\ell|` between consecutive steps.

  ``result.criterion`` holds the :class:`Criterion` that stopped the loop.

  The mean (not the sum) makes the defaults reachable in float32: a float32
  location near 168 moves in steps of 1.5e-5, which leaves a summed NLL with a
  gradient noise floor around 1e-5, while the mean's floor is n times lower
  and the Cauchy criterion needs no gradient at all.

  Standard errors come from the inverse observed information
  :math:`H^{-1}`, :math:`H = \nabla^2_u \sum_i -w_i \log p(x_i \mid T(u))`,
  mapped by the delta method :math:`\Sigma_\theta = J H^{-1} J^\top`,
  :math:`J = \partial T / \partial u`. When :math:`H` is singular or not
  positive definite (an eigenvalue below :math:`10 P \epsilon \max|\lambda|`)
  the covariance and stderr are NaN.

  Args:
    log_prob: ``log_prob(params, x) -> scalar``, the log-density of one
      observation ``x`` (one slice of ``data`` along its leading axis).
    params: pytree of floating arrays, the starting point (it fixes the
      output structure and dtype; half precision is computed in float32).
    data: array or pytree of arrays, observations on the leading axis [n, ...].
    constraints: pytree matching ``params`` or a prefix of it, with leaves
      from :func:`bijection` (names such as ``"positive"``) or ``None`` (real).
      ``None`` (the default) leaves every parameter unconstrained.
    weights: optional [n] non-negative per-observation weights (frequency
      weights: the NLL is :math:`-\sum_i w_i \log p(x_i)`).
    optimizer: any ``optax.GradientTransformation``; it receives a flat vector
      of the scaled unconstrained coordinates and, as extra arguments,
      ``value``, ``grad`` and ``value_fn`` (for line searches). Default:
      :func:`default_optimizer` (L-BFGS with a zoom line search).
    max_steps: static Python int, the most optimizer steps.
    rtol: relative tolerance of the Cauchy criterion.
    atol: absolute tolerance of the Cauchy criterion.
    gtol: tolerance on the gradient's infinity norm (of the mean NLL).

  Returns:
    An :class:`MLEResult` (shapes: ``params``/``stderr`` like ``params``,
    ``covariance`` [P, P], scalars otherwise; leading batch axes under vmap).

  Raises:
    ValueError / TypeError when concrete inputs are invalid: empty data, NaN
    in data, params outside their constraints, a constraints tree that does
    not match params, unknown constraint names, bad weights, a ``log_prob``
    that does not return a scalar per observation (found from shapes alone).
    Under ``jit`` or ``vmap`` only static facts (structure, shapes, dtypes,
    names) can be checked: NaN data or infeasible starting params then give a
    NaN ``nll`` with ``converged=False`` and ``steps=0``, rather than an error.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jax.scipy.stats import norm
    >>> x = jnp.array([164.95, 165.35, 165.76, 166.16, 167.78,
    ...                168.99, 169.80, 170.20, 171.82, 172.63])
    >>> lp = lambda p, xi: norm.logpdf(xi, p["loc"], p["scale"])
    >>> r = fit(lp, {"loc": 160.0, "scale": 5.0}, x,
    ...         constraints={"loc": "real", "scale": "positive"})
    >>> print(f"{r.params['loc']:.3f} {r.params['scale']:.4f} {bool(r.converged)}")
    168.344 2.6207 True
    >>> print(f"{r.stderr['loc']:.4f}")  # scale / sqrt(n)
    0.8288

    ``jax.jit`` needs the callable and options static, e.g. through a closure:
    ``jax.jit(lambda p, x: fit(lp, p, x, constraints=c))``; ``jax.vmap`` of
    that over ``x`` [B, n] fits B datasets in one call.

  References:
    Nocedal & Wright, Numerical Optimization (2006), ch. 7 (L-BFGS).
    Casella & Berger, Statistical Inference (2002), 10.1 (delta method,
    observed information).
  """
  fn = "fit"
  max_steps = _check_options(fn, log_prob, max_steps, rtol, atol, gtol)
  p_leaves, p_def = _check_params(fn, params)
  bijections = leaf_bijections(fn, constraints, params)
  n = _check_data(fn, data)
  _check_start(fn, params, bijections)
  _check_weights(fn, weights, n)
  _check_log_prob(fn, log_prob, params, data)
  return _fit(log_prob, bijections, p_def, optimizer, p_leaves, data, weights, max_steps, rtol, atol, gtol)


# Compiled as one program even when ``fit`` is called eagerly: op-by-op
# dispatch of the Hessians and the loop setup costs more than compiling them.
@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _fit(log_prob, bijections, p_def, optimizer, p_leaves, data, weights, max_steps, rtol, atol, gtol):
  dtype = compute_dtype(jnp.result_type(*p_leaves))
  out_dtypes = [jnp.result_type(leaf) for leaf in p_leaves]
  n = jax.tree.leaves(data)[0].shape[0]
  w = jnp.ones((n,), dtype) if weights is None else jnp.asarray(weights).astype(dtype)
  w_sum = jnp.sum(w)

  u0, unravel = ravel_pytree([b.inverse(jnp.asarray(leaf, dtype)) for b, leaf in zip(bijections, p_leaves)])
  n_free = u0.size

  def to_params(u):
    return [b.forward(leaf) for b, leaf in zip(bijections, unravel(u))]

  def total_nll(u):
    theta = p_def.unflatten(to_params(u))
    lp = jax.vmap(lambda x: log_prob(theta, x))(data)
    return -jnp.sum(w * jnp.asarray(lp, dtype))

  def mean_nll_u(u):
    return total_nll(u) / w_sum

  # Scaling by the initial curvature: unit-free gradients and a well-scaled
  # first L-BFGS step.
  h0 = jnp.diag(jax.hessian(mean_nll_u)(u0))
  scale = jnp.where(jnp.isfinite(h0) & (h0 > 0), jax.lax.rsqrt(jnp.where(h0 > 0, h0, 1)), 1).astype(dtype)

  def objective(z):
    return mean_nll_u(u0 + scale * z)

  opt = optax.with_extra_args_support(default_optimizer() if optimizer is None else optimizer)
  z0 = jnp.zeros_like(u0)
  state0 = opt.init(z0)
  # Line searches (optax's zoom, backtracking) store the value and gradient at
  # the accepted point; reusing them saves one evaluation per step.
  reuse = optax.tree.get(state0, "value") is not None and optax.tree.get(state0, "grad") is not None
  f0, g0 = jax.value_and_grad(objective)(z0)
  rtol, atol, gtol = (jnp.asarray(t, dtype) for t in (rtol, atol, gtol))

  def gnorm(g):
    return jnp.max(jnp.abs(g)) if g.size else jnp.zeros((), dtype)

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
    u_new = u0 + scale * z_new
    du = scale * (z_new - z)
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

  u = u0 + scale * z
  theta_leaves = to_params(u)
  flat_theta = lambda u: ravel_pytree(to_params(u))[0]
  nll = total_nll(u)
  hess = jax.hessian(total_nll)(u)
  hess = 0.5 * (hess + hess.T)
  evals, evecs = jnp.linalg.eigh(hess)
  tiny = 10 * max(n_free, 1) * jnp.finfo(dtype).eps * jnp.max(jnp.abs(evals), initial=0)
  ok = jnp.all(jnp.isfinite(hess)) & jnp.all(evals > tiny)
  cov_u = (evecs / jnp.where(ok, evals, 1)) @ evecs.T
  jac = jax.jacfwd(flat_theta)(u)
  cov = jac @ cov_u @ jac.T
  cov = jnp.where(ok, cov, jnp.nan)
  _, unravel_theta = ravel_pytree(theta_leaves)
  se_leaves = unravel_theta(jnp.sqrt(jnp.diag(cov)))

  cast = lambda leaves: p_def.unflatten([jnp.asarray(l).astype(d) for l, d in zip(leaves, out_dtypes)])
  out_dtype = out_dtypes[0] if len(set(out_dtypes)) == 1 else dtype
  return MLEResult(
    params=cast(theta_leaves),
    nll=nll.astype(out_dtype),
    stderr=cast(se_leaves),
    covariance=cov.astype(out_dtype),
    grad_norm=gnorm(g).astype(out_dtype),
    steps=steps,
    converged=crit != Criterion.NONE,
    criterion=crit,
    n_params=jnp.asarray(n_free, jnp.int32),
  )


def fit_distribution(family, data, *, params=None, weights=None, **fit_options) -> MLEResult:
  """Fits a family of :mod:`jaxsoft.distributions` by maximum likelihood.

  Starts from the family's method-of-moments estimate (or ``params``) and
  calls :func:`fit` with the family's log-density and constraints.

  Args:
    family: a family object (``jaxsoft.distributions.normal``) or its name
      (``"normal"``).
    data: [n] observations (integers for poisson, bernoulli, categorical).
    params: optional starting point (a dict of the family's parameters); for
      ``categorical`` under ``jit`` it fixes the number of classes.
    weights: optional [n] non-negative frequency weights.
    **fit_options: passed to :func:`fit` (``optimizer``, ``max_steps``,
      ``rtol``, ``atol``, ``gtol``).

  Returns:
    An :class:`MLEResult` whose ``params`` is a dict of the family's parameters.

  Raises:
    ValueError for unknown family names and (when ``data`` is concrete) data
    outside the family's support, plus everything :func:`fit` raises.

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([164.95, 165.35, 165.76, 166.16, 167.78,
    ...                168.99, 169.80, 170.20, 171.82, 172.63])
    >>> r = fit_distribution("normal", x)
    >>> print(f"{r.params['loc']:.3f} {r.params['scale']:.4f}")
    168.344 2.6207
  """
  fn = "fit_distribution"
  fam = distributions.get(family, fn=fn)
  if "constraints" in fit_options:
    V.fail(fn, "constraints", "not be given (the family fixes them)", "constraints=...", exc=TypeError)
  _check_data(fn, data)
  V.check_ndim(fn, "data", data, 1, " (one observation per entry)")
  c = V.concrete(data)
  if c is not None and not (c.dtype.kind in "fc" and np.isnan(c).any()):
    bad = ~np.asarray(fam.support(c))
    if bad.any():
      V.fail(
        fn,
        "data",
        f"lie in the support of {fam.name} ({fam.support_text})",
        f"{int(bad.sum())} value(s) outside it, e.g. {c[bad].ravel()[0]!r}",
      )
  if params is None:
    params = fam.init(jnp.asarray(data), weights)
  return fit(fam.log_prob, params, data, constraints=fam.constraints, weights=weights, **fit_options)


# --------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------


def aic(result: MLEResult, n_obs=None, *, corrected: bool = False):
  r"""Akaike information criterion :math:`2k + 2\,\mathrm{NLL}`.

  With ``corrected=True``, AICc adds :math:`2k(k+1)/(n - k - 1)`; plain AIC
  does not depend on ``n_obs``.

  Args:
    result: an :class:`MLEResult` (``k`` is ``result.n_params``).
    n_obs: number of observations; required when ``corrected``.
    corrected: small-sample correction (AICc).

  Returns:
    Array with ``result.nll``'s shape.

  Examples:
    >>> import jax.numpy as jnp
    >>> r = MLEResult(None, jnp.array(23.5), None, None, None, None, None, None, jnp.array(2))
    >>> print(float(aic(r)), round(float(aic(r, 10, corrected=True)), 4))
    51.0 52.7143
  """
  k = jnp.asarray(result.n_params, result.nll.dtype)
  out = 2 * k + 2 * result.nll
  if corrected:
    if n_obs is None:
      V.fail("aic", "n_obs", "be given when corrected=True", None)
    out = out + 2 * k * (k + 1) / (n_obs - k - 1)
  return out


def bic(result: MLEResult, n_obs):
  r"""Bayesian information criterion :math:`k \log n + 2\,\mathrm{NLL}`.

  Args:
    result: an :class:`MLEResult` (``k`` is ``result.n_params``).
    n_obs: number of observations :math:`n`.

  Returns:
    Array with ``result.nll``'s shape.

  Examples:
    >>> import jax.numpy as jnp
    >>> r = MLEResult(None, jnp.array(23.5), None, None, None, None, None, None, jnp.array(2))
    >>> print(round(float(bic(r, 10)), 4))
    51.6052
  """
  V.check_positive("bic", "n_obs", n_obs)
  k = jnp.asarray(result.n_params, result.nll.dtype)
  return k * jnp.log(jnp.asarray(n_obs, result.nll.dtype)) + 2 * result.nll


def confidence_intervals(result: MLEResult, level: float = 0.95) -> Interval:
  r"""Wald intervals :math:`\hat\theta \pm z_{(1+\text{level})/2}\,\mathrm{se}`.

  The standard errors are already mapped through the constraints by the delta
  method, so the intervals are symmetric in the constrained parameters (and
  may cross a bound, as Wald intervals do).

  Args:
    result: an :class:`MLEResult`.
    level: coverage in (0, 1).

  Returns:
    ``Interval(lower, upper)``, each with the structure of ``result.params``.

  Examples:
    >>> import jax.numpy as jnp
    >>> r = MLEResult({"loc": jnp.array(168.344)}, None, {"loc": jnp.array(0.8287)},
    ...               None, None, None, None, None, None)
    >>> ci = confidence_intervals(r)
    >>> print(f"{ci.lower['loc']:.3f} {ci.upper['loc']:.3f}")
    166.720 169.968
  """
  V.check_range("confidence_intervals", "level", level, 0.0, 1.0, lo_open=True, hi_open=True)
  z = jax.scipy.special.ndtri(0.5 + level / 2)
  if V.concrete(level) is not None:
    z = float(z)  # a Python number keeps the dtypes of params and stderr
  lower = jax.tree.map(lambda p, s: p - z * s, result.params, result.stderr)
  upper = jax.tree.map(lambda p, s: p + z * s, result.params, result.stderr)
  return Interval(lower, upper)
