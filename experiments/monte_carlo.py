"""Monte Carlo error against n for mc, antithetic, sobol and halton on integrals with known values, and interval coverage.

For each integrand and method, the root-mean-square error over ``keys`` random
keys is measured at n = 2^k (each n is a static size: one compile per method and n) and a line is fitted to log error against log n:
about -1/2 for plain Monte Carlo, steeper for quasi-Monte Carlo on smooth
integrands. The coverage check counts how often the nominal 95% interval
``estimate +- 1.96 stderr`` holds the true value over ``coverage_trials`` keys.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

import jaxsoft

NAME = "monte_carlo"
HEADLINE = (
  "gaussian.mc.slope",
  "gaussian.sobol.slope",
  "gaussian.halton.slope",
  "coverage.mc",
  "coverage.sobol",
)
Z95 = 1.959963984540054


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


INTEGRANDS = {"gaussian": lambda: _gaussian(4), "oscillatory": lambda: _oscillatory(4), "pi": _quarter_disc}


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  log2_n_min: int = 8
  log2_n_max: int = 16
  log2_n_step: int = dataclasses.field(
    default=2, metadata={"help": "n = 2^k for k in range(min, max + 1, step); each n compiles once"}
  )
  keys: int = dataclasses.field(default=8, metadata={"help": "random keys per (method, n) for the RMSE"})
  methods: str = "mc,antithetic,sobol,halton"
  integrands: str = "gaussian,oscillatory,pi"
  replicates: int = 16
  coverage_trials: int = 200
  log2_coverage_n: int = 10


# A tiny config for smoke tests and `--smoke` (seconds, not minutes): same code paths.
SMOKE = Config(
  log2_n_min=6, log2_n_max=8, keys=4, coverage_trials=40, log2_coverage_n=8, integrands="gaussian"
)


def _estimates(f, dim, method, n, keys, replicates):
  """Estimates and stderrs for a batch of keys (one compile per (method, n))."""
  one = lambda k: jaxsoft.integrate(
    f, k, lower=jnp.zeros(dim), upper=jnp.ones(dim), n=n, method=method, replicates=replicates
  )
  res = jax.jit(jax.vmap(one))(keys)
  return np.asarray(res.estimate, np.float64), np.asarray(res.stderr, np.float64), res


def run(config: Config, ctx) -> dict:
  methods = [m.strip() for m in config.methods.split(",") if m.strip()]
  names = [m.strip() for m in config.integrands.split(",") if m.strip()]
  for nm in names:
    if nm not in INTEGRANDS:
      raise ValueError(f"monte_carlo: integrands must be among {sorted(INTEGRANDS)}, got {nm!r}")
  base = jax.random.key(config.seed)
  ns = [2**k for k in range(config.log2_n_min, config.log2_n_max + 1, config.log2_n_step)]
  summary, curves = {}, {}
  bar = ctx.progress(total=len(names) * len(methods) * len(ns), desc=NAME)
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
  bar.close()

  # Coverage of the nominal 95% intervals on the smooth Gaussian integrand.
  f, exact, dim = _gaussian(4)
  keys = jax.random.split(jax.random.fold_in(base, 99_999), config.coverage_trials)
  for method in methods:
    est, se, _ = _estimates(f, dim, method, 2**config.log2_coverage_n, keys, config.replicates)
    summary[f"coverage.{method}"] = float(np.mean(np.abs(est - exact) <= Z95 * se))
  summary["coverage.trials"] = config.coverage_trials
  _plot(ctx, names, methods, curves)
  return summary


def _plot(ctx, names, methods, curves):
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
  for ax, nm in zip(axes[0], names):
    for method in methods:
      n, rmse, se = curves[(nm, method)]
      (line,) = ax.loglog(n, rmse, "o-", ms=3, label=method)
      ax.loglog(n, se, ":", color=line.get_color())
    n0 = np.asarray(curves[(nm, methods[0])][0], float)
    r0 = curves[(nm, methods[0])][1][0]
    ax.loglog(n0, r0 * (n0 / n0[0]) ** -0.5, "k--", lw=0.8, label="n^-1/2")
    ax.set(xlabel="n", ylabel="RMSE (dotted: mean stderr)", title=nm)
    ax.legend(fontsize=8)
  ctx.save_figure(fig, "error_vs_n")
