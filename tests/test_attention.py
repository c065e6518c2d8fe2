"""Tests for jaxsoft.attention against a float64 NumPy reference written here."""

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from jax.test_util import check_grads

from jaxsoft.attention import (
  AttentionResult,
  init_multi_head_attention,
  multi_head_attention,
)
from jaxsoft.attention import (
  scaled_dot_product_attention as sdpa_eager,
)

IMPLS = ["dense", "chunked"]
# Jitted once per configuration: far cheaper than compiling every primitive
# eagerly; test_jit_vmap_grad compares it with the eager function.
sdpa = jax.jit(
  sdpa_eager,
  static_argnames=("is_causal", "scale", "dropout_rate", "return_weights", "implementation", "block_size"),
)


# ----------------------------------------------------------------------------
# Independent float64 NumPy reference (forward and backward)


def _allowed(batch, N, T, S, mask, causal):
  a = np.ones(batch + (N, T, S), bool)
  if mask is not None:
    a = a & np.asarray(mask)
  if causal:
    a = a & (np.arange(T)[:, None] >= np.arange(S)[None, :])
  return a


def ref_forward(q, k, v, bias=None, mask=None, causal=False, scale=None):
  """Returns (out, weights, logits) in float64; fully masked rows give zeros."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  *batch, T, N, H = q.shape
  S, K = k.shape[-3], k.shape[-2]
  kr, vr = np.repeat(k, N // K, axis=-2), np.repeat(v, N // K, axis=-2)
  scale = 1 / np.sqrt(H) if scale is None else scale
  logits = np.einsum("...tnh,...snh->...nts", q, kr) * scale
  if bias is not None:
    logits = logits + np.asarray(bias, np.float64)
  logits = np.where(_allowed(tuple(batch), N, T, S, mask, causal), logits, -np.inf)
  m = logits.max(-1, keepdims=True)
  m = np.where(np.isfinite(m), m, 0.0)
  e = np.exp(logits - m)
  tot = e.sum(-1, keepdims=True)
  w = e / np.where(tot > 0, tot, 1.0)
  return np.einsum("...nts,...snh->...tnh", w, vr), w


def ref_backward(q, k, v, cot, bias=None, mask=None, causal=False, scale=None):
  """Gradients of sum(out * cot) with respect to q, k, v and the (full) bias."""
  q, k, v, cot = (np.asarray(x, np.float64) for x in (q, k, v, cot))
  *batch, T, N, H = q.shape
  K = k.shape[-2]
  G = N // K
  scale = 1 / np.sqrt(H) if scale is None else scale
  _, w = ref_forward(q, k, v, bias, mask, causal, scale)
  kr, vr = np.repeat(k, G, axis=-2), np.repeat(v, G, axis=-2)
  dw = np.einsum("...tnh,...snh->...nts", cot, vr)
  dlogits = w * (dw - (w * dw).sum(-1, keepdims=True))
  dq = np.einsum("...nts,...snh->...tnh", dlogits, kr) * scale
  dkr = np.einsum("...nts,...tnh->...snh", dlogits, q) * scale
  dvr = np.einsum("...nts,...tnh->...snh", w, cot)
  fold = lambda x: x.reshape(x.shape[:-2] + (K, G, x.shape[-1])).sum(-2)
  return dq, fold(dkr), fold(dvr), dlogits


def _rand(rng, shape, dtype=np.float32):
  return jnp.asarray(rng.normal(size=shape), dtype)


def _case(
  seed, batch, T, S, N, K, H, Hv=None, mask_shape=None, bias_shape=None, dtype=np.float32, neg_inf_bias=True
):
  rng = np.random.default_rng(seed)
  q = _rand(rng, batch + (T, N, H), dtype)
  k = _rand(rng, batch + (S, K, H), dtype)
  v = _rand(rng, batch + (S, K, Hv or H), dtype)
  mask = None if mask_shape is None else jnp.asarray(rng.random(mask_shape) > 0.3)
  bias = None
  if bias_shape is not None:
    b = rng.normal(size=bias_shape)
    if neg_inf_bias:
      b = np.where(rng.random(bias_shape) < 0.1, -np.inf, b)
    bias = jnp.asarray(b, dtype)
  return q, k, v, mask, bias


# (batch, T, S, N, K, H, Hv, mask_shape, bias_shape, causal)
CASES = [
  ((), 5, 5, 1, 1, 4, None, None, None, False),
  ((2,), 7, 11, 4, 2, 8, 6, (2, 1, 7, 11), None, False),  # GQA, T != S, own Hv
  ((2,), 13, 9, 4, 1, 8, None, None, (4, 13, 9), True),  # MQA, causal T > S, -inf bias
  ((2, 3), 9, 17, 2, 2, 4, None, (3, 1, 1, 17), (1, 2, 9, 17), True),  # two batch dims, causal T < S
  ((1,), 33, 40, 6, 3, 8, None, (33, 40), (6, 1, 40), False),  # bias per head and key
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_forward_matches_numpy_reference(impl, case):
  batch, T, S, N, K, H, Hv, ms, bs, causal = CASES[case]
  with jax.enable_x64(True):
    q, k, v, mask, bias = _case(case, batch, T, S, N, K, H, Hv, ms, bs, dtype=np.float64)
    out = sdpa(q, k, v, bias=bias, mask=mask, is_causal=causal, implementation=impl, block_size=(8, 4))
    want, _ = ref_forward(q, k, v, bias, mask, causal)
    assert out.dtype == jnp.float64 and out.shape == want.shape
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_gradients_match_numpy_reference(impl, case):
  batch, T, S, N, K, H, Hv, ms, bs, causal = CASES[case]
  with jax.enable_x64(True):
    q, k, v, mask, bias = _case(case, batch, T, S, N, K, H, Hv, ms, bs, dtype=np.float64)
    cot = _rand(np.random.default_rng(100 + case), q.shape[:-1] + (v.shape[-1],), np.float64)
    loss = lambda q, k, v, b: jnp.sum(
      cot * sdpa(q, k, v, bias=b, mask=mask, is_causal=causal, implementation=impl, block_size=(8, 4))
    )
    argnums = (0, 1, 2, 3) if bias is not None else (0, 1, 2)
    got = jax.grad(loss, argnums=argnums)(q, k, v, bias)
    want = ref_backward(q, k, v, cot, bias, mask, causal)
    for name, g, w in zip("qkv", got[:3], want[:3]):
      np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10, err_msg=name)
    if bias is not None:
      full = np.broadcast_to(want[3], want[3].shape)
      axes = tuple(range(full.ndim - bias.ndim)) + tuple(
        full.ndim - bias.ndim + a for a, n in enumerate(bias.shape) if n == 1
      )
      np.testing.assert_allclose(
        got[3], full.sum(axes).reshape(bias.shape) if axes else full, rtol=1e-10, atol=1e-10, err_msg="bias"
      )
      assert not np.isnan(np.asarray(got[3])).any()


# ----------------------------------------------------------------------------
# Chunked equals dense in float32, forward and backward


_chunk_fwd = sdpa


@jax.jit
def _grads_both(q, k, v, bias, mask, cot):
  def grads(impl, block):
    f = lambda q, k, v, b: jnp.sum(
      cot * sdpa(q, k, v, bias=b, mask=mask, is_causal=True, implementation=impl, block_size=block)
    )
    return jax.grad(f, argnums=(0, 1, 2, 3))(q, k, v, bias)

  return grads("dense", None), grads("chunked", (16, 16)), grads("chunked", (24, 40))


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)


@pytest.mark.parametrize("block", [(16, 16), (24, 40), (64, 128), 7])
@pytest.mark.parametrize("causal", [False, True])
def test_chunked_equals_dense_forward(block, causal):
  q, k, v, mask, bias = _case(1, (2,), 64, 80, 4, 2, 16, None, (2, 1, 64, 80), (4, 64, 80))
  dense = _chunk_fwd(q, k, v, bias=bias, mask=mask, is_causal=causal, implementation="dense")
  chunked = _chunk_fwd(
    q, k, v, bias=bias, mask=mask, is_causal=causal, implementation="chunked", block_size=block
  )
  assert _rel(chunked, dense) <= 1e-5


def test_chunked_equals_dense_backward():
  # Lengths 64 and 80: block 16 divides both; blocks (24, 40) leave a ragged query block.
  q, k, v, mask, bias = _case(2, (2,), 64, 80, 4, 2, 16, None, (2, 1, 64, 80), (4, 64, 80))
  cot = _rand(np.random.default_rng(3), q.shape)
  dense, *chunked = _grads_both(q, k, v, bias, mask, cot)
  for c in chunked:
    for name, gc, gd in zip(["q", "k", "v", "bias"], c, dense):
      assert _rel(gc, gd) <= 1e-4, name


def test_agrees_with_jax_nn_where_every_row_has_a_key():
  q, k, v, _, _ = _case(4, (2,), 24, 24, 4, 2, 8)
  rng = np.random.default_rng(5)
  mask = rng.random((2, 4, 24, 24)) > 0.5
  mask[..., 0] = True
  bias = _rand(rng, (1, 4, 24, 24))
  for causal in (False, True):
    want = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=jnp.asarray(mask), is_causal=causal)
    for impl in IMPLS:
      got = sdpa(
        q, k, v, bias=bias, mask=jnp.asarray(mask), is_causal=causal, implementation=impl, block_size=8
      )
      np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


# ----------------------------------------------------------------------------
# Edge cases: fully masked rows, dtypes, weights, dropout


@pytest.mark.parametrize("impl", IMPLS)
def test_fully_masked_rows_give_zero_output_and_zero_gradients(impl):
  q, k, v, _, _ = _case(6, (), 6, 10, 2, 2, 4)
  mask = np.ones((2, 6, 10), bool)
  mask[:, 1] = False  # row 1: every key masked
  bias = np.zeros((2, 6, 10), np.float32)
  bias[:, 4] = -np.inf  # row 4: every key at -inf
  mask, bias = jnp.asarray(mask), jnp.asarray(bias)
  f = lambda q, k, v, b: sdpa(q, k, v, bias=b, mask=mask, implementation=impl, block_size=4)
  out = f(q, k, v, bias)
  assert not np.isnan(np.asarray(out)).any()
  np.testing.assert_array_equal(out[1], 0.0)
  np.testing.assert_array_equal(out[4], 0.0)
  cot = jnp.zeros_like(out).at[jnp.array([1, 4])].set(1.0)  # only the dead rows matter
  grads = jax.grad(lambda *a: jnp.sum(cot * f(*a)), argnums=(0, 1, 2, 3))(q, k, v, bias)
  for g in grads:
    assert not np.isnan(np.asarray(g)).any()
    np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("impl", IMPLS)
def test_everything_masked_is_zero_not_nan(impl):
  q, k, v, _, _ = _case(7, (1,), 4, 3, 2, 1, 4)
  mask = jnp.zeros((1, 2, 4, 3), bool)
  out, grad = jax.value_and_grad(lambda q: jnp.sum(sdpa(q, k, v, mask=mask, implementation=impl)))(q)
  assert out == 0.0
  np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_computes_in_float32(impl, dtype):
  q, k, v, mask, _ = _case(8, (2,), 20, 20, 2, 2, 8, mask_shape=(2, 1, 20, 20))
  out = sdpa(
    q.astype(dtype),
    k.astype(dtype),
    v.astype(dtype),
    mask=mask,
    is_causal=True,
    implementation=impl,
    block_size=8,
  )
  assert out.dtype == dtype
  want, _ = ref_forward(q.astype(dtype), k.astype(dtype), v.astype(dtype), None, mask, True)
  np.testing.assert_allclose(np.asarray(out, np.float64), want, atol=2e-2, rtol=2e-2)


def test_return_weights():
  q, k, v, mask, bias = _case(9, (3,), 5, 7, 4, 2, 8, None, (3, 1, 5, 7), (4, 5, 7))
  res = sdpa(q, k, v, bias=bias, mask=mask, is_causal=True, return_weights=True)
  assert isinstance(res, AttentionResult)
  out, w = res
  want_out, want_w = ref_forward(q, k, v, bias, mask, True)
  assert w.shape == (3, 4, 5, 7)
  np.testing.assert_allclose(w, want_w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)


def test_custom_scale():
  q, k, v, _, _ = _case(10, (), 6, 6, 2, 2, 4)
  for impl in IMPLS:
    np.testing.assert_allclose(
      sdpa(q, k, v, scale=0.3, implementation=impl), ref_forward(q, k, v, scale=0.3)[0], rtol=1e-5, atol=1e-6
    )


def test_dropout_dense_weights():
  q, k, v, _, _ = _case(11, (1,), 16, 16, 2, 2, 4)
  rate = 0.25
  _, w = sdpa(q, k, v, return_weights=True)
  _, wd = sdpa(q, k, v, return_weights=True, dropout_rate=rate, dropout_key=jax.random.key(0))
  w, wd = np.asarray(w), np.asarray(wd)
  kept = wd != 0
  np.testing.assert_allclose(wd[kept], w[kept] / (1 - rate), rtol=1e-5)
  assert abs((~kept).mean() - rate) < 0.08


@pytest.mark.parametrize("impl", IMPLS)
def test_dropout_is_deterministic_unbiased_and_differentiable(impl):
  with jax.enable_x64(True):
    q, k, v, _, _ = _case(12, (), 8, 12, 2, 1, 4, dtype=np.float64)
    f = lambda q, k, v, key: sdpa(
      q, k, v, dropout_rate=0.5, dropout_key=key, is_causal=True, implementation=impl, block_size=4
    )
    key = jax.random.key(1)
    np.testing.assert_array_equal(f(q, k, v, key), f(q, k, v, key))
    assert not np.allclose(f(q, k, v, key), f(q, k, v, jax.random.key(2)))
    draws = np.asarray(jax.vmap(lambda kk: f(q, k, v, kk))(jax.random.split(key, 400)))
    # Unbiased: the mean over draws is within 4.5 standard errors of no dropout.
    stderr = draws.std(0) / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(0) - ref_forward(q, k, v, causal=True)[0]) <= 4.5 * stderr + 1e-9)
    check_grads(lambda q, k, v: f(q, k, v, key), (q, k, v), order=1, modes=["rev"])


def test_implementation_none_picks_a_path_and_agrees():
  q, k, v, _, _ = _case(13, (1,), 40, 40, 2, 2, 8)
  np.testing.assert_allclose(
    sdpa(q, k, v, is_causal=True),
    sdpa(q, k, v, is_causal=True, implementation="chunked", block_size=16),
    rtol=1e-5,
    atol=1e-6,
  )


# ----------------------------------------------------------------------------
# Transforms


@pytest.mark.parametrize("impl", IMPLS)
def test_jit_vmap_grad(impl):
  q, k, v, mask, bias = _case(14, (3,), 10, 12, 4, 2, 8, None, (3, 1, 10, 12), (4, 10, 12))
  f = lambda q, k, v, b, m: sdpa_eager(
    q, k, v, bias=b, mask=m, is_causal=True, implementation=impl, block_size=(4, 8)
  )
  eager = f(q, k, v, bias, mask)
  np.testing.assert_allclose(jax.jit(f)(q, k, v, bias, mask), eager, rtol=1e-5, atol=1e-6)
  # vmap over the batch of q, k, v and mask (bias shared) equals the batched call.
  vm = jax.vmap(f, in_axes=(0, 0, 0, None, 0))(q, k, v, bias, mask)
  np.testing.assert_allclose(vm, eager, rtol=1e-5, atol=1e-6)
  loss = lambda *a: jnp.sum(jnp.tanh(f(*a)))
  g = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(q, k, v, bias, mask)
  g_vm = jax.vmap(jax.grad(loss, argnums=(0, 1, 2, 3)), in_axes=(0, 0, 0, None, 0))(q, k, v, bias, mask)
  for a, b in zip(g[:3], g_vm[:3]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(g[3], g_vm[3].sum(0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_check_grads(impl):
  with jax.enable_x64(True):
    q, k, v, mask, bias = _case(
      15, (2,), 6, 9, 2, 1, 4, None, (2, 1, 6, 9), (2, 6, 9), dtype=np.float64, neg_inf_bias=False
    )
    f = lambda q, k, v, b: sdpa(
      q, k, v, bias=b, mask=mask, is_causal=True, implementation=impl, block_size=(4, 4)
    )
    check_grads(f, (q, k, v, bias), order=1, modes=["rev"])
    check_grads(f, (q, k, v, bias), order=1, modes=["fwd"]) if impl == "dense" else None


@settings(max_examples=8)
@given(
  T=st.integers(1, 24),
  S=st.integers(1, 24),
  K=st.sampled_from([1, 2]),
  G=st.sampled_from([1, 3]),
  bq=st.integers(1, 16),
  bk=st.integers(1, 16),
  causal=st.booleans(),
  seed=st.integers(0, 99),
)
def test_property_chunked_equals_reference(T, S, K, G, bq, bk, causal, seed):
  with jax.enable_x64(True):
    q, k, v, mask, _ = _case(seed, (1,), T, S, K * G, K, 4, None, (1, 1, T, S), dtype=np.float64)
    got = sdpa(q, k, v, mask=mask, is_causal=causal, implementation="chunked", block_size=(bq, bk))
    np.testing.assert_allclose(got, ref_forward(q, k, v, None, mask, causal)[0], rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------
# Errors


def _qkv(T=4, S=5, N=4, K=2, H=8):
  return jnp.ones((2, T, N, H)), jnp.ones((2, S, K, H)), jnp.ones((2, S, K, H))


@pytest.mark.parametrize(
  "kwargs, exc, match",
  [
    (dict(key=jnp.ones((2, 5, 2, 6))), ValueError, "key"),  # head dims differ
    (dict(key=jnp.ones((2, 5, 3, 8)), value=jnp.ones((2, 5, 3, 8))), ValueError, "key"),  # N % K
    (dict(value=jnp.ones((2, 6, 2, 8))), ValueError, "value"),
    (dict(key=jnp.ones((2, 5, 2, 8), jnp.bfloat16)), TypeError, "key"),
    (dict(query=jnp.ones((2, 4, 4, 8), jnp.int32)), TypeError, "query"),
    (dict(query=jnp.ones((4, 8))), ValueError, "query"),
    (dict(mask=jnp.ones((3, 4, 5), bool)), ValueError, "mask"),  # cannot broadcast
    (dict(mask=jnp.ones((4, 5))), TypeError, "mask"),  # not boolean
    (dict(bias=jnp.ones((2, 4, 4, 6))), ValueError, "bias"),
    (dict(dropout_rate=0.1), ValueError, "dropout_key"),
    (dict(dropout_rate=1.0, dropout_key=jax.random.key(0)), ValueError, "dropout_rate"),
    (dict(implementation="flash"), ValueError, "implementation"),
    (dict(implementation="chunked", return_weights=True), ValueError, "return_weights"),
    (dict(block_size=0), ValueError, "block_size"),
    (dict(block_size=(8, 8, 8)), ValueError, "block_size"),
    (dict(is_causal=jnp.array(True)), TypeError, "is_causal"),
  ],
)
def test_errors(kwargs, exc, match):
  q, k, v = _qkv()
  args = dict(query=q, key=k, value=v)
  args.update({n: kwargs.pop(n) for n in list(kwargs) if n in args})
  with pytest.raises(exc, match=match):
    sdpa_eager(args["query"], args["key"], args["value"], **kwargs)


def test_errors_raise_at_trace_time():
  q, k, v = _qkv()
  with pytest.raises(ValueError, match="mask"):
    jax.jit(lambda q, m: sdpa_eager(q, k, v, mask=m)).lower(q, jnp.ones((3, 4, 5), bool))


# ----------------------------------------------------------------------------
# Multi-head layer


mha = jax.jit(
  multi_head_attention, static_argnames=("is_causal", "dropout_rate", "return_weights", "implementation")
)


def _np_mha(params, x, context, mask=None, causal=False):
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  c = x if context is None else context
  q = np.einsum("...d,dnh->...nh", x, p["query"]["kernel"]) + p["query"]["bias"]
  k = np.einsum("...d,dnh->...nh", c, p["key"]["kernel"]) + p["key"]["bias"]
  v = np.einsum("...d,dnh->...nh", c, p["value"]["kernel"]) + p["value"]["bias"]
  attn, w = ref_forward(q, k, v, None, mask, causal)
  return np.einsum("...nh,nho->...o", attn, p["out"]["kernel"]) + p["out"]["bias"], w


def _params_with_random_biases(key, **kw):
  params = init_multi_head_attention(key, **kw)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(99), len(leaves))
  return jax.tree.unflatten(tree, [a + 0.1 * jax.random.normal(kk, a.shape) for a, kk in zip(leaves, keys)])


def test_init_shapes_and_scaling():
  params = init_multi_head_attention(jax.random.key(0), d_model=64, num_heads=8, num_kv_heads=2, d_out=32)
  shapes = jax.tree.map(lambda a: a.shape, params)
  assert shapes == {
    "query": {"kernel": (64, 8, 8), "bias": (8, 8)},
    "key": {"kernel": (64, 2, 8), "bias": (2, 8)},
    "value": {"kernel": (64, 2, 8), "bias": (2, 8)},
    "out": {"kernel": (8, 8, 32), "bias": (32,)},
  }
  np.testing.assert_allclose(np.var(params["query"]["kernel"]), 1 / 64, rtol=0.1)
  np.testing.assert_allclose(np.var(params["out"]["kernel"]), 1 / 64, rtol=0.1)
  assert (
    "bias" not in init_multi_head_attention(jax.random.key(0), d_model=8, num_heads=2, use_bias=False)["out"]
  )
  p16 = init_multi_head_attention(jax.random.key(0), d_model=8, num_heads=2, dtype=jnp.bfloat16)
  assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(p16))


def test_output_variance_is_about_one_for_peaked_attention():
  # With a causal mask, the first query sees one key, so its output is a
  # projected value: unit-variance inputs give unit-variance outputs.
  params = init_multi_head_attention(jax.random.key(0), d_model=128, num_heads=4, use_bias=False)
  x = jax.random.normal(jax.random.key(1), (512, 4, 128))
  out = mha(params, x, is_causal=True)
  assert 0.7 < float(jnp.var(out[:, 0])) < 1.3


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
def test_self_attention_matches_reference(num_kv_heads):
  params = _params_with_random_biases(
    jax.random.key(0), d_model=16, num_heads=4, num_kv_heads=num_kv_heads, d_out=6
  )
  x = jax.random.normal(jax.random.key(1), (2, 7, 16))
  mask = jnp.asarray(np.random.default_rng(0).random((2, 1, 7, 7)) > 0.3)
  want, want_w = _np_mha(params, x, None, mask, True)
  out, w = mha(params, x, mask=mask, is_causal=True, return_weights=True)
  assert out.shape == (2, 7, 6) and w.shape == (2, 4, 7, 7)
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(w, want_w, rtol=1e-4, atol=1e-6)
  chunked = mha(params, x, mask=mask, is_causal=True, implementation="chunked")
  np.testing.assert_allclose(chunked, want, rtol=1e-4, atol=1e-5)


def test_cross_attention_matches_reference():
  params = _params_with_random_biases(jax.random.key(2), d_model=12, num_heads=6, num_kv_heads=3, head_dim=5)
  x = jax.random.normal(jax.random.key(3), (3, 12))
  ctx = jax.random.normal(jax.random.key(4), (8, 12))
  out = mha(params, x, ctx)
  np.testing.assert_allclose(out, _np_mha(params, x, ctx)[0], rtol=1e-4, atol=1e-5)


def test_mha_transforms_and_dropout():
  params = init_multi_head_attention(jax.random.key(5), d_model=8, num_heads=2)
  x = jax.random.normal(jax.random.key(6), (4, 5, 8))
  loss = lambda p, x, key: jnp.sum(mha(p, x, is_causal=True, dropout_rate=0.1, dropout_key=key) ** 2)
  g = jax.jit(jax.grad(loss))(params, x, jax.random.key(7))
  assert jax.tree.structure(g) == jax.tree.structure(params)
  assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(g))
  per_example = jax.vmap(lambda xi: mha(params, xi))(x)
  np.testing.assert_allclose(per_example, mha(params, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "kwargs, exc, match",
  [
    (dict(d_model=8, num_heads=3), ValueError, "head_dim"),
    (dict(d_model=8, num_heads=4, num_kv_heads=3), ValueError, "num_kv_heads"),
    (dict(d_model=0, num_heads=1), ValueError, "d_model"),
    (dict(d_model=8, num_heads=2.0), TypeError, "num_heads"),
    (dict(d_model=8, num_heads=2, dtype=jnp.int32), TypeError, "dtype"),
  ],
)
def test_init_errors(kwargs, exc, match):
  with pytest.raises(exc, match=match):
    init_multi_head_attention(jax.random.key(0), **kwargs)


def test_mha_errors():
  params = init_multi_head_attention(jax.random.key(0), d_model=8, num_heads=2)
  with pytest.raises(ValueError, match="x"):
    multi_head_attention(params, jnp.ones((3, 7)))
  with pytest.raises(ValueError, match="context"):
    mha(params, jnp.ones((3, 8)), jnp.ones((3, 4)))
  with pytest.raises(TypeError, match="params"):
    multi_head_attention({"query": 1}, jnp.ones((3, 8)))
  with pytest.raises(ValueError, match="mask"):
    mha(params, jnp.ones((3, 8)), mask=jnp.ones((3, 4), bool))
