"""Tests for jaxsoft.distributions: log-densities against scipy.stats, inits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats as ss
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

from jaxsoft import distributions as D

# family, params, scipy frozen distribution, points (some out of support).
CASES = [
  ("normal", {"loc": 1.5, "scale": 2.0}, ss.norm(1.5, 2.0), [-3.0, 0.0, 1.5, 7.0]),
  ("lognormal", {"loc": 0.3, "scale": 0.7}, ss.lognorm(s=0.7, scale=np.exp(0.3)), [-1.0, 0.0, 0.5, 1.0, 4.0]),
  ("exponential", {"rate": 1.7}, ss.expon(scale=1 / 1.7), [-0.5, 0.0, 0.3, 5.0]),
  ("gamma", {"concentration": 2.5, "rate": 0.8}, ss.gamma(2.5, scale=1 / 0.8), [-1.0, 0.1, 2.0, 9.0]),
  ("beta", {"alpha": 2.0, "beta": 3.5}, ss.beta(2.0, 3.5), [-0.1, 0.05, 0.5, 0.97, 1.2]),
  ("student_t", {"df": 3.5, "loc": -1.0, "scale": 0.5}, ss.t(3.5, -1.0, 0.5), [-10.0, -1.0, 0.2, 40.0]),
]
DISCRETE = [
  ("poisson", {"rate": 3.2}, lambda k: ss.poisson(3.2).logpmf(k), [-1, 0, 1, 4, 20]),
  ("bernoulli", {"probs": 0.3}, lambda k: ss.bernoulli(0.3).logpmf(k), [-1, 0, 1, 2]),
  (
    "categorical",
    {"probs": np.array([0.2, 0.5, 0.3])},
    lambda k: np.where((k >= 0) & (k < 3), np.log(np.array([0.2, 0.5, 0.3])[np.clip(k, 0, 2)]), -np.inf),
    [-1, 0, 1, 2, 3],
  ),
]


def _params(p, dtype):
  return {k: jnp.asarray(v, dtype) for k, v in p.items()}


@pytest.mark.parametrize("name,p,ref,xs", CASES)
@pytest.mark.parametrize("x64", [False, True])
def test_continuous_log_prob_matches_scipy(name, p, ref, xs, x64):
  with jax.enable_x64(x64):
    dtype = jnp.float64 if x64 else jnp.float32
    got = np.asarray(D.FAMILIES[name].log_prob(_params(p, dtype), jnp.asarray(xs, dtype)))
    assert got.dtype == dtype
  want = ref.logpdf(np.asarray(xs, np.float64))
  assert np.array_equal(np.isneginf(got), np.isneginf(want))
  fin = np.isfinite(want)
  np.testing.assert_allclose(got[fin], want[fin], rtol=1e-12 if x64 else 2e-6, atol=1e-12 if x64 else 2e-6)


@pytest.mark.parametrize("name,p,ref,xs", DISCRETE)
def test_discrete_log_prob_matches_scipy(name, p, ref, xs):
  got = np.asarray(D.FAMILIES[name].log_prob(_params(p, jnp.float32), jnp.asarray(xs)))
  want = ref(np.asarray(xs))
  assert np.array_equal(np.isneginf(got), np.isneginf(want))
  fin = np.isfinite(want)
  np.testing.assert_allclose(got[fin], want[fin], rtol=2e-6, atol=2e-6)


def test_non_integer_counts_are_out_of_support():
  lp = D.poisson.log_prob({"rate": jnp.float32(2.0)}, jnp.array([1.5, 2.0]))
  assert np.isneginf(lp[0]) and np.isfinite(lp[1])


@pytest.mark.parametrize("df", [1e2, 1e4, 1e6, 1e8])
def test_student_t_stays_accurate_for_large_df_in_float32(df):
  # Naive lgamma((df+1)/2) - lgamma(df/2) loses all digits here in float32.
  x = np.array([-3.0, 0.0, 0.7, 2.5])
  got = D.student_t.log_prob(
    {"df": jnp.float32(df), "loc": jnp.float32(0.0), "scale": jnp.float32(1.3)}, jnp.asarray(x, jnp.float32)
  )
  np.testing.assert_allclose(got, ss.t(df, 0.0, 1.3).logpdf(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name,p,ref,xs", CASES)
def test_out_of_support_gives_finite_parameter_gradients(name, p, ref, xs):
  fam = D.FAMILIES[name]
  x = jnp.asarray(xs, jnp.float32)
  g = jax.grad(lambda q: jnp.sum(jnp.where(jnp.isfinite(fam.log_prob(q, x)), fam.log_prob(q, x), 0.0)))(
    _params(p, jnp.float32)
  )
  assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(g))


# scipy.stats log-densities as functions of the parameters, for finite differences.
SCIPY_LOGPDF = {
  "student_t": lambda q, x: ss.t.logpdf(x, q["df"], q["loc"], q["scale"]),
  "gamma": lambda q, x: ss.gamma.logpdf(x, q["concentration"], scale=1 / q["rate"]),
  "beta": lambda q, x: ss.beta.logpdf(x, q["alpha"], q["beta"]),
  "lognormal": lambda q, x: ss.lognorm.logpdf(x, q["scale"], scale=np.exp(q["loc"])),
}


def _central_differences(f, theta, h):
  """Gradient and Hessian of f at theta by central differences with step h."""
  e = np.eye(len(theta)) * h
  grad = np.array([(f(theta + a) - f(theta - a)) / (2 * h) for a in e])
  hess = np.array(
    [
      [(f(theta + a + b) - f(theta + a - b) - f(theta - a + b) + f(theta - a - b)) / (4 * h * h) for b in e]
      for a in e
    ]
  )
  return grad, hess


@pytest.mark.parametrize("name", list(SCIPY_LOGPDF))
def test_grad_and_hessian_match_finite_differences_of_scipy(name):
  # The derivatives fit uses (jax.grad, and jax.hessian = forward over reverse),
  # against float64 central differences of scipy.stats with Richardson
  # extrapolation (error about 1e-9 here).
  _, p, _, xs = next(c for c in CASES if c[0] == name)
  x = np.array([v for v in xs if np.isfinite(SCIPY_LOGPDF[name](p, v))])
  names = list(p)
  f = lambda t: SCIPY_LOGPDF[name](dict(zip(names, t)), x).sum()
  theta = np.array([p[k] for k in names], np.float64)
  (g1, h1), (g2, h2) = _central_differences(f, theta, 1e-3), _central_differences(f, theta, 5e-4)
  want_grad, want_hess = (4 * g2 - g1) / 3, (4 * h2 - h1) / 3
  with jax.enable_x64(True):
    lp = lambda q: jnp.sum(D.FAMILIES[name].log_prob(q, jnp.asarray(x)))
    grad, hess = jax.jit(lambda q: (jax.grad(lp)(q), jax.hessian(lp)(q)))(_params(p, jnp.float64))
  np.testing.assert_allclose([grad[k] for k in names], want_grad, rtol=1e-7, atol=1e-7)
  np.testing.assert_allclose([[hess[a][b] for b in names] for a in names], want_hess, rtol=1e-7, atol=1e-7)


@pytest.mark.slow  # every order-2 mode in float64; the derivatives fit uses are checked above
@pytest.mark.parametrize("name", ["student_t", "gamma", "beta", "lognormal"])
def test_log_prob_gradients(name):
  with jax.enable_x64(True):
    _, p, _, xs = next(c for c in CASES if c[0] == name)
    x = jnp.asarray([v for v in xs if np.isfinite(dict((c[0], c[2]) for c in CASES)[name].logpdf(v))])
    check_grads(lambda q: jnp.sum(D.FAMILIES[name].log_prob(q, x)), (_params(p, jnp.float64),), order=2)


def test_log_prob_under_jit_and_vmap():
  p = {"df": jnp.array([2.0, 5.0]), "loc": jnp.array([0.0, 1.0]), "scale": jnp.array([1.0, 2.0])}
  x = jnp.array([[0.5, -1.0], [2.0, 3.0]])
  got = jax.jit(jax.vmap(D.student_t.log_prob))(p, x)
  want = ss.t.logpdf(
    np.asarray(x), np.array([[2.0], [5.0]]), np.array([[0.0], [1.0]]), np.array([[1.0], [2.0]])
  )
  np.testing.assert_allclose(got, want, rtol=1e-6)


# -- method-of-moments starting points ---------------------------------------


def test_normal_init_is_the_closed_form():
  x = np.array([164.95, 165.35, 165.76, 166.16, 167.78, 168.99, 169.80, 170.20, 171.82, 172.63])
  p = D.normal.init(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose([p["loc"], p["scale"]], [x.mean(), x.std()], rtol=1e-6)


def test_gamma_and_beta_inits_are_moment_matches():
  rng = np.random.default_rng(0)
  x = rng.gamma(3.0, 2.0, size=400)
  p = D.gamma.init(jnp.asarray(x))
  np.testing.assert_allclose(
    [p["concentration"], p["rate"]], [x.mean() ** 2 / x.var(), x.mean() / x.var()], rtol=1e-5
  )
  y = rng.beta(2.0, 5.0, size=400)
  q = D.beta.init(jnp.asarray(y))
  c = y.mean() * (1 - y.mean()) / y.var() - 1
  np.testing.assert_allclose([q["alpha"], q["beta"]], [y.mean() * c, (1 - y.mean()) * c], rtol=1e-4)


@pytest.mark.parametrize("name", list(D.FAMILIES))
def test_inits_satisfy_constraints(name):
  from jaxsoft.mle import bijection

  fam = D.FAMILIES[name]
  rng = np.random.default_rng(1)
  data = {
    "normal": rng.normal(size=20),
    "lognormal": rng.lognormal(size=20),
    "exponential": rng.exponential(size=20),
    "gamma": rng.gamma(2.0, size=20),
    "beta": rng.beta(2, 2, size=20),
    "poisson": rng.poisson(2.0, size=20),
    "bernoulli": rng.integers(0, 2, size=20),
    "categorical": rng.integers(0, 4, size=20),
    "student_t": rng.standard_t(3, size=20),
  }[name]
  p = fam.init(jnp.asarray(data))
  assert set(p) == set(fam.param_names) == set(fam.constraints)
  for k, v in p.items():
    assert np.all(bijection(fam.constraints[k]).contains(np.asarray(v))), (k, v)
  assert np.all(np.isfinite(fam.log_prob(p, jnp.asarray(data))))


def test_student_t_init_under_vmap():
  x = jnp.asarray(np.random.default_rng(2).standard_t(4, size=(3, 50)), jnp.float32)
  p = jax.vmap(D.student_t.init)(x)
  assert p["df"].shape == (3,) and np.all(np.asarray(p["df"]) >= 2.5)


@given(st.floats(0.05, 50.0), st.floats(-5, 5), st.floats(0.1, 10.0), st.floats(-30, 30))
def test_student_t_matches_scipy_property(df, loc, scale, x):
  with jax.enable_x64(True):
    got = float(
      D.student_t.log_prob(
        {"df": jnp.float64(df), "loc": jnp.float64(loc), "scale": jnp.float64(scale)}, jnp.float64(x)
      )
    )
  assert got == pytest.approx(ss.t(df, loc, scale).logpdf(x), rel=1e-10, abs=1e-10)


# -- errors -------------------------------------------------------------------


def test_get_resolves_names_and_rejects_unknown():
  assert D.get("normal") is D.normal and D.get(D.gamma) is D.gamma
  with pytest.raises(ValueError, match="family"):
    D.get("gaussian")
  with pytest.raises(TypeError, match="family"):
    D.get(3)
