"""Log-likelihood families for :func:`jaxsoft.mle.fit_distribution`.

Each family is a module-level :class:`Family` object with the parameter names
users know from scipy and numpyro:

=============  ============================  ==================================
family         parameters                    scipy.stats equivalent
=============  ============================  ==================================
normal         loc, scale > 0                norm(loc, scale)
lognormal      loc, scale > 0 (of log x)     lognorm(s=scale, scale=exp(loc))
exponential    rate > 0                      expon(scale=1/rate)
gamma          concentration > 0, rate > 0   gamma(a=concentration, scale=1/rate)
beta           alpha > 0, beta > 0           beta(alpha, beta)
poisson        rate > 0                      poisson(rate)
bernoulli      probs in (0, 1)               bernoulli(probs)
categorical    probs on the simplex [K]      (multinomial with n=1)
student_t      df > 0, loc, scale > 0        t(df, loc, scale)
=============  ============================  ==================================

``family.log_prob(params, x)`` broadcasts over ``x`` and returns ``-inf`` for
out-of-support ``x`` (never NaN), with finite gradients in the parameters;
``family.constraints`` is the dict for :func:`jaxsoft.mle.fit`;
``family.init(data, weights=None)`` is a method-of-moments starting point.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import betaln, gammaln, xlog1py, xlogy

from jaxsoft import _validate as V

__all__ = [
  "Family",
  "FAMILIES",
  "get",
  "normal",
  "lognormal",
  "exponential",
  "gamma",
  "beta",
  "poisson",
  "bernoulli",
  "categorical",
  "student_t",
]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, usable as a static jit argument
class Family:
  """A parametric family: log-density, constraints and a starting point.

  Attributes:
    name: the family's name (``"normal"``).
    param_names: names of the parameters, the keys of the params dict.
    log_prob: ``log_prob(params, x)``, log-density or log-mass, broadcasting.
    constraints: dict of constraint names for :func:`jaxsoft.mle.fit`.
    init: ``init(data, weights=None) -> params``, method of moments.
    support: ``support(x) -> bool array`` on concrete NumPy data.
    support_text: the support in words, for error messages.
  """

  name: str
  param_names: tuple
  log_prob: Callable
  constraints: dict
  init: Callable
  support: Callable
  support_text: str

  def __repr__(self):
    return f"<jaxsoft family {self.name}({', '.join(self.param_names)})>"


def _float(x):
  """Data as a float array: floating data keep their dtype, integers get the default float."""
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jnp.floating):
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))
  return x.astype(jnp.result_type(float))


def _moments(x, w):
  """Weighted mean and (1/n) variance of [n] data."""
  x = _float(x)
  w = jnp.ones_like(x) if w is None else jnp.asarray(w, x.dtype)
  m = jnp.sum(w * x) / jnp.sum(w)
  v = jnp.sum(w * (x - m) ** 2) / jnp.sum(w)
  return x, w, m, v


def _tiny(dtype):
  return jnp.finfo(dtype).tiny


# -- normal -----------------------------------------------------------------


def _normal_log_prob(params, x):
  z = (x - params["loc"]) / params["scale"]
  return -0.5 * z * z - jnp.log(params["scale"]) - _HALF_LOG_2PI


def _normal_init(x, w=None):
  _, _, m, v = _moments(x, w)
  return {"loc": m, "scale": jnp.sqrt(jnp.maximum(v, _tiny(m.dtype)))}


normal = Family(
  "normal",
  ("loc", "scale"),
  _normal_log_prob,
  {"loc": "real", "scale": "positive"},
  _normal_init,
  lambda x: np.isfinite(x),
  "finite reals",
)


# -- lognormal --------------------------------------------------------------


def _lognormal_log_prob(params, x):
  ok = x > 0
  logx = jnp.log(jnp.where(ok, x, 1))  # safe branch keeps gradients finite
  z = (logx - params["loc"]) / params["scale"]
  lp = -0.5 * z * z - jnp.log(params["scale"]) - _HALF_LOG_2PI - logx
  return jnp.where(ok, lp, -jnp.inf)


def _lognormal_init(x, w=None):
  x = _float(x)
  return _normal_init(jnp.log(jnp.maximum(x, _tiny(x.dtype))), w)


lognormal = Family(
  "lognormal",
  ("loc", "scale"),
  _lognormal_log_prob,
  {"loc": "real", "scale": "positive"},
  _lognormal_init,
  lambda x: x > 0,
  "x > 0",
)


# -- exponential ------------------------------------------------------------


def _exponential_log_prob(params, x):
  rate = params["rate"]
  ok = x >= 0
  return jnp.where(ok, jnp.log(rate) - rate * jnp.where(ok, x, 0), -jnp.inf)


def _exponential_init(x, w=None):
  _, _, m, _ = _moments(x, w)
  return {"rate": 1 / jnp.maximum(m, _tiny(m.dtype))}


exponential = Family(
  "exponential",
  ("rate",),
  _exponential_log_prob,
  {"rate": "positive"},
  _exponential_init,
  lambda x: x >= 0,
  "x >= 0",
)


# -- gamma ------------------------------------------------------------------


def _gamma_log_prob(params, x):
  a, b = params["concentration"], params["rate"]
  ok = x >= 0
  xs = jnp.where(ok, x, 1)
  lp = xlogy(a, b) + xlogy(a - 1, xs) - b * xs - gammaln(a)
  return jnp.where(ok, lp, -jnp.inf)


def _gamma_init(x, w=None):
  _, _, m, v = _moments(x, w)
  v = jnp.maximum(v, 1e-6 * m * m + _tiny(m.dtype))
  return {"concentration": m * m / v, "rate": m / v}


gamma = Family(
  "gamma",
  ("concentration", "rate"),
  _gamma_log_prob,
  {"concentration": "positive", "rate": "positive"},
  _gamma_init,
  lambda x: x > 0,
  "x > 0",
)


# -- beta -------------------------------------------------------------------


def _beta_log_prob(params, x):
  a, b = params["alpha"], params["beta"]
  ok = (x >= 0) & (x <= 1)
  xs = jnp.where(ok, x, 0.5)
  lp = xlogy(a - 1, xs) + xlog1py(b - 1, -xs) - betaln(a, b)
  return jnp.where(ok, lp, -jnp.inf)


def _beta_init(x, w=None):
  _, _, m, v = _moments(x, w)
  m = jnp.clip(m, 1e-3, 1 - 1e-3)
  common = jnp.maximum(m * (1 - m) / jnp.maximum(v, _tiny(m.dtype)) - 1, 1e-2)
  return {"alpha": m * common, "beta": (1 - m) * common}


beta = Family(
  "beta",
  ("alpha", "beta"),
  _beta_log_prob,
  {"alpha": "positive", "beta": "positive"},
  _beta_init,
  lambda x: (x > 0) & (x < 1),
  "0 < x < 1",
)


# -- poisson ----------------------------------------------------------------


def _is_count(x):
  return (x >= 0) & (jnp.floor(x) == x)


def _poisson_log_prob(params, x):
  rate = params["rate"]
  xf = jnp.asarray(x, jnp.result_type(rate))
  ok = _is_count(xf)
  xs = jnp.where(ok, xf, 0)
  return jnp.where(ok, xlogy(xs, rate) - rate - gammaln(xs + 1), -jnp.inf)


def _poisson_init(x, w=None):
  _, _, m, _ = _moments(x, w)
  return {"rate": jnp.maximum(m, 1e-3)}


poisson = Family(
  "poisson",
  ("rate",),
  _poisson_log_prob,
  {"rate": "positive"},
  _poisson_init,
  lambda x: (x >= 0) & (np.floor(x) == x),
  "non-negative integers",
)


# -- bernoulli --------------------------------------------------------------


def _bernoulli_log_prob(params, x):
  p = params["probs"]
  xf = jnp.asarray(x, jnp.result_type(p))
  ok = (xf == 0) | (xf == 1)
  xs = jnp.where(ok, xf, 0)
  return jnp.where(ok, xlogy(xs, p) + xlog1py(1 - xs, -p), -jnp.inf)


def _bernoulli_init(x, w=None):
  _, _, m, _ = _moments(x, w)
  return {"probs": jnp.clip(m, 1e-3, 1 - 1e-3)}


bernoulli = Family(
  "bernoulli",
  ("probs",),
  _bernoulli_log_prob,
  {"probs": "unit_interval"},
  _bernoulli_init,
  lambda x: (x == 0) | (x == 1),
  "0 or 1",
)


# -- categorical ------------------------------------------------------------


def _categorical_log_prob(params, x):
  logp = jnp.log(params["probs"])
  k = logp.shape[-1]
  x = jnp.asarray(x)
  ok = (x >= 0) & (x < k) & (jnp.floor(x) == x)
  idx = jnp.where(ok, x, 0).astype(jnp.int32)
  return jnp.where(ok, jnp.take(logp, idx, axis=-1), -jnp.inf)


def _categorical_init(x, w=None):
  c = V.concrete(x)
  if c is None:
    V.fail(
      "fit_distribution",
      "params",
      "be given for categorical when data is traced (the number of classes is a static shape)",
      "params=None",
    )
  k = int(np.max(c)) + 1
  dtype = jnp.result_type(float)
  w = jnp.ones(np.shape(x), dtype) if w is None else jnp.asarray(w, dtype)
  counts = jnp.zeros((k,), dtype).at[jnp.asarray(x, jnp.int32)].add(w)
  # Half a count per class keeps every starting logit finite (empty classes
  # have their MLE on the boundary; the optimizer drives them towards 0).
  return {"probs": (counts + 0.5) / (jnp.sum(counts) + 0.5 * k)}


categorical = Family(
  "categorical",
  ("probs",),
  _categorical_log_prob,
  {"probs": "simplex"},
  _categorical_init,
  lambda x: (x >= 0) & (np.floor(x) == x),
  "integers 0..K-1",
)


# -- student_t --------------------------------------------------------------


def _lgamma_half_diff(a):
  """log Gamma(a + 1/2) - log Gamma(a) - log(a)/2, accurate for all a > 0.

  For large a the two log-gammas are huge and nearly equal: float32 loses
  every digit of their difference past a ~ 1e4. The asymptotic series
  (from Stirling's series) is used there instead.
  """
  big = a > 8
  ab = jnp.where(big, a, 8.0)
  r = 1 / ab
  r2 = r * r
  series = r * (-1 / 8 + r2 * (1 / 192 + r2 * (-1 / 640 + r2 * (17 / 14336))))
  asmall = jnp.where(big, 1.0, a)
  direct = gammaln(asmall + 0.5) - gammaln(asmall) - 0.5 * jnp.log(asmall)
  return jnp.where(big, series, direct)


def _student_t_log_prob(params, x):
  df, loc, scale = params["df"], params["loc"], params["scale"]
  z = (x - loc) / scale
  # lgamma((df+1)/2) - lgamma(df/2) - log(df*pi)/2 = diff(df/2) - log(2*pi)/2.
  const = _lgamma_half_diff(0.5 * df) - _HALF_LOG_2PI
  return const - jnp.log(scale) - 0.5 * (df + 1) * jnp.log1p(z * z / df)


def _student_t_init(x, w=None):
  xf, wf, m, v = _moments(x, w)
  if w is None:
    # Robust location and scale: heavy tails make the mean and sd erratic.
    loc = jnp.median(xf)
    mad = jnp.median(jnp.abs(xf - loc))
    scale = jnp.where(mad > 0, mad / 0.6745, jnp.sqrt(v))
  else:
    loc, scale = m, jnp.sqrt(v)
  # Excess kurtosis 6/(df-4) of the t distribution, inverted and clipped.
  kurt = jnp.sum(wf * (xf - m) ** 4) / jnp.sum(wf) / jnp.maximum(v * v, _tiny(m.dtype)) - 3
  df = jnp.clip(jnp.where(kurt > 0, 4 + 6 / jnp.maximum(kurt, 1e-3), 30.0), 2.5, 30.0)
  scale = jnp.maximum(scale, _tiny(m.dtype))
  return {"df": df.astype(m.dtype), "loc": loc, "scale": scale}


student_t = Family(
  "student_t",
  ("df", "loc", "scale"),
  _student_t_log_prob,
  {"df": "positive", "loc": "real", "scale": "positive"},
  _student_t_init,
  lambda x: np.isfinite(x),
  "finite reals",
)


FAMILIES = {
  f.name: f for f in (normal, lognormal, exponential, gamma, beta, poisson, bernoulli, categorical, student_t)
}


def get(family, *, fn: str = "get") -> Family:
  """The :class:`Family` for a family object or its name (``"normal"``)."""
  if isinstance(family, Family):
    return family
  if isinstance(family, str) and family in FAMILIES:
    return FAMILIES[family]
  V.fail(
    fn,
    "family",
    f"be a Family or one of {tuple(FAMILIES)}",
    repr(family),
    exc=ValueError if isinstance(family, str) else TypeError,
  )
