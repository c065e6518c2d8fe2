"""Forward mode of the chunked attention path, and reverse mode as the transpose of its tangent pass.

B=1, N=8, H=64, float32, chunked path with its default blocks. The chunked
kernel has one custom JVP; reverse mode is JAX's transpose of its tangent
pass. The reference, built here in the same process, is the hand-written
custom VJP the kernel had before (the same forward, and the FlashAttention
backward pass that the ring still uses), swapped in for the kernel. Times are
medians of wall time and of process CPU time (``time.process_time``, more
robust on a shared machine); temp memory is XLA's ``memory_analysis`` of the
compiled gradient.
"""

from __future__ import annotations

import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from benchmarks._harness import block, fmt_bytes, fmt_time, table
from jaxsoft import _chunked_attention as chunked
from jaxsoft.attention import scaled_dot_product_attention

N, H = 8, 64


@functools.partial(jax.custom_vjp, nondiff_argnums=(10, 11))
def _vjp_kernel(q, k, v, bias, mask, sink, st, dropout_key, key_ranges, query_ranges, plan, rate):
  return chunked.forward(q, k, v, bias, mask, sink, st, dropout_key, key_ranges, plan, rate)


def _vjp_kernel_fwd(q, k, v, bias, mask, sink, st, dropout_key, key_ranges, query_ranges, plan, rate):
  value = lambda a: None if a is None else a.value
  args = [value(a) for a in (q, k, v, bias, mask, sink)]
  st, dropout_key = jax.tree.map(value, st, is_leaf=lambda a: a is None), value(dropout_key)
  out, lse = chunked.forward(*args, st, dropout_key, key_ranges.value, plan, rate)
  flag = () if (bias is not None and bias.perturbed) else None
  return (out, lse), (*args, st, dropout_key, query_ranges.value, out, lse, flag)


def _vjp_kernel_bwd(plan, rate, res, cotangents):
  *args, st, dropout_key, query_ranges, out, lse, flag = res
  g, g_lse = (None if isinstance(c, SymbolicZero) else c for c in cotangents)
  g = jnp.zeros_like(out) if g is None else g
  q, k, v, bias, mask, sink = args
  delta = chunked.row_delta(out, g, g_lse)
  dq, dk, dv, dbias = chunked.backward(
    q, k, v, bias, mask, st, dropout_key, query_ranges, lse, delta, g, flag is not None, plan, rate
  )
  dsink = None if sink is None else chunked.sink_grad(sink, lse, delta)
  return dq, dk, dv, dbias, None, dsink, None, None, None, None


_vjp_kernel.defvjp(_vjp_kernel_fwd, _vjp_kernel_bwd, symbolic_zeros=True)
_KERNELS = {"custom JVP (transposed)": chunked._kernel, "custom VJP (hand-written)": _vjp_kernel}


def _compiled_grad(kernel, args, opts):
  def loss(q, k, v):
    return jnp.sum(scaled_dot_product_attention(q, k, v, implementation="chunked", **opts))

  saved = chunked._kernel
  chunked._kernel = kernel  # traced now, so the swap holds for this compile only
  try:
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(*args).compile()
  finally:
    chunked._kernel = saved


def _times(fns, args, repeats):
  """{name: (median wall, median CPU)}, the functions interleaved so that load hits them alike."""
  for f in fns.values():
    block(f(*args))
  wall, cpu = {n: [] for n in fns}, {n: [] for n in fns}
  for _ in range(repeats):
    for n, f in fns.items():
      w, c = time.perf_counter(), time.process_time()
      block(f(*args))
      wall[n].append(time.perf_counter() - w)
      cpu[n].append(time.process_time() - c)
  return {n: (statistics.median(wall[n]), statistics.median(cpu[n])) for n in fns}


def _inputs(T, heads=N):
  rng = np.random.default_rng(0)
  return tuple(jnp.asarray(rng.normal(size=(1, T, heads, H)), jnp.float32) for _ in range(3))


def run(quick: bool) -> str:
  T = 1024 if quick else 4096
  T_window = 2048 if quick else 16384
  repeats = 3 if quick else 5
  cases = [
    (T, "causal", dict(is_causal=True)),
    (T, "not causal", dict()),
    (T_window, "causal, window (256, 0)", dict(is_causal=True, local_window_size=(256, 0))),
  ]
  rows = []
  for length, name, opts in cases:
    args = _inputs(length)
    fns = {k: _compiled_grad(kernel, args, opts) for k, kernel in _KERNELS.items()}
    t = _times(fns, args, repeats)
    (jw, jc), (vw, vc) = t.values()
    rows.append(
      [
        length,
        name,
        fmt_time(vw),
        fmt_time(jw),
        f"{jw / vw:.2f}",
        f"{vc:.2f} s",
        f"{jc:.2f} s",
        f"{jc / vc:.2f}",
      ]
    )
  T_mem = 4096 if quick else 16384
  mem_args = tuple(jax.ShapeDtypeStruct((1, T_mem, 1, H), jnp.float32) for _ in range(3))
  mem = {
    k: _compiled_grad(kernel, mem_args, dict(is_causal=True)).memory_analysis().temp_size_in_bytes
    for k, kernel in _KERNELS.items()
  }
  args = _inputs(T)
  attend = lambda q, k, v: scaled_dot_product_attention(q, k, v, implementation="chunked", is_causal=True)
  forward = jax.jit(attend).lower(*args).compile()
  jvp = jax.jit(lambda p, t: jax.jvp(attend, p, t)).lower(args, args).compile()
  ft = _times({"forward": forward, "jvp": lambda *a: jvp(a, a)}, args, repeats)
  out = [
    "## Forward mode of chunked attention, and reverse mode as its transpose",
    "",
    f"B=1, N={N}, H={H}, float32, value_and_grad w.r.t. q, k, v; default blocks (256, 512). "
    "Ratio: the custom JVP's transposed tangent pass / the hand-written custom VJP, in one process.",
    "",
    table(
      [
        "T=S",
        "case",
        "custom VJP wall",
        "custom JVP wall",
        "ratio",
        "custom VJP CPU",
        "custom JVP CPU",
        "ratio",
      ],
      rows,
    ),
    "",
    f"XLA temp memory of the compiled gradient, causal, N=1, T=S={T_mem}: custom VJP "
    f"{fmt_bytes(mem['custom VJP (hand-written)'])}, custom JVP {fmt_bytes(mem['custom JVP (transposed)'])}.",
    "",
    f"Forward mode, causal, T=S={T}: forward {fmt_time(ft['forward'][0])} ({ft['forward'][1]:.2f} s CPU), "
    f"jax.jvp {fmt_time(ft['jvp'][0])} ({ft['jvp'][1]:.2f} s CPU), "
    f"ratio {ft['jvp'][1] / ft['forward'][1]:.2f} (CPU).",
  ]
  return "\n".join(out)
