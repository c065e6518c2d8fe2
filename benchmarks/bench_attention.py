"""Attention: jaxsoft dense and chunked vs ``jax.nn.dot_product_attention(implementation="xla")``.

B=1, N=8, H=64, float32, T=S, causal and not. Forward and forward+backward
times are medians measured in this process, next to the reference; peak
memory is the RSS of a fresh subprocess that compiles and runs one
forward+backward. A materializing case whose estimated memory exceeds
``MEMORY_LIMIT`` is not run and reported as ``OOM (needs X GiB)``.
PyTorch's ``scaled_dot_product_attention`` is timed as a CPU anchor when it is
importable (optional, never required).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._harness import fmt_bytes, fmt_time, median_time, peak_rss, table
from jaxsoft.attention import scaled_dot_product_attention

B, N, H = 1, 8, 64
LENGTHS = (512, 1024, 2048, 4096, 8192, 16384)
QUICK_LENGTHS = (256, 512)
# A materializing case estimated above this is not run: 16 GiB rather than 20
# leaves room for the rest of a 24 GiB machine (the reference forward at
# T=16384 would need about 18 GiB in the benchmark process itself).
MEMORY_LIMIT = 16 * 2**30
IMPLS = ("jax.nn", "dense", "chunked")
# Peak memory of the materializing paths above a 0.25 GiB Python + JAX
# baseline, in units of one float32 [B, N, T, S] array: measured 2.1-2.2
# (forward) and 6.1-6.2 (forward+backward) for jax.nn and dense at T=4096.
_WEIGHT_COPIES = {False: 2.2, True: 6.2}
_BASELINE = 0.25 * 2**30


def _inputs(T):
  rng = np.random.default_rng(0)
  return tuple(jnp.asarray(rng.normal(size=(B, T, N, H)), jnp.float32) for _ in range(3))


def _attention(impl, causal):
  if impl == "jax.nn":
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="xla")
  return lambda q, k, v: scaled_dot_product_attention(q, k, v, is_causal=causal, implementation=impl)


def _jitted(impl, causal, backward):
  f = _attention(impl, causal)
  if backward:
    # The scalar loss and the three input gradients: one forward and one backward pass.
    return jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(f(q, k, v)), argnums=(0, 1, 2)))
  return jax.jit(f)


def needed_bytes(impl, T, backward):
  """Estimated peak memory of a case (only the materializing paths can exceed the limit)."""
  if impl == "chunked":
    return 0
  return _WEIGHT_COPIES[backward] * B * N * T * T * 4 + _BASELINE


def memory_case(impl: str, T: int, causal: bool):
  """Runs one forward+backward (for ``peak_rss`` in a fresh subprocess)."""
  return _jitted(impl, causal, True)(*_inputs(T))


def _time(impl, T, causal, backward, args):
  need = needed_bytes(impl, T, backward)
  if need > MEMORY_LIMIT:
    return f"OOM (needs {need / 2**30:.0f} GiB)"
  # Compile ahead of time so that the single run at large T is not a compile.
  compiled = _jitted(impl, causal, backward).lower(*args).compile()
  repeats = 5 if T <= 1024 else 3 if T <= 2048 else 1
  try:
    return median_time(compiled, *args, repeats=repeats, warmup=1 if T <= 2048 else 0)
  except Exception as e:  # XLA reports a failed allocation as an exception
    return "OOM" if "RESOURCE_EXHAUSTED" in str(e) else f"failed ({type(e).__name__})"


def _torch_times(T, causal, args):
  try:
    import torch
    import torch.nn.functional as F
  except ImportError:
    return None
  import statistics
  import time

  q, k, v = (torch.from_numpy(np.asarray(a)).transpose(1, 2).contiguous() for a in args)  # B N T H

  def fwd():
    with torch.no_grad():
      return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

  def fwd_bwd():
    qq, kk, vv = (x.detach().requires_grad_() for x in (q, k, v))
    F.scaled_dot_product_attention(qq, kk, vv, is_causal=causal).sum().backward()

  out = []
  for f in (fwd, fwd_bwd):
    f()
    times = []
    for _ in range(3 if T <= 2048 else 1):
      t0 = time.perf_counter()
      f()
      times.append(time.perf_counter() - t0)
    out.append(statistics.median(times))
  return out


def _ratio(ref, t):
  if isinstance(ref, float) and isinstance(t, float):
    return f"{ref / t:.2f}x"
  return "-"


def run(quick: bool) -> str:
  lengths = QUICK_LENGTHS if quick else LENGTHS
  rows, summary = [], {}
  for T in lengths:
    args = _inputs(T)
    for causal in (False, True):
      res = {}
      for impl in IMPLS:
        fwd = _time(impl, T, causal, False, args)
        both = _time(impl, T, causal, True, args)
        need = needed_bytes(impl, T, True)
        if need > MEMORY_LIMIT:
          mem = f"OOM (needs {need / 2**30:.0f} GiB)"
        else:
          mem = peak_rss("benchmarks.bench_attention:memory_case", timeout=300, impl=impl, T=T, causal=causal)
        res[impl] = (fwd, both, mem)
      torch_t = _torch_times(T, causal, args)
      if torch_t is not None:
        res["torch (anchor)"] = (*torch_t, "-")
      ref_fwd, ref_both, _ = res["jax.nn"]
      for impl, (fwd, both, mem) in res.items():
        rows.append(
          [
            T,
            "yes" if causal else "no",
            impl,
            fmt_time(fwd),
            _ratio(ref_fwd, fwd),
            fmt_time(both),
            _ratio(ref_both, both),
            fmt_bytes(mem),
          ]
        )
      summary[T, causal] = res
    del args

  out = [
    "## Attention",
    "",
    f"B={B}, N={N}, H={H}, float32, T=S. Ratios are reference time / this time (>1: faster "
    'than `jax.nn.dot_product_attention(implementation="xla")` measured in the same '
    "process). Memory: peak RSS of a fresh process running one forward+backward "
    "(includes about 0.3 GiB of Python and JAX).",
    "",
    table(
      ["T", "causal", "implementation", "forward", "vs jax.nn", "fwd+bwd", "vs jax.nn", "peak RSS (fwd+bwd)"],
      rows,
    ),
    "",
    "Targets:",
    "",
  ]

  def t(T, causal, impl, i):
    return summary.get((T, causal), {}).get(impl, (None,) * 3)[i]

  for T in lengths:
    if T >= 4096:
      for causal in (False, True):
        out.append(
          f"- chunked forward >= 1.5x faster than jax.nn at T={T}"
          f"{' causal' if causal else ''}: {_ratio(t(T, causal, 'jax.nn', 0), t(T, causal, 'chunked', 0))}"
        )
  T = 4096 if 4096 in lengths else lengths[-1]
  for causal in (False, True):
    d, c = t(T, causal, "dense", 1), t(T, causal, "chunked", 1)
    rel = f"{c / d:.2f}x" if isinstance(c, float) and isinstance(d, float) else "-"
    out.append(f"- chunked fwd+bwd within 1.5x of dense at T={T}{' causal' if causal else ''}: {rel}")
  T = lengths[-1]
  out.append(f"- chunked fwd+bwd peak RSS at T={T} under 1 GiB: {fmt_bytes(t(T, False, 'chunked', 2))}")
  return "\n".join(out)
