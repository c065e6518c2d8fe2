"""Forward-mode differentiation of the chunked attention path (its custom JVP), and reverse mode through it.

The reference is float64 NumPy written here: the JVP of attention in closed
form over an explicitly built allowed set. The chunked path runs with small
blocks (``T = S = 40``, blocks of 8 or 16), so its block loops, the key-block
slots of a window and the skipped blocks are all exercised at a tiny size.
Every case of a test runs in one compiled function.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _grad_check import check_grads

from jaxsoft.attention import scaled_dot_product_attention as sdpa

IMPLS = ["dense", "chunked_jvp"]
B, T, S, N, K, H = 2, 40, 40, 2, 1, 4  # two query heads share one key head


# ----------------------------------------------------------------------------
# Reference


def ref_allowed(causal, window, q_len, kv_len, seg):
  """[B, T, S]: the allowed pairs, one condition at a time (top-left alignment)."""
  t, s = np.arange(T)[:, None], np.arange(S)[None, :]
  a = np.ones((B, T, S), bool)
  if causal:
    a &= s <= t
  if window is not None:
    a &= (t - window[0] <= s) & (s <= t + window[1])
  for b in range(B):
    a[b, q_len[b] :] = False
    a[b, :, kv_len[b] :] = False
    if seg is not None:
      a[b] &= seg[b][:, None] == seg[b][None, :]
  return a


def ref_jvp(primals, tangents, allowed, cap, with_sink):
  """(out, lse) and their tangents: q [B,T,N,H], k/v [B,S,K,H], bias [B,N,T,S], sink [N]."""
  (q, k, v, bias, sink), (tq, tk, tv, tbias, tsink) = (
    [np.asarray(x, np.float64) for x in xs] for xs in (primals, tangents)
  )
  k, v, tk, tv = (np.repeat(x, N // K, axis=2) for x in (k, v, tk, tv))
  scale = 1 / np.sqrt(H)
  r = np.einsum("btnh,bsnh->bnts", q, k) * scale
  dr = (np.einsum("btnh,bsnh->bnts", tq, k) + np.einsum("btnh,bsnh->bnts", q, tk)) * scale
  logits = cap * np.tanh(r / cap) + bias
  dlogits = dr * (1 - np.tanh(r / cap) ** 2) + tbias
  a = allowed[:, None]
  c = (sink if with_sink else np.full(N, -np.inf))[None, :, None, None]
  m = np.maximum(np.where(a, logits, -np.inf).max(-1, keepdims=True), c)
  m = np.where(np.isfinite(m), m, 0)
  e = np.where(a, np.exp(logits - m), 0)
  z = e.sum(-1, keepdims=True) + np.exp(c - m)
  w, w_sink = (np.where(z > 0, x / np.where(z > 0, z, 1), 0) for x in (e, np.exp(c - m)))
  lse = np.where(z > 0, np.log(np.where(z > 0, z, 1)) + m, -np.inf)[..., 0]
  dlse = (w * dlogits).sum(-1) + (w_sink[..., 0] * tsink[None, :, None] if with_sink else 0)
  dw = w * (dlogits - dlse[..., None])
  out = np.einsum("bnts,bsnh->btnh", w, v)
  dout = np.einsum("bnts,bsnh->btnh", dw, v) + np.einsum("bnts,bsnh->btnh", w, tv)
  t_first = lambda x: np.transpose(x, (0, 2, 1))
  return (out, t_first(lse)), (dout, t_first(dlse))


def _rand(rng, shape):
  return rng.normal(size=shape)


# ----------------------------------------------------------------------------
# Cases: every structure option at once

SEG = np.array([[0] * 13 + [1] * 27, [0] * 40])
Q_LEN, KV_LEN = np.array([40, 31]), np.array([36, 40])
CASES = {
  # A query block visits 3 of the 5 key blocks (the window's static slot count).
  "causal, window (6, 2), blocks of 8, sinks": dict(causal=True, window=(6, 2), blocks=(8, 8), sink=True),
  # Every key block is a slot; rows with nothing allowed have lse = -inf.
  "causal, no window, blocks (8, 16), no sink": dict(causal=True, window=None, blocks=(8, 16), sink=False),
}


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  shapes = ((B, T, N, H), (B, S, K, H), (B, S, K, H), (B, N, T, S), (N,))
  primals = tuple(jnp.asarray(_rand(rng, s)) for s in shapes)
  tangents = tuple(jnp.asarray(_rand(rng, s)) for s in shapes)
  return primals, tangents


def _attend(impl, c, q, k, v, bias, sink):
  r = sdpa(
    q,
    k,
    v,
    bias=bias,
    sink_logits=sink if c["sink"] else None,
    is_causal=c["causal"],
    local_window_size=c["window"],
    segment_ids=jnp.asarray(SEG),
    query_seq_lengths=jnp.asarray(Q_LEN),
    key_value_seq_lengths=jnp.asarray(KV_LEN),
    logit_soft_cap=2.0,
    return_residual=True,
    implementation=impl,
    block_size=c["blocks"],
  )
  return r.output, r.lse


@functools.cache
def _jvp_results():
  """{case: ((out, lse), (t_out, t_lse))} of the chunked path, in one compile (the dense path's JVP is
  plain autodiff, checked against finite differences in test_attention.py)."""
  with jax.enable_x64(True):
    primals, tangents = _inputs()

    @jax.jit
    def run(primals, tangents):
      return {
        name: jax.jvp(functools.partial(_attend, "chunked_jvp", c), primals, tangents)
        for name, c in CASES.items()
      }

    return jax.tree.map(np.asarray, run(primals, tangents)), primals, tangents


# ----------------------------------------------------------------------------
# Values


@pytest.mark.parametrize("case", list(CASES))
def test_jvp_matches_the_numpy_reference(case):
  results, primals, tangents = _jvp_results()
  c = CASES[case]
  allowed = ref_allowed(c["causal"], c["window"], Q_LEN, KV_LEN, SEG)
  (out, lse), (t_out, t_lse) = results[case]
  (want_out, want_lse), (want_t_out, want_t_lse) = ref_jvp(primals, tangents, allowed, 2.0, c["sink"])
  np.testing.assert_allclose(out, want_out, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(t_out, want_t_out, rtol=1e-9, atol=1e-11)
  np.testing.assert_array_equal(np.isfinite(lse), np.isfinite(want_lse))
  finite = np.isfinite(want_lse)
  assert not finite.all() or c["sink"]  # the case holds rows with nothing allowed
  np.testing.assert_allclose(lse[finite], want_lse[finite], rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(t_lse[finite], want_t_lse[finite], rtol=1e-9, atol=1e-11)
  # A padded query row outputs zeros, and so does its tangent.
  np.testing.assert_array_equal(t_out[1, Q_LEN[1] :], 0)


# ----------------------------------------------------------------------------
# Transforms: jacfwd, hessian, check_grads, vmap, dropout


def _small_case(seed):
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(_rand(rng, (1, 12, N, 3))) for _ in range(3))
  opts = dict(is_causal=True, local_window_size=(5, 1), logit_soft_cap=2.0, block_size=4)

  def attend(q, sink, impl):
    kv_len = jnp.array([10])
    return sdpa(q, k, v, sink_logits=sink, key_value_seq_lengths=kv_len, implementation=impl, **opts)

  return attend, q, jnp.asarray(_rand(rng, (N,)))


def test_jacfwd_matches_dense():
  with jax.enable_x64(True):
    attend, q, sink = _small_case(1)
    run = jax.jit(lambda q, sink: [jax.jacfwd(attend, (0, 1))(q, sink, i) for i in IMPLS])
    dense, chunked = run(q, sink)
    for a, b in zip(jax.tree.leaves(chunked), jax.tree.leaves(dense)):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_hessian_of_a_scalar_loss_matches_dense():
  # Forward over reverse: the JVP of the transposed tangent pass (also
  # checked, quickly, in test_attention_structure.py).
  with jax.enable_x64(True):
    attend, q, sink = _small_case(1)
    loss = lambda q, sink, impl: jnp.sum(jnp.sin(attend(q, sink, impl)))
    run = jax.jit(lambda q, sink: [jax.hessian(loss, (0, 1))(q, sink, i) for i in IMPLS])
    dense, chunked = run(q, sink)
    for a, b in zip(jax.tree.leaves(chunked), jax.tree.leaves(dense)):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("order", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_check_grads_in_both_modes(order):
  # Every input, bias and sinks included, against finite differences. Reverse
  # over reverse works too: the rule computes its primal through the kernel.
  with jax.enable_x64(True):
    rng = np.random.default_rng(2)
    q, k, v = (jnp.asarray(_rand(rng, (1, 9, 1, 3))) for _ in range(3))
    bias, sink = jnp.asarray(_rand(rng, (1, 1, 9, 9))), jnp.asarray(_rand(rng, (1,)))
    f = lambda q, k, v, bias, sink: sdpa(
      q, k, v, bias=bias, sink_logits=sink, is_causal=True, logit_soft_cap=3.0,
      implementation="chunked_jvp", block_size=4,
    )  # fmt: skip
    check_grads(f, (q, k, v, bias, sink), order, ("fwd", "rev"), eps=1e-4, atol=1e-5, rtol=1e-5)


def test_jvp_under_vmap_and_jit_and_with_dropout():
  with jax.enable_x64(True):
    rng = np.random.default_rng(3)
    q, k, v, tq, tk, tv = (jnp.asarray(_rand(rng, (3, 10, N, 3))) for _ in range(6))
    opts = dict(is_causal=True, block_size=4)
    f = lambda impl, q, k, v, **o: sdpa(q, k, v, implementation=impl, **opts, **o)
    jvp = lambda impl, **o: lambda *a: jax.jvp(functools.partial(f, impl, **o), a[:3], a[3:])
    key = jax.random.key(7)
    dropped = functools.partial(f, "chunked_jvp", dropout_rate=0.25, dropout_key=key)

    @jax.jit
    def run(*a):
      eps = 1e-6
      plus, minus = (dropped(*(x + s * eps * t for x, t in zip(a[:3], a[3:]))) for s in (1, -1))
      return (
        jax.vmap(jvp("chunked_jvp"))(*a),
        jvp("dense")(*a),
        jvp("chunked_jvp", dropout_rate=0.25, dropout_key=key)(*a),
        (plus - minus) / (2 * eps),
      )

    mapped, dense, (_, t_dropped), difference = run(q, k, v, tq, tk, tv)
    for a, b in zip(mapped, dense):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    # Dropout: the same bits in the tangent pass as in the forward pass.
    np.testing.assert_allclose(t_dropped, difference, rtol=1e-6, atol=1e-7)


def test_reverse_mode_keeps_memory_linear_in_the_length():
  # The transposed tangent pass recomputes each block's weights: the
  # compiled gradient holds no T x S array (nor one per visited block).
  T_long = 4096
  x = jax.ShapeDtypeStruct((1, T_long, 1, 8), jnp.float32)
  loss = lambda q, k, v: jnp.sum(sdpa(q, k, v, is_causal=True, implementation="chunked_jvp", block_size=256))
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp < T_long * T_long * 4 / 16, temp
