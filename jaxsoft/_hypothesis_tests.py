r"""Likelihood-ratio, Wald and score tests after :func:`jaxsoft.mle.fit`.

All three statistics are asymptotically :math:`\chi^2_{df}` under the null
hypothesis; the p-value is :math:`P(\chi^2_{df} > \text{statistic})`, the
regularized upper incomplete gamma function :math:`Q(df/2, \text{stat}/2)`.
Every function is pure ``jnp`` code: it runs under ``jit`` and ``vmap`` over
batches of fits.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxsoft import _validate as V
from jaxsoft._dtypes import compute_dtype
from jaxsoft._objective import value_grad_hessian


class TestResult(NamedTuple):
  """A test statistic, its chi-squared degrees of freedom and its p-value (a pytree).

  Attributes:
    statistic: the test statistic (asymptotically chi-squared under the null).
    df: degrees of freedom.
    pvalue: :math:`P(\\chi^2_{df} > \\text{statistic})`.
  """

  __test__ = False  # not a pytest test class despite its name

  statistic: jax.Array
  df: jax.Array
  pvalue: jax.Array


def _chi2_sf(stat, df):
  # A statistic a rounding error below 0 (nested fits that reach the same
  # likelihood) has p-value 1, not NaN.
  return jax.scipy.special.gammaincc(df / 2, jnp.maximum(stat, 0) / 2)


def likelihood_ratio_test(full, restricted, *, df=None) -> TestResult:
  r"""Likelihood-ratio test of a restricted model nested in a full one.

  .. math::
    \Lambda = 2\,(\mathrm{NLL}_{\text{restricted}} - \mathrm{NLL}_{\text{full}})
    \;\sim\; \chi^2_{df}, \qquad df = k_{\text{full}} - k_{\text{restricted}}.

  Args:
    full: the :class:`MLEResult` of the larger model.
    restricted: the :class:`MLEResult` of the nested model, fitted to the same
      data.
    df: degrees of freedom; default the difference of ``n_params``.

  Returns:
    A :class:`TestResult` with the shape of ``full.nll`` (batched under vmap).

  Raises:
    ValueError: when ``df`` (given or, when concrete, the default) is not >= 1.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoft.mle import MLEResult
    >>> full = MLEResult(None, jnp.array(23.824), None, None, None, None, None, None, jnp.array(2))
    >>> restricted = MLEResult(None, jnp.array(25.583), None, None, None, None, None, None, jnp.array(1))
    >>> t = likelihood_ratio_test(full, restricted)
    >>> print(f"{t.statistic:.3f} {int(t.df)} {t.pvalue:.4f}")
    3.518 1 0.0607
  """
  fn = "likelihood_ratio_test"
  dtype = compute_dtype(jnp.result_type(full.nll, restricted.nll))
  if df is None:
    df = jnp.asarray(full.n_params) - jnp.asarray(restricted.n_params)
    c = V.concrete(df)
    if c is not None and np.any(c < 1):
      V.fail(fn, "df", "be >= 1 (full must have more free parameters than restricted)", f"df={c}")
  else:
    V.check_positive(fn, "df", df)
  stat = 2 * (jnp.asarray(restricted.nll, dtype) - jnp.asarray(full.nll, dtype))
  df = jnp.asarray(df, stat.dtype)
  return TestResult(stat, df, _chi2_sf(stat, df))


# One program (eager op-by-op dispatch of the Hessian is slower than compiling it).
@functools.partial(jax.jit, static_argnums=0)
def _score_statistic(log_prob, params, data, weights):
  theta, unravel = ravel_pytree(params)
  dtype = compute_dtype(theta.dtype)
  theta = theta.astype(dtype)
  n = jax.tree.leaves(data)[0].shape[0]
  w = jnp.ones((n,), dtype) if weights is None else jnp.asarray(weights, dtype)

  def log_lik(t):
    lp = jax.vmap(lambda x: log_prob(unravel(t), x))(data)
    return jnp.sum(w * jnp.asarray(lp, dtype))

  _, g, h = value_grad_hessian(log_lik, theta)
  return g @ jnp.linalg.solve(-h, g)


def wald_test(result, R, q=None) -> TestResult:
  r"""Wald test of the linear hypothesis :math:`R\theta = q`.

  .. math::
    W = (R\hat\theta - q)^\top (R \Sigma R^\top)^{-1} (R\hat\theta - q)
    \;\sim\; \chi^2_m,

  with :math:`\Sigma` = ``result.covariance`` (observed, robust or cluster, as
  fitted) and :math:`m` the number of rows of :math:`R`.

  Args:
    result: an :class:`MLEResult`.
    R: [m, P] or [P] (one hypothesis), over the flattened parameters in the
      order of ``jax.flatten_util.ravel_pytree(result.params)`` (the order of
      ``result.covariance``).
    q: [m] (or a scalar for one row); default 0.

  Returns:
    A :class:`TestResult`.

  Raises:
    ValueError: when ``R`` or ``q`` have the wrong shape.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoft.mle import MLEResult
    >>> r = MLEResult({"a": jnp.array(1.0), "b": jnp.array(3.0)}, None, None,
    ...               jnp.array([[0.25, 0.0], [0.0, 1.0]]), None, None, None, None, None)
    >>> t = wald_test(r, jnp.array([1.0, 0.0]), 2.0)  # a = 2: ((1 - 2) / 0.5)^2
    >>> print(f"{t.statistic:.3f} {int(t.df)} {t.pvalue:.4f}")
    4.000 1 0.0455
  """
  fn = "wald_test"
  theta, _ = ravel_pytree(result.params)
  p = theta.shape[-1]
  V.check_array(fn, "R", R)
  R = jnp.atleast_2d(jnp.asarray(R, theta.dtype))
  if R.ndim != 2 or R.shape[1] != p:
    V.fail(fn, "R", f"have shape [m, {p}] or [{p}] (one column per parameter)", f"shape {np.shape(R)}")
  m = R.shape[0]
  q = jnp.zeros((m,), theta.dtype) if q is None else jnp.atleast_1d(jnp.asarray(q, theta.dtype))
  if q.shape != (m,):
    V.fail(fn, "q", f"have shape ({m},) (one value per row of R)", f"shape {q.shape}")
  d = R @ theta - q
  stat = d @ jnp.linalg.solve(R @ result.covariance @ R.T, d)
  df = jnp.asarray(m, stat.dtype)
  return TestResult(stat, df, _chi2_sf(stat, df))


def score_test(log_prob, params, data, *, df, weights=None) -> TestResult:
  r"""Rao's score (Lagrange multiplier) test at a restricted estimate.

  .. math::
    S = g^\top I^{-1} g,\qquad g = \nabla_\theta \sum_i w_i \log p(x_i \mid \tilde\theta),
    \quad I = -\nabla^2_\theta \sum_i w_i \log p(x_i \mid \tilde\theta),

  where :math:`\tilde\theta` (``params``) is the restricted model's estimate
  written as parameters of the full model: only the full model's gradient and
  observed information at :math:`\tilde\theta` are needed, never its fit.
  The parameters are taken as free coordinates (no ``"simplex"`` leaves).

  Args:
    log_prob: the full model's ``log_prob(params, x)``.
    params: the restricted estimate, a pytree for the full ``log_prob``.
    data: observations on the leading axis.
    df: the number of restrictions.
    weights: optional [n] frequency weights.

  Returns:
    A :class:`TestResult`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jax.scipy.stats import norm
    >>> x = jnp.array([164.95, 165.35, 165.76, 166.16, 167.78,
    ...                168.99, 169.80, 170.20, 171.82, 172.63])
    >>> lp = lambda p, xi: norm.logpdf(xi, p["loc"], p["scale"])
    >>> s0 = jnp.sqrt(jnp.mean((x - 170.0) ** 2))  # H0: loc = 170, scale's MLE under H0
    >>> t = score_test(lp, {"loc": jnp.float32(170.0), "scale": s0}, x, df=1)
    >>> print(f"{t.statistic:.3f} {t.pvalue:.4f}")
    6.647 0.0099
  """
  fn = "score_test"
  if not callable(log_prob):
    V.fail(fn, "log_prob", "be callable", type(log_prob).__name__, exc=TypeError)
  V.check_positive(fn, "df", df)
  stat = _score_statistic(log_prob, params, data, weights)
  df = jnp.asarray(df, stat.dtype)
  return TestResult(stat, df, _chi2_sf(stat, df))
