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

import functools
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
      "",
      lm_options(quick),
    ]
  )


# ------------------------------------------------- language-model options (in process)


def _interleaved(cases, rounds):
  """Median seconds per case, timed in turn each round (``interleaved_times``), and compile seconds.

  ``cases`` maps a name to ``(function or compiled function, args)``; each is compiled once, up front.
  """
  import jax

  compiled, compile_s = {}, {}
  for name, (fn, args) in cases.items():
    t0 = time.perf_counter()
    compiled[name] = fn if isinstance(fn, jax.stages.Compiled) else jax.jit(fn).lower(*args).compile()
    compile_s[name] = time.perf_counter() - t0
  times = H.interleaved_times(
    {name: functools.partial(compiled[name], *args) for name, (_, args) in cases.items()}, rounds
  )
  return {name: wall for name, (wall, _) in times.items()}, compile_s


def lm_options(quick: bool) -> str:
  """Options overhead, bf16 operands, adaptive and sampled softmax: one process, ratios in it."""
  import jax
  import jax.numpy as jnp
  import optax

  import jaxsoft
  from jaxsoft import _vocab

  if quick:
    n, d, vocab, rounds = 128, 32, 2048, 3
    va, cutoffs, ns, vs, samples = 8192, [512, 2048], 256, 8192, 64
  else:
    n, d, vocab, rounds = 1024, 256, 16_384, 5
    va, cutoffs, ns, vs, samples = 65_536, [4096, 16_384], 2048, 65_536, 1024
  h, w, y = _inputs(n, d, vocab)
  vg = lambda f: jax.value_and_grad(f, argnums=(0, 1))
  lm = dict(z_loss=1e-4, logit_soft_cap=30.0)
  cases = {
    "optax (materialized logits)": (
      vg(lambda h, w: optax.softmax_cross_entropy_with_integer_labels(h @ w, y).mean()),
      (h, w),
    ),
    "jaxsoft": (vg(lambda h, w: jaxsoft.linear_cross_entropy(h, w, y)), (h, w)),
    "jaxsoft, z_loss + soft cap": (vg(lambda h, w: jaxsoft.linear_cross_entropy(h, w, y, **lm)), (h, w)),
    "jaxsoft, z_loss + soft cap + aux": (
      vg(lambda h, w: jaxsoft.linear_cross_entropy(h, w, y, return_aux=True, **lm)[0]),
      (h, w),
    ),
  }
  if _have_jax_cce():
    import jax_cce

    cce = vg(lambda h, w: jax_cce.linear_cross_entropy(h, w, y))
    cases["jax-cce (weight [V, d])"] = (cce, (h, jnp.asarray(w.T)))
  t, c = _interleaved(cases, rounds)
  rows = [[k, H.fmt_time(t[k]), f"{c[k]:.1f} s", f"{t[k] / t['jaxsoft']:.2f}x"] for k in cases]
  table_a = H.table(["value_and_grad", "median time", "compile", "time / jaxsoft"], rows)

  # bf16 hidden and weight: half operands with float32 accumulation vs upcast
  # operands (the switch is read at trace time: each variant compiles under its own).
  hb, wb = h.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  plain = vg(lambda h, w: jaxsoft.linear_cross_entropy(h, w, y))
  ref_loss, ref_g = jax.jit(plain)(hb.astype(jnp.float32), wb.astype(jnp.float32))
  key = jax.default_backend()
  saved = _vocab.UPCAST_HALF_OPERANDS.get(key, False)
  variants, errors = {}, {}
  rel = lambda a, b: float(jnp.max(jnp.abs(a.astype(jnp.float32) - b)) / jnp.max(jnp.abs(b)))
  try:
    for upcast in (False, True):
      _vocab.UPCAST_HALF_OPERANDS[key] = upcast
      name = "upcast to float32" if upcast else "bf16 operands, float32 accumulation"
      # A fresh function: jit's trace cache would otherwise hand back the other variant.
      compiled = jax.jit(vg(lambda h, w: jaxsoft.linear_cross_entropy(h, w, y))).lower(hb, wb).compile()
      variants[name] = (compiled, (hb, wb))
      loss, g = compiled(hb, wb)
      errors[name] = (
        f"{abs(float(loss) - float(ref_loss)) / abs(float(ref_loss)):.1e}",
        f"{rel(g[0], ref_g[0]):.1e} / {rel(g[1], ref_g[1]):.1e}",
      )
  finally:
    _vocab.UPCAST_HALF_OPERANDS[key] = saved
  variants["float32 inputs"] = (jax.jit(plain).lower(h, w).compile(), (h, w))
  errors["float32 inputs"] = ("-", "-")
  t, _ = _interleaved(variants, rounds)
  rows = [[k, H.fmt_time(t[k]), f"{t[k] / t['float32 inputs']:.2f}x", *errors[k]] for k in variants]
  table_b = H.table(
    [
      "bf16 hidden and weight",
      "median time",
      "time / float32",
      "loss rel. error",
      "grad rel. error (hidden / weight)",
    ],
    rows,
  )

  # Adaptive softmax against the full loss at the same vocabulary.
  ha, wa, ya = _inputs(n, d, va)
  params = jaxsoft.init_adaptive_softmax(jax.random.key(0), d, va, cutoffs)
  full = "linear_cross_entropy (full softmax)"
  adaptive = f"adaptive_log_softmax, cutoffs {cutoffs}"
  t, _ = _interleaved(
    {
      full: (vg(lambda h, w: jaxsoft.linear_cross_entropy(h, w, ya)), (ha, wa)),
      adaptive: (
        vg(lambda h, p: jaxsoft.adaptive_log_softmax(h, p, ya, cutoffs=cutoffs).loss),
        (ha, params),
      ),
    },
    max(rounds - 2, 1),
  )
  table_c = H.table(
    ["value_and_grad", "median time", "speedup vs full"],
    [[k, H.fmt_time(t[k]), f"{t[full] / t[k]:.2f}x"] for k in (full, adaptive)],
  )

  # Sampled softmax with and without the aux outputs.
  hs, ws, ys = _inputs(ns, d, vs)
  key = jax.random.key(1)
  sampled = lambda aux: (
    lambda h, w: jaxsoft.sampled_softmax_cross_entropy(h, w, ys, key, num_samples=samples, return_aux=aux)
  )
  t, _ = _interleaved(
    {
      "return_aux=False": (vg(sampled(False)), (hs, ws)),
      "return_aux=True": (vg(lambda h, w: sampled(True)(h, w)[0]), (hs, ws)),
    },
    rounds,
  )
  table_d = H.table(
    ["sampled softmax value_and_grad", "median time", "time / without aux"],
    [[k, H.fmt_time(t[k]), f"{t[k] / t['return_aux=False']:.2f}x"] for k in t],
  )

  return "\n".join(
    [
      "## Language-model options of the vocabulary losses (value_and_grad wrt hidden and weight)",
      "",
      f"One process; the cases of each table are timed in turn, {rounds} rounds, medians after "
      f"compilation; backend {jax.default_backend()}. Options: N={n}, d={d}, V={vocab}, float32 "
      "(z_loss=1e-4, soft cap 30).",
      "",
      table_a,
      "",
      "bf16 at the same sizes; errors against the float32 computation on the same (bf16-rounded) inputs "
      "(the loss is returned in bf16: its rounding is 2^-8 = 3.9e-3 relative).",
      "",
      table_b,
      "",
      f"Adaptive softmax: N={n}, d={d}, V={va}, div_value=4.",
      "",
      table_c,
      "",
      f"Sampled softmax: N={ns}, d={d}, V={vs}, {samples} samples.",
      "",
      table_d,
    ]
  )


if __name__ == "__main__":
  import sys

  print(lm_options("--quick" in sys.argv))
