"""Large-vocabulary losses: fused linear cross-entropy and sampled softmax.

``value_and_grad`` (wrt hidden and weight) of

* ``jaxsoft.linear_cross_entropy`` against ``optax.softmax_cross_entropy_with_integer_labels``
  on materialized logits ``hidden @ weight`` (the reference), and the optional
  peer ``jax_cce.linear_cross_entropy`` (when importable), at N=8192, d=512,
  V=131072 and V=32000, float32;
* ``jaxsoft.sampled_softmax_cross_entropy`` (1024 samples) against the full
  loss by ``linear_cross_entropy`` at N=8192, d=256, V=1,048,576 (materialized
  logits would need 32 GiB).

Every case runs in its own fresh subprocess (``_harness.peak_rss``), which
compiles once, then times ``repeats`` calls and reports its peak RSS: one
compilation per case, and each memory figure is that case's alone. A case that
runs out of memory or time is reported as such.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
import time

from benchmarks import _harness as H


def _inputs(n, d, vocab, weight_layout="dv"):
  import jax
  import jax.numpy as jnp
  from jax import lax

  shape = (d, vocab) if weight_layout == "dv" else (vocab, d)

  def noise(shape, seed, scale):
    # A fused hash of the element index (uniform-ish on [-1, 1]): unlike
    # jax.random, it allocates nothing but the output, so the peak RSS
    # measures the losses rather than the setup.
    i = lax.iota(jnp.float32, math.prod(shape)).reshape(shape)
    u = jnp.sin(i * 12.9898 + seed) * 43758.5453
    return (2 * (u - jnp.floor(u)) - 1) * (scale * math.sqrt(3))

  @jax.jit
  def make(key):
    return noise((n, d), 0.0, 1.0), noise(shape, 1.0, d**-0.5), jax.random.randint(key, (n,), 0, vocab)

  return jax.block_until_ready(make(jax.random.key(0)))


def _loss_fn(method, y, num_samples):
  import jax
  import optax

  import jaxsoft

  if method == "optax":
    return lambda h, w: optax.softmax_cross_entropy_with_integer_labels(h @ w, y).mean()
  if method == "jaxsoft":
    return lambda h, w: jaxsoft.linear_cross_entropy(h, w, y)
  if method == "jax_cce":
    import jax_cce

    return lambda h, w: jax_cce.linear_cross_entropy(h, w, y)
  if method == "sampled":
    key = jax.random.key(1)
    return lambda h, w: jaxsoft.sampled_softmax_cross_entropy(h, w, y, key, num_samples=num_samples)
  raise ValueError(method)


def case(method: str, n: int, d: int, vocab: int, repeats: int, out: str, num_samples: int = 1024):
  """Runs in a fresh subprocess: compile, time ``repeats`` calls, write the times to ``out``."""
  import jax

  h, w, y = _inputs(n, d, vocab, "vd" if method == "jax_cce" else "dv")
  step = jax.jit(jax.value_and_grad(_loss_fn(method, y, num_samples), argnums=(0, 1)))
  t0 = time.perf_counter()
  compiled = step.lower(h, w).compile()
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    H.block(compiled(h, w))
    times.append(time.perf_counter() - t0)
  with open(out, "w") as f:
    json.dump({"times": times, "compile": compile_s}, f)


def _measure(method, n, d, vocab, repeats, num_samples=1024, timeout=600.0):
  """(median seconds or a failure string, peak RSS or a failure string)."""
  fd, out = tempfile.mkstemp(suffix=".json")
  os.close(fd)
  try:
    rss = H.peak_rss(
      "benchmarks.bench_vocab:case",
      timeout=timeout,
      method=method,
      n=n,
      d=d,
      vocab=vocab,
      repeats=repeats,
      out=out,
      num_samples=num_samples,
    )
    try:
      with open(out) as f:
        t = statistics.median(json.load(f)["times"])
    except (OSError, ValueError, KeyError):
      t = rss if isinstance(rss, str) else "failed"
  finally:
    os.unlink(out)
  return t, rss


def _have_jax_cce() -> bool:
  try:
    import jax_cce  # noqa: F401
  except ImportError:
    return False
  return True


def _ratio(x, ref):
  if isinstance(x, (int, float)) and isinstance(ref, (int, float)) and x > 0:
    return f"{ref / x:.2f}x"
  return "-"


def _rows(label, results, ref_name):
  ref_t, ref_m = results[ref_name]
  rows = []
  for name, (t, m) in results.items():
    rows.append(
      [
        label,
        name,
        H.fmt_time(t),
        _ratio(t, ref_t),
        H.fmt_bytes(m),
        _ratio(m, ref_m) if name != ref_name else "1.00x",
      ]
    )
  return rows


def run(quick: bool) -> str:
  if quick:
    n, d, vocabs, repeats = 256, 32, (1000, 500), 3
    ns, ds, vs, samples = 256, 16, 20_000, 64
  else:
    n, d, vocabs, repeats = 8192, 512, (131_072, 32_000), 3
    ns, ds, vs, samples = 8192, 256, 1_048_576, 1024
  methods = ["optax", "jaxsoft"] + (["jax_cce"] if _have_jax_cce() else [])
  headers = ["case", "method", "median time", "speedup vs ref", "peak RSS", "memory: ref / this"]
  rows = []
  for vocab in vocabs:
    label = f"N={n}, d={d}, V={vocab}"
    results = {m: _measure(m, n, d, vocab, repeats) for m in methods}
    rows += _rows(label, results, "optax")
  label = f"N={ns}, d={ds}, V={vs}"
  # The full loss here is ~13 TFLOP per call: one timed call is all it gets.
  sampled = {
    "jaxsoft": _measure("jaxsoft", ns, ds, vs, 1 if not quick else repeats),
    f"sampled ({samples})": _measure("sampled", ns, ds, vs, 5, num_samples=samples),
  }
  rows2 = _rows(label, sampled, "jaxsoft")
  note = (
    "jax-cce not installed: `pip install jax-cce` adds it to the first table."
    if "jax_cce" not in methods
    else "jax-cce: weight laid out [V, d], default chunk 4096, mean loss."
  )
  return "\n".join(
    [
      "## Large-vocabulary losses (value_and_grad wrt hidden and weight, float32)",
      "",
      "Reference: optax.softmax_cross_entropy_with_integer_labels on materialized logits. "
      "Each case in a fresh subprocess: median of "
      f"{repeats} calls after compilation, and the subprocess's peak RSS. {note}",
      "",
      H.table(headers, rows),
      "",
      "Sampled softmax (log-uniform proposal) against the full softmax loss by linear_cross_entropy "
      f"({1 if not quick else repeats} timed call(s)); materialized logits would need "
      f"{H.fmt_bytes(4 * ns * vs)}.",
      "",
      H.table(headers, rows2),
    ]
  )
