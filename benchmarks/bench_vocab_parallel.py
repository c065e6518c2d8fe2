"""Vocabulary-parallel ``linear_cross_entropy``: per-device memory on 1, 4 and 8 devices.

``value_and_grad`` (wrt hidden and weight) of ``jaxsoft.linear_cross_entropy``
with ``weight`` split by columns over a mesh axis of D simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``, in a fresh
subprocess), against the same loss on one device. Per-device memory is XLA's
own account of the compiled program (``compiled.memory_analysis()``, the
figures of one device of the SPMD program): arguments (hidden, the weight
shard, labels), outputs (the loss and both gradients) and temporaries.
The weight and its gradient should fall as 1/D; hidden and its gradient are
replicated and do not. The simulated devices share the machine's cores, so
times are a sanity check, not a speed-up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks import _harness as H

DEVICES = (1, 4, 8)


def _child(n: int, d: int, vocab: int, repeats: int) -> dict:
  """Runs in the 8-device subprocess: memory and time per device count."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  import jaxsoft

  ks = jax.random.split(jax.random.key(0), 3)
  h = jax.random.normal(ks[0], (n, d), jnp.float32)
  w = jax.random.normal(ks[1], (d, vocab), jnp.float32) * d**-0.5
  y = jax.random.randint(ks[2], (n,), 0, vocab)
  out = {}
  for devices in DEVICES:
    if devices == 1:
      loss = lambda h, w, y: jaxsoft.linear_cross_entropy(h, w, y)
      w_in = w
    else:
      mesh = Mesh(np.array(jax.devices()[:devices]), ("v",))
      loss = lambda h, w, y, mesh=mesh: jaxsoft.linear_cross_entropy(h, w, y, mesh=mesh, axis_name="v")
      w_in = jax.device_put(w, NamedSharding(mesh, PartitionSpec(None, "v")))
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    mem = step.lower(h, w_in, y).compile().memory_analysis()
    out[devices] = {
      "args": mem.argument_size_in_bytes,
      "outputs": mem.output_size_in_bytes,
      "temp": mem.temp_size_in_bytes,
      "time": H.median_time(step, h, w_in, y, repeats=repeats),
      "loss": float(step(h, w_in, y)[0]),
    }
  return out


def run(quick: bool = False) -> str:
  n, d, vocab = (256, 64, 4096) if quick else (2048, 256, 32768)
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
  args = json.dumps({"n": n, "d": d, "vocab": vocab, "repeats": 3})
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
    [sys.executable, "-m", "benchmarks.bench_vocab_parallel", args],
    capture_output=True,
    text=True,
    env=env,
    cwd=root,
  )
  if proc.returncode != 0:
    return f"## Vocabulary-parallel linear cross-entropy\n\nfailed: {proc.stderr.strip()[-500:]}"
  res = {int(k): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
  base = res[1]
  mib = lambda b: f"{b / 2**20:.2f} MiB"
  # Hidden and its gradient (replicated), the labels and the loss; the rest of
  # the arguments and outputs is the weight shard and its gradient.
  replicated = 2 * 4 * n * d + 4 * n + 4
  total = lambda r: r["args"] + r["outputs"] + r["temp"]
  rows = []
  for devices, r in res.items():
    weight_part = r["args"] + r["outputs"] - replicated
    rows.append(
      [
        devices,
        mib(weight_part),
        f"{weight_part / (base['args'] + base['outputs'] - replicated):.3f}",
        mib(replicated),
        mib(r["temp"]),
        mib(total(r)),
        f"{total(r) / total(base):.3f}",
        H.fmt_time(r["time"]),
        f"{abs(r['loss'] - base['loss']) / abs(base['loss']):.1e}",
      ]
    )
  headers = [
    "devices D",
    "weight + its gradient per device",
    "/ one device",
    "hidden + its gradient (replicated)",
    "temporaries",
    "total per device",
    "/ one device",
    "time fwd+bwd (median)",
    "loss rel. diff",
  ]
  return (
    f"## Vocabulary-parallel linear cross-entropy (N={n}, d={d}, V={vocab}, float32)\n\n"
    "value_and_grad wrt hidden and weight; D=1 is the single-device loss, D=4 and 8 split the weight "
    "over a mesh axis of simulated CPU devices (one process, shared cores: time is a sanity check). "
    "Memory: XLA's per-device account of the compiled program (`memory_analysis()`); the temporaries "
    "are the engine's token x vocabulary blocks, whose size does not depend on D.\n\n"
    + H.table(headers, rows)
  )


if __name__ == "__main__":
  print(json.dumps(_child(**json.loads(sys.argv[1]))))
