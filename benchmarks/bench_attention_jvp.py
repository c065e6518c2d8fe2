"""Forward mode of chunked attention (``implementation="chunked_jvp"``), and what it costs reverse mode.

B=1, N=8, H=64, float32, default blocks. ``"chunked_jvp"`` has a custom JVP
(one more pass over the visited blocks); its reverse mode is JAX's transpose
of that pass. ``"chunked"`` has the hand-written custom VJP (FlashAttention's
backward pass). Both compiled in one process and timed in turn: medians of
wall and of process CPU time. Temp memory is XLA's ``memory_analysis`` of the
compiled gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._harness import fmt_bytes, interleaved_times, table
from jaxsoft.attention import scaled_dot_product_attention

N, H = 8, 64
IMPLS = ("chunked", "chunked_jvp")


def _inputs(T, heads=N):
  rng = np.random.default_rng(0)
  return tuple(jnp.asarray(rng.normal(size=(1, T, heads, H)), jnp.float32) for _ in range(3))


def _gradient(impl, args, opts):
  loss = lambda q, k, v: jnp.sum(scaled_dot_product_attention(q, k, v, implementation=impl, **opts))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(*args).compile()


def _bound(f, args):
  return lambda: f(*args)


def run(quick: bool) -> str:
  T, T_window, rounds = (1024, 2048, 3) if quick else (4096, 16384, 5)
  cases = [
    (T, "not causal", dict()),
    (T, "causal", dict(is_causal=True)),
    (T_window, "causal, window (256, 0)", dict(is_causal=True, local_window_size=(256, 0))),
  ]
  rows = []
  for length, name, opts in cases:
    args = _inputs(length)
    fns = {impl: _bound(_gradient(impl, args, opts), args) for impl in IMPLS}
    (vw, vc), (jw, jc) = (interleaved_times(fns, rounds)[i] for i in IMPLS)
    rows.append([length, name, f"{vw:.2f} s", f"{jw:.2f} s", f"{jw / vw:.2f}", f"{jc / vc:.2f}"])
  T_mem = 4096 if quick else 16384
  mem_args = tuple(jax.ShapeDtypeStruct((1, T_mem, 1, H), jnp.float32) for _ in range(3))
  mem = {i: _gradient(i, mem_args, dict(is_causal=True)).memory_analysis().temp_size_in_bytes for i in IMPLS}
  args = _inputs(T)
  attend = lambda q, k, v: scaled_dot_product_attention(q, k, v, implementation="chunked_jvp", is_causal=True)
  forward = jax.jit(attend).lower(*args).compile()
  jvp = jax.jit(lambda p, t: jax.jvp(attend, p, t)).lower(args, args).compile()
  ft = interleaved_times({"forward": _bound(forward, args), "jvp": _bound(jvp, (args, args))}, rounds)
  return "\n".join(
    [
      "## Forward mode of chunked attention, and reverse mode as its transpose",
      "",
      f"B=1, N={N}, H={H}, float32, value_and_grad w.r.t. q, k, v, default blocks. Ratio: "
      '"chunked_jvp" (the transposed tangent pass) over "chunked" (the hand-written backward), one process.',
      "",
      table(["T=S", "case", '"chunked"', '"chunked_jvp"', "wall ratio", "CPU ratio"], rows),
      "",
      f"XLA temp memory of the compiled gradient, causal, N=1, T=S={T_mem}: "
      f'"chunked" {fmt_bytes(mem["chunked"])}, "chunked_jvp" {fmt_bytes(mem["chunked_jvp"])}.',
      "",
      f"Forward mode, causal, T=S={T}: forward {ft['forward'][0]:.2f} s, jax.jvp {ft['jvp'][0]:.2f} s "
      f"(CPU ratio {ft['jvp'][1] / ft['forward'][1]:.2f}).",
    ]
  )
