"""The lecture's ten heights: Normal MLE by gradient descent against the closed form, 95% intervals, and coverage over simulated datasets.

``jaxsoft.fit_distribution("normal", heights)`` is compared with the closed form
(mean, and the 1/n standard deviation). The contour plot shows the negative
log-likelihood over (loc, scale) with the path of a plain Adam descent on
(loc, log scale). A batched fit of ``n_datasets`` simulated datasets (one
``vmap`` call) measures how often the Wald intervals ``estimate +- 1.96 stderr``
hold the true parameters; with 10 observations they under-cover (the MLE's
1/n variance and the normal quantile are small-sample approximations), which
the Student-t interval for the mean corrects. The profile-likelihood intervals
(``jaxsoft.profile_confidence_intervals``, every dataset and parameter in one
call) are reported beside them: they do not assume a quadratic likelihood.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxsoft
from experiments import _runs

NAME = "mle_heights"
HEADLINE = ("loc", "scale", "loc_abs_error", "coverage.loc_wald", "coverage.loc_t", "coverage.loc_profile")
HEIGHTS = [164.95, 165.35, 165.76, 166.16, 167.78, 168.99, 169.80, 170.20, 171.82, 172.63]
Z95 = 1.959963984540054


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  """key of the simulated datasets"""
  n_datasets: int = 1000
  """simulated datasets of ten heights for the coverage (fitted in one vmap)"""
  true_loc: float = 168.0
  """mean of the Normal the datasets are drawn from"""
  true_scale: float = 2.6
  """standard deviation of the Normal the datasets are drawn from"""
  path_steps: int = 300
  """Adam steps of the descent path drawn on the contour plot"""
  path_learning_rate: float = 0.1
  """Adam's learning rate for the descent path"""
  # The fit starts away from the answer (the method-of-moments start would
  # already be the Normal MLE), so the optimizer really descends.
  start_loc: float = 160.0
  """where fit_distribution starts loc"""
  start_scale: float = 5.0
  """where fit_distribution starts scale"""

  def __post_init__(self):
    need = functools.partial(_runs.require, NAME)
    _runs.require_positive(NAME, self, "n_datasets", "path_steps")
    for f in ("true_scale", "start_scale", "path_learning_rate"):
      need(getattr(self, f) > 0, f, "positive", getattr(self, f))


# A tiny config for smoke tests and `--smoke` (seconds, not minutes): same code paths.
SMOKE = Config(n_datasets=50, path_steps=20)


def _nll(loc, log_scale, x):
  # The Normal negative log-likelihood, written out for the contour plot and path.
  scale = jnp.exp(log_scale)
  return jnp.sum(0.5 * ((x - loc) / scale) ** 2 + log_scale + 0.5 * math.log(2 * math.pi))


def _descent_path(x, config):
  """Adam on (loc, log scale) from a deliberately poor start (min(x), scale 1), for the plot."""
  params = {"loc": jnp.asarray(float(x.min())), "log_scale": jnp.asarray(0.0)}
  opt = optax.adam(config.path_learning_rate)
  state = opt.init(params)
  grad = jax.jit(jax.grad(lambda p: _nll(p["loc"], p["log_scale"], x) / x.shape[0]))
  path = [(float(params["loc"]), float(jnp.exp(params["log_scale"])))]
  for _ in range(config.path_steps):
    updates, state = opt.update(grad(params), state)
    params = optax.apply_updates(params, updates)
    path.append((float(params["loc"]), float(jnp.exp(params["log_scale"]))))
  return np.array(path)


def run(config: Config, ctx) -> dict:
  # Four stages: the fit, the batched fits, their profile intervals, the descent path.
  bar = ctx.progress(total=4, desc=f"{NAME} fit")
  x = jnp.asarray(HEIGHTS, jnp.float32)
  n = len(HEIGHTS)
  x64 = np.asarray(HEIGHTS, np.float64)
  closed_loc, closed_scale = x64.mean(), x64.std()  # std with 1/n: the MLE
  start = {"loc": jnp.float32(config.start_loc), "scale": jnp.float32(config.start_scale)}
  res = jaxsoft.fit_distribution("normal", x, params=start)
  loc, scale = float(res.params["loc"]), float(res.params["scale"])
  se_loc, se_scale = float(res.stderr["loc"]), float(res.stderr["scale"])
  ctx.log(0, loc=loc, scale=scale, nll=float(res.nll), steps=int(res.steps))
  summary = {
    "loc": loc,
    "scale": scale,
    "closed_form.loc": closed_loc,
    "closed_form.scale": closed_scale,
    "loc_abs_error": abs(loc - closed_loc),
    "scale_abs_error": abs(scale - closed_scale),
    "stderr.loc": se_loc,
    "stderr.scale": se_scale,
    "closed_form.stderr.loc": closed_scale / math.sqrt(n),
    "closed_form.stderr.scale": closed_scale / math.sqrt(2 * n),
    "interval95.loc": [loc - Z95 * se_loc, loc + Z95 * se_loc],
    "interval95.scale": [scale - Z95 * se_scale, scale + Z95 * se_scale],
    "nll": float(res.nll),
    "steps": int(res.steps),
    "converged": bool(res.converged),
  }

  # Coverage: many simulated datasets fitted in one vmap call.
  bar.update()
  bar.set_description(f"{NAME} {config.n_datasets} fits")
  key = jax.random.key(config.seed)
  data = config.true_loc + config.true_scale * jax.random.normal(key, (config.n_datasets, n))
  batch = jax.jit(jax.vmap(lambda d: jaxsoft.fit_distribution("normal", d)))(data)
  b_loc, b_scale = np.asarray(batch.params["loc"], np.float64), np.asarray(batch.params["scale"], np.float64)
  b_se_loc = np.asarray(batch.stderr["loc"], np.float64)
  b_se_scale = np.asarray(batch.stderr["scale"], np.float64)
  normal = jaxsoft.distributions.normal
  bar.update()
  bar.set_description(f"{NAME} profile intervals")
  profile = jax.jit(
    jax.vmap(
      lambda r, d: jaxsoft.profile_confidence_intervals(r, normal.log_prob, d, constraints=normal.constraints)
    )
  )(batch, data)
  covers = lambda ci, k, true: float(
    np.mean((np.asarray(ci.lower[k]) <= true) & (true <= np.asarray(ci.upper[k])))
  )
  heights_profile = jaxsoft.profile_confidence_intervals(
    res, normal.log_prob, x, constraints=normal.constraints
  )
  for k in ("loc", "scale"):
    summary[f"profile95.{k}"] = [float(heights_profile.lower[k]), float(heights_profile.upper[k])]
  from scipy import stats

  t = stats.t.ppf(0.975, n - 1)
  s_unbiased = b_scale * math.sqrt(n / (n - 1))
  summary.update(
    {
      "coverage.datasets": config.n_datasets,
      "coverage.converged_fraction": float(np.mean(np.asarray(batch.converged))),
      "coverage.loc_wald": float(np.mean(np.abs(b_loc - config.true_loc) <= Z95 * b_se_loc)),
      "coverage.scale_wald": float(np.mean(np.abs(b_scale - config.true_scale) <= Z95 * b_se_scale)),
      "coverage.loc_t": float(np.mean(np.abs(b_loc - config.true_loc) <= t * s_unbiased / math.sqrt(n))),
      "coverage.loc_profile": covers(profile, "loc", config.true_loc),
      "coverage.scale_profile": covers(profile, "scale", config.true_scale),
      "coverage.max_loc_error_vs_closed_form": float(
        np.max(np.abs(b_loc - np.asarray(data, np.float64).mean(1)))
      ),
    }
  )
  bar.update()
  bar.set_description(f"{NAME} descent path")
  path = _descent_path(x, config)
  bar.update()
  bar.close()
  summary["descent.final_loc"] = float(path[-1, 0])
  summary["descent.final_scale"] = float(path[-1, 1])
  _plots(ctx, x64, loc, scale, path)
  return summary


def _plots(ctx, x, loc, scale, path):
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  ax.hist(x, bins=6, density=True, alpha=0.5, label="heights")
  g = np.linspace(x.min() - 6, x.max() + 6, 300)
  ax.plot(
    g,
    np.exp(-0.5 * ((g - loc) / scale) ** 2) / (scale * math.sqrt(2 * math.pi)),
    label=f"Normal({loc:.2f}, {scale:.2f})",
  )
  ax.set(xlabel="height (cm)", ylabel="density", title="heights and the fitted Normal")
  ax.legend()
  ctx.save_figure(fig, "fit")

  locs = np.linspace(min(path[:, 0].min(), loc - 4), loc + 4, 120)
  scales = np.linspace(max(0.5, path[:, 1].min() * 0.9), max(path[:, 1].max(), scale) * 1.3, 120)
  L, S = np.meshgrid(locs, scales)
  nll = (
    (0.5 * ((x[None, None, :] - L[..., None]) / S[..., None]) ** 2).sum(-1)
    + len(x) * np.log(S)
    + 0.5 * len(x) * math.log(2 * math.pi)
  )
  fig, ax = plt.subplots(figsize=(6, 5))
  cs = ax.contour(L, S, nll, levels=np.quantile(nll, np.linspace(0.0, 0.6, 15)))
  ax.clabel(cs, fontsize=6, fmt="%.1f")
  ax.plot(path[:, 0], path[:, 1], "r.-", ms=2, lw=0.8, label="Adam path")
  ax.plot([loc], [scale], "k*", ms=12, label="jaxsoft.fit_distribution")
  ax.set(xlabel="loc (cm)", ylabel="scale (cm)", title="negative log-likelihood of the ten heights")
  ax.legend(loc="lower right")
  ctx.save_figure(fig, "nll_contours")
