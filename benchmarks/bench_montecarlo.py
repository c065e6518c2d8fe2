"""Monte Carlo integration and Sobol' generation against NumPy / SciPy.

Cases (full size; ``quick`` shrinks them):

* samples per second of ``integrate`` on ``f(x) = exp(-|x|^2)`` over
  ``[0, 1]^8`` at ``n = 2**24``: method mc (default threefry key, and an
  ``rbg`` key), antithetic, sobol; reference: the same estimator (mean and
  variance) with NumPy's ``default_rng`` in chunks of ``2**20``. Throughput is
  given in wall time and in process CPU time (the latter is steadier on a
  shared machine; both sides are single-threaded here).
* Sobol' point generation ``n = 2**20, dim = 8`` against
  ``scipy.stats.qmc.Sobol``, plain and scrambled.
* absolute error of mc and sobol at ``n = 2**20`` (mean over 5 keys).
* peak RSS of a fresh process integrating ``n = 2**30`` points with
  ``batch_size = 2**20``.
"""

from __future__ import annotations

import statistics
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special
from scipy.stats import qmc as sqmc

from benchmarks._harness import block, fmt_bytes, fmt_time, peak_rss, table
from jaxsoft.montecarlo import integrate
from jaxsoft.qmc import sobol

DIM = 8
EXACT = (np.sqrt(np.pi) / 2 * special.erf(1.0)) ** DIM


def gauss(x):
  return jnp.exp(-jnp.sum(x * x))


def numpy_estimator(n: int, seed: int = 0, chunk: int = 2**20):
  """Mean and standard error of exp(-|x|^2), NumPy default_rng, chunked."""
  rng = np.random.default_rng(seed)
  total, total_sq, done = 0.0, 0.0, 0
  while done < n:
    m = min(chunk, n - done)
    fx = np.exp(-np.einsum("ij,ij->i", x := rng.random((m, DIM)), x))
    total += fx.sum()
    total_sq += (fx * fx).sum()
    done += m
  mean = total / n
  return mean, np.sqrt(max(total_sq / n - mean * mean, 0.0) / n)


def _times(fn, *args, repeats: int = 5):
  """Median wall and process-CPU seconds of ``fn(*args)`` after one warm-up."""
  block(fn(*args))
  wall, cpu = [], []
  for _ in range(repeats):
    w0, c0 = time.perf_counter(), time.process_time()
    block(fn(*args))
    wall.append(time.perf_counter() - w0)
    cpu.append(time.process_time() - c0)
  return statistics.median(wall), statistics.median(cpu)


def _integrator(n, method, **kw):
  lo, hi = jnp.zeros(DIM), jnp.ones(DIM)
  return jax.jit(lambda key: integrate(gauss, key, lower=lo, upper=hi, n=n, method=method, **kw))


def memory_case(n: int, batch_size: int, method: str = "mc"):
  """Run in a fresh process by ``peak_rss``."""
  r = _integrator(n, method, batch_size=batch_size)(jax.random.key(0))
  return r.estimate


def run(quick: bool) -> str:
  n = 2**18 if quick else 2**24
  n_gen = 2**14 if quick else 2**20
  n_err = 2**14 if quick else 2**20
  n_mem = 2**22 if quick else 2**30
  repeats = 2 if quick else 5
  out = ["## Monte Carlo integration (`jaxsoft.montecarlo`, `jaxsoft.qmc`)", ""]

  # 1. Throughput.
  ref_wall, ref_cpu = _times(numpy_estimator, n, repeats=repeats)
  rows = [
    [
      "NumPy default_rng, chunks of 2^20 (reference)",
      fmt_time(ref_wall),
      f"{n / ref_wall / 1e6:.1f}",
      "1.00x",
      f"{n / ref_cpu / 1e6:.1f}",
      "1.00x",
    ]
  ]
  cases = [
    ("integrate mc, threefry key (default)", "mc", jax.random.key(0)),
    ("integrate mc, rbg key", "mc", jax.random.key(0, impl="rbg")),
    ("integrate mc, unsafe_rbg key", "mc", jax.random.key(0, impl="unsafe_rbg")),
    ("integrate antithetic", "antithetic", jax.random.key(0)),
    ("integrate sobol (16 replicates)", "sobol", jax.random.key(0)),
  ]
  for name, method, key in cases:
    wall, cpu = _times(_integrator(n, method), key, repeats=repeats)
    rows.append(
      [
        name,
        fmt_time(wall),
        f"{n / wall / 1e6:.1f}",
        f"{ref_wall / wall:.2f}x",
        f"{n / cpu / 1e6:.1f}",
        f"{ref_cpu / cpu:.2f}x",
      ]
    )
  out += [
    f"`exp(-|x|^2)` over [0,1]^{DIM}, n = 2^{n.bit_length() - 1}, default batch size "
    "(one 2^16-point block per step on CPU). Msps = million samples per second; "
    "ratio = speed-up over NumPy (>1 is faster).",
    "",
    table(["case", "wall", "Msps (wall)", "ratio (wall)", "Msps (CPU time)", "ratio (CPU time)"], rows),
    "",
  ]

  # 2. Sobol' generation.
  def scipy_sobol(scramble):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      return sqmc.Sobol(DIM, scramble=scramble, rng=0).random(n_gen)

  plain = jax.jit(lambda: sobol(n_gen, DIM))
  scrambled = jax.jit(lambda k: sobol(n_gen, DIM, key=k))
  rows = []
  for name, ref, mine, args in [
    ("plain", lambda: scipy_sobol(False), plain, ()),
    ("scrambled", lambda: scipy_sobol(True), scrambled, (jax.random.key(0),)),
  ]:
    sw, _ = _times(ref, repeats=repeats)
    jw, _ = _times(mine, *args, repeats=repeats)
    rows.append([name, fmt_time(sw), fmt_time(jw), f"{n_gen / jw / 1e6:.0f}", f"{sw / jw:.2f}x"])
  # XLA:CPU allocates every output afresh and page-faults it in (one minor
  # fault per 4 KiB); a trivial jitted op with the same output size shows
  # that floor, which SciPy does not pay (glibc reuses its heap).
  floor = jax.jit(lambda x: x * 0.5)
  fw, _ = _times(floor, jnp.ones((n_gen, DIM), jnp.float32), repeats=repeats)
  rows.append(
    ["(floor: jitted `x * 0.5`, same output size)", "-", fmt_time(fw), f"{n_gen / fw / 1e6:.0f}", "-"]
  )
  out += [
    f"Sobol' points, n = 2^{n_gen.bit_length() - 1}, dim = {DIM} (jaxsoft float32 jitted; SciPy float64, "
    "engine construction included for both), wall time.",
    "",
    table(["points", "SciPy", "jaxsoft", "Mpoints/s", "speed-up vs SciPy"], rows),
    "",
  ]

  # 3. Error at equal n.
  rows = []
  errs = {}
  for method in ("mc", "sobol"):
    f = _integrator(n_err, method)
    res = [f(jax.random.key(s)) for s in range(5)]
    errs[method] = np.mean([abs(float(r.estimate) - EXACT) for r in res])
    rows.append([method, f"{errs[method]:.2e}", f"{np.mean([float(r.stderr) for r in res]):.2e}"])
  np_err = np.mean([abs(numpy_estimator(n_err, seed=s)[0] - EXACT) for s in range(5)])
  rows.append(["NumPy mc (reference)", f"{np_err:.2e}", "-"])
  out += [
    f"Absolute error, n = 2^{n_err.bit_length() - 1}, mean over 5 keys (exact {EXACT:.8f}); "
    f"mc error / sobol error = **{errs['mc'] / max(errs['sobol'], 1e-30):.0f}x**.",
    "",
    table(["method", "mean abs error", "mean stderr"], rows),
    "",
  ]

  # 4. Memory.
  rows = []
  for method in ("mc", "sobol"):
    t0 = time.perf_counter()
    rss = peak_rss(
      "benchmarks.bench_montecarlo:memory_case", timeout=900, n=n_mem, batch_size=2**20, method=method
    )
    rows.append(
      [method, f"2^{n_mem.bit_length() - 1}", "2^20", fmt_bytes(rss), fmt_time(time.perf_counter() - t0)]
    )
  out += [
    "Peak RSS of a fresh process (includes the Python + jax baseline, about 0.3 GiB).",
    "",
    table(["method", "n", "batch_size", "peak RSS", "process wall time"], rows),
  ]
  out += ["", keister_to_tolerance(quick)]
  return "\n".join(out)


KEISTER_D = 5
KEISTER_EXACT = 1.1353239910124928  # int over R^5 of cos(|x|) exp(-|x|^2) dx (Keister 1996)


def keister_to_tolerance(quick: bool, atol: float = 1e-3) -> str:
  """Keister in d = 5 to an absolute error of ``atol``: jaxsoft against qmcpy, in this process.

  jaxsoft: ``integrate_to_tolerance`` on the Keister integrand through
  ``gaussian_transform``, stopping at the 99% Student t half-width ``atol``;
  qmcpy: ``CubQMCNetG`` / ``CubQMCLatticeG`` with ``abs_tol=atol`` (their
  guaranteed cubature). Median wall time over seeds after compilation (the
  compile time separately), and how many seeds end within ``atol`` of the
  exact value. qmcpy's rows are left out when it is not importable.
  """
  from jaxsoft import gaussian_transform, integrate_to_tolerance

  seeds = 10 if quick else 100
  sample = gaussian_transform(jnp.zeros(KEISTER_D), jnp.eye(KEISTER_D) / 2)
  f = lambda u: jnp.pi ** (KEISTER_D / 2) * jnp.cos(jnp.linalg.norm(sample(u)))
  box = dict(lower=jnp.zeros(KEISTER_D), upper=jnp.ones(KEISTER_D), atol=atol, rtol=0.0, level=0.99)
  rows = []
  for method in ("sobol", "lattice"):
    run = jax.jit(lambda k, m=method: integrate_to_tolerance(f, k, method=m, **box))
    t0 = time.perf_counter()
    block(run(jax.random.key(0)))
    compile_s = time.perf_counter() - t0
    walls, errs, ns = [], [], []
    for seed in range(seeds):
      t0 = time.perf_counter()
      r = block(run(jax.random.key(seed)))
      walls.append(time.perf_counter() - t0)
      errs.append(abs(float(r.estimate) - KEISTER_EXACT))
      ns.append(int(r.n))
    within = sum(e <= atol for e in errs)
    rows.append(
      [
        f"jaxsoft {method}",
        fmt_time(statistics.median(walls)),
        f"{compile_s:.2f} s",
        int(statistics.median(ns)),
        f"{max(errs):.1e}",
        f"{within}/{seeds}",
      ]
    )
  try:
    import qmcpy as qp
  except ImportError:
    qp = None
  if qp is not None:
    for name, cub, points in (
      ("qmcpy CubQMCNetG", "CubQMCNetG", "DigitalNetB2"),
      ("qmcpy CubQMCLatticeG", "CubQMCLatticeG", "Lattice"),
    ):
      walls, errs, ns = [], [], []
      for seed in range(seeds):
        integrand = qp.Keister(getattr(qp, points)(KEISTER_D, seed=seed))
        t0 = time.perf_counter()
        sol, data = getattr(qp, cub)(integrand, abs_tol=atol).integrate()
        walls.append(time.perf_counter() - t0)
        errs.append(abs(float(sol) - KEISTER_EXACT))
        ns.append(int(data.n_total))
      within = sum(e <= atol for e in errs)
      rows.append(
        [
          name,
          fmt_time(statistics.median(walls)),
          "-",
          int(statistics.median(ns)),
          f"{max(errs):.1e}",
          f"{within}/{seeds}",
        ]
      )
  head = [
    f"Keister integral, d = {KEISTER_D}, to an absolute error of {atol:g} ({seeds} seeds; jaxsoft at the 99% "
    "half-width, default replicates). Wall time median per seed after compilation.",
    "",
  ]
  return "\n".join(head) + table(
    ["case", "wall (median)", "compile", "n (median)", "max |error|", "within atol"], rows
  )
