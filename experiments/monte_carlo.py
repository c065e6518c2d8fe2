"""Monte Carlo error against n for every method on integrals with known values, and interval coverage.

For each integrand and method, the root-mean-square error over ``keys`` random
keys is measured at n = 2^k (each n is a static size: one compile per method and n) and a line is fitted to log error against log n:
about -1/2 for plain Monte Carlo, steeper for quasi-Monte Carlo on smooth
integrands. The coverage check counts how often the 95% Student t interval of
``confidence_interval`` holds the true value over ``coverage_trials`` keys, for
every method at its default settings, on three integrands: a smooth one, one
with a kink (Genz's "continuous" family) and a Black-Scholes call (one normal
draw through the inverse CDF: a kink and an unbounded tail). ``coverage.M`` is
the lowest of the three for method ``M``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

import jaxsoft
from experiments import _runs

NAME = "monte_carlo"
HEADLINE = (
  "gaussian.mc.slope",
  "gaussian.sobol.slope",
  "gaussian.lattice.slope",
  "coverage.mc",
  "coverage.stratified",
  "coverage.sobol",
  "coverage.halton",
  "coverage.lattice",
)


def _gaussian(dim):
  # prod_i int_0^1 exp(-x_i^2) dx_i = (sqrt(pi)/2 erf(1))^dim
  return (lambda x: jnp.exp(-jnp.sum(x * x)), (0.5 * math.sqrt(math.pi) * math.erf(1.0)) ** dim, dim)


def _oscillatory(dim, a=0.3):
  # Genz oscillatory: int cos(2 pi a + sum x) = Re(e^{2 pi i a} ((e^i - 1) / i)^dim)
  val = (
    complex(math.cos(2 * math.pi * a), math.sin(2 * math.pi * a))
    * ((complex(math.cos(1), math.sin(1)) - 1) / 1j) ** dim
  ).real
  return (lambda x: jnp.cos(2 * math.pi * a + jnp.sum(x)), val, dim)


def _quarter_disc():
  # Discontinuous: QMC gains less here than on the smooth integrands.
  return (lambda x: 4.0 * (jnp.sum(x * x) <= 1.0).astype(jnp.float32), math.pi, 2)


def _genz_continuous():
  # Genz "continuous" (kinks at w): prod_i int_0^1 exp(-c_i |x_i - w_i|) dx_i.
  c, w = np.array([1.5, 2.0, 0.8]), np.array([0.3, 0.6, 0.45])
  exact = float(np.prod((2 - np.exp(-c * w) - np.exp(-c * (1 - w))) / c))
  return (
    lambda x: jnp.exp(-jnp.sum(jnp.asarray(c, x.dtype) * jnp.abs(x - jnp.asarray(w, x.dtype)))),
    exact,
    3,
  )


def _black_scholes_call(s0=100.0, strike=100.0, rate=0.05, sigma=0.2, maturity=1.0):
  # e^{-rT} E max(S_T - K, 0), S_T = S0 exp((r - sigma^2/2) T + sigma sqrt(T) Phi^{-1}(u)).
  d1 = (math.log(s0 / strike) + (rate + sigma**2 / 2) * maturity) / (sigma * math.sqrt(maturity))
  d2 = d1 - sigma * math.sqrt(maturity)
  ncdf = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))
  exact = s0 * ncdf(d1) - strike * math.exp(-rate * maturity) * ncdf(d2)

  def f(u):
    z = jax.scipy.special.ndtri(jnp.clip(u[0], 2.0**-24, 1 - 2.0**-24))
    s_t = s0 * jnp.exp((rate - sigma**2 / 2) * maturity + sigma * math.sqrt(maturity) * z)
    return math.exp(-rate * maturity) * jnp.maximum(s_t - strike, 0.0)

  return f, exact, 1


# The methods of jaxsoft.integrate.
METHODS = ("mc", "antithetic", "stratified", "sobol", "halton", "lattice")
INTEGRANDS = {"gaussian": lambda: _gaussian(4), "oscillatory": lambda: _oscillatory(4), "pi": _quarter_disc}
COVERAGE_INTEGRANDS = {"smooth": lambda: _gaussian(4), "kink": _genz_continuous, "call": _black_scholes_call}


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  """root of every random key of the study"""
  log2_n_min: int = 8
  """smallest n of the error study is 2^log2_n_min"""
  log2_n_max: int = 16
  """largest n of the error study is 2^log2_n_max (at most 30)"""
  log2_n_step: int = 2
  """n = 2^k for k in range(min, max + 1, step); each n compiles once"""
  keys: int = 8
  """random keys per (method, n) for the RMSE"""
  methods: str = "mc,antithetic,stratified,sobol,halton,lattice"
  """comma-separated methods of jaxsoft.integrate to compare"""
  integrands: str = "gaussian,oscillatory,pi"
  """comma-separated integrands of the error study (gaussian, oscillatory, pi)"""
  replicates: int = 0
  """QMC randomizations; 0: each method's calibrated default"""
  coverage_trials: int = 2000
  """random keys per (integrand, method) for the coverage"""
  log2_coverage_n: int = 12
  """the coverage study integrates with n = 2^log2_coverage_n points"""

  def __post_init__(self):
    need = functools.partial(_runs.require, NAME)
    for name, allowed in (("methods", METHODS), ("integrands", tuple(INTEGRANDS))):
      given = [m.strip() for m in getattr(self, name).split(",") if m.strip()]
      bad = [m for m in given if m not in allowed]
      need(given and not bad, name, f"a comma-separated subset of {','.join(allowed)}", getattr(self, name))
    _runs.require_positive(
      NAME, self, "log2_n_min", "log2_n_step", "keys", "coverage_trials", "log2_coverage_n"
    )
    need(
      self.log2_n_max >= self.log2_n_min, "log2_n_max", f">= log2_n_min ({self.log2_n_min})", self.log2_n_max
    )
    need(self.log2_n_max <= 30, "log2_n_max", "at most 30", self.log2_n_max)
    need(
      self.replicates >= 0, "replicates", "0 (the calibrated default) or a positive integer", self.replicates
    )


# A tiny config for smoke tests and `--smoke` (seconds, not minutes): same code paths.
SMOKE = Config(
  log2_n_min=6,
  log2_n_max=8,
  keys=4,
  coverage_trials=40,
  log2_coverage_n=8,
  integrands="gaussian",
  methods="mc,antithetic,sobol,halton",
)


def _estimates(f, dim, method, n, keys, replicates):
  """Estimates and stderrs for a batch of keys (one compile per (method, n))."""
  one = lambda k: jaxsoft.integrate(
    f, k, lower=jnp.zeros(dim), upper=jnp.ones(dim), n=n, method=method, replicates=replicates or None
  )
  res = jax.jit(jax.vmap(one))(keys)
  return np.asarray(res.estimate, np.float64), np.asarray(res.stderr, np.float64), res


def _coverage(f, exact, dim, methods, n, keys, replicates):
  """How often the 95% interval of each method holds ``exact``: one program for all methods."""
  box = dict(lower=jnp.zeros(dim), upper=jnp.ones(dim), n=n, batch_size=n, replicates=replicates or None)
  run = jax.jit(
    jax.vmap(
      lambda k: {m: jaxsoft.confidence_interval(jaxsoft.integrate(f, k, method=m, **box)) for m in methods}
    )
  )
  out = run(keys)
  return {
    m: float(np.mean((np.asarray(lo) <= exact) & (exact <= np.asarray(hi)))) for m, (lo, hi) in out.items()
  }


def run(config: Config, ctx) -> dict:
  methods = [m.strip() for m in config.methods.split(",") if m.strip()]
  names = [m.strip() for m in config.integrands.split(",") if m.strip()]
  base = jax.random.key(config.seed)
  ns = [2**k for k in range(config.log2_n_min, config.log2_n_max + 1, config.log2_n_step)]
  summary, curves = {}, {}
  # One unit per (integrand, method, n) of the error study, then one per coverage integrand.
  bar = ctx.progress(
    total=len(names) * len(methods) * len(ns) + len(COVERAGE_INTEGRANDS), desc=f"{NAME} error"
  )
  step = 0
  for i, nm in enumerate(names):
    f, exact, dim = INTEGRANDS[nm]()
    summary[f"{nm}.exact"] = exact
    for j, method in enumerate(methods):
      rmse, mean_se, n_used = [], [], []
      for k, n in enumerate(ns):
        keys = jax.random.split(jax.random.fold_in(base, 1000 * i + 100 * j + k), config.keys)
        est, se, res = _estimates(f, dim, method, n, keys, config.replicates)
        rmse.append(float(np.sqrt(np.mean((est - exact) ** 2))))
        mean_se.append(float(np.mean(se)))
        # The x-axis is the number of evaluations integrate reports it used.
        n_used.append(int(np.asarray(res.n).reshape(-1)[0]))
        ctx.log(step, integrand=nm, method=method, n=n_used[-1], rmse=rmse[-1], mean_stderr=mean_se[-1])
        step += 1
        bar.update()
      slope = float(np.polyfit(np.log(n_used), np.log(rmse), 1)[0])
      curves[(nm, method)] = (n_used, rmse, mean_se)
      summary[f"{nm}.{method}.slope"] = slope
      summary[f"{nm}.{method}.rmse_at_n_max"] = rmse[-1]
      summary[f"{nm}.{method}.mean_stderr_at_n_max"] = mean_se[-1]

  keys = jax.random.split(jax.random.fold_in(base, 99_999), config.coverage_trials)
  for name, make in COVERAGE_INTEGRANDS.items():
    bar.set_description(f"{NAME} coverage {name}")
    f, exact, dim = make()
    cov = _coverage(f, exact, dim, methods, 2**config.log2_coverage_n, keys, config.replicates)
    for method, c in cov.items():
      summary[f"coverage.{name}.{method}"] = c
      ctx.log(step, integrand=name, method=method, coverage=c)
      step += 1
    bar.update()
  bar.close()
  for method in methods:
    summary[f"coverage.{method}"] = min(summary[f"coverage.{name}.{method}"] for name in COVERAGE_INTEGRANDS)
  summary["coverage.trials"] = config.coverage_trials
  _plot(ctx, names, methods, curves)
  return summary


def _plot(ctx, names, methods, curves):
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False, layout="constrained")
  for ax, nm in zip(axes[0], names):
    for method in methods:
      n, rmse, se = curves[(nm, method)]
      (line,) = ax.plot(n, rmse, "o-", ms=3, label=method)
      ax.plot(n, se, ":", color=line.get_color())
    n0 = np.asarray(curves[(nm, methods[0])][0], float)
    r0 = curves[(nm, methods[0])][1][0]
    ax.plot(n0, r0 * (n0 / n0[0]) ** -0.5, "k--", lw=0.8, label="n^-1/2")
    ax.set(
      xlabel="n (evaluations)", ylabel="RMSE (solid), mean stderr (dotted)", title=f"{nm}: error against n"
    )
    _runs.log_scale(ax, "x", base=2)
    _runs.log_scale(ax)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
  ctx.save_figure(fig, "error_vs_n")
