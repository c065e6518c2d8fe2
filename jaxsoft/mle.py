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
from jaxsoft._hypothesis_tests import TestResult, likelihood_ratio_test, score_test, wald_test
from jaxsoft._interval import Interval
from jaxsoft._objective import (
  at_boundary,
  curvature_scale,
  group_index,
  inverse_information,
  objective,
  value_grad_hessian,
)
from jaxsoft._optimize import Criterion, default_optimizer, gnorm, minimize
from jaxsoft._profile import profile_confidence_intervals

__all__ = [
  "Bijection",
  "bijection",
  "Criterion",
  "CovType",
  "MLEResult",
  "Interval",
  "fit",
  "fit_distribution",
  "aic",
  "bic",
  "confidence_intervals",
  "profile_confidence_intervals",
  "TestResult",
  "likelihood_ratio_test",
  "wald_test",
  "score_test",
  "default_optimizer",
]


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------


class CovType(enum.IntEnum):
  """Which covariance ``MLEResult.covariance`` holds: the value of ``MLEResult.cov_type``.

  Attributes:
    OBSERVED: 0, the inverse observed information :math:`H^{-1}`.
    ROBUST: 1, the sandwich :math:`H^{-1} B H^{-1}` (statsmodels' ``HC0``).
    CLUSTER: 2, the cluster-robust sandwich with statsmodels' small-sample correction.

  Examples:
    >>> print(CovType(1).name.lower(), int(CovType["CLUSTER"]))
    robust 2
  """

  OBSERVED = 0
  ROBUST = 1
  CLUSTER = 2


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
    converged: True exactly when a stopping rule was met at an interior
      point (``criterion`` GTOL or CAUCHY; not at a BOUNDARY).
    criterion: int32, the :class:`Criterion` that stopped the fit (0 none,
      1 gtol, 2 cauchy, 3 boundary); ``Criterion(int(result.criterion)).message`` says it
      in words.
    n_params: number of free parameters (unconstrained coordinates), int32;
      used by :func:`aic` and :func:`bic`.
    cov_type: int32, the :class:`CovType` of ``covariance`` and ``stderr``
      (0 observed, 1 robust, 2 cluster).
    num_converged: int32, how many of the ``num_starts`` starting points
      converged to the best likelihood (within the fit's tolerances); with one
      start, 1 when it converged and 0 otherwise.
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
  cov_type: jax.Array = None
  num_converged: jax.Array = None


# --------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------


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


def _check_inference(fn: str, cov_type, groups, n: int, num_starts, start_key, start_scale):
  """The covariance and multistart options; returns ``(CovType, num_starts, key)``."""
  V.check_option(fn, "cov_type", cov_type, [c.name.lower() for c in CovType])
  cov = CovType[cov_type.upper()]
  if cov is CovType.CLUSTER:
    if groups is None:
      V.fail(fn, "groups", "be given when cov_type='cluster'", None)
    V.check_array(fn, "groups", groups)
    V.check_integer(fn, "groups", groups)
    V.check_shape(fn, "groups", groups, (n,), " (one group label per observation)")
    c = V.concrete(groups)
    if c is not None and len(np.unique(c)) < 2:
      V.fail(fn, "groups", "hold at least 2 distinct groups", f"{len(np.unique(c))} group")
  elif groups is not None:
    V.fail(fn, "groups", "be None unless cov_type='cluster'", f"groups with cov_type={cov_type!r}")
  num_starts = V.check_int(fn, "num_starts", num_starts, minimum=1)
  V.check_nonnegative(fn, "start_scale", start_scale)
  key = None
  if num_starts > 1:
    if start_key is None:
      V.fail(fn, "start_key", "be given when num_starts > 1", None, exc=TypeError)
    key = V.check_key(fn, "start_key", start_key)
  return cov, num_starts, key


def fit(
  log_prob: Callable,
  params,
  data,
  *,
  constraints=None,
  weights=None,
  cov_type: str = "observed",
  groups=None,
  num_starts: int = 1,
  start_key=None,
  start_scale: float = 1.0,
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

  ``result.criterion`` holds the :class:`Criterion` that stopped the loop. A
  fit whose estimate runs off to a boundary of the parameter space (a scale
  to 0 on constant data, a probability to 0 or 1, a Student's t ``df`` to
  infinity) has no interior maximum: it reports ``Criterion.BOUNDARY`` and
  ``converged=False``. It is detected in the unconstrained coordinates, where
  the optimum is then at infinity: when a stopping rule is met, the Newton
  step of a bounded coordinate, :math:`|g_j| / H_{jj}`, or along a direction
  of bounded coordinates (an eigenvector of :math:`H` scaled to a unit
  diagonal) is still above 0.1 instead of vanishing (:math:`g` and :math:`H`
  the gradient and Hessian of the total NLL).

  The mean (not the sum) makes the defaults reachable in float32: a float32
  location near 168 moves in steps of 1.5e-5, which leaves a summed NLL with a
  gradient noise floor around 1e-5, while the mean's floor is n times lower
  and the Cauchy criterion needs no gradient at all.

  Standard errors (``cov_type``) come from the observed information
  :math:`H = \nabla^2_u \sum_i -w_i \log p(x_i \mid T(u))` and the scores
  :math:`s_i = \nabla_u \log p(x_i \mid T(u))`:

  * ``"observed"``: :math:`\Sigma_u = H^{-1}`;
  * ``"robust"``: the sandwich :math:`H^{-1} B H^{-1}`,
    :math:`B = \sum_i w_i s_i s_i^\top`, valid when the model is
    misspecified (statsmodels' ``HC0`` for M-estimators);
  * ``"cluster"``: :math:`B = c \sum_g S_g S_g^\top` with
    :math:`S_g = \sum_{i \in g} w_i s_i` over the G distinct ``groups`` and
    statsmodels' small-sample correction :math:`c = \frac{G}{G-1}
    \frac{n-1}{n-k}` (:math:`n = \sum_i w_i`, :math:`k` free parameters).

  They are mapped by the delta method :math:`\Sigma_\theta = J \Sigma_u
  J^\top`, :math:`J = \partial T / \partial u`. When :math:`H` is singular
  or not positive definite (an eigenvalue below :math:`10 P \epsilon
  \max|\lambda|`) the covariance and stderr are NaN.

  With ``num_starts > 1`` the fit also starts from ``num_starts - 1`` points
  :math:`u_0 + \sigma \varepsilon_k`, :math:`\varepsilon_k \sim N(0, I)`
  (``start_scale`` :math:`= \sigma`, drawn from ``start_key``) in the
  unconstrained space, runs all the fits in one ``vmap`` and keeps the one
  with the lowest NLL; ``result.num_converged`` counts the starts that
  converged to it (mean NLL within ``10 (atol + rtol |best|)``).

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
    cov_type: static, ``"observed"`` (default), ``"robust"`` or ``"cluster"``.
    groups: [n] integer group labels, required by ``cov_type="cluster"``
      (any integers; the number of distinct ones is G).
    num_starts: static Python int >= 1, the number of starting points.
    start_key: a ``jax.random`` key, required when ``num_starts > 1``.
    start_scale: standard deviation of the random starts in unconstrained
      coordinates (log-scale for ``"positive"``, logit for probabilities).
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
    ValueError, TypeError: when concrete inputs are invalid: empty data, NaN
      in data, params outside their constraints, a constraints tree that does
      not match params, unknown constraint names, bad weights, a ``log_prob``
      that does not return a scalar per observation (found from shapes alone),
      an unknown ``cov_type``, ``groups`` missing, of the wrong length or with
      one group, ``num_starts < 1`` or no ``start_key`` for several starts.
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
    >>> print(f"{r.stderr['loc']:.5f}")  # scale / sqrt(n) = 0.828750
    0.82875
    >>> rr = fit(lp, {"loc": 160.0, "scale": 5.0}, x, cov_type="robust",
    ...          constraints={"loc": "real", "scale": "positive"})
    >>> print(f"{rr.stderr['loc']:.5f} {rr.stderr['scale']:.4f} {CovType(int(rr.cov_type)).name}")
    0.82875 0.3352 ROBUST

    ``jax.jit`` needs the callable and options static, e.g. through a closure:
    ``jax.jit(lambda p, x: fit(lp, p, x, constraints=c))``; ``jax.vmap`` of
    that over ``x`` [B, n] fits B datasets in one call.

  References:
    Nocedal & Wright, Numerical Optimization (2006), ch. 7 (L-BFGS).
    Casella & Berger, Statistical Inference (2002), 10.1 (delta method,
    observed information).
    White, A heteroskedasticity-consistent covariance matrix estimator (1980);
    Cameron & Miller, A practitioner's guide to cluster-robust inference (2015).
  """
  fn = "fit"
  max_steps = _check_options(fn, log_prob, max_steps, rtol, atol, gtol)
  p_leaves, p_def = _check_params(fn, params)
  bijections = leaf_bijections(fn, constraints, params)
  n = _check_data(fn, data)
  _check_start(fn, params, bijections)
  _check_weights(fn, weights, n)
  _check_log_prob(fn, log_prob, params, data)
  cov, num_starts, key = _check_inference(fn, cov_type, groups, n, num_starts, start_key, start_scale)
  static = (log_prob, bijections, p_def, optimizer, cov, num_starts)
  return _fit(*static, p_leaves, data, weights, groups, key, start_scale, max_steps, rtol, atol, gtol)


# Compiled as one program even when ``fit`` is called eagerly: op-by-op
# dispatch of the Hessians and the loop setup costs more than compiling them.
@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def _fit(
  log_prob,
  bijections,
  p_def,
  optimizer,
  cov_type,
  num_starts,
  p_leaves,
  data,
  weights,
  groups,
  key,
  start_scale,
  max_steps,
  rtol,
  atol,
  gtol,
):
  out_dtypes = [jnp.result_type(leaf) for leaf in p_leaves]
  obj = objective(log_prob, bijections, p_def, p_leaves, data, weights)
  dtype, u0 = obj.dtype, obj.u
  w_sum = jnp.sum(obj.w)
  mean_nll = lambda u: obj.total_nll(u) / w_sum
  # One pass at the start gives the curvature scale and the first value and
  # gradient (in z, the gradient is scaled by the chain rule).
  f0, g0, h0 = value_grad_hessian(mean_nll, u0)
  scale = curvature_scale(jnp.diag(h0))
  run = lambda z0, start=None: minimize(
    lambda z: mean_nll(u0 + scale * z), z0, u0, scale, optimizer, max_steps, rtol, atol, gtol, start
  )
  if num_starts == 1:
    steps, z, f, g, crit = run(jnp.zeros_like(u0), (f0, scale * g0))
    num_converged = (crit != Criterion.NONE).astype(jnp.int32)
  else:
    # The given start first, then random ones around it in u (z = du / scale).
    eps = jax.random.normal(key, (num_starts - 1, u0.size), dtype)
    z0 = jnp.concatenate([jnp.zeros((1, u0.size), dtype), jnp.asarray(start_scale, dtype) * eps / scale])
    steps, z, f, g, crit = jax.vmap(run)(z0)
    best = jnp.argmin(jnp.where(jnp.isnan(f), jnp.inf, f))
    tol = 10 * (jnp.asarray(atol, dtype) + jnp.asarray(rtol, dtype) * jnp.abs(f[best]))
    num_converged = jnp.sum((crit != Criterion.NONE) & (f - f[best] <= tol)).astype(jnp.int32)
    steps, z, f, g, crit = (a[best] for a in (steps, z, f, g, crit))

  u = u0 + scale * z
  theta_leaves = obj.to_leaves(u)
  nll, grad, hess = value_grad_hessian(obj.total_nll, u)
  h_inv, ok = inverse_information(hess)
  if cov_type is CovType.OBSERVED:
    cov_u = h_inv
  else:
    scores = obj.scores(u)
    ws = obj.w[:, None] * scores
    if cov_type is CovType.ROBUST:
      meat = ws.T @ scores
    else:
      index, n_groups = group_index(jnp.asarray(groups))
      sums = jax.ops.segment_sum(ws, index, num_segments=index.shape[0])
      g_f, k = n_groups.astype(dtype), u0.size
      meat = g_f / (g_f - 1) * (w_sum - 1) / (w_sum - k) * (sums.T @ sums)
    cov_u = h_inv @ meat @ h_inv
  cov = cov_u
  if any(b is not bijection("real") for b in bijections):  # else T is the identity and J = I
    jac = jax.jacfwd(lambda u: ravel_pytree(obj.to_leaves(u))[0])(u)
    cov = jac @ cov_u @ jac.T
  cov = jnp.where(ok, cov, jnp.nan)
  _, unravel_theta = ravel_pytree(theta_leaves)
  se_leaves = unravel_theta(jnp.sqrt(jnp.diag(cov)))

  # Only a fit that stopped by a rule can be said to have stopped at a boundary;
  # one cut off by max_steps far from its optimum also has large Newton steps.
  boundary = (crit != Criterion.NONE) & jnp.isfinite(nll) & at_boundary(hess, grad, obj.bounded)
  crit = jnp.where(boundary, Criterion.BOUNDARY, crit).astype(jnp.int32)

  cast = lambda leaves: p_def.unflatten([jnp.asarray(l).astype(d) for l, d in zip(leaves, out_dtypes)])
  out_dtype = out_dtypes[0] if len(set(out_dtypes)) == 1 else dtype
  return MLEResult(
    params=cast(theta_leaves),
    nll=nll.astype(out_dtype),
    stderr=cast(se_leaves),
    covariance=cov.astype(out_dtype),
    grad_norm=gnorm(g).astype(out_dtype),
    steps=steps,
    converged=(crit == Criterion.GTOL) | (crit == Criterion.CAUCHY),
    criterion=crit,
    n_params=jnp.asarray(u0.size, jnp.int32),
    cov_type=jnp.asarray(int(cov_type), jnp.int32),
    num_converged=num_converged,
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
    ValueError: for unknown family names and (when ``data`` is concrete) data
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
