"""Batched maximum likelihood: one vmapped ``fit_distribution`` vs SciPy loops.

(a) Student's t (df, loc, scale all free) on B datasets of 100 observations,
    against ``scipy.stats.t.fit`` called once per dataset in a Python loop
    (timed on a subset and scaled to B; its log-likelihoods compared on every
    dataset it was run on).
(b) Normal on B datasets against ``scipy.stats.norm.fit`` (a closed form).
(c) Logistic regressions with robust (sandwich) standard errors against a
    statsmodels loop ``Logit(y, X).fit(cov_type="HC0")`` (timed on a subset).
(d) Profile-likelihood intervals for every parameter of B Student's t fits in
    one call.

Run: ``PYTHONPATH=. python -m benchmarks --only mle [--quick]``.
"""

from __future__ import annotations

import functools
import time

import jax
import numpy as np
import scipy.stats

from benchmarks._harness import (
  compile_time,
  fmt_bytes,
  fmt_time,
  interleaved_times,
  median_time,
  peak_rss,
  table,
)
from jaxsoft import mle

N_OBS = 100
T_TRUE = (5.0, 10.0, 2.0)  # df, loc, scale


def _t_data(batch: int, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return scipy.stats.t.rvs(*T_TRUE, size=(batch, N_OBS), random_state=rng).astype(np.float32)


def _normal_data(batch: int, seed: int = 1) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.normal(168.0, 2.6, size=(batch, N_OBS)).astype(np.float32)


def _batched(family: str):
  return jax.jit(jax.vmap(lambda x: mle.fit_distribution(family, x)))


def mem_case(family: str, batch: int):
  """Peak-memory case: one vmapped fit of ``batch`` datasets (fresh process)."""
  x = _t_data(batch) if family == "student_t" else _normal_data(batch)
  return _batched(family)(x).nll


def _t_section(batch: int, n_scipy_time: int, n_scipy_quality: int, quick: bool) -> str:
  x = _t_data(batch)
  fitter = _batched("student_t")
  t_compile = compile_time(fitter, x)
  t_ours = median_time(fitter, x, repeats=3)
  res = fitter(x)
  df, loc, scale = (np.asarray(res.params[k], np.float64) for k in ("df", "loc", "scale"))
  x64 = x.astype(np.float64)
  ll_ours = scipy.stats.t.logpdf(x64, df[:, None], loc[:, None], scale[:, None]).sum(1)

  n_ref = max(n_scipy_time, n_scipy_quality)
  ll_ref = np.empty(n_ref)
  t0 = time.perf_counter()
  for i in range(n_ref):
    ll_ref[i] = scipy.stats.t.logpdf(x64[i], *scipy.stats.t.fit(x64[i])).sum()
    if i + 1 == n_scipy_time:
      t_scipy_each = (time.perf_counter() - t0) / n_scipy_time
  t_scipy = t_scipy_each * batch
  rel = (ll_ref - ll_ours[:n_ref]) / np.abs(ll_ref)
  ok = rel <= 1e-5
  better = (ll_ours[:n_ref] > ll_ref + 1e-6 * np.abs(ll_ref)).mean()
  steps = np.asarray(res.steps)

  rows = [
    [
      "jaxsoft fit_distribution (vmap, float32)",
      fmt_time(t_ours),
      fmt_time(t_compile),
      f"{t_scipy / t_ours:.0f}x",
    ],
    [
      f"scipy.stats.t.fit loop (timed on {n_scipy_time}, x{batch // n_scipy_time})",
      fmt_time(t_scipy),
      "-",
      "1x",
    ],
  ]
  mem = peak_rss("benchmarks.bench_mle:mem_case", family="student_t", batch=batch)
  out = [
    f"### (a) Student's t, {batch} datasets x {N_OBS} obs (df, loc, scale free)\n",
    table(["method", "time (all datasets)", "compile", "speed-up vs SciPy"], rows),
    "",
    table(
      ["quality", "value"],
      [
        [
          f"log-lik >= SciPy's - 1e-5 rel (on {n_ref} datasets)",
          f"{ok.mean():.4%} ({int(ok.sum())}/{n_ref})",
        ],
        ["log-lik higher than SciPy's by > 1e-6 rel", f"{better:.2%}"],
        ["worst shortfall vs SciPy (rel)", f"{max(rel.max(), 0):.2e}"],
        ["converged (all datasets)", f"{np.asarray(res.converged).mean():.4%}"],
        [
          "steps: median / 99% / max",
          f"{np.median(steps):.0f} / {np.percentile(steps, 99):.0f} / {steps.max()}",
        ],
        ["fits with df > 1000 (MLE at df = inf)", f"{(df > 1000).mean():.2%}"],
        ["peak RSS of the vmapped fit (fresh process)", fmt_bytes(mem)],
      ],
    ),
  ]
  return "\n".join(out)


def _normal_section(batch: int, quick: bool) -> str:
  x = _normal_data(batch)
  fitter = _batched("normal")
  t_compile = compile_time(fitter, x)
  t_ours = median_time(fitter, x, repeats=5)
  res = fitter(x)
  x64 = x.astype(np.float64)

  def scipy_loop():
    return [scipy.stats.norm.fit(row) for row in x64]

  t_scipy = median_time(scipy_loop, repeats=3)
  ref = np.array(scipy_loop())
  rel_loc = np.abs(np.asarray(res.params["loc"], np.float64) - ref[:, 0]) / np.abs(ref[:, 0])
  rel_scale = np.abs(np.asarray(res.params["scale"], np.float64) - ref[:, 1]) / ref[:, 1]
  worst = max(rel_loc.max(), rel_scale.max())
  mem = peak_rss("benchmarks.bench_mle:mem_case", family="normal", batch=batch)
  rows = [
    [
      "jaxsoft fit_distribution (vmap, float32, with stderr)",
      fmt_time(t_ours),
      fmt_time(t_compile),
      f"{t_scipy / t_ours:.2f}x",
    ],
    ["scipy.stats.norm.fit loop (closed form, no stderr)", fmt_time(t_scipy), "-", "1x"],
  ]
  return "\n".join(
    [
      f"### (b) Normal, {batch} datasets x {N_OBS} obs\n",
      table(["method", "time (all datasets)", "compile", "speed-up vs SciPy"], rows),
      "",
      table(
        ["quality", "value"],
        [
          ["max relative error, loc / scale", f"{rel_loc.max():.1e} / {rel_scale.max():.1e}"],
          [
            "every parameter within 1e-4 relative",
            "yes" if worst <= 1e-4 else f"no ({(np.maximum(rel_loc, rel_scale) > 1e-4).sum()} datasets)",
          ],
          ["converged", f"{np.asarray(res.converged).mean():.4%}"],
          ["peak RSS of the vmapped fit (fresh process)", fmt_bytes(mem)],
        ],
      ),
    ]
  )


LOGIT_N, LOGIT_K = 500, 5
LOGIT_BETA = np.array([0.5, 1.0, -0.5, 0.25, -1.0])


def _logit_data(batch: int, seed: int = 2):
  rng = np.random.default_rng(seed)
  x = np.concatenate([np.ones((batch, LOGIT_N, 1)), rng.normal(size=(batch, LOGIT_N, LOGIT_K - 1))], axis=2)
  y = (rng.random((batch, LOGIT_N)) < 1 / (1 + np.exp(-x @ LOGIT_BETA))).astype(np.float64)
  return x, y


def _logit_lp(p, d):
  """The logistic log-likelihood as statsmodels' ``Logit.loglike`` writes it: log sigma((2y - 1) x'b)."""
  x, y = d
  return jax.nn.log_sigmoid((2 * y - 1) * (x @ p["beta"]))


def _logit_lp_two(p, d):
  """The same for y in {0, 1}, written with two log-sigmoids (also right for fractional y)."""
  x, y = d
  eta = x @ p["beta"]
  return y * jax.nn.log_sigmoid(eta) + (1 - y) * jax.nn.log_sigmoid(-eta)


def _robust_section(batch: int, n_ref: int, rounds: int = 7) -> str:
  import statsmodels.api as sm

  x, y = _logit_data(batch)
  data = jax.device_put((x.astype(np.float32), y.astype(np.float32)))
  p0 = {"beta": np.zeros(LOGIT_K, np.float32)}
  forms = {"log sigma((2y-1) x'b), statsmodels' formula": _logit_lp, "two log-sigmoids": _logit_lp_two}
  fitters = {
    k: jax.jit(jax.vmap(lambda d, lp=lp: mle.fit(lp, p0, d, cov_type="robust"))) for k, lp in forms.items()
  }
  compiles = {k: compile_time(f, data) for k, f in fitters.items()}
  results = {k: f(data) for k, f in fitters.items()}

  def reference():
    return np.stack([sm.Logit(y[i], x[i]).fit(disp=0, cov_type="HC0").bse for i in range(n_ref)])

  fns = {k: functools.partial(f, data) for k, f in fitters.items()}
  # The statsmodels loop runs in the same rounds, on n_ref datasets, scaled to the batch.
  times = interleaved_times({**fns, "statsmodels": reference}, rounds)
  ref = reference()
  t_ref, cpu_ref = (t * batch / n_ref for t in times.pop("statsmodels"))
  rows, quality = [], []
  for k, (t, cpu) in times.items():
    rows.append(
      [
        f"jaxsoft fit(cov_type='robust'), {k} (vmap, float32)",
        fmt_time(t),
        fmt_time(cpu),
        fmt_time(compiles[k]),
        f"{t_ref / t:.1f}x",
        f"{cpu_ref / cpu:.1f}x",
      ]
    )
    se = np.asarray(results[k].stderr["beta"], np.float64)[:n_ref]
    quality.append(
      [
        f"{k}: robust stderr vs statsmodels HC0, max relative difference ({n_ref} datasets)",
        f"{np.max(np.abs(se - ref) / ref):.1e}",
      ]
    )
    quality.append([f"{k}: converged", f"{np.asarray(results[k].converged).mean():.4%}"])
  rows.append(
    [
      f"statsmodels Logit.fit(cov_type='HC0') loop (timed on {n_ref}, x{batch / n_ref:g})",
      fmt_time(t_ref),
      fmt_time(cpu_ref),
      "-",
      "1x",
      "1x",
    ]
  )
  return "\n".join(
    [
      f"### (c) Logistic regression with robust standard errors, {batch} datasets x {LOGIT_N} obs x {LOGIT_K} features\n",
      f"Medians of {rounds} rounds; each round times every row in turn (`interleaved_times`).\n",
      table(
        ["method", "time (all datasets)", "CPU time", "compile", "speed-up (wall)", "speed-up (CPU)"], rows
      ),
      "",
      table(["quality", "value"], quality),
    ]
  )


def _profile_section(batch: int) -> str:
  from jaxsoft import distributions

  t = distributions.student_t
  x = _t_data(batch, seed=3)
  fits = _batched("student_t")(x)
  profile = jax.jit(
    jax.vmap(lambda r, d: mle.profile_confidence_intervals(r, t.log_prob, d, constraints=t.constraints))
  )
  t_compile = compile_time(profile, fits, x)
  # One call after a warm-up: at 1000 fits a call takes minutes on 2 cores.
  t_ours = median_time(profile, fits, x, repeats=1)
  c0 = time.process_time()
  ci = jax.block_until_ready(profile(fits, x))
  cpu = time.process_time() - c0
  lo, hi = ({k: np.asarray(v[k], np.float64) for k in t.param_names} for v in ci)
  interior = np.asarray(fits.converged)
  rows = []
  for k, true in zip(t.param_names, T_TRUE):
    cover = ((lo[k] <= true) & (true <= hi[k]))[interior].mean()
    finite = (np.isfinite(lo[k]) & np.isfinite(hi[k]))[interior].mean()
    rows.append(
      [k, f"{cover:.3f}", f"{finite:.2%}", f"{np.isnan(lo[k]).mean() + np.isnan(hi[k]).mean():.2%}"]
    )
  return "\n".join(
    [
      f"### (d) Profile-likelihood 95% intervals, all 3 parameters of {batch} Student's t fits ({N_OBS} obs)\n",
      table(
        ["what", "value"],
        [
          ["one jit(vmap(profile_confidence_intervals)) call", fmt_time(t_ours)],
          ["its CPU time (time.process_time, all threads)", fmt_time(cpu)],
          ["compile", fmt_time(t_compile)],
          ["fits with an interior maximum (not Criterion.BOUNDARY)", f"{interior.mean():.2%}"],
        ],
      ),
      "",
      table(["parameter", "coverage (interior fits)", "both endpoints finite", "NaN endpoints"], rows),
    ]
  )


def run_inference(quick: bool) -> str:
  """Sections (c) and (d) alone: ``python -c 'from benchmarks import bench_mle; print(bench_mle.run_inference(False))'``."""
  batch = 100 if quick else 1000
  jax.config.update("jax_enable_x64", False)
  return "\n".join([_robust_section(batch, 20 if quick else 100), "", _profile_section(batch)])


def run(quick: bool) -> str:
  batch = 200 if quick else 10_000
  n_time, n_quality = (10, 20) if quick else (50, 10_000)
  jax.config.update("jax_enable_x64", False)
  parts = [
    "## Maximum likelihood (`jaxsoft.mle`)\n",
    "One `jax.jit(jax.vmap(fit_distribution))` call over all datasets, float32, "
    "default optimizer (L-BFGS + zoom line search) and tolerances; compile time separate. "
    "SciPy fits in float64. Log-likelihoods of both are evaluated in float64 with scipy.stats.\n",
    _t_section(batch, n_time, n_quality, quick),
    "",
    _normal_section(batch, quick),
    "",
    run_inference(quick),
  ]
  return "\n".join(parts)
