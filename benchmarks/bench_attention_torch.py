"""Attention against PyTorch's ``scaled_dot_product_attention`` on the CPU, in one process.

B=1, N=8, H=64, T=S=4096, float32: forward and forward+backward, causal and not,
jaxsoft's default path at this size (chunked) beside ``torch.nn.functional.
scaled_dot_product_attention`` with torch's default CPU threads. Each case is timed
in turn, round after round (the same load for both), and reported as the median
wall time and the median CPU time of the process. When torch is not importable the
section says so and has no rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._harness import interleaved_times, table
from jaxsoft.attention import scaled_dot_product_attention

B, N, H = 1, 8, 64


def _cases(T, causal):
  import torch
  import torch.nn.functional as F

  rng = np.random.default_rng(0)
  arrays = [rng.normal(size=(B, T, N, H)).astype(np.float32) for _ in range(3)]
  q, k, v = map(jnp.asarray, arrays)
  tq, tk, tv = (torch.from_numpy(a).transpose(1, 2).contiguous() for a in arrays)  # B N T H
  attend = lambda q, k, v: scaled_dot_product_attention(q, k, v, is_causal=causal)
  fwd = jax.jit(attend)
  both = jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(attend(q, k, v)), argnums=(0, 1, 2)))

  def torch_fwd():
    with torch.no_grad():
      F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)

  def torch_both():
    a, b, c = (x.detach().requires_grad_() for x in (tq, tk, tv))
    F.scaled_dot_product_attention(a, b, c, is_causal=causal).sum().backward()

  return {
    ("forward", "jaxsoft"): lambda: jax.block_until_ready(fwd(q, k, v)),
    ("forward", "torch"): torch_fwd,
    ("fwd+bwd", "jaxsoft"): lambda: jax.block_until_ready(both(q, k, v)),
    ("fwd+bwd", "torch"): torch_both,
  }


def run(quick: bool) -> str:
  try:
    import torch
  except ImportError:
    return "## Attention against PyTorch\n\nPyTorch is not importable here: no rows."
  T, rounds = (512, 3) if quick else (4096, 5)
  rows = []
  for causal in (False, True):
    med = interleaved_times(_cases(T, causal), rounds)
    for what in ("forward", "fwd+bwd"):
      (jw, jc), (tw, tc) = med[what, "jaxsoft"], med[what, "torch"]
      rows.append(
        [
          T,
          "yes" if causal else "no",
          what,
          f"{jw * 1e3:.0f} ms",
          f"{tw * 1e3:.0f} ms",
          f"{jw / tw:.2f}",
          f"{jc * 1e3:.0f} ms",
          f"{tc * 1e3:.0f} ms",
          f"{jc / tc:.2f}",
        ]
      )
  return "\n".join(
    [
      "## Attention against PyTorch",
      "",
      f"B={B}, N={N}, H={H}, float32, T=S, jaxsoft's default path (chunked here) against "
      f"torch {torch.__version__} `scaled_dot_product_attention` with {torch.get_num_threads()} "
      f"threads, in one process; medians of {rounds} rounds, the cases timed in turn.",
      "",
      table(
        [
          "T",
          "causal",
          "pass",
          "jaxsoft wall",
          "torch wall",
          "ratio",
          "jaxsoft CPU",
          "torch CPU",
          "ratio",
        ],
        rows,
      ),
    ]
  )
