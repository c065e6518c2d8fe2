"""Softmax family and cross-entropy against jax.nn and optax, same process.

Rows: median time of jaxsoft vs the reference (ratio = ours / reference; <= 1
is as fast or faster), and achieved GB/s (bytes of the input read once and the
output written once, divided by the time) against two floors measured in the
same run: a NumPy copy (memory bandwidth) and a jitted ``x * 2`` (one read and
one freshly allocated write through XLA).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxsoft
from benchmarks._harness import fmt_time, median_time, table

SHAPES = [(4096, 32000), (65536, 1024)]
QUICK_SHAPES = [(256, 1000)]


def _floors(x, x_np, repeats):
  out = np.empty_like(x_np)
  t_copy = median_time(lambda: np.copyto(out, x_np), repeats=repeats)
  double = jax.jit(lambda a: a * 2)
  t_double = median_time(double, x, repeats=repeats)
  return t_copy, t_double


def run(quick: bool = False) -> str:
  shapes = QUICK_SHAPES if quick else SHAPES
  repeats = 3 if quick else 7
  rows, bw_rows = [], []
  for shape in shapes:
    key = jax.random.key(0)
    x = jax.random.normal(key, shape, jnp.float32) * 3
    labels = jax.random.randint(jax.random.key(1), shape[:1], 0, shape[1])
    nbytes = 2 * x.size * x.dtype.itemsize  # one read + one write
    t_copy, t_double = _floors(x, np.asarray(x), repeats)

    cases = {
      "softmax": (jax.jit(jaxsoft.softmax), jax.jit(jax.nn.softmax), (x,), "jax.nn.softmax"),
      "log_softmax": (jax.jit(jaxsoft.log_softmax), jax.jit(jax.nn.log_softmax), (x,), "jax.nn.log_softmax"),
      "cross_entropy": (
        jax.jit(lambda a, y: jaxsoft.cross_entropy(a, y)),
        jax.jit(lambda a, y: optax.softmax_cross_entropy_with_integer_labels(a, y).mean()),
        (x, labels),
        "optax CE (int labels)",
      ),
      "cross_entropy value_and_grad": (
        jax.jit(jax.value_and_grad(lambda a, y: jaxsoft.cross_entropy(a, y))),
        jax.jit(
          jax.value_and_grad(lambda a, y: optax.softmax_cross_entropy_with_integer_labels(a, y).mean())
        ),
        (x, labels),
        "optax CE (int labels)",
      ),
    }
    for name, (ours, ref, args, ref_name) in cases.items():
      # Interleave: ours, reference, ours again; keep the better of our two
      # medians so that drift in machine load does not favour either side.
      t_ours1 = median_time(ours, *args, repeats=repeats)
      t_ref = median_time(ref, *args, repeats=repeats)
      t_ours2 = median_time(ours, *args, repeats=repeats)
      t_ours = min(t_ours1, t_ours2)
      rows.append(
        [f"{name} {shape}", fmt_time(t_ours), f"{ref_name}: {fmt_time(t_ref)}", f"{t_ours / t_ref:.3f}"]
      )
      if name in ("softmax", "log_softmax"):
        bw_rows.append(
          [
            f"{name} {shape}",
            f"{nbytes / t_ours / 1e9:.1f}",
            f"{nbytes / t_ref / 1e9:.1f}",
            f"{nbytes / t_double / 1e9:.1f}",
            f"{nbytes / t_copy / 1e9:.1f}",
            f"{t_double / t_ours:.2f}",
            f"{t_double / t_ref:.2f}",
          ]
        )
  out = [
    "## Softmax family and cross-entropy (float32)",
    "",
    table(["case", "jaxsoft", "reference", "ratio (ours/ref)"], rows),
    "",
    "Throughput in GB/s (input read once + output written once) against the floors:",
    "",
    table(["case", "jaxsoft", "jax.nn", "jit x*2", "NumPy copy", "jaxsoft / x*2", "jax.nn / x*2"], bw_rows),
  ]
  return "\n".join(out)
