"""Context-parallel (ring) attention on 8 simulated CPU devices against single-device chunked attention.

B=1, N=8, H=64, float32, forward+backward, at the same total length T for
every row. Memory per device is XLA's own account of the compiled program
(``compiled.memory_analysis()``: arguments + outputs + temporaries, per
device for the partitioned program), so it does not depend on the machine's
load; this is the figure that matters here: it falls about as 1/D. Times
are medians in one process; the simulated devices share the machine's
cores, so a ring on D devices cannot be faster than one device here: time is
a sanity check (the ring's overhead), not a speed-up.

The measurements run in one fresh subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

N, H = 8, 64
DEVICES = (2, 4, 8)


def _measure(T: int, causal: bool, timed: bool, repeats: int) -> list[dict]:
  """Rows ``{devices, bytes, time}`` for the chunked path (devices 1) and the ring; run on 8 devices."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from benchmarks._harness import median_time
  from jaxsoft.attention import scaled_dot_product_attention

  rng = np.random.default_rng(0)
  qkv = [jnp.asarray(rng.normal(size=(1, T, N, H)), jnp.float32) for _ in range(3)]
  rows = []
  for D in (1,) + DEVICES:
    if D == 1:
      options, args = dict(implementation="chunked"), qkv
    else:
      mesh = jax.make_mesh((D,), ("seq",), devices=jax.devices()[:D])
      options = dict(implementation="ring", mesh=mesh)
      args = [jax.device_put(x, NamedSharding(mesh, P(None, "seq"))) for x in qkv]

    def loss(q, k, v, options=options):
      return jnp.sum(scaled_dot_product_attention(q, k, v, is_causal=causal, **options))

    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(*args).compile()
    m = compiled.memory_analysis()
    per_device = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    t = median_time(compiled, *args, repeats=repeats) if timed else None
    rows.append(dict(devices=D, bytes=per_device, time=t))
  return rows


def _child(cases: list) -> None:
  print("ROWS=" + json.dumps([_measure(*c) for c in cases]))


def _run_child(cases):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [sys.executable, "-m", "benchmarks.bench_context_parallel", json.dumps(cases)]
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=3600)
  for line in proc.stdout.splitlines():
    if line.startswith("ROWS="):
      return json.loads(line[5:])
  raise RuntimeError(f"the 8-device subprocess failed: {proc.stderr[-2000:]}")


def run(quick: bool = False) -> str:
  from benchmarks._harness import fmt_bytes, fmt_time, table

  lengths = (1024, 4096) if quick else (4096, 16384)
  timed_T = lengths[0]
  repeats = 3
  cases = [(T, causal, T == timed_T, repeats) for T in lengths for causal in (False, True)]
  results = _run_child(cases)
  out = [
    '## Context-parallel (ring) attention (`implementation="ring"`, 8 simulated CPU devices)\n',
    f"B=1, N={N}, H={H}, float32, forward+backward. Per-device memory: `compiled.memory_analysis()` "
    "(arguments + outputs + temporaries of the program each device runs); devices 1 is the "
    "single-device chunked path at the same length. Ratios are to it.\n",
  ]
  headers = ["T", "causal", "devices", "memory per device", "ratio", "time", "time ratio"]
  rows = []
  for (T, causal, _, _), case_rows in zip(cases, results):
    base = case_rows[0]
    for r in case_rows:
      ratio = f"{r['bytes'] / base['bytes']:.3f}"
      t = "" if r["time"] is None else fmt_time(r["time"])
      tr = "" if r["time"] is None else f"{r['time'] / base['time']:.2f}x"
      rows.append([T, causal, r["devices"], fmt_bytes(r["bytes"]), ratio, t, tr])
  out.append(table(headers, rows))
  out.append(
    "\nTimes only at the shorter length: the 8 simulated devices share the machine's cores, so the "
    "time ratio is the ring's overhead (transfers, merges, per-step bookkeeping), not a speed-up."
  )
  return "\n".join(out)


if __name__ == "__main__":
  if len(sys.argv) > 1 and sys.argv[1].startswith("["):  # the 8-device subprocess
    _child(json.loads(sys.argv[1]))
  else:
    print(run(quick="--quick" in sys.argv))
