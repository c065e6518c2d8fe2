"""Tests for inference after jaxsoft.mle.fit: robust and cluster covariances, tests, profile intervals,
multistart and boundary diagnostics.

References are float64 NumPy computations written here (Newton-Raphson for the
GLMs, the sandwich by hand, closed forms), and statsmodels where it is
installed. Every compiled program is shared by as many cases as possible (one
vmapped cluster fit for two groupings, one profile program for every
parameter and dataset).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.special
import scipy.stats as ss
from jax.scipy.special import gammaln

from jaxsoft import mle

# -- GLM data and float64 references --------------------------------------------

RNG = np.random.default_rng(14)
N, K, G = 60, 3, 6
X = np.column_stack([np.ones(N), RNG.normal(size=(N, K - 1))])
GROUPS = np.repeat(np.arange(G), N // G) * 7 + 3  # any integer labels
# Misspecified on purpose (a shared cluster effect), so robust and observed differ.
CLUSTER_EFFECT = RNG.normal(0, 0.8, G)[np.repeat(np.arange(G), N // G)]
Y_LOGIT = (RNG.random(N) < 1 / (1 + np.exp(-(X @ [0.3, 1.0, -0.7] + CLUSTER_EFFECT)))).astype(np.float64)
Y_POIS = RNG.poisson(np.exp(X @ [0.5, 0.4, -0.3] + CLUSTER_EFFECT)).astype(np.float64)


def glm_lp(p, d):
  """Logistic regression where ``poisson`` is 0, Poisson regression where it is 1: one
  log-likelihood (one compiled fit) for both GLMs, vmapped over the two datasets."""
  x, y, poisson = d
  eta = x @ p["beta"]
  logistic = y * jax.nn.log_sigmoid(eta) + (1 - y) * jax.nn.log_sigmoid(-eta)
  return jnp.where(poisson > 0, y * eta - jnp.exp(eta) - gammaln(y + 1), logistic)


def _newton(y, mean_and_var):
  """Float64 Newton-Raphson for a canonical-link GLM: (beta, H, per-observation scores)."""
  beta = np.zeros(K)
  for _ in range(50):
    mu, var = mean_and_var(X @ beta)
    H = X.T @ (var[:, None] * X)
    beta = beta + np.linalg.solve(H, X.T @ (y - mu))
  mu, var = mean_and_var(X @ beta)
  return beta, X.T @ (var[:, None] * X), (y - mu)[:, None] * X


def _logit_mv(eta):
  p = 1 / (1 + np.exp(-eta))
  return p, p * (1 - p)


def _poisson_mv(eta):
  return np.exp(eta), np.exp(eta)


def _sandwich(H, scores, groups=None):
  """H^-1 B H^-1 with B the sum of outer products of scores (summed within groups, with
  statsmodels' correction G/(G-1) (n-1)/(n-k) when groups are given)."""
  Hi = np.linalg.inv(H)
  if groups is None:
    return Hi @ (scores.T @ scores) @ Hi
  labels = np.unique(groups)
  S = np.stack([scores[groups == g].sum(0) for g in labels])
  n, k, g = len(scores), H.shape[0], len(labels)
  return g / (g - 1) * (n - 1) / (n - k) * Hi @ (S.T @ S) @ Hi


# Both GLMs as one batch [2, N]: logistic first, Poisson second.
GLM_DATA = (
  jnp.asarray(np.stack([X, X]), jnp.float32),
  jnp.asarray(np.stack([Y_LOGIT, Y_POIS]), jnp.float32),
  jnp.asarray(np.repeat([[0.0], [1.0]], N, axis=1), jnp.float32),
)
P0 = {"beta": jnp.zeros(K, jnp.float32)}
REFS = [_newton(Y_LOGIT, _logit_mv), _newton(Y_POIS, _poisson_mv)]


def _fit_glm(cov_type):
  return jax.jit(jax.vmap(lambda d, g: mle.fit(glm_lp, P0, d, cov_type=cov_type, groups=g)))


@pytest.fixture(scope="module")
def robust_fits():
  return _fit_glm("robust")(GLM_DATA, None)


# One compiled program: cluster covariances of both GLMs for two groupings. With
# one observation per group the cluster sandwich is the robust one times
# n/(n-k) (G = n: G/(G-1) (n-1)/(n-k)).
@pytest.fixture(scope="module")
def cluster_fits():
  groupings = jnp.asarray([GROUPS, GROUPS, np.arange(N) * -5, np.arange(N) * -5], jnp.int32)
  data4 = jax.tree.map(lambda a: jnp.concatenate([a, a]), GLM_DATA)
  return _fit_glm("cluster")(data4, groupings)


def test_robust_glms_match_the_numpy_sandwich(robust_fits):
  r = robust_fits
  assert np.all(np.asarray(r.converged)) and np.all(np.asarray(r.cov_type) == mle.CovType.ROBUST)
  for i, (beta, H, scores) in enumerate(REFS):
    np.testing.assert_allclose(r.params["beta"][i], beta, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(r.covariance[i], _sandwich(H, scores), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(r.stderr["beta"][i], np.sqrt(np.diag(_sandwich(H, scores))), rtol=5e-4)
    # The models are misspecified: the sandwich is not the inverse information.
    ratio = np.sqrt(np.diag(_sandwich(H, scores)) / np.diag(np.linalg.inv(H)))
    assert np.max(np.abs(ratio - 1)) > 0.05


def test_cluster_glms_match_the_numpy_sandwich(cluster_fits):
  r = cluster_fits
  assert np.all(np.asarray(r.cov_type) == mle.CovType.CLUSTER)
  for i, (_, H, scores) in enumerate(REFS):
    np.testing.assert_allclose(r.covariance[i], _sandwich(H, scores, GROUPS), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(r.covariance[2 + i], _sandwich(H, scores) * N / (N - K), rtol=1e-3, atol=1e-6)


def test_robust_and_cluster_against_statsmodels(robust_fits, cluster_fits):
  # Imported here, not at collection: a second of CPU in every worker (the NumPy references above run without it).
  sm = pytest.importorskip("statsmodels.api", reason="statsmodels is not installed (pip install statsmodels)")
  for i, model in enumerate([sm.Logit(Y_LOGIT, X), sm.Poisson(Y_POIS, X)]):
    ref = model.fit(disp=0, cov_type="HC0")
    np.testing.assert_allclose(robust_fits.stderr["beta"][i], ref.bse, rtol=5e-4)
    ref = model.fit(disp=0, cov_type="cluster", cov_kwds={"groups": GROUPS})
    np.testing.assert_allclose(cluster_fits.stderr["beta"][i], ref.bse, rtol=5e-4)


def _one(i):
  return jax.tree.map(lambda a: a[i], GLM_DATA)


@pytest.mark.parametrize(
  "kwargs,exc,match",
  [
    (
      dict(cov_type="sandwich"),
      ValueError,
      r"^fit: cov_type must be one of \('observed', 'robust', 'cluster'\)",
    ),
    (dict(cov_type="cluster"), ValueError, "^fit: groups must be given when cov_type='cluster'"),
    (
      dict(cov_type="cluster", groups=jnp.zeros(N - 1, jnp.int32)),
      ValueError,
      r"^fit: groups must have shape \(60,\)",
    ),
    (dict(cov_type="cluster", groups=jnp.zeros(N, jnp.float32)), TypeError, "^fit: groups must"),
    (
      dict(cov_type="cluster", groups=jnp.zeros(N, jnp.int32)),
      ValueError,
      "^fit: groups must hold at least 2",
    ),
    (dict(groups=jnp.zeros(N, jnp.int32)), ValueError, "^fit: groups must be None unless"),
    (dict(num_starts=0), ValueError, "^fit: num_starts must be >= 1"),
    (dict(num_starts=2), TypeError, "^fit: start_key must be given"),
    (dict(num_starts=2, start_key=0), TypeError, "^fit: start_key must be a jax.random key"),
    (
      dict(num_starts=2, start_key=jax.random.key(0), start_scale=-1.0),
      ValueError,
      "^fit: start_scale must be >= 0",
    ),
  ],
)
def test_bad_inference_options_raise(kwargs, exc, match):
  with pytest.raises(exc, match=match):
    mle.fit(glm_lp, P0, _one(0), **kwargs)


# -- tests of hypotheses ------------------------------------------------------------

HEIGHTS = np.array([164.95, 165.35, 165.76, 166.16, 167.78, 168.99, 169.80, 170.20, 171.82, 172.63])
NORMAL_C = {"loc": "real", "scale": "positive"}


def normal_lp(p, x):
  return jax.scipy.stats.norm.logpdf(x, p["loc"], p["scale"])


def _normal_mle(x, mu0=None):
  """Closed-form normal fits of datasets [B, n] (mean free, or fixed at mu0) as MLEResults."""
  x = np.atleast_2d(x)
  n = x.shape[1]
  loc = x.mean(1) if mu0 is None else np.full(len(x), mu0)
  var = ((x - loc[:, None]) ** 2).mean(1)
  nll = n / 2 * np.log(2 * np.pi * var) + n / 2
  k = 2 if mu0 is None else 1
  cov = np.zeros((len(x), 2, 2))
  cov[:, 0, 0], cov[:, 1, 1] = var / n, var / (2 * n)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  return mle.MLEResult(
    {"loc": f32(loc), "scale": f32(np.sqrt(var))},
    f32(nll),
    None,
    f32(cov),
    None,
    None,
    None,
    None,
    jnp.full(len(x), k),
  )


def test_likelihood_ratio_p_values_are_uniform_under_the_null():
  # Normal mean, H0 true, n = 200 per dataset: Lambda = n log(s0^2 / s^2) ~ chi2_1.
  x = np.random.default_rng(1).normal(3.0, 2.0, size=(400, 200))
  t = jax.jit(jax.vmap(mle.likelihood_ratio_test))(_normal_mle(x), _normal_mle(x, 3.0))
  s2, s02 = x.var(1), ((x - 3.0) ** 2).mean(1)
  # The statistic is a difference of float32 NLLs near 400 (rounding 3e-5 each).
  np.testing.assert_allclose(t.statistic, 200 * np.log(s02 / s2), rtol=1e-4, atol=2e-4)
  np.testing.assert_allclose(
    t.pvalue, ss.chi2.sf(np.asarray(t.statistic, np.float64), 1), rtol=1e-4, atol=1e-6
  )
  assert np.all(np.asarray(t.df) == 1)
  assert ss.kstest(np.asarray(t.pvalue), "uniform").pvalue > 1e-3


def test_likelihood_ratio_test_df_and_errors():
  full, restricted = _normal_mle(HEIGHTS), _normal_mle(HEIGHTS, 170.0)
  t = mle.likelihood_ratio_test(full, restricted, df=3)
  np.testing.assert_allclose(t.pvalue, ss.chi2.sf(np.asarray(t.statistic), 3), rtol=1e-5)
  with pytest.raises(ValueError, match="^likelihood_ratio_test: df must be >= 1"):
    mle.likelihood_ratio_test(restricted, full)
  with pytest.raises(ValueError, match="^likelihood_ratio_test: df must be > 0"):
    mle.likelihood_ratio_test(full, restricted, df=0)


def test_wald_test_against_numpy():
  r = _normal_mle(HEIGHTS)
  r1 = jax.tree.map(lambda a: a[0], r)
  n, m, v = 10, HEIGHTS.mean(), HEIGHTS.var()
  t = mle.wald_test(r1, jnp.array([1.0, 0.0]), 170.0)
  np.testing.assert_allclose(t.statistic, (m - 170) ** 2 / (v / n), rtol=1e-5)
  np.testing.assert_allclose(t.pvalue, ss.chi2.sf((m - 170) ** 2 / (v / n), 1), rtol=1e-4)
  # Two rows: loc = 170 and scale = 2, a chi2_2 quadratic form.
  R, q = np.eye(2), np.array([170.0, 2.0])
  d = np.array([m, np.sqrt(v)]) - q
  w = d @ np.linalg.solve(np.diag([v / n, v / (2 * n)]), d)
  t = jax.jit(jax.vmap(mle.wald_test, in_axes=(0, None, None)))(r, jnp.asarray(R), jnp.asarray(q))
  np.testing.assert_allclose(t.statistic[0], w, rtol=1e-5)
  np.testing.assert_allclose(t.pvalue[0], ss.chi2.sf(w, 2), rtol=1e-4)
  with pytest.raises(ValueError, match=r"^wald_test: R must have shape \[m, 2\]"):
    mle.wald_test(r1, jnp.ones(3))
  with pytest.raises(ValueError, match=r"^wald_test: q must have shape \(1,\)"):
    mle.wald_test(r1, jnp.ones(2), jnp.ones(2))


def test_score_test_closed_form_for_the_normal_mean():
  # At (mu0, s0) with s0 the restricted MLE, g = (n d / s0^2, 0) and the observed
  # information has the cross term 2 n d / s0^3: S = n d^2 / (s0^2 - 2 d^2), d = xbar - mu0.
  x = HEIGHTS
  s0 = np.sqrt(np.mean((x - 170.0) ** 2))
  t = mle.score_test(normal_lp, {"loc": jnp.float32(170.0), "scale": jnp.float32(s0)}, jnp.asarray(x), df=1)
  d = x.mean() - 170.0
  np.testing.assert_allclose(t.statistic, 10 * d * d / (s0**2 - 2 * d * d), rtol=1e-4)
  np.testing.assert_allclose(t.pvalue, ss.chi2.sf(10 * d * d / (s0**2 - 2 * d * d), 1), rtol=1e-3)
  with pytest.raises(ValueError, match="^score_test: df must be > 0"):
    mle.score_test(normal_lp, {"loc": 1.0, "scale": 1.0}, jnp.asarray(x), df=0)


# -- profile-likelihood intervals ---------------------------------------------------

Q95 = ss.chi2.ppf(0.95, 1)
# One compiled program: every parameter of B normal datasets of n = 10 (row 0: the
# heights). The fits are the closed-form MLEs.
PROFILE = jax.jit(
  jax.vmap(lambda r, x: mle.profile_confidence_intervals(r, normal_lp, x, constraints=NORMAL_C))
)


def _normal_datasets(b, seed):
  x = np.random.default_rng(seed).normal(168.0, 2.6, size=(b, 10))
  x[0] = HEIGHTS
  return x


def _scale_profile_closed_form(x, q=Q95):
  """sigma with n (v - 1 - log v) = q, v = s^2 / sigma^2 (the mean profiles out at xbar)."""
  n, s = x.shape[1], x.std(1)
  c = -np.exp(-1 - q / n)
  v_small, v_big = -np.real(scipy.special.lambertw(c, 0)), -np.real(scipy.special.lambertw(c, -1))
  return s / np.sqrt(v_big), s / np.sqrt(v_small)


def _profile_coverage(ci, true):
  return np.mean((np.asarray(ci.lower["loc"]) <= true) & (true <= np.asarray(ci.upper["loc"])))


def test_profile_intervals_match_the_normal_closed_forms_under_jit_and_vmap():
  x = _normal_datasets(200, 0)
  ci = PROFILE(_normal_mle(x), jnp.asarray(x, jnp.float32))
  # {mu : n log(1 + (xbar - mu)^2 / s_n^2) <= chi2_1(0.95)}
  half = x.std(1) * np.sqrt(np.exp(Q95 / 10) - 1)
  np.testing.assert_allclose(ci.lower["loc"], x.mean(1) - half, rtol=2e-6, atol=2e-4)
  np.testing.assert_allclose(ci.upper["loc"], x.mean(1) + half, rtol=2e-6, atol=2e-4)
  lo, hi = _scale_profile_closed_form(x)
  np.testing.assert_allclose(ci.lower["scale"], lo, rtol=2e-4)
  np.testing.assert_allclose(ci.upper["scale"], hi, rtol=2e-4)
  # Exact coverage at n = 10: P(|t_9| <= sqrt(9 (exp(q / 10) - 1))), about 0.93 (Wald: 0.884).
  exact = 1 - 2 * ss.t.sf(np.sqrt(9 * (np.exp(Q95 / 10) - 1)), 9)
  cover = _profile_coverage(ci, 168.0)
  assert abs(cover - exact) <= 4 * np.sqrt(exact * (1 - exact) / 200), (cover, exact)


@pytest.mark.slow
def test_profile_coverage_by_simulation_for_ten_heights():
  x = _normal_datasets(4000, 1)[1:]
  ci = PROFILE(_normal_mle(x), jnp.asarray(x, jnp.float32))
  exact = 1 - 2 * ss.t.sf(np.sqrt(9 * (np.exp(Q95 / 10) - 1)), 9)
  cover = _profile_coverage(ci, 168.0)
  assert abs(cover - exact) <= 4 * np.sqrt(exact * (1 - exact) / len(x)), (cover, exact)
  lo, hi = _scale_profile_closed_form(x)
  cover_scale = np.mean((np.asarray(ci.lower["scale"]) <= 2.6) & (2.6 <= np.asarray(ci.upper["scale"])))
  assert 0.9 <= cover_scale <= 0.97, cover_scale


@pytest.mark.slow
def test_profile_interval_of_an_exponential_rate_and_a_named_subset():
  x = np.random.default_rng(5).exponential(1 / 2.5, size=30)
  exp_lp = lambda p, xi: jnp.log(p["rate"]) - p["rate"] * xi
  r = mle.fit(
    exp_lp, {"rate": jnp.float32(1.0)}, jnp.asarray(x, jnp.float32), constraints={"rate": "positive"}
  )
  ci = mle.profile_confidence_intervals(
    r, exp_lp, jnp.asarray(x, jnp.float32), constraints={"rate": "positive"}, level=0.9, params="rate"
  )
  # 2 n (v - 1 - log v) = chi2_1(0.9), v = rate * xbar.
  c = -np.exp(-1 - ss.chi2.ppf(0.9, 1) / (2 * len(x)))
  v_small, v_big = -np.real(scipy.special.lambertw(c, 0)), -np.real(scipy.special.lambertw(c, -1))
  np.testing.assert_allclose(
    [ci.lower["rate"], ci.upper["rate"]], np.array([v_small, v_big]) / x.mean(), rtol=2e-4
  )
  sub = mle.profile_confidence_intervals(
    _normal_mle(HEIGHTS),
    normal_lp,
    jnp.asarray(HEIGHTS[None], jnp.float32),
    constraints=NORMAL_C,
    params=["loc"],
  )
  assert np.isnan(sub.lower["scale"]).all()


def test_profile_endpoint_at_a_jump_of_the_likelihood_is_found():
  # Uniform(0, theta): NLL = n log(theta) for theta >= max(x), +inf below. The
  # lower endpoint is the jump at max(x), where no root of the signed root exists
  # (it leaps from 0 to inf): the bracket must close on it instead of running
  # Newton into its iteration cap (a NaN endpoint). The upper one is closed form.
  x = np.random.default_rng(6).uniform(0, 3, size=20).astype(np.float32)
  unif_lp = lambda p, xi: jnp.where(xi <= p["theta"], -jnp.log(p["theta"]), -jnp.inf)
  theta0 = np.float64(x.max()) * (1 + 1e-5)
  r = mle.MLEResult({"theta": jnp.float32(theta0)}, *[None] * 8)
  ci = mle.profile_confidence_intervals(r, unif_lp, jnp.asarray(x), constraints={"theta": "positive"})
  # n log(theta / theta0) = chi2_1 / 2 on the upper side.
  np.testing.assert_allclose(
    [ci.lower["theta"], ci.upper["theta"]], [x.max(), theta0 * np.exp(Q95 / (2 * len(x)))], rtol=2e-4
  )


def test_profile_bad_input():
  r = jax.tree.map(lambda a: a[0], _normal_mle(HEIGHTS))
  x = jnp.asarray(HEIGHTS, jnp.float32)
  with pytest.raises(ValueError, match=r"^profile_confidence_intervals: level must be in \(0.0, 1.0\)"):
    mle.profile_confidence_intervals(r, normal_lp, x, constraints=NORMAL_C, level=1.0)
  with pytest.raises(ValueError, match="^profile_confidence_intervals: params must name leaves"):
    mle.profile_confidence_intervals(r, normal_lp, x, constraints=NORMAL_C, params=["mean"])


# -- multistart ---------------------------------------------------------------------

# Two unit-variance components with equal weights and unknown means, data centred
# at 0: from the symmetric start mu = (0, 0) both means get the same gradient, which
# is 0 there (a saddle), so a single start stops at once; random starts break the tie.
MIX = np.concatenate(
  [np.random.default_rng(8).normal(-2, 1, 100), np.random.default_rng(9).normal(2, 1, 100)]
)
MIX = MIX - MIX.mean()


def mixture_lp(p, x):
  return jax.scipy.special.logsumexp(jnp.log(0.5) + jax.scipy.stats.norm.logpdf(x, p["mu"], 1.0))


def _mixture_nll64(mu):
  dens = 0.5 * (ss.norm.pdf(MIX, mu[0], 1) + ss.norm.pdf(MIX, mu[1], 1))
  return -np.log(dens).sum()


def test_multistart_escapes_the_saddle_of_a_symmetric_mixture():
  x, start = jnp.asarray(MIX, jnp.float32), {"mu": jnp.zeros(2, jnp.float32)}
  single = mle.fit(mixture_lp, start, x)
  multi = mle.fit(mixture_lp, start, x, num_starts=8, start_key=jax.random.key(0), start_scale=2.0)
  best = scipy.optimize.minimize(_mixture_nll64, [-1.0, 1.0], method="Nelder-Mead", options={"xatol": 1e-8}).x
  # The single start sits on the saddle mu1 = mu2 = 0, far below the best likelihood.
  np.testing.assert_allclose(single.params["mu"], [0, 0], atol=1e-6)
  assert float(single.nll) > _mixture_nll64(best) + 10
  np.testing.assert_allclose(np.sort(np.asarray(multi.params["mu"])), np.sort(best), atol=1e-3)
  np.testing.assert_allclose(multi.nll, _mixture_nll64(best), rtol=1e-6)
  assert bool(multi.converged) and 1 <= int(multi.num_converged) < 8 and int(single.num_converged) == 1


def test_value_grad_hessian_against_closed_forms_under_jit_and_vmap():
  """The one-pass value, gradient and Hessian behind fit, the profile and the score test."""
  from jaxsoft._objective import value_grad_hessian

  def f(u):
    return jnp.exp(u[0]) * u[1] ** 2 + jnp.sin(u[2]) * u[0] + u[1] * u[2] ** 3

  def closed(u):
    a, b, c = u
    value = np.exp(a) * b**2 + np.sin(c) * a + b * c**3
    grad = [np.exp(a) * b**2 + np.sin(c), 2 * np.exp(a) * b + c**3, np.cos(c) * a + 3 * b * c**2]
    hess = [
      [np.exp(a) * b**2, 2 * np.exp(a) * b, np.cos(c)],
      [2 * np.exp(a) * b, 2 * np.exp(a), 3 * c**2],
      [np.cos(c), 3 * c**2, -np.sin(c) * a + 6 * b * c],
    ]
    return value, np.array(grad), np.array(hess)

  u = np.random.default_rng(0).normal(size=(6, 3))
  v, g, h = jax.jit(jax.vmap(lambda x: value_grad_hessian(f, x)))(jnp.asarray(u, jnp.float32))
  for i in range(len(u)):
    want = closed(u[i])
    for got, ref in zip((v[i], g[i], h[i]), want):
      np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=2e-5, atol=2e-5)
