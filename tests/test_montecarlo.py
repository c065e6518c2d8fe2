"""Tests for jaxsoft.montecarlo against closed forms and by simulation."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.scipy.stats import norm
from scipy import special, stats

from jaxsoft._interval import Interval
from jaxsoft.montecarlo import (
  ISResult,
  MCResult,
  ToleranceResult,
  confidence_interval,
  expectation,
  gaussian_transform,
  importance_sampling,
  integrate,
  integrate_to_tolerance,
)

METHODS = ["mc", "antithetic", "stratified", "sobol", "halton", "lattice"]

# ---------------------------------------------------------------- references
# Genz (1984) test families on [0, 1]^3 with fixed parameters; closed forms in
# float64 NumPy/SciPy.
C = np.array([1.5, 2.0, 0.8])
W = np.array([0.3, 0.6, 0.45])


def genz(x):
  c, w = jnp.asarray(C, x.dtype), jnp.asarray(W, x.dtype)
  return {
    "oscillatory": jnp.cos(2 * jnp.pi * w[0] + jnp.sum(c * x)),
    "product_peak": jnp.prod(1.0 / (c**-2 + (x - w) ** 2)),
    "gaussian": jnp.exp(-jnp.sum(c**2 * (x - w) ** 2)),
    "continuous": jnp.exp(-jnp.sum(c * jnp.abs(x - w))),
  }


GENZ_EXACT = {
  "oscillatory": float(np.real(np.exp(2j * np.pi * W[0]) * np.prod((np.exp(1j * C) - 1) / (1j * C)))),
  "product_peak": float(np.prod(C * (np.arctan(C * (1 - W)) + np.arctan(C * W)))),
  "gaussian": float(np.prod(np.sqrt(np.pi) / (2 * C) * (special.erf(C * (1 - W)) + special.erf(C * W)))),
  "continuous": float(np.prod((2 - np.exp(-C * W) - np.exp(-C * (1 - W))) / C)),
}

gauss8 = lambda x: jnp.exp(-jnp.sum(x**2))
GAUSS_EXACT = lambda d: (np.sqrt(np.pi) / 2 * special.erf(1.0)) ** d
ZEROS3, ONES3 = jnp.zeros(3), jnp.ones(3)


# ---------------------------------------------------------------- values


@pytest.fixture(scope="module")
def plain_genz():
  """Plain Monte Carlo on the Genz families: the error bars the other methods beat."""
  return integrate(genz, jax.random.key(0), lower=ZEROS3, upper=ONES3, n=2**14)


@pytest.mark.parametrize("method", METHODS)
def test_genz_families(method, plain_genz):
  r = jax.jit(lambda k: integrate(genz, k, lower=ZEROS3, upper=ONES3, n=2**14, method=method))(
    jax.random.key(0)
  )
  assert isinstance(r, MCResult) and int(r.n) <= 2**14 and int(r.n) > 2**13
  # units - 1: points, pairs, rounds of one point in each of 6**3 strata (the
  # most that leave 64 rounds: 16384 // 216 = 75), the default replicates.
  units = {"mc": 2**14, "antithetic": 2**13, "stratified": 75, "sobol": 32, "halton": 16, "lattice": 256}
  assert int(r.dof) == units[method] - 1
  for name, exact in GENZ_EXACT.items():
    est, se = float(r.estimate[name]), float(r.stderr[name])
    assert np.isfinite(se) and se > 0, (name, se)
    # 4.5 sigma, plus float32 rounding of the mean for the tiny QMC errors.
    assert abs(est - exact) <= 4.5 * se + 2e-6 * abs(exact), (name, est, exact, se)
  if method in ("sobol", "halton", "lattice", "stratified"):
    # A smooth integrand: much smaller error bars than plain Monte Carlo. The
    # stratified default keeps 64 rounds (for calibrated intervals), so 2**14
    # points get 6 strata per axis, not 8: its bound is 8/6 times the others'.
    bound = 0.2 * (8 / 6 if method == "stratified" else 1)
    assert float(r.stderr["gaussian"]) < bound * float(plain_genz.stderr["gaussian"])


def test_ball_volume_and_pi():
  ball = lambda x: (jnp.sum(x**2) <= 1.0).astype(jnp.float32)

  @jax.jit
  def run(k1, k2):
    volume = integrate(ball, k1, lower=-jnp.ones(3), upper=jnp.ones(3), n=2**16)
    pi = integrate(
      lambda x: 4.0 * ball(x), k2, lower=jnp.zeros(2), upper=jnp.ones(2), n=2**16, method="stratified"
    )
    return volume, pi

  r, pi = run(jax.random.key(1), jax.random.key(2))
  assert abs(float(r.estimate) - 4 / 3 * np.pi) < 4.5 * float(r.stderr)
  # Bernoulli standard error: 8 sqrt(p (1 - p) / n) with p = pi / 6.
  p = np.pi / 6
  np.testing.assert_allclose(float(r.stderr), 8 * np.sqrt(p * (1 - p) / 2**16), rtol=0.02)
  assert abs(float(pi.estimate) - np.pi) < 4.5 * float(pi.stderr)


def test_non_unit_box_and_pytree_leaves():
  f = lambda x: {"scalar": x[0] * x[1], "vector": jnp.stack([x[0], x[1] ** 2])}
  lo, hi = jnp.array([1.0, -2.0]), jnp.array([3.0, 1.0])
  r = jax.jit(lambda k: integrate(f, k, lower=lo, upper=hi, n=2**12, method="sobol"))(jax.random.key(3))
  # int x y = (9-1)/2 * (1-4)/2 = -6;  int x = 4 * 3 = 12;  int y^2 = 2 * 3 = 6.
  for got, se, want in [
    (r.estimate["scalar"], r.stderr["scalar"], -6.0),
    (r.estimate["vector"], r.stderr["vector"], np.array([12.0, 6.0])),
  ]:
    assert np.all(np.abs(np.asarray(got) - want) < 4.5 * np.asarray(se) + 1e-5), (got, se)
  assert r.stderr["vector"].shape == (2,)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_output_dtype_follows_input(dtype):
  r = integrate(gauss8, jax.random.key(0), lower=jnp.zeros(2, dtype), upper=jnp.ones(2, dtype), n=1024)
  assert r.estimate.dtype == dtype and r.stderr.dtype == dtype


def test_float64():
  with jax.enable_x64(True):
    box = dict(lower=jnp.zeros(2), upper=jnp.ones(2))
    r = jax.jit(lambda k: integrate(gauss8, k, n=2**16, method="sobol", **box))(jax.random.key(0))
    assert r.estimate.dtype == jnp.float64 and float(r.stderr) < 1e-6
    assert abs(float(r.estimate) - GAUSS_EXACT(2)) < 4.5 * float(r.stderr)


# ---------------------------------------------------------------- error bars


# The Black-Scholes call as an integral over u in [0, 1): the payoff at the
# terminal price S0 exp((r - sigma^2 / 2) T + sigma sqrt(T) Phi^{-1}(u)). Its
# kink and its unbounded tail near u = 1 skew the replicate means.
S0, STRIKE, RATE, SIGMA, MATURITY = 100.0, 100.0, 0.05, 0.2, 1.0


def bs_call(u):
  z = jax.scipy.special.ndtri(jnp.clip(u[0], 2.0**-24, 1 - 2.0**-24))
  s_t = S0 * jnp.exp((RATE - SIGMA**2 / 2) * MATURITY + SIGMA * np.sqrt(MATURITY) * z)
  return np.exp(-RATE * MATURITY) * jnp.maximum(s_t - STRIKE, 0.0)


def bs_call_exact():
  d1 = (np.log(S0 / STRIKE) + (RATE + SIGMA**2 / 2) * MATURITY) / (SIGMA * np.sqrt(MATURITY))
  d2 = d1 - SIGMA * np.sqrt(MATURITY)
  return S0 * stats.norm.cdf(d1) - STRIKE * np.exp(-RATE * MATURITY) * stats.norm.cdf(d2)


COVERAGE_CASES = {  # integrand, exact value, dimension
  "smooth": (lambda x: jnp.exp(-jnp.sum(x**2)), GAUSS_EXACT(4), 4),
  "kink": (lambda x: genz(x)["continuous"], GENZ_EXACT["continuous"], 3),
  "call": (bs_call, bs_call_exact(), 1),
}


def _coverage(name, trials, n=2**12):
  """Coverage of the 95% interval of every method at its defaults, over ``trials`` keys."""
  f, exact, d = COVERAGE_CASES[name]
  box = dict(lower=jnp.zeros(d), upper=jnp.ones(d), n=n, batch_size=n)
  run = jax.jit(
    jax.vmap(lambda k: {m: confidence_interval(integrate(f, k, method=m, **box)) for m in METHODS})
  )
  intervals = run(jax.random.split(jax.random.key(2026), trials))
  return {
    m: float(np.mean((np.asarray(lo) <= exact) & (exact <= np.asarray(hi))))
    for m, (lo, hi) in intervals.items()
  }


@pytest.mark.slow
def test_coverage_at_the_defaults_on_the_call():
  # 400 trials: the standard deviation of a coverage of 0.95 is 0.011.
  coverage = _coverage("call", 400)
  assert all(0.91 <= c <= 0.985 for c in coverage.values()), coverage


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(COVERAGE_CASES))
def test_coverage_at_the_defaults_2000_trials(name):
  coverage = _coverage(name, 2000)
  assert all(0.93 <= c <= 0.97 for c in coverage.values()), coverage


def test_qmc_error_decays_faster_than_sqrt_n():
  ns = [int(n) for n in 2 ** np.arange(6, 14, 2)]
  f = lambda x: genz(x)["gaussian"]
  # One program for every n: the scrambles are shared, so it compiles once.
  run = jax.jit(
    jax.vmap(
      lambda k: [
        integrate(f, k, lower=ZEROS3, upper=ONES3, n=n, method="sobol", replicates=2).estimate for n in ns
      ]
    )
  )
  est = np.asarray(run(jax.random.split(jax.random.key(0), 16)), np.float64)  # [len(ns), keys]
  errs = np.sqrt(np.mean((est - GENZ_EXACT["gaussian"]) ** 2, axis=1))
  slope = np.polyfit(np.log(ns), np.log(errs), 1)[0]
  assert slope < -0.9, slope  # plain Monte Carlo: -0.5


# ---------------------------------------------------------------- batching, keys


@pytest.mark.parametrize("method", ["mc", "antithetic"])
def test_batch_size_does_not_change_result(method):
  n = 2**15 * 5 + 6
  kw = dict(lower=jnp.zeros(8), upper=jnp.ones(8), n=n, method=method)
  run = jax.jit(lambda k: [integrate(gauss8, k, batch_size=bs, **kw) for bs in (None, 100, 2**17)])
  results = {(float(r.estimate), float(r.stderr), int(r.n)) for r in run(jax.random.key(5))}
  assert len(results) == 1, results


@pytest.mark.parametrize("method", ["stratified", "sobol", "halton"])
def test_batch_size_changes_result_only_by_rounding(method):
  kw = dict(lower=jnp.zeros(3), upper=jnp.ones(3), n=2**15, method=method)
  run = jax.jit(lambda k: [integrate(gauss8, k, batch_size=bs, **kw) for bs in (None, 2**11)])
  rs = run(jax.random.key(5))
  for r in rs[1:]:
    np.testing.assert_allclose(r.estimate, rs[0].estimate, rtol=1e-6)
    np.testing.assert_allclose(r.stderr, rs[0].stderr, rtol=1e-3, atol=1e-9)
    assert int(r.n) == int(rs[0].n)


def test_same_key_same_result_and_key_kinds():
  run = jax.jit(lambda k: integrate(gauss8, k, lower=jnp.zeros(2), upper=jnp.ones(2), n=4096))
  a = run(jax.random.key(7))
  assert float(a.estimate) == float(
    integrate(gauss8, jax.random.key(7), lower=jnp.zeros(2), upper=jnp.ones(2), n=4096).estimate
  )
  assert float(a.estimate) != float(run(jax.random.key(8)).estimate)
  # A legacy uint32 key means the same threefry key.
  assert float(a.estimate) == float(run(jax.random.PRNGKey(7)).estimate)
  # Other implementations pick another generator; still correct.
  for impl in ("rbg", "unsafe_rbg"):
    r = run(jax.random.key(7, impl=impl))
    assert abs(float(r.estimate) - GAUSS_EXACT(2)) < 4.5 * float(r.stderr)


@pytest.mark.parametrize("method", ["sobol", "lattice"])
def test_qmc_replicate_is_the_public_point_set(method):
  from jaxsoft import qmc

  key = jax.random.key(9)
  box = dict(lower=jnp.zeros(2), upper=jnp.ones(2), n=2 * 256, method=method, replicates=2)
  r = jax.jit(lambda k: integrate(gauss8, k, **box))(key)
  points = jax.jit(jax.vmap(lambda i: getattr(qmc, method)(256, 2, key=jax.random.fold_in(key, i))))(
    jnp.arange(2)
  )
  points = np.asarray(points, np.float64)
  if method == "lattice":
    points = 1 - np.abs(2 * points - 1)  # the tent transform
  means = [np.mean(np.exp(-np.sum(x**2, axis=1))) for x in points]
  np.testing.assert_allclose(float(r.estimate), np.mean(means), rtol=1e-6)
  np.testing.assert_allclose(float(r.stderr), abs(means[0] - means[1]) / 2, rtol=1e-3)


# ---------------------------------------------------------------- transforms


def test_jit_vmap_grad():
  theta = 1.3
  box = dict(lower=jnp.zeros(2), upper=jnp.ones(2), n=2**12, method="sobol")

  def estimate(theta, key):
    return integrate(lambda x: jnp.exp(-theta * jnp.sum(x**2)), key, **box).estimate

  @jax.jit
  def run(key, keys):
    g = jax.grad(estimate)(theta, key)
    # The pathwise gradient is the same-points estimate of the derivative's integral.
    dr = integrate(lambda x: -jnp.sum(x**2) * jnp.exp(-theta * jnp.sum(x**2)), key, **box)
    return g, dr.estimate, jax.vmap(lambda k: estimate(theta, k))(keys)

  g, d_estimate, batched = run(jax.random.key(0), jax.random.split(jax.random.key(1), 3))
  # d/dtheta (int_0^1 exp(-theta x^2) dx)^2 = 2 I(theta) I'(theta).
  one = np.sqrt(np.pi / theta) / 2 * special.erf(np.sqrt(theta))
  d_one = (np.exp(-theta) - one) / (2 * theta)
  np.testing.assert_allclose(float(g), 2 * one * d_one, rtol=1e-3)
  np.testing.assert_allclose(float(g), float(d_estimate), rtol=1e-5)
  assert batched.shape == (3,) and np.all(np.abs(np.asarray(batched) - one**2) < 1e-4)


def test_grad_wrt_box():
  # d/db int_0^b x dx = b.
  g = jax.jit(
    jax.grad(
      lambda b: (
        integrate(
          lambda x: x[0], jax.random.key(0), lower=jnp.zeros(1), upper=b, n=1024, method="sobol"
        ).estimate
      )
    )
  )(jnp.array([2.0]))
  np.testing.assert_allclose(g, [2.0], rtol=1e-3)


# ---------------------------------------------------------------- expectation, IS


def test_expectation_and_control_variate():
  key = jax.random.key(0)
  cv_pair = (lambda x: x, 0.0)

  @jax.jit
  def run(key):
    plain = expectation(jnp.exp, jax.random.normal, key, n=2**14)
    cv = expectation(jnp.exp, jax.random.normal, key, n=2**14, control_variate=cv_pair)
    again = expectation(jnp.exp, jax.random.normal, key, n=2**14, batch_size=100, control_variate=cv_pair)
    return plain, cv, again

  plain, cv, again = run(key)
  exact = np.exp(0.5)
  for r in (plain, cv):
    assert abs(float(r.estimate) - exact) < 4.5 * float(r.stderr)
  # Optimal coefficient: Var(e^X - c X) / Var(e^X) = 1 - Corr^2 = 1 - e / (e^2 - e).
  ratio = (float(cv.stderr) / float(plain.stderr)) ** 2
  np.testing.assert_allclose(ratio, 1 - np.e / (np.e**2 - np.e), rtol=0.1)
  # Batching does not change the result.
  assert float(again.estimate) == float(cv.estimate)
  # n - 1 degrees of freedom, one fewer with the fitted coefficient.
  assert (int(plain.dof), int(cv.dof)) == (2**14 - 1, 2**14 - 2)


def keister_exact(d):
  """int_{R^d} cos(|x|) exp(-|x|^2) dx by radial quadrature (float64 SciPy)."""
  from scipy import integrate as scipy_integrate

  radial = scipy_integrate.quad(lambda r: np.cos(r) * np.exp(-r * r) * r ** (d - 1), 0, np.inf, limit=200)[0]
  return 2 * np.pi ** (d / 2) / special.gamma(d / 2) * radial


def test_keister_expectation_with_every_method():
  # Keister (1996): pi^{d/2} E cos(|X|), X ~ N(0, I/2), through the Gaussian
  # inverse-CDF map of the unit cube; one program for all methods.
  d = 5
  sample = gaussian_transform(jnp.zeros(d), jnp.eye(d) / 2)
  keister = lambda x: jnp.pi ** (d / 2) * jnp.cos(jnp.linalg.norm(x))
  methods = ("mc", "sobol", "lattice")
  run = jax.jit(lambda k: {m: expectation(keister, sample, k, n=2**14, dim=d, method=m) for m in methods})
  rs = run(jax.random.key(3))
  exact = keister_exact(d)
  np.testing.assert_allclose(exact, 1.1353240, rtol=1e-6)  # Keister's table
  for m, r in rs.items():
    assert abs(float(r.estimate) - exact) < 4.5 * float(r.stderr), (m, float(r.estimate), float(r.stderr))
  assert int(rs["sobol"].dof) == 31 and int(rs["mc"].dof) == 2**14 - 1
  # QMC beats plain Monte Carlo on this smooth integrand.
  for m in ("sobol", "lattice"):
    assert float(rs[m].stderr) < 0.3 * float(rs["mc"].stderr), m


def test_gaussian_transform_moments():
  # Correlated 2-d normal: E[x] and E[x x^T] against mean and cov + mean mean^T.
  mean = np.array([1.0, -2.0])
  cov = np.array([[2.0, 0.6], [0.6, 0.5]])
  to_x = gaussian_transform(jnp.asarray(mean, jnp.float32), jnp.asarray(cov, jnp.float32))
  f = lambda x: {"m": x, "mm": jnp.outer(x, x)}
  r = jax.jit(lambda k: expectation(f, to_x, k, n=2**14, dim=2, method="sobol"))(jax.random.key(0))
  for got, se, want in [
    (r.estimate["m"], r.stderr["m"], mean),
    (r.estimate["mm"], r.stderr["mm"], cov + np.outer(mean, mean)),
  ]:
    assert np.all(np.abs(np.asarray(got) - want) < 4.5 * np.asarray(se) + 1e-5), (got, want, se)
  # Exact 0 and the largest float below 1 map to finite points.
  assert np.all(np.isfinite(np.asarray(jax.vmap(to_x)(jnp.array([[0.0, 0.0], [1 - 2.0**-24, 0.5]])))))
  with pytest.raises(ValueError, match="expectation: method must be 'mc' when dim is None"):
    expectation(f, jax.random.normal, jax.random.key(0), n=8, method="sobol")
  with pytest.raises(ValueError, match="expectation: control_variate must be None when dim is given"):
    expectation(jnp.sum, to_x, jax.random.key(0), n=64, dim=2, control_variate=(jnp.sum, 0.0))
  with pytest.raises(ValueError, match="gaussian_transform: cov must have shape"):
    gaussian_transform(jnp.zeros(2), jnp.eye(3))


def test_expectation_pytree_samples():
  sample = lambda k: {"a": jax.random.uniform(k, (3,))}
  r = jax.jit(lambda k: expectation(lambda s: jnp.sum(s["a"]), sample, k, n=5000))(jax.random.key(1))
  assert abs(float(r.estimate) - 1.5) < 4.5 * float(r.stderr)
  np.testing.assert_allclose(float(r.stderr), np.sqrt(3 / 12 / 5000), rtol=0.05)


def test_expectation_and_importance_sampling_jit_grad():
  # Reparameterized: d/dmu E[(mu + Z)^2] = 2 mu, exactly the same-sample mean of 2 (mu + Z).
  def est(mu, key):
    return expectation(lambda x: x**2, lambda k: mu + jax.random.normal(k), key, n=4096).estimate

  key = jax.random.key(3)
  g = jax.jit(jax.grad(est))(0.7, key)
  zs = jax.vmap(jax.random.normal)(jax.random.split(jax.random.fold_in(key, 0), 4096))
  np.testing.assert_allclose(float(g), float(jnp.mean(2 * (0.7 + zs))), rtol=1e-5)
  np.testing.assert_allclose(float(est(0.7, key)), float(jax.jit(est)(0.7, key)), rtol=1e-6)

  # Importance sampling: d/dm E_{N(m,1)}[X] = 1 through the weights.
  def is_est(m):
    return importance_sampling(
      lambda x: x,
      lambda x: norm.logpdf(x, m),
      jax.random.normal,
      norm.logpdf,
      jax.random.key(0),
      n=2**14,
      self_normalized=True,
    ).estimate

  np.testing.assert_allclose(float(jax.jit(jax.grad(is_est))(0.2)), 1.0, rtol=0.1)


def test_importance_sampling_tail_probability():
  f = lambda x: (x > 4.0).astype(jnp.float32)
  sample_q = lambda k: 4.0 + jax.random.normal(k)
  log_q = lambda x: norm.logpdf(x, 4.0)
  exact = float(special.ndtr(-4.0))

  @jax.jit
  def run(key):
    r = importance_sampling(f, norm.logpdf, sample_q, log_q, key, n=2**14)
    # Self-normalized: log_p known only up to a constant.
    log_p = lambda x: norm.logpdf(x) + 7.0
    return r, importance_sampling(f, log_p, sample_q, log_q, key, n=2**14, self_normalized=True)

  r, rs = run(jax.random.key(0))
  assert isinstance(r, ISResult)
  assert abs(float(r.estimate) - exact) < 4.5 * float(r.stderr) and float(r.stderr) < 0.05 * exact
  assert 0 < float(r.ess) <= 2**14
  assert abs(float(rs.estimate) - exact) < 4.5 * float(rs.stderr)
  # ESS against a float64 NumPy reference from the same weights.
  xs = np.asarray(jax.vmap(sample_q)(jax.random.split(jax.random.key(0), 2**14)), np.float64)
  w = np.exp(-0.5 * xs**2 + 0.5 * (xs - 4) ** 2)
  np.testing.assert_allclose(float(r.ess), w.sum() ** 2 / (w**2).sum(), rtol=1e-3)
  np.testing.assert_allclose(float(r.estimate), np.mean(w * (xs > 4)), rtol=1e-4)


# ---------------------------------------------------------------- adaptive


# mc and sobol in the quick suite (an i.i.d. and a QMC stopping rule); every method with -m slow.
@pytest.mark.parametrize(
  "method",
  ["mc", "sobol", *(pytest.param(m, marks=pytest.mark.slow) for m in ("antithetic", "halton", "lattice"))],
)
def test_integrate_to_tolerance(method):
  # A vector leaf with the relative error of the scalar one: both meet the
  # tolerance at the same n.
  f = lambda x: {"g": genz(x)["gaussian"], "v": jnp.stack([1.0, 2.0]) * genz(x)["gaussian"]}
  exact = GENZ_EXACT["gaussian"]
  box = dict(lower=ZEROS3, upper=ONES3, method=method)
  run = jax.jit(lambda k, rtol: integrate_to_tolerance(f, k, rtol=rtol, max_n=2**19, **box))
  r = run(jax.random.key(0), 2e-3)
  assert isinstance(r, ToleranceResult) and bool(r.converged)
  # The stopping rule is on the 95% Student t half-width with the result's dof.
  units = {"mc": int(r.n), "antithetic": int(r.n) // 2, "sobol": 32, "halton": 16, "lattice": 256}[method]
  assert int(r.dof) == units - 1
  q = stats.t.ppf(0.975, units - 1)
  for est, se, want in [
    (r.estimate["g"], r.stderr["g"], exact),
    (r.estimate["v"], r.stderr["v"], [exact, 2 * exact]),
  ]:
    assert np.all(q * np.asarray(se) <= 2e-3 * np.abs(est) * (1 + 1e-5))
    assert np.all(np.abs(np.asarray(est) - want) < 4.5 * np.asarray(se) + 1e-6)
  # Stopped at the first doubling that met the tolerance: half the points did
  # not meet it (unless the first block, 2**17 points in 3 dimensions, did).
  if int(r.n) > 2**17:
    half = jax.jit(lambda k: integrate(f, k, n=int(r.n) // 2, **box))(jax.random.key(0))
    q_half = stats.t.ppf(0.975, int(half.dof))
    assert q_half * float(half.stderr["g"]) > 2e-3 * abs(float(half.estimate["g"]))

  # rtol = 0 is never met: one block, two, four, then max_n stops it. The
  # result at that size is integrate's: the stream continues across doublings.
  if method in ("mc", "antithetic"):
    r = run(jax.random.key(4), 0.0)
    same = jax.jit(lambda k: integrate(f, k, n=2**19, **box))(jax.random.key(4))
    assert int(r.n) == int(same.n) == 2**19 and not bool(r.converged)
    # The same blocks of the same stream, merged in the same order: bit for bit.
    for a, b in zip(jax.tree.leaves((r.estimate, r.stderr)), jax.tree.leaves((same.estimate, same.stderr))):
      np.testing.assert_array_equal(a, b)
  else:
    # The same points, summed in chunks of another size: equal to rounding.
    # In float64, so that rounding is far below the (tiny) QMC stderr.
    with jax.enable_x64(True):
      box = dict(lower=jnp.zeros(3, jnp.float64), upper=jnp.ones(3, jnp.float64), method=method)
      r, same = jax.jit(
        lambda k: (
          integrate_to_tolerance(f, k, rtol=0.0, max_n=2**19, **box),
          integrate(f, k, n=2**19, **box),
        )
      )(jax.random.key(4))
    assert int(r.n) == int(same.n) == 2**19 and not bool(r.converged)
    assert r.estimate["g"].dtype == jnp.float64
    for a, b in zip(jax.tree.leaves(r.estimate), jax.tree.leaves(same.estimate)):
      np.testing.assert_allclose(a, b, rtol=1e-12)
    for a, b in zip(jax.tree.leaves(r.stderr), jax.tree.leaves(same.stderr)):
      np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize(
  "method, options",
  [
    ("stratified", dict(strata_per_axis=4)),
    ("mc", dict(batch_size=2**15)),
    ("sobol", dict(batch_size=2**12)),
  ],
)
def test_integrate_to_tolerance_takes_integrates_options(method, options):
  # rtol = 0 runs to max_n; at that size the result is integrate's with the
  # same options: bit for bit for the i.i.d. methods, to rounding for QMC.
  f = lambda x: genz(x)["gaussian"]
  box = dict(lower=ZEROS3, upper=ONES3, method=method, **options)
  r, same = jax.jit(
    lambda k: (
      integrate_to_tolerance(f, k, rtol=0.0, max_n=2**18, **box),
      integrate(f, k, n=2**18, **box),
    )
  )(jax.random.key(5))
  assert int(r.n) == int(same.n) == 2**18 and int(r.dof) == int(same.dof)
  if method == "sobol":
    np.testing.assert_allclose(r.estimate, same.estimate, rtol=1e-6)
    # float32 rounding of the replicate means (~1e-8) against a stderr of 2e-7.
    np.testing.assert_allclose(r.stderr, same.stderr, atol=5e-9)
  else:
    np.testing.assert_array_equal(r.estimate, same.estimate)
    np.testing.assert_array_equal(r.stderr, same.stderr)
  if method == "stratified":
    # 4**3 strata a round, 2**18 / 64 = 4096 rounds.
    assert int(r.dof) == 4095


def test_integrate_to_tolerance_stratified_default_strata():
  # The default cuts each axis so that one block (2**17 points in 3
  # dimensions) holds at least 64 rounds: 12**3 = 1728 strata, 75 rounds a
  # block (13**3 * 64 > 2**17); the tolerance is met on the smooth integrand.
  f = lambda x: genz(x)["gaussian"]
  r = jax.jit(
    lambda k: integrate_to_tolerance(
      f, k, rtol=1e-4, max_n=2**22, method="stratified", lower=ZEROS3, upper=ONES3
    )
  )(jax.random.key(6))
  assert bool(r.converged) and int(r.n) % 1728 == 0
  assert (int(r.dof) + 1) % 75 == 0 and int(r.n) == (int(r.dof) + 1) * 1728
  q = stats.t.ppf(0.975, int(r.dof))
  assert q * float(r.stderr) <= 1e-4 * abs(float(r.estimate)) * (1 + 1e-5)
  assert abs(float(r.estimate) - GENZ_EXACT["gaussian"]) < 4.5 * float(r.stderr) + 1e-7


def test_integrate_to_tolerance_derivatives():
  # I(a, b, u) = int_0^u a sin(b x) dx = a (1 - cos(b u)) / b: jax.grad and
  # jax.jacfwd through the doubling loop give the derivative at the size found,
  # the pathwise derivative of integrate(n=N) at the same points.
  a, b, u = 1.5, 2.0, 0.75
  exact = np.array(
    [(1 - np.cos(b * u)) / b, a * (u * np.sin(b * u) / b - (1 - np.cos(b * u)) / b**2), a * np.sin(b * u)]
  )

  def run(p, n=None):
    kw = dict(lower=jnp.zeros(1), upper=p[2][None], method="sobol", replicates=8, batch_size=64)
    f = lambda x: p[0] * jnp.sin(p[1] * x[0])
    if n is None:
      return integrate_to_tolerance(f, jax.random.key(0), rtol=1e-5, max_n=2**12, **kw)
    return integrate(f, jax.random.key(0), n=n, **kw)

  @jax.jit
  def derivatives(p):
    def both(p):
      r = run(p)
      return (r.estimate, r.stderr), r.n

    _, pullback, n = jax.vjp(both, p, has_aux=True)
    (grad,), (grad_se,) = pullback((1.0, 0.0)), pullback((0.0, 1.0))
    jac, jac_se = jax.jacfwd(lambda p: both(p)[0])(p)
    return n, grad, jac, grad_se, jac_se

  p = (jnp.float32(a), jnp.float32(b), jnp.float32(u))
  n, *ds = derivatives(p)
  grad, jac, grad_se, jac_se = (np.array(d) for d in ds)
  assert 2**8 <= n < 2**12  # the loop doubled and stopped before max_n
  np.testing.assert_allclose(grad, exact, rtol=1e-4)
  np.testing.assert_allclose(jac, grad, rtol=1e-5)
  # The stderr (3e-6 here) is differentiable too; its replicate means cancel to
  # a few float32 digits, so the two modes agree to those.
  np.testing.assert_allclose(jac_se, grad_se, rtol=1e-2)
  grad_n = jax.grad(lambda p: run(p, int(n)).estimate)(p)
  np.testing.assert_allclose(grad, np.array(grad_n), rtol=1e-5)


@pytest.mark.slow
def test_integrate_to_tolerance_gradient_under_vmap_over_keys():
  # The docstring promises the derivative under vmap over keys (whose sizes
  # differ): d/da of int_0^1 a sin(2x) dx = (1 - cos 2) / 2 for every key.
  def estimate(a, key):
    f = lambda x: a * jnp.sin(2.0 * x[0])
    kw = dict(lower=jnp.zeros(1), upper=jnp.ones(1), method="sobol", replicates=8, batch_size=64)
    r = integrate_to_tolerance(f, key, rtol=1e-5, max_n=2**12, **kw)
    return r.estimate, r.n

  keys = jax.random.split(jax.random.key(3), 6)
  grads, n = jax.jit(jax.vmap(jax.grad(estimate, has_aux=True), in_axes=(None, 0)))(jnp.float32(1.5), keys)
  assert len(set(np.asarray(n).tolist())) > 1  # the keys stopped at different sizes
  np.testing.assert_allclose(np.asarray(grads), np.full(6, (1 - np.cos(2.0)) / 2), rtol=1e-4)


# ---------------------------------------------------------------- misc


def test_confidence_interval_levels():
  r = MCResult({"a": jnp.float32(2.0)}, {"a": jnp.float32(0.5)}, jnp.int32(10))
  ci = confidence_interval(r, level=0.99)
  assert isinstance(ci, Interval)  # the type mle.confidence_intervals returns
  z = special.ndtri(0.995)
  # Without dof (a result built by hand): the normal quantile.
  np.testing.assert_allclose([ci.lower["a"], ci.upper["a"]], [2 - 0.5 * z, 2 + 0.5 * z], rtol=1e-6)
  lo, hi = ci
  assert lo is ci.lower and hi is ci.upper
  for level in (0.0, 1.0, 1.5):
    with pytest.raises(ValueError, match="level"):
      confidence_interval(r, level=level)
  with pytest.raises(ValueError, match="level must be a concrete number"):
    jax.jit(lambda lv: confidence_interval(r, level=lv))(0.9)


def test_confidence_interval_student_t():
  # Every dof from 1 to infinity, under jit and vmap, against SciPy's t quantile.
  dofs = np.array([1, 2, 3, 4, 5, 7, 15, 31, 63, 127, 1000, 10**6, 2**31 - 1])
  est, se = jnp.full(dofs.shape, 1.0), jnp.full(dofs.shape, 0.1)
  for level in (0.5, 0.95, 0.999):
    lo, hi = jax.jit(jax.vmap(lambda e, s, d: confidence_interval(MCResult(e, s, 0, d), level)))(
      est, se, jnp.asarray(dofs, jnp.int32)
    )
    q = stats.t.ppf((1 + level) / 2, dofs)
    np.testing.assert_allclose(np.asarray(hi) - 1, 0.1 * q, rtol=2e-5)
    np.testing.assert_allclose(1 - np.asarray(lo), 0.1 * q, rtol=2e-5)


def test_errors():
  kw = dict(lower=jnp.zeros(2), upper=jnp.ones(2))
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="method"):
    integrate(gauss8, key, n=16, method="qmc", **kw)
  with pytest.raises(ValueError, match="n must be >= 1"):
    integrate(gauss8, key, n=0, **kw)
  with pytest.raises(TypeError, match="n must be a Python int"):
    integrate(gauss8, key, n=16.0, **kw)
  with pytest.raises(ValueError, match="upper"):
    integrate(gauss8, key, n=16, lower=jnp.zeros(2), upper=jnp.ones(3))
  with pytest.raises(ValueError, match="lower"):
    integrate(gauss8, key, n=16, lower=jnp.zeros((2, 2)), upper=jnp.ones((2, 2)))
  with pytest.raises(ValueError, match="even"):
    integrate(gauss8, key, n=15, method="antithetic", **kw)
  with pytest.raises(ValueError, match="replicates"):
    integrate(gauss8, key, n=8, method="sobol", replicates=16, **kw)
  with pytest.raises(TypeError, match="key"):
    integrate(gauss8, 0, n=16, **kw)
  with pytest.raises(ValueError, match="batch_size"):
    integrate(gauss8, key, n=16, batch_size=0, **kw)
  with pytest.raises(ValueError, match="devices"):
    integrate(gauss8, key, n=16, devices=len(jax.local_devices()) + 1, **kw)
  with pytest.raises(ValueError, match="method"):
    integrate_to_tolerance(gauss8, key, method="qmc", **kw)
  with pytest.raises(ValueError, match="strata_per_axis must be None unless method is 'stratified'"):
    integrate(gauss8, key, n=16, strata_per_axis=2, **kw)
  with pytest.raises(ValueError, match=r"strata_per_axis must give at most 262144 strata"):
    integrate(gauss8, key, n=2**20, method="stratified", strata_per_axis=513, **kw)
  with pytest.raises(ValueError, match="n must hold at least two rounds of the 16 strata, got 20"):
    integrate(gauss8, key, n=20, method="stratified", strata_per_axis=4, **kw)
  # Counts are int32: beyond, a clear error for every method (Sobol' points
  # themselves go to 2**64).
  with pytest.raises(ValueError, match=r"max_n must be < 2\*\*31 \(the evaluation count is an int32\)"):
    integrate_to_tolerance(gauss8, key, method="sobol", max_n=2**40, **kw)
  for method in ("mc", "sobol"):
    with pytest.raises(ValueError, match=r"n must be < 2\*\*31"):
      integrate(gauss8, key, n=2**31, method=method, **kw)
  with pytest.raises(ValueError, match=r"n must be < 2\*\*31"):
    expectation(jnp.exp, jax.random.normal, key, n=2**31)
  with pytest.raises(ValueError, match="rtol"):
    integrate_to_tolerance(gauss8, key, rtol=-1.0, **kw)
  with pytest.raises(TypeError, match="control_variate"):
    expectation(jnp.exp, jax.random.normal, key, n=16, control_variate=jnp.exp)
  with pytest.raises(TypeError, match="self_normalized"):
    importance_sampling(jnp.exp, norm.logpdf, jax.random.normal, norm.logpdf, key, n=16, self_normalized=1)


def test_zero_dimensional_box_is_an_error():
  # Integrals over R^0 are rarely meant; the point sets need dim >= 1 too.
  empty = dict(lower=jnp.zeros(0), upper=jnp.zeros(0))
  msg = "lower must have at least one dimension, got shape \\(0,\\)"
  for method in ("mc", "sobol"):
    with pytest.raises(ValueError, match="integrate: " + msg):
      integrate(gauss8, jax.random.key(0), n=64, method=method, **empty)
    with pytest.raises(ValueError, match="integrate_to_tolerance: " + msg):
      integrate_to_tolerance(gauss8, jax.random.key(0), method=method, **empty)


def test_every_key_is_checked():
  box = dict(lower=jnp.zeros(2), upper=jnp.ones(2))
  calls = {
    "integrate": lambda k: integrate(gauss8, k, n=16, **box),
    "integrate_to_tolerance": lambda k: integrate_to_tolerance(gauss8, k, **box),
    "expectation": lambda k: expectation(jnp.exp, jax.random.normal, k, n=16),
    "importance_sampling": lambda k: importance_sampling(
      jnp.exp, norm.logpdf, jax.random.normal, norm.logpdf, k, n=16
    ),
  }
  for name, call in calls.items():
    with pytest.raises(TypeError, match=f"{name}: key must be a jax.random key"):
      call(0)
    with pytest.raises(ValueError, match=f"{name}: key must be a single key"):
      call(jax.random.split(jax.random.key(0), 2))
  # A legacy uint32 key means the same threefry key.
  for name in ("expectation", "importance_sampling"):
    a, b = jax.jit(lambda: (calls[name](jax.random.key(3)), calls[name](jax.random.PRNGKey(3))))()
    assert float(a.estimate) == float(b.estimate), name


@settings(max_examples=10)
@given(st.integers(1, 3000), st.sampled_from(["mc", "antithetic", "stratified"]))
def test_property_n_and_finite(n, method):
  n = n + (n % 2 if method == "antithetic" else 0)
  run = jax.jit(lambda k: integrate(gauss8, k, lower=jnp.zeros(2), upper=jnp.ones(2), n=n, method=method))
  r = run(jax.random.key(n))
  assert 0 < int(r.n) <= n and np.isfinite(float(r.estimate))
  if method != "stratified":
    assert int(r.n) == n


# ---------------------------------------------------------------- devices

MULTI_DEVICE_SCRIPT = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jaxsoft.montecarlo import integrate, integrate_to_tolerance
    assert len(jax.devices()) == 4, jax.devices()
    f = lambda x: {"g": jnp.exp(-jnp.sum(x ** 2)), "v": x}
    kw = dict(lower=jnp.zeros(3), upper=jnp.ones(3))
    for method in sys.argv[1:]:
      if method in ("sobol", "halton"):
        # Whole randomizations per device, the same points: bit for bit for
        # Sobol' (integer digits); Halton's float digit sums may round an ulp
        # apart in the sharded program.
        run = jax.jit(lambda k: [integrate(f, k, n=2 ** 12, method=method, devices=d, **kw) for d in (None, 4)])
        one, four = run(jax.random.key(0))
        if method == "sobol":
          for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        else:
          assert int(one.n) == int(four.n) and int(one.dof) == int(four.dof)
          for a, b in zip(jax.tree.leaves(one.estimate), jax.tree.leaves(four.estimate)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
          # The stderr of 16 replicate means that agree to an ulp: ~1e-6 relative.
          for a, b in zip(jax.tree.leaves(one.stderr), jax.tree.leaves(four.stderr)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4)
      else:
        # Contiguous ranges of blocks per device (the last ones partly masked):
        # the same estimate up to float rounding.
        kw_iid = dict(n=2 ** 14 + 10, method=method, batch_size=2 ** 10, **kw)
        run = jax.jit(lambda k: [integrate(f, k, devices=d, **kw_iid) for d in (None, 4)])
        one, four = run(jax.random.key(1))
        assert int(one.n) == int(four.n)
        np.testing.assert_allclose(one.estimate["g"], four.estimate["g"], rtol=1e-5)
        np.testing.assert_allclose(one.stderr["g"], four.stderr["g"], rtol=1e-4)
      # integrate_to_tolerance on four devices: integrate's result at its size
      # (the same blocks or randomizations, merged in another order). In 16
      # dimensions a block is 2**15 points: one per device, then doubled once.
      kw16 = dict(lower=jnp.zeros(16), upper=jnp.ones(16), method=method)
      tol = jax.jit(lambda k: integrate_to_tolerance(f, k, rtol=0.0, max_n=2 ** 18, devices=4, **kw16))(
        jax.random.key(2)
      )
      ref = integrate(f, jax.random.key(2), n=2 ** 18, **kw16)
      assert int(tol.n) == 2 ** 18 and int(tol.dof) == int(ref.dof), (int(tol.n), int(tol.dof), int(ref.dof))
      np.testing.assert_allclose(tol.estimate["g"], ref.estimate["g"], rtol=1e-5)
      np.testing.assert_allclose(tol.stderr["g"], ref.stderr["g"], rtol=1e-3)
    print("OK")
""")


def _run_on_four_devices(methods):
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=4",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  proc = subprocess.run(
    [sys.executable, "-c", MULTI_DEVICE_SCRIPT, *methods],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
  )
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.slow
def test_multi_device_shard_map_every_method():
  # A subprocess with 4 simulated devices compiles every sharded program
  # (about 20 CPU-seconds): with -m slow, beside the other device checks.
  _run_on_four_devices(METHODS)
