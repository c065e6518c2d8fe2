"""Tests for jaxsoft.attention against a float64 NumPy reference written here.

Compiling the chunked kernel costs seconds, so the cases of a test are
computed by one jitted function (cached, shared by its parametrized cases);
test_jit_vmap_grad compares jit with the eager function.
"""

import functools

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _grad_check import check_grads
from hypothesis import given, settings
from jax import lax

from jaxsoft.attention import (
  AttentionResult,
  init_multi_head_attention,
  multi_head_attention,
)
from jaxsoft.attention import (
  scaled_dot_product_attention as sdpa_eager,
)

IMPLS = ["dense", "chunked"]
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
  """Returns (out, weights) in float64; fully masked rows give zeros."""
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


def _out_and_grads(q, k, v, bias, mask, cot, **options):
  """The output and the gradients of sum(cot * out) w.r.t. q, k, v and bias (None without one)."""
  f = lambda q, k, v, b: sdpa_eager(q, k, v, bias=b, mask=mask, **options)
  out, vjp = jax.vjp(f, q, k, v, bias)
  return out, vjp(cot)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)


# ----------------------------------------------------------------------------
# Both implementations against the reference, forward and backward (float64)


# (batch, T, S, N, K, H, Hv, mask_shape, bias_shape, causal, scale)
CASES = [
  ((), 5, 5, 1, 1, 4, None, None, None, False, 0.3),  # a custom scale
  ((2,), 7, 11, 4, 2, 8, 6, (2, 1, 7, 11), None, False, None),  # GQA, T != S, own Hv
  ((2,), 13, 9, 4, 1, 8, None, None, (4, 13, 9), True, None),  # MQA, causal T > S, -inf bias
  ((2, 3), 9, 17, 2, 2, 4, None, (3, 1, 1, 17), (1, 2, 9, 17), True, None),  # two batch dims, causal T < S
  ((1,), 33, 40, 6, 3, 8, None, (33, 40), (6, 1, 40), False, None),  # bias per head and key
]


@functools.cache
def _reference_case(c):
  """NumPy float64 inputs (q, k, v, bias, mask, cotangent) of case c, and its options."""
  batch, T, S, N, K, H, Hv, ms, bs, causal, scale = CASES[c]
  with jax.enable_x64(True):
    q, k, v, mask, bias = _case(c, batch, T, S, N, K, H, Hv, ms, bs, dtype=np.float64)
    cot = _rand(np.random.default_rng(100 + c), q.shape[:-1] + (v.shape[-1],), np.float64)
    return jax.device_get((q, k, v, bias, mask, cot)), dict(causal=causal, scale=scale)


@functools.cache
def _reference_results(impl):
  """Output and gradients of every case, from one compiled function per implementation."""
  with jax.enable_x64(True):
    inputs, options = zip(*(_reference_case(c) for c in range(len(CASES))))

    @jax.jit
    def run(inputs):
      return [
        _out_and_grads(*args, is_causal=o["causal"], scale=o["scale"], implementation=impl, block_size=(8, 4))
        for args, o in zip(inputs, options)
      ]

    return jax.device_get(run(inputs))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_forward_matches_numpy_reference(impl, case):
  (q, k, v, bias, mask, _), o = _reference_case(case)
  out, _ = _reference_results(impl)[case]
  want, _ = ref_forward(q, k, v, bias, mask, o["causal"], o["scale"])
  assert out.dtype == np.float64 and out.shape == want.shape
  np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_gradients_match_numpy_reference(impl, case):
  (q, k, v, bias, mask, cot), o = _reference_case(case)
  _, got = _reference_results(impl)[case]
  want = ref_backward(q, k, v, cot, bias, mask, o["causal"], o["scale"])
  for name, g, w in zip("qkv", got[:3], want[:3]):
    np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10, err_msg=name)
  if bias is None:
    assert got[3] is None
  else:
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

# Lengths 64 and 80: block 16 divides both; (24, 40) leaves a ragged query
# block, (64, 128) is one block each way, 7 is ragged both ways. Gradients are
# compared under the causal mask, which skips blocks in both passes.
BLOCKS = [(16, 16), (24, 40), (64, 128), 7]
GRAD_BLOCKS = BLOCKS[:2]


@functools.cache
def _dense_and_chunked():
  """{("dense" or str(block), causal): (output, gradients or None)}, from one compiled function."""
  q, k, v, mask, bias = _case(2, (2,), 64, 80, 4, 2, 16, None, (2, 1, 64, 80), (4, 64, 80))
  cot = _rand(np.random.default_rng(3), q.shape)

  @jax.jit
  def run(q, k, v, bias, mask, cot):
    res = {}
    for causal in (False, True):
      opts = dict(is_causal=causal)
      res["dense", causal] = _out_and_grads(q, k, v, bias, mask, cot, implementation="dense", **opts)
      for block in BLOCKS:
        opts = dict(is_causal=causal, implementation="chunked", block_size=block)
        if causal and block in GRAD_BLOCKS:
          res[str(block), causal] = _out_and_grads(q, k, v, bias, mask, cot, **opts)
        else:
          res[str(block), causal] = (sdpa_eager(q, k, v, bias=bias, mask=mask, **opts), None)
    return res

  return jax.device_get(run(q, k, v, bias, mask, cot))


@pytest.mark.parametrize("block", BLOCKS, ids=str)
@pytest.mark.parametrize("causal", [False, True])
def test_chunked_equals_dense_forward(block, causal):
  res = _dense_and_chunked()
  assert _rel(res[str(block), causal][0], res["dense", causal][0]) <= 1e-5


@pytest.mark.parametrize("block", GRAD_BLOCKS, ids=str)
def test_chunked_equals_dense_backward(block):
  res = _dense_and_chunked()
  for name, gc, gd in zip(["q", "k", "v", "bias"], res[str(block), True][1], res["dense", True][1]):
    assert _rel(gc, gd) <= 1e-4, name


def test_agrees_with_jax_nn_where_every_row_has_a_key():
  q, k, v, _, _ = _case(4, (2,), 24, 24, 4, 2, 8)
  rng = np.random.default_rng(5)
  mask = rng.random((2, 4, 24, 24)) > 0.5
  mask[..., 0] = True
  mask = jnp.asarray(mask)
  bias = _rand(rng, (1, 4, 24, 24))

  @jax.jit
  def run(q, k, v, bias, mask):
    res = {}
    for causal in (False, True):
      res["jax.nn", causal] = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=causal)
      for impl in (*IMPLS, None):  # None: the implementation the dispatcher picks
        opts = dict(is_causal=causal, implementation=impl, block_size=8)
        res[str(impl), causal] = sdpa_eager(q, k, v, bias=bias, mask=mask, **opts)
    return res

  res = run(q, k, v, bias, mask)
  for causal in (False, True):
    for impl in (*IMPLS, None):
      np.testing.assert_allclose(res[str(impl), causal], res["jax.nn", causal], rtol=2e-5, atol=2e-6)


# ----------------------------------------------------------------------------
# Edge cases: rows with no allowed key, no keys at all, dtypes, weights, dropout


@functools.cache
def _masked_out_and_grads(impl):
  return jax.jit(functools.partial(_out_and_grads, implementation=impl, block_size=4))


@pytest.mark.parametrize("impl", IMPLS)
def test_fully_masked_rows_give_zero_output_and_zero_gradients(impl):
  q, k, v, _, _ = _case(6, (), 6, 10, 2, 2, 4)
  mask = np.ones((2, 6, 10), bool)
  mask[:, 1] = False  # row 1: every key masked
  bias = np.zeros((2, 6, 10), np.float32)
  bias[:, 4] = -np.inf  # row 4: every key at -inf
  cot = np.zeros(q.shape, np.float32)
  cot[np.array([1, 4])] = 1.0  # only the dead rows matter
  out, grads = _masked_out_and_grads(impl)(q, k, v, jnp.asarray(bias), jnp.asarray(mask), cot)
  assert not np.isnan(np.asarray(out)).any()
  np.testing.assert_array_equal(out[1], 0.0)
  np.testing.assert_array_equal(out[4], 0.0)
  for g in grads:
    assert not np.isnan(np.asarray(g)).any()
    np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("impl", IMPLS)
def test_everything_masked_is_zero_not_nan(impl):
  # The shapes of the test above: the same compiled function.
  q, k, v, _, _ = _case(7, (), 6, 10, 2, 2, 4)
  mask, bias = jnp.zeros((2, 6, 10), bool), jnp.zeros((2, 6, 10))
  out, grads = _masked_out_and_grads(impl)(q, k, v, bias, mask, jnp.ones(q.shape))
  np.testing.assert_array_equal(out, 0.0)
  for g in grads:
    np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("T, S", [(5, 0), (0, 6), (0, 0)])
def test_no_keys_or_no_queries(impl, T, S):
  # A query with no key outputs zeros and gets zero gradients; no query, an empty output.
  q, k, v, _, _ = _case(16, (2,), T, S, 4, 2, 8, Hv=3)
  mask = jnp.ones((2, 1, T, S), bool)
  opts = dict(is_causal=True, implementation=impl, block_size=4)
  out, grads = jax.jit(functools.partial(_out_and_grads, **opts))(q, k, v, None, mask, jnp.ones((2, T, 4, 3)))
  assert out.shape == (2, T, 4, 3) and out.dtype == jnp.float32
  np.testing.assert_array_equal(out, 0.0)
  for g, x in zip(grads, (q, k, v)):
    assert g.shape == x.shape
    np.testing.assert_array_equal(g, 0.0)
  eager = sdpa_eager(q, k, v, mask=mask, **opts)
  assert eager.shape == (2, T, 4, 3)
  np.testing.assert_array_equal(eager, 0.0)
  if impl == "dense":
    res = sdpa(q, k, v, return_weights=True)
    assert res.weights.shape == (2, 4, T, S)
    np.testing.assert_array_equal(res.output, 0.0)


@pytest.mark.parametrize("impl", IMPLS)
def test_half_precision_computes_in_float32(impl):
  q, k, v, mask, _ = _case(8, (2,), 20, 20, 2, 2, 8, mask_shape=(2, 1, 20, 20))
  dtypes = (jnp.bfloat16, jnp.float16)
  opts = dict(mask=mask, is_causal=True, implementation=impl, block_size=8)
  run = jax.jit(lambda q, k, v: [sdpa_eager(q.astype(d), k.astype(d), v.astype(d), **opts) for d in dtypes])
  for dtype, out in zip(dtypes, run(q, k, v)):
    assert out.dtype == dtype
    want, _ = ref_forward(q.astype(dtype), k.astype(dtype), v.astype(dtype), None, mask, True)
    np.testing.assert_allclose(np.asarray(out, np.float64), want, atol=2e-2, rtol=2e-2)


def test_return_weights():
  q, k, v, mask, bias = _case(9, (3,), 5, 7, 4, 2, 8, None, (3, 1, 5, 7), (4, 5, 7))
  res = sdpa(q, k, v, bias=bias, mask=mask, is_causal=True, return_weights=True)
  assert isinstance(res, AttentionResult) and res.lse is None
  out, w, _ = res
  want_out, want_w = ref_forward(q, k, v, bias, mask, True)
  assert w.shape == (3, 4, 5, 7)
  np.testing.assert_allclose(w, want_w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)


def test_dropout_dense_weights():
  q, k, v, _, _ = _case(11, (1,), 16, 16, 2, 2, 4)
  rate = 0.25
  wd = sdpa(q, k, v, return_weights=True, dropout_rate=rate, dropout_key=jax.random.key(0)).weights
  w, wd = ref_forward(q, k, v)[1], np.asarray(wd)
  kept = wd != 0
  np.testing.assert_allclose(wd[kept], w[kept] / (1 - rate), rtol=1e-5)
  assert abs((~kept).mean() - rate) < 0.08


@pytest.mark.parametrize("impl", IMPLS)
def test_dropout_is_deterministic_unbiased_and_differentiable(impl):
  with jax.enable_x64(True):
    q, k, v, _, _ = _case(12, (), 8, 12, 2, 1, 4, dtype=np.float64)
    f = lambda q, k, v, key: sdpa_eager(
      q, k, v, dropout_rate=0.5, dropout_key=key, is_causal=True, implementation=impl, block_size=4
    )
    key = jax.random.key(1)
    keys = jnp.concatenate([jnp.stack([key, key, jax.random.key(2)]), jax.random.split(key, 400)])
    outs = np.asarray(jax.jit(lambda keys: lax.map(lambda kk: f(q, k, v, kk), keys))(keys))
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.allclose(outs[0], outs[2])
    draws = outs[3:]
    # Unbiased: the mean over draws is within 4.5 standard errors of no dropout.
    stderr = draws.std(0) / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(0) - ref_forward(q, k, v, causal=True)[0]) <= 4.5 * stderr + 1e-9)
    # Differentiable: with the key fixed, the gradient matches finite differences.
    check_grads(lambda q, k, v: f(q, k, v, key), (q, k, v), 1, ["rev"], eps=1e-4, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------
# Transforms


@pytest.mark.parametrize("impl", IMPLS)
def test_jit_vmap_grad(impl):
  q, k, v, mask, bias = _case(14, (3,), 10, 12, 4, 2, 8, None, (3, 1, 10, 12), (4, 10, 12))
  f = lambda q, k, v, b, m: sdpa_eager(
    q, k, v, bias=b, mask=m, is_causal=True, implementation=impl, block_size=(4, 8)
  )

  def out_and_grad(q, k, v, b, m):
    # The output, and the gradient of sum(tanh(out)) w.r.t. q, k, v and b.
    out, vjp = jax.vjp(lambda q, k, v, b: f(q, k, v, b, m), q, k, v, b)
    return out, vjp(1 - jnp.tanh(out) ** 2)

  @jax.jit
  def run(*a):
    # vmap over the batch of q, k, v and mask (bias shared) equals the batched call.
    return out_and_grad(*a), jax.vmap(out_and_grad, in_axes=(0, 0, 0, None, 0))(*a)

  (jitted, g), (vm, g_vm) = run(q, k, v, bias, mask)
  eager = f(q, k, v, bias, mask)
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(vm, eager, rtol=1e-5, atol=1e-6)
  for a, b in zip(g[:3], g_vm[:3]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(g[3], g_vm[3].sum(0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_check_grads(impl):
  with jax.enable_x64(True):
    q, k, v, mask, bias = _case(
      15, (2,), 6, 9, 2, 1, 4, None, (2, 1, 6, 9), (2, 6, 9), dtype=np.float64, neg_inf_bias=False
    )
    f = lambda q, k, v, b: sdpa_eager(
      q, k, v, bias=b, mask=mask, is_causal=True, implementation=impl, block_size=(4, 4)
    )
    # The chunked path has a custom VJP only: no forward mode.
    modes = ["rev", "fwd"] if impl == "dense" else ["rev"]
    check_grads(f, (q, k, v, bias), 1, modes, eps=1e-4, atol=1e-5, rtol=1e-5)


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
    (dict(dropout_rate=0.1, dropout_key=0), TypeError, "dropout_key must be a jax.random key"),
    (dict(dropout_rate=1.0, dropout_key=jax.random.key(0)), ValueError, "dropout_rate"),
    (dict(implementation="flash"), ValueError, "implementation"),
    (dict(implementation="chunked", return_weights=True), ValueError, "return_weights"),
    (dict(implementation="chunked_jvp", return_weights=True), ValueError, "return_weights"),
    (dict(block_size=0), ValueError, "block_size"),
    (dict(block_size=(8, 8, 8)), ValueError, "block_size"),
    (dict(is_causal=jnp.array(True)), TypeError, "is_causal"),
  ],
)
def test_errors(kwargs, exc, match):
  q, k, v = _qkv()
  args = dict(query=q, key=k, value=v)
  args.update({n: kwargs.pop(n) for n in list(kwargs) if n in args})
  with pytest.raises(exc, match="^scaled_dot_product_attention: " + match):
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


def _random_params(seed, d_model, num_heads, num_kv_heads, head_dim, d_out):
  """A params dict of the layer's structure with random kernels and biases (drawn by NumPy)."""
  rng = np.random.default_rng(seed)
  shapes = {
    "query": ((d_model, num_heads, head_dim), (num_heads, head_dim)),
    "key": ((d_model, num_kv_heads, head_dim), (num_kv_heads, head_dim)),
    "value": ((d_model, num_kv_heads, head_dim), (num_kv_heads, head_dim)),
    "out": ((num_heads, head_dim, d_out), (d_out,)),
  }
  return {
    name: {"kernel": _rand(rng, ks) / np.sqrt(d_model), "bias": 0.1 * _rand(rng, bs)}
    for name, (ks, bs) in shapes.items()
  }


# One set of initialized parameters for the tests of init's shapes and scale.
_INIT = dict(d_model=128, num_heads=8, num_kv_heads=2, d_out=32)


@pytest.fixture(scope="module")
def init_params():
  return init_multi_head_attention(jax.random.key(0), **_INIT)


def test_init_shapes_and_scaling(init_params):
  shapes = jax.tree.map(lambda a: a.shape, init_params)
  assert shapes == {
    "query": {"kernel": (128, 8, 16), "bias": (8, 16)},
    "key": {"kernel": (128, 2, 16), "bias": (2, 16)},
    "value": {"kernel": (128, 2, 16), "bias": (2, 16)},
    "out": {"kernel": (8, 16, 32), "bias": (32,)},
  }
  np.testing.assert_allclose(np.var(init_params["query"]["kernel"]), 1 / 128, rtol=0.1)
  np.testing.assert_allclose(np.var(init_params["out"]["kernel"]), 1 / 128, rtol=0.1)
  assert all(np.all(np.asarray(p["bias"]) == 0) for p in init_params.values())
  # Structure and dtypes need no numbers: traced, not run.
  init = functools.partial(init_multi_head_attention, jax.random.key(0), d_model=8, num_heads=2)
  assert "bias" not in jax.eval_shape(functools.partial(init, use_bias=False))["out"]
  p16 = jax.eval_shape(functools.partial(init, dtype=jnp.bfloat16))
  assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(p16))


def test_output_variance_is_about_one_for_peaked_attention(init_params):
  # With a causal mask, the first query sees one key, so its output is a
  # projected value: unit-variance inputs give unit-variance outputs.
  x = _rand(np.random.default_rng(1), (512, 4, 128))
  out = mha(init_params, x, is_causal=True)
  assert 0.7 < float(jnp.var(out[:, 0])) < 1.3


def test_self_attention_matches_reference():
  x = _rand(np.random.default_rng(1), (2, 7, 16))
  mask = jnp.asarray(np.random.default_rng(0).random((2, 1, 7, 7)) > 0.3)
  params = [_random_params(0, 16, 4, kv, 4, 6) for kv in (4, 2, 1)]
  opts = dict(mask=mask, is_causal=True)

  @jax.jit
  def run(params, x):
    return [
      (
        multi_head_attention(p, x, return_weights=True, **opts),
        multi_head_attention(p, x, implementation="chunked", **opts),
      )
      for p in params
    ]

  for p, ((out, w, _), chunked) in zip(params, run(params, x)):
    want, want_w = _np_mha(p, x, None, mask, True)
    assert out.shape == (2, 7, 6) and w.shape == (2, 4, 7, 7)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(w, want_w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(chunked, want, rtol=1e-4, atol=1e-5)


def test_cross_attention_matches_reference():
  params = _random_params(2, 12, 6, 3, 5, 12)
  rng = np.random.default_rng(3)
  x, ctx = _rand(rng, (3, 12)), _rand(rng, (8, 12))
  out = mha(params, x, ctx)
  np.testing.assert_allclose(out, _np_mha(params, x, ctx)[0], rtol=1e-4, atol=1e-5)


def test_mha_transforms_and_dropout(init_params):
  params = init_params
  x = _rand(np.random.default_rng(6), (4, 5, 128))
  loss = lambda p, x, key: jnp.sum(
    multi_head_attention(p, x, is_causal=True, dropout_rate=0.1, dropout_key=key) ** 2
  )

  @jax.jit
  def run(params, x, key):
    return jax.grad(loss)(params, x, key), jax.vmap(lambda xi: multi_head_attention(params, xi))(x)

  g, per_example = run(params, x, jax.random.key(7))
  assert jax.tree.structure(g) == jax.tree.structure(params)
  assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(g))
  np.testing.assert_allclose(per_example, mha(params, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "kwargs, exc, match",
  [
    (dict(d_model=8, num_heads=3), ValueError, "head_dim"),
    (dict(d_model=8, num_heads=4, num_kv_heads=3), ValueError, "num_kv_heads"),
    (dict(d_model=0, num_heads=1), ValueError, "d_model"),
    (dict(d_model=8, num_heads=2.0), TypeError, "num_heads"),
    (dict(d_model=8, num_heads=2, dtype=jnp.int32), TypeError, "dtype"),
    (dict(key=0, d_model=8, num_heads=2), TypeError, "key must be a jax.random key"),
  ],
)
def test_init_errors(kwargs, exc, match):
  key = kwargs.pop("key", jax.random.key(0))
  with pytest.raises(exc, match="^init_multi_head_attention: " + match):
    init_multi_head_attention(key, **kwargs)


def _without(params, *path):
  """A copy of params without the entry at ``path``."""
  out = {name: dict(p) for name, p in params.items()}
  del (out[path[0]] if len(path) == 2 else out)[path[-1]]
  return out


@pytest.mark.parametrize(
  "call, exc, match",
  [
    (lambda p: multi_head_attention(p, jnp.ones((3, 7))), ValueError, "x must have 8 features"),
    (lambda p: mha(p, jnp.ones((3, 8)), jnp.ones((3, 4))), ValueError, "context"),
    (lambda p: multi_head_attention([p], jnp.ones((3, 8))), TypeError, "params must be a dict"),
    (
      lambda p: multi_head_attention(_without(p, "value"), jnp.ones((3, 8))),
      TypeError,
      'params must have a "value"',
    ),
    (
      lambda p: multi_head_attention(_without(p, "query", "kernel"), jnp.ones((3, 8))),
      TypeError,
      r'params\["query"\] must be a dict with a "kernel" entry',
    ),
    (
      lambda p: multi_head_attention({**p, "out": {"kernel": jnp.ones((2, 4, 8, 1))}}, jnp.ones((3, 8))),
      ValueError,
      r'params\["out"\]\["kernel"\] must have rank 3',
    ),
    (
      lambda p: multi_head_attention({**p, "key": {"kernel": jnp.ones((8, 3, 4))}}, jnp.ones((3, 8))),
      ValueError,
      r'params\["key"\]\["kernel"\] must have shape \(8, K, 4\)',
    ),
    # Errors of the attention itself are labelled with the layer's name.
    (
      lambda p: mha(p, jnp.ones((3, 8)), mask=jnp.ones((3, 4), bool)),
      ValueError,
      "mask must be broadcastable",
    ),
    (lambda p: multi_head_attention(p, jnp.ones((3, 8)), dropout_rate=0.5), ValueError, "dropout_key"),
    (
      lambda p: multi_head_attention(p, jnp.ones((3, 8)), implementation="flash"),
      ValueError,
      "implementation",
    ),
  ],
)
def test_mha_errors(call, exc, match):
  params = jax.eval_shape(lambda: init_multi_head_attention(jax.random.key(0), d_model=8, num_heads=2))
  params = jax.tree.map(lambda a: jnp.ones(a.shape, a.dtype), params)
  with pytest.raises(exc, match="^multi_head_attention: " + match):
    call(params)
