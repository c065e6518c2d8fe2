"""Tests for jaxsoft.mle: closed forms, SciPy fits, standard errors, transforms, errors.

Every fit compiles one XLA program per (log_prob, constraints, shapes), which
costs seconds on a CPU; the cases below share those programs where the data's
size proves nothing (one shape per family, one jitted normal fit for all the
jit and vmap cases).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize
import scipy.stats as ss
from hypothesis import given
from hypothesis import strategies as st
from jax.scipy.stats import norm

from jaxsoft import mle

HEIGHTS = np.array([164.95, 165.35, 165.76, 166.16, 167.78, 168.99, 169.80, 170.20, 171.82, 172.63])
NORMAL_C = {"loc": "real", "scale": "positive"}


def normal_lp(p, x):
  return norm.logpdf(x, p["loc"], p["scale"])


# -- closed forms ---------------------------------------------------------------


def test_lecture_heights_float32_from_a_poor_start():
  x = jnp.asarray(HEIGHTS, jnp.float32)
  r = mle.fit(normal_lp, {"loc": jnp.float32(160.0), "scale": jnp.float32(5.0)}, x, constraints=NORMAL_C)
  n, loc, scale = len(HEIGHTS), HEIGHTS.mean(), HEIGHTS.std()
  assert bool(r.converged) and int(r.steps) > 0
  assert r.params["loc"].dtype == jnp.float32
  np.testing.assert_allclose(r.params["loc"], 168.344, rtol=1e-6)
  np.testing.assert_allclose(r.params["scale"], 2.6207, atol=1e-4)
  np.testing.assert_allclose(r.params["scale"], scale, rtol=1e-5)
  np.testing.assert_allclose(r.stderr["loc"], scale / np.sqrt(n), rtol=1e-4)
  # scale is fitted as log(scale): its stderr comes back by the delta method.
  np.testing.assert_allclose(r.stderr["scale"], scale / np.sqrt(2 * n), rtol=1e-4)
  nll = -ss.norm.logpdf(HEIGHTS, loc, scale).sum()
  np.testing.assert_allclose(r.nll, nll, rtol=1e-6)
  np.testing.assert_allclose(r.covariance, np.diag([scale**2 / n, scale**2 / (2 * n)]), rtol=1e-3, atol=1e-5)
  assert int(r.n_params) == 2 and int(r.criterion) in (mle.Criterion.GTOL, mle.Criterion.CAUCHY)


def test_lecture_heights_fit_distribution():
  r = mle.fit_distribution("normal", jnp.asarray(HEIGHTS, jnp.float32))
  assert bool(r.converged)
  np.testing.assert_allclose([r.params["loc"], r.params["scale"]], [HEIGHTS.mean(), HEIGHTS.std()], rtol=1e-5)


def test_float64_fit_is_precise():
  with jax.enable_x64(True):
    r = mle.fit(
      normal_lp,
      {"loc": 160.0, "scale": 5.0},
      jnp.asarray(HEIGHTS),
      constraints=NORMAL_C,
      rtol=1e-12,
      atol=1e-14,
      gtol=1e-10,
    )
    assert r.params["loc"].dtype == jnp.float64
  np.testing.assert_allclose(
    [r.params["loc"], r.params["scale"]], [HEIGHTS.mean(), HEIGHTS.std()], rtol=1e-10
  )


RNG = np.random.default_rng(0)
EXPO = RNG.exponential(1 / 2.5, size=200)
POIS = RNG.poisson(3.0, size=200)
BERN = (RNG.random(200) < 0.3).astype(np.int32)
CATS = RNG.choice(4, p=[0.1, 0.2, 0.3, 0.4], size=300)
CATS_NO_3 = RNG.choice(3, p=[0.3, 0.2, 0.5], size=300)  # same shape as CATS: one compiled fit


def test_exponential_closed_form_and_fisher_under_jit_with_static_argnames():
  f = jax.jit(mle.fit_distribution, static_argnames=("family", "max_steps"))
  r = f("exponential", jnp.asarray(EXPO, jnp.float32), max_steps=100)
  rate = 1 / EXPO.mean()
  assert bool(r.converged)
  np.testing.assert_allclose(r.params["rate"], rate, rtol=1e-5)
  np.testing.assert_allclose(r.stderr["rate"], rate / np.sqrt(len(EXPO)), rtol=1e-4)  # I = n / rate^2


def test_poisson_closed_form_and_fisher():
  r = mle.fit_distribution("poisson", jnp.asarray(POIS))
  lam = POIS.mean()
  assert bool(r.converged)
  np.testing.assert_allclose(r.params["rate"], lam, rtol=1e-5)
  np.testing.assert_allclose(r.stderr["rate"], np.sqrt(lam / len(POIS)), rtol=1e-4)


def test_bernoulli_closed_form_and_fisher():
  r = mle.fit_distribution("bernoulli", jnp.asarray(BERN))
  p = BERN.mean()
  assert bool(r.converged)
  np.testing.assert_allclose(r.params["probs"], p, rtol=1e-5)
  np.testing.assert_allclose(r.stderr["probs"], np.sqrt(p * (1 - p) / len(BERN)), rtol=1e-4)


def test_categorical_closed_form_and_multinomial_covariance():
  r = mle.fit_distribution("categorical", jnp.asarray(CATS))
  freq = np.bincount(CATS, minlength=4) / len(CATS)
  assert bool(r.converged) and int(r.n_params) == 3
  np.testing.assert_allclose(r.params["probs"], freq, rtol=1e-5)
  # Multinomial: Cov = (diag(p) - p p^T) / n, rank K-1.
  np.testing.assert_allclose(
    r.covariance, (np.diag(freq) - np.outer(freq, freq)) / len(CATS), rtol=2e-3, atol=1e-7
  )


def test_categorical_with_an_empty_class_stops_at_the_boundary():
  r = mle.fit_distribution(
    "categorical", jnp.asarray(CATS_NO_3), params={"probs": jnp.full((4,), 0.25, jnp.float32)}
  )
  # The MLE of the empty class's probability is 0, on the simplex's boundary:
  # reported as such rather than as an interior optimum.
  assert mle.Criterion(int(r.criterion)) is mle.Criterion.BOUNDARY and not bool(r.converged)
  np.testing.assert_allclose(r.params["probs"], np.bincount(CATS_NO_3, minlength=4) / 300, atol=1e-4)


def test_bernoulli_with_no_successes_stops_at_the_boundary():
  r = mle.fit_distribution("bernoulli", jnp.zeros_like(jnp.asarray(BERN)))
  assert mle.Criterion(int(r.criterion)) is mle.Criterion.BOUNDARY and not bool(r.converged)
  assert float(r.params["probs"]) < 1e-4


def _scipy_nll(dist, x, params):
  return -dist.logpdf(x, *params).sum()


def test_student_t_against_scipy_fit_all_free():
  x = ss.t.rvs(4.0, loc=3.0, scale=1.5, size=400, random_state=np.random.default_rng(3))
  r = mle.fit_distribution("student_t", jnp.asarray(x, jnp.float32))
  ref = ss.t.fit(x)
  # A float64 optimum independent of both, to check SciPy itself converged here.
  best = scipy.optimize.minimize(
    lambda q: _scipy_nll(ss.t, x, (np.exp(q[0]), q[1], np.exp(q[2]))),
    [np.log(ref[0]), ref[1], np.log(ref[2])],
    method="Nelder-Mead",
    options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 5000},
  ).x
  assert bool(r.converged)
  ours = tuple(float(r.params[k]) for k in ("df", "loc", "scale"))
  assert -_scipy_nll(ss.t, x, ours) >= -_scipy_nll(ss.t, x, ref) * (1 + 1e-6)
  np.testing.assert_allclose(ours, ref, rtol=1e-3)
  np.testing.assert_allclose(ours, [np.exp(best[0]), best[1], np.exp(best[2])], rtol=1e-3)


# The default run fits one family of each kind (real and positive, positive,
# counts, unit interval, simplex, heavy tails); the log-densities, derivatives
# and starting points of the others are checked in test_distributions. Their
# fits (5 to 13 s of compilation each on a CPU) run with -m slow.
@pytest.mark.slow
def test_gamma_against_scipy_fit_floc0():
  x = np.random.default_rng(1).gamma(2.2, 1 / 0.7, size=300)
  r = mle.fit_distribution("gamma", jnp.asarray(x, jnp.float32))
  a, _, s = ss.gamma.fit(x, floc=0)
  assert bool(r.converged)
  np.testing.assert_allclose([r.params["concentration"], r.params["rate"]], [a, 1 / s], rtol=1e-3)
  ours = _scipy_nll(ss.gamma, x, (float(r.params["concentration"]), 0, 1 / float(r.params["rate"])))
  assert ours <= _scipy_nll(ss.gamma, x, (a, 0, s)) * (1 + 1e-6)


@pytest.mark.slow
def test_beta_against_scipy_fit_floc0():
  x = np.random.default_rng(2).beta(2.0, 5.0, size=300)
  r = mle.fit_distribution("beta", jnp.asarray(x, jnp.float32))
  a, b, _, _ = ss.beta.fit(x, floc=0, fscale=1)
  assert bool(r.converged)
  np.testing.assert_allclose([r.params["alpha"], r.params["beta"]], [a, b], rtol=1e-3)


@pytest.mark.slow
def test_lognormal_closed_form():
  x = np.random.default_rng(4).lognormal(0.5, 0.8, size=100)
  r = mle.fit_distribution("lognormal", jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(
    [r.params["loc"], r.params["scale"]], [np.log(x).mean(), np.log(x).std()], rtol=1e-4
  )


# -- standard errors, intervals, criteria ------------------------------------


# One jitted normal fit shared by every jit and vmap case below, and one batch
# of 600 fits (datasets and starting points) shared by the coverage and vmap tests.
FIT_NORMAL = jax.jit(lambda p, d: mle.fit(normal_lp, p, d, constraints=NORMAL_C))
TRUE_LOC, TRUE_SCALE = 5.0, 2.0


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(TRUE_LOC, TRUE_SCALE, size=(600, 50)), jnp.float32)
  # At the gtol stop |loc - mean| is about gtol * scale^2 / start_scale (the
  # optimizer's coordinates are scaled by the starting curvature): starts
  # with scale >= 1.5 keep it below 1e-5 relative.
  starts = {
    "loc": jnp.asarray(rng.uniform(2.0, 8.0, 600), jnp.float32),
    "scale": jnp.asarray(rng.uniform(1.5, 4.0, 600), jnp.float32),
  }
  return starts, x, jax.vmap(FIT_NORMAL)(starts, x)


def test_coverage_of_95_percent_intervals_for_the_normal_mean(batch):
  _, _, res = batch
  ci = mle.confidence_intervals(res, 0.95)
  cover = np.mean((np.asarray(ci.lower["loc"]) <= TRUE_LOC) & (TRUE_LOC <= np.asarray(ci.upper["loc"])))
  assert np.all(np.asarray(res.converged))
  assert 0.92 <= cover <= 0.98, cover


def test_singular_hessian_gives_nan_stderr_not_a_crash():
  # Only a + b is identified.
  lp = lambda p, xi: norm.logpdf(xi, p["a"] + p["b"], 1.0)
  r = mle.fit(lp, {"a": jnp.float32(0.0), "b": jnp.float32(0.0)}, jnp.asarray([0.5, 1.0, 1.5], jnp.float32))
  np.testing.assert_allclose(r.params["a"] + r.params["b"], 1.0, rtol=1e-5)
  assert np.isnan(r.stderr["a"]) and np.isnan(r.stderr["b"]) and np.all(np.isnan(r.covariance))


def test_aic_bic_and_intervals_formulas():
  r = mle.fit_distribution("normal", jnp.asarray(HEIGHTS, jnp.float32))
  nll = -ss.norm.logpdf(HEIGHTS, HEIGHTS.mean(), HEIGHTS.std()).sum()
  np.testing.assert_allclose(mle.aic(r), 4 + 2 * nll, rtol=1e-6)
  np.testing.assert_allclose(mle.aic(r, 10, corrected=True), 4 + 2 * nll + 12 / 7, rtol=1e-6)
  np.testing.assert_allclose(mle.bic(r, 10), 2 * np.log(10) + 2 * nll, rtol=1e-6)
  ci = mle.confidence_intervals(r, level=0.9)
  se = HEIGHTS.std() / np.sqrt(10)
  np.testing.assert_allclose(
    [ci.lower["loc"], ci.upper["loc"]], HEIGHTS.mean() + np.array([-1, 1]) * ss.norm.ppf(0.95) * se, rtol=1e-5
  )


# -- convergence reporting ------------------------------------------------------


def test_not_converged_when_max_steps_too_small():
  x = jnp.asarray(HEIGHTS, jnp.float32)
  r = mle.fit(
    normal_lp, {"loc": jnp.float32(150.0), "scale": jnp.float32(20.0)}, x, constraints=NORMAL_C, max_steps=2
  )
  assert not bool(r.converged) and int(r.steps) == 2
  assert mle.Criterion(int(r.criterion)) is mle.Criterion.NONE


def test_criterion_names_the_stopping_rule():
  assert [(c.name, int(c)) for c in mle.Criterion] == [
    ("NONE", 0),
    ("GTOL", 1),
    ("CAUCHY", 2),
    ("BOUNDARY", 3),
  ]
  assert "gtol" in mle.Criterion.GTOL.message and "max_steps" in mle.Criterion.NONE.message
  # With gtol = 0 only the Cauchy criterion can stop the fit.
  x = jnp.asarray(HEIGHTS, jnp.float32)
  r = mle.fit(
    normal_lp, {"loc": jnp.float32(160.0), "scale": jnp.float32(5.0)}, x, constraints=NORMAL_C, gtol=0.0
  )
  assert bool(r.converged) and mle.Criterion(int(r.criterion)) is mle.Criterion.CAUCHY
  assert r.criterion.dtype == jnp.int32


def test_any_optax_optimizer_works():
  x = jnp.asarray(HEIGHTS, jnp.float32)
  r = mle.fit(
    normal_lp,
    {"loc": jnp.float32(165.0), "scale": jnp.float32(3.0)},
    x,
    constraints=NORMAL_C,
    optimizer=optax.adam(0.05),
    max_steps=3000,
  )
  assert bool(r.converged)
  np.testing.assert_allclose([r.params["loc"], r.params["scale"]], [HEIGHTS.mean(), HEIGHTS.std()], rtol=1e-3)


def test_default_line_search_is_optaxs_zoom_with_one_evaluation_per_trial_under_vmap():
  # Logistic regressions from a far start, so that some line searches need
  # several trials. Each evaluation site that runs calls the callback once
  # for the whole batch; the two fits differ only in their line searches.
  calls = []

  def lp(p, d):
    x, y = d
    jax.debug.callback(lambda: calls.append(1))
    eta = x @ p["beta"]
    return y * jax.nn.log_sigmoid(eta) + (1 - y) * jax.nn.log_sigmoid(-eta)

  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 40, 3)).astype(np.float32)
  y = (rng.random((8, 40)) < 1 / (1 + np.exp(-x @ np.array([1.0, -1.0, 0.5])))).astype(np.float32)
  p0 = {"beta": jnp.asarray([6.0, -6.0, 6.0], jnp.float32)}
  optax_zoom = optax.lbfgs(
    memory_size=10,
    linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=8, initial_guess_strategy="one"),
  )

  def run(**options):
    calls.clear()
    r = jax.block_until_ready(jax.vmap(lambda x, y: mle.fit(lp, p0, (x, y), **options))(x, y))
    return r, len(calls)

  ours, n_ours = run()
  ref, n_ref = run(optimizer=optax_zoom)
  assert np.all(np.asarray(ours.converged))
  np.testing.assert_array_equal(ours.params["beta"], ref.params["beta"])
  np.testing.assert_array_equal(ours.steps, ref.steps)
  # Under vmap optax's zoom evaluates both of its phases at every trial: one
  # extra evaluation per trial, and more trials than steps were needed here.
  assert n_ref - n_ours > int(np.max(ours.steps))


# -- user-written likelihoods -----------------------------------------------------


def test_user_linear_regression_with_pytree_data():
  rng = np.random.default_rng(6)
  X = rng.normal(size=(80, 3))
  y = X @ np.array([1.0, -2.0, 0.5]) + 0.7 + rng.normal(0, 0.3, size=80)

  def lp(p, obs):
    xi, yi = obs
    return norm.logpdf(yi, xi @ p["w"] + p["b"], p["sigma"])

  r = mle.fit(
    lp,
    {"w": jnp.zeros(3), "b": jnp.float32(0.0), "sigma": jnp.float32(1.0)},
    (jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.float32)),
    constraints={"w": "real", "b": None, "sigma": "positive"},
  )
  A = np.column_stack([X, np.ones(80)])
  coef, *_ = np.linalg.lstsq(A, y, rcond=None)
  resid = y - A @ coef
  assert bool(r.converged)
  np.testing.assert_allclose(np.append(r.params["w"], r.params["b"]), coef, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(r.params["sigma"], np.sqrt(np.mean(resid**2)), rtol=1e-4)
  # OLS covariance with the MLE sigma^2: sigma^2 (A^T A)^-1.
  cov = np.mean(resid**2) * np.linalg.inv(A.T @ A)
  np.testing.assert_allclose(r.stderr["w"], np.sqrt(np.diag(cov))[:3], rtol=1e-3)


def test_user_mixture_with_simplex_weights():
  rng = np.random.default_rng(7)
  x = np.concatenate([rng.normal(-2, 0.7, 150), rng.normal(3, 1.2, 250)])

  def lp(p, xi):
    return jax.scipy.special.logsumexp(jnp.log(p["w"]) + norm.logpdf(xi, p["mu"], p["sigma"]))

  p0 = {"w": jnp.array([0.5, 0.5]), "mu": jnp.array([-1.0, 1.0]), "sigma": jnp.array([1.0, 1.0])}
  r = mle.fit(
    lp, p0, jnp.asarray(x, jnp.float32), constraints={"w": "simplex", "mu": "real", "sigma": "positive"}
  )

  def nll(q):
    w = np.array([1 / (1 + np.exp(-q[0])), 1 - 1 / (1 + np.exp(-q[0]))])
    dens = w * ss.norm.pdf(x[:, None], q[1:3], np.exp(q[3:5]))
    return -np.log(dens.sum(1)).sum()

  ref = scipy.optimize.minimize(nll, [0.0, -1.0, 1.0, 0.0, 0.0], method="BFGS").fun
  assert bool(r.converged) and int(r.n_params) == 5
  np.testing.assert_allclose(r.nll, ref, rtol=1e-5)
  np.testing.assert_allclose(r.params["w"], [0.375, 0.625], atol=0.05)


def test_weights_equal_repeated_observations():
  x, w = np.array([1.0, 2.0, 4.0]), np.array([2, 1, 3])
  r = mle.fit_distribution("normal", jnp.asarray(x, jnp.float32), weights=jnp.asarray(w, jnp.float32))
  # The closed-form normal fit of the data with each value repeated w times.
  rep = np.repeat(x, w)
  n, loc, scale = len(rep), rep.mean(), rep.std()
  np.testing.assert_allclose([r.params["loc"], r.params["scale"]], [loc, scale], rtol=1e-5)
  np.testing.assert_allclose(
    [r.stderr["loc"], r.stderr["scale"]], [scale / np.sqrt(n), scale / np.sqrt(2 * n)], rtol=1e-4
  )
  np.testing.assert_allclose(r.nll, -ss.norm.logpdf(rep, loc, scale).sum(), rtol=1e-5)


# -- transforms -------------------------------------------------------------------


def test_jit_with_a_closure_and_vmap_over_data_and_starts(batch):
  starts, x, res = batch
  xn = np.asarray(x, np.float64)
  assert res.params["loc"].shape == (600,) and res.covariance.shape == (600, 2, 2)
  assert res.criterion.shape == (600,) and res.criterion.dtype == jnp.int32
  assert np.all(np.asarray(res.converged))
  np.testing.assert_allclose(res.params["loc"], xn.mean(1), rtol=1e-5)
  np.testing.assert_allclose(res.params["scale"], xn.std(1), rtol=1e-4)
  for i in range(3):
    single = FIT_NORMAL(jax.tree.map(lambda s: s[i], starts), x[i])
    np.testing.assert_allclose(single.params["loc"], res.params["loc"][i], rtol=1e-5)
    np.testing.assert_allclose(single.params["scale"], res.params["scale"][i], rtol=1e-5)


def test_constant_data_stop_at_the_boundary_scale_zero(batch):
  # Normal on constant data: the likelihood grows without bound as scale -> 0.
  r = FIT_NORMAL({"loc": jnp.float32(0.0), "scale": jnp.float32(1.0)}, jnp.full_like(batch[1][0], 3.0))
  assert mle.Criterion(int(r.criterion)) is mle.Criterion.BOUNDARY and not bool(r.converged)
  assert float(r.params["scale"]) < 1e-3
  np.testing.assert_allclose(r.params["loc"], 3.0, rtol=1e-5)
  assert "boundary" in mle.Criterion.BOUNDARY.message


def test_under_jit_nan_data_gives_nan_and_not_converged(batch):
  start, x = {"loc": jnp.float32(0.0), "scale": jnp.float32(1.0)}, batch[1][0]
  r = FIT_NORMAL(start, x.at[1].set(jnp.nan))
  assert np.isnan(r.nll) and not bool(r.converged) and int(r.steps) == 0


def test_under_jit_infeasible_start_gives_nan_and_not_converged(batch):
  r = FIT_NORMAL({"loc": jnp.float32(0.0), "scale": jnp.float32(-1.0)}, batch[1][0])
  assert np.isnan(r.nll) and not bool(r.converged) and int(r.steps) == 0


SPECS = ["real", "positive", "unit_interval", "lower_bounded:-2", "upper_bounded:3.5", "interval:-1,4"]


@pytest.mark.parametrize("spec", SPECS)
@given(u=st.floats(-6, 6))
def test_bijection_round_trip(spec, u):
  with jax.enable_x64(True):
    b = mle.bijection(spec)
    x = b.forward(jnp.float64(u))
    assert bool(b.contains(np.asarray(x)))
    np.testing.assert_allclose(b.inverse(x), u, rtol=1e-8, atol=1e-8)


@given(st.lists(st.floats(-5, 5), min_size=1, max_size=5))
def test_simplex_round_trip(u):
  with jax.enable_x64(True):
    b = mle.bijection("simplex")
    p = b.forward(jnp.asarray(u, jnp.float64))
    assert p.shape == (len(u) + 1,) and bool(b.contains(np.asarray(p)))
    np.testing.assert_allclose(b.inverse(p), u, rtol=1e-8, atol=1e-8)


# -- errors ------------------------------------------------------------------------

P0 = {"loc": jnp.float32(0.0), "scale": jnp.float32(1.0)}


@pytest.mark.parametrize(
  "kwargs,exc,match",
  [
    (dict(data=jnp.zeros((0,), jnp.float32)), ValueError, "data.*at least one observation"),
    (dict(data=jnp.asarray([1.0, np.nan], jnp.float32)), ValueError, "data.*NaN"),
    (
      dict(params={"loc": jnp.float32(0.0), "scale": jnp.float32(-1.0)}),
      ValueError,
      "params.*constraints.*scale",
    ),
    (dict(constraints={"loc": "real"}), ValueError, "constraints.*match"),
    (dict(constraints={"loc": "real", "scale": "postive"}), ValueError, "constraints.*'postive'"),
    (dict(constraints={"loc": "real", "scale": "interval:3,1"}), ValueError, "constraints"),
    (dict(constraints={"loc": "real", "scale": 3}), TypeError, "constraints"),
    (dict(weights=jnp.ones(3)), ValueError, "weights.*shape"),
    (dict(weights=-jnp.ones(2)), ValueError, "weights"),
    (dict(params={"loc": 0, "scale": 1}), TypeError, "params.*floating"),
    (dict(max_steps=1.5), TypeError, "max_steps"),
    (dict(gtol=-1.0), ValueError, "gtol"),
    (dict(data=jnp.float32(1.0)), ValueError, "data.*rank"),
  ],
)
def test_bad_input_raises(kwargs, exc, match):
  args = dict(params=P0, data=jnp.asarray([1.0, 2.0], jnp.float32), constraints=NORMAL_C)
  args.update(kwargs)
  with pytest.raises(exc, match=match):
    mle.fit(normal_lp, args.pop("params"), args.pop("data"), **args)


def vector_lp(p, x):
  # A log-density per observation that is a vector: summed over the wrong axis
  # it would silently broadcast against the weights.
  return normal_lp(p, x) * jnp.ones(2)


@pytest.mark.parametrize("transform", ["eager", "jit", "vmap"])
def test_log_prob_must_return_a_scalar(transform):
  data = jnp.asarray([1.0, 2.0, 3.0], jnp.float32)
  fit = lambda p, d: mle.fit(vector_lp, p, d, constraints=NORMAL_C)
  fit = {"eager": fit, "jit": jax.jit(fit), "vmap": jax.vmap(fit, in_axes=(None, 0))}[transform]
  data = data[None] if transform == "vmap" else data
  with pytest.raises(ValueError, match=r"^fit: log_prob must return a scalar, got shape \(2,\)"):
    fit(P0, data)


def test_fit_distribution_bad_input():
  with pytest.raises(ValueError, match="family"):
    mle.fit_distribution("gaussian", jnp.ones(3))
  with pytest.raises(ValueError, match="data.*support of lognormal"):
    mle.fit_distribution("lognormal", jnp.asarray([1.0, -2.0]))
  with pytest.raises(ValueError, match="data.*support of poisson"):
    mle.fit_distribution("poisson", jnp.asarray([1.0, 2.5]))
  with pytest.raises(TypeError, match="constraints"):
    mle.fit_distribution("normal", jnp.ones(3), constraints={})
  with pytest.raises(ValueError, match="params.*categorical"):
    jax.jit(lambda d: mle.fit_distribution("categorical", d))(jnp.asarray([0, 1, 2]))
  with pytest.raises(ValueError, match=r"data must have rank 1.*got shape \(3, 2\)"):
    mle.fit_distribution("normal", jnp.ones((3, 2)))
  with pytest.raises(ValueError, match="level"):
    mle.confidence_intervals(mle.fit_distribution("normal", jnp.asarray(HEIGHTS, jnp.float32)), 1.5)


def test_delta_method_applies_to_a_custom_unbounded_bijection():
  """Standard errors skip the Jacobian only for the built-in identity, not for any bijection named "real"."""
  doubled = mle.Bijection("real", lambda u: 2 * u, lambda x: x / 2, lambda x: np.isfinite(np.asarray(x)))
  lp = lambda p, xi: norm.logpdf(xi, p["loc"], 2.5)  # known scale: the stderr of the mean is 2.5 / sqrt(n)
  r = mle.fit(lp, {"loc": 160.0}, HEIGHTS, constraints={"loc": doubled})
  np.testing.assert_allclose(float(r.params["loc"]), HEIGHTS.mean(), rtol=1e-6)
  np.testing.assert_allclose(float(r.stderr["loc"]), 2.5 / np.sqrt(HEIGHTS.size), rtol=1e-4)
