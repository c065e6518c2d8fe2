"""Structure options of jaxsoft.attention (lengths, segments, windows, alignment), soft cap, sinks, lse.

The reference is float64 NumPy written here: it builds the allowed set
explicitly as a [B, T, S] array (which the code under test never does) and
differentiates by hand. Every case of a test runs in one compiled function.
"""

import functools

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _lanes import by_lane
from hypothesis import given, settings

from jaxsoft import _attention_structure as structure
from jaxsoft.attention import AttentionResult, multi_head_attention
from jaxsoft.attention import scaled_dot_product_attention as sdpa

IMPLS = ["dense", "chunked"]


# ----------------------------------------------------------------------------
# Reference


def ref_allowed(B, T, S, causal=False, window=None, q_len=None, kv_len=None, q_seg=None, kv_seg=None):
  """[B, T, S]: the allowed pairs, one condition at a time."""
  t, s = np.arange(T)[:, None], np.arange(S)[None, :]
  d = S - T if causal == "bottom_right" else 0  # the diagonal s = t + d
  a = np.ones((B, T, S), bool)
  if causal:
    a &= s <= t + d
  if window is not None:
    left, right = (window, window) if isinstance(window, int) else window
    a &= (t + d - left <= s) & (s <= t + d + right)
  for b in range(B):
    if q_len is not None:
      a[b, q_len[b] :] = False
    if kv_len is not None:
      a[b, :, kv_len[b] :] = False
    if q_seg is not None:
      a[b] &= q_seg[b][:, None] == kv_seg[b][None, :]
  return a


def ref(q, k, v, allowed, g, g_lse, bias=None, cap=None, sink=None):
  """Output, lse and the gradients of sum(g * out) + sum(g_lse * lse) w.r.t. q, k, v, bias, sink.

  q [B,T,N,H], k/v [B,S,N,H] (one key head per query head), allowed [B,T,S].
  """
  q, k, v, g, g_lse = (np.asarray(x, np.float64) for x in (q, k, v, g, g_lse))
  scale = 1 / np.sqrt(q.shape[-1])
  r = np.einsum("btnh,bsnh->bnts", q, k) * scale
  logits = r if cap is None else cap * np.tanh(r / cap)
  if bias is not None:
    logits = logits + np.asarray(bias, np.float64)
  a = allowed[:, None]
  c = np.full(q.shape[2], -np.inf) if sink is None else np.asarray(sink, np.float64)
  c = c[None, :, None, None]
  m = np.maximum(np.where(a, logits, -np.inf).max(-1, keepdims=True), c)
  m = np.where(np.isfinite(m), m, 0)
  e = np.where(a, np.exp(logits - m), 0)
  z = e.sum(-1, keepdims=True) + np.exp(c - m)
  w = np.where(z > 0, e / np.where(z > 0, z, 1), 0)
  w_sink = np.where(z > 0, np.exp(c - m) / np.where(z > 0, z, 1), 0)
  lse = np.where(z > 0, np.log(np.where(z > 0, z, 1)) + m, -np.inf)[..., 0]
  out = np.einsum("bnts,bsnh->btnh", w, v)
  dw = np.einsum("btnh,bsnh->bnts", g, v)
  gl = np.transpose(g_lse, (0, 2, 1))[..., None]
  row = (w * dw).sum(-1, keepdims=True)
  dlogits = w * (dw - row) + w * gl
  dsink = (w_sink * (gl - row)).sum((0, 2, 3))
  dr = dlogits if cap is None else dlogits * (1 - np.tanh(r / cap) ** 2)
  dq = np.einsum("bnts,bsnh->btnh", dr, k) * scale
  dk = np.einsum("bnts,btnh->bsnh", dr, q) * scale
  dv = np.einsum("bnts,btnh->bsnh", w, g)
  return out, np.transpose(lse, (0, 2, 1)), (dq, dk, dv, dlogits, dsink)


def _rand(rng, shape):
  return rng.normal(size=shape)


# ----------------------------------------------------------------------------
# Every option, both implementations, forward and backward, float64

B, N, H = 2, 2, 4
# (T, S, options, block_size): block sizes that divide the lengths and that do not.
CASES = [
  (
    12,
    12,
    dict(
      segment_ids=((0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2), (0,) * 7 + (1,) * 5),
      is_causal=True,
      query_seq_lengths=(12, 7),
      key_value_seq_lengths=(9, 12),
    ),
    5,
  ),
  (7, 12, dict(is_causal="bottom_right", local_window_size=2, sink=True), 4),
  (
    7,
    12,
    dict(segment_ids=((0, 0, 1, 1, 1, 2, 2), (0,) * 5 + (1,) * 4 + (2,) * 3), query_seq_lengths=(7, 0)),
    (3, 5),
  ),
  (12, 7, dict(is_causal=True, local_window_size=(2, 0), sink=True, logit_soft_cap=1.5, bias=True), 5),
  # Behind slow (each case costs a compile): more compositions.
  (12, 12, dict(is_causal=True, query_seq_lengths=(12, 7), key_value_seq_lengths=(9, 12)), 4),
  (12, 12, dict(local_window_size=(3, 1), key_value_seq_lengths=(12, 10), logit_soft_cap=2.0), (4, 8)),
]
FAST_CASES = 4


def _case_inputs(c):
  T, S, o, _ = CASES[c]
  rng = np.random.default_rng(c)
  q, k, v = _rand(rng, (B, T, N, H)) * 2, _rand(rng, (B, S, N, H)) * 2, _rand(rng, (B, S, N, H))
  g, g_lse = _rand(rng, (B, T, N, H)), _rand(rng, (B, T, N))
  bias = _rand(rng, (N, T, S)) if o.get("bias") else None
  sink = _rand(rng, (N,)) if o.get("sink") else None
  return q, k, v, g, g_lse, bias, sink


def _api_options(o, T, S):
  """The options of CASES as the API takes them (segment ids as a pair of [B, T] and [B, S] arrays)."""
  out = {n: x for n, x in o.items() if n not in ("bias", "sink")}
  for n in ("query_seq_lengths", "key_value_seq_lengths"):
    if n in out:
      out[n] = np.array(out[n])
  if "segment_ids" in out:
    qs, ks = out["segment_ids"]
    out["segment_ids"] = (np.array([qs, qs[::-1]]), np.array([ks, ks[::-1]]))
  return out


def _ref_allowed(o, T, S):
  a = _api_options(o, T, S)
  seg = a.get("segment_ids", (None, None))
  return ref_allowed(
    B,
    T,
    S,
    a.get("is_causal", False),
    a.get("local_window_size"),
    a.get("query_seq_lengths"),
    a.get("key_value_seq_lengths"),
    *seg,
  )


@functools.cache
def _results(impl, n_cases):
  # "chunked by lane": the chunked kernel's loop over (batch row, key head) lanes.
  lanes = impl == "chunked by lane"
  impl = "chunked" if lanes else impl
  with jax.enable_x64(True), by_lane(lanes):

    @jax.jit
    def run(inputs):
      res = []
      for c, (q, k, v, g, g_lse, bias, sink) in enumerate(inputs):
        T, S, o, block = CASES[c]

        def f(q, k, v, bias, sink):
          r = sdpa(
            q,
            k,
            v,
            bias=bias,
            sink_logits=sink,
            return_residual=True,
            implementation=impl,
            block_size=block,
            **_api_options(o, T, S),
          )
          return r.output, r.lse

        (out, lse), vjp = jax.vjp(f, q, k, v, bias, sink)
        res.append((out, lse, vjp((g, g_lse))))
      return res

    return jax.device_get(run([_case_inputs(c) for c in range(n_cases)]))


def _case_ids():
  return [c if c < FAST_CASES else pytest.param(c, marks=pytest.mark.slow) for c in range(len(CASES))]


@pytest.mark.parametrize("impl", [*IMPLS, "chunked by lane"])
@pytest.mark.parametrize("case", _case_ids())
def test_every_option_matches_the_numpy_reference(impl, case):
  T, S, o, _ = CASES[case]
  q, k, v, g, g_lse, bias, sink = _case_inputs(case)
  out, lse, grads = _results(impl, FAST_CASES if case < FAST_CASES else len(CASES))[case]
  want_out, want_lse, want_grads = ref(
    q, k, v, _ref_allowed(o, T, S), g, g_lse, bias, o.get("logit_soft_cap"), sink
  )
  np.testing.assert_allclose(out, want_out, rtol=1e-11, atol=1e-11)
  np.testing.assert_array_equal(np.isinf(lse), np.isinf(want_lse))
  np.testing.assert_allclose(lse, want_lse, rtol=1e-11, atol=1e-11)
  for name, got, want in zip(["q", "k", "v", "bias", "sink"], grads, want_grads):
    if name == "bias" and bias is None or name == "sink" and sink is None:
      assert got is None
      continue
    if name == "bias":
      want = want.sum(0)
    assert not np.isnan(got).any(), name
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10, err_msg=name)


def test_padded_query_rows_are_zero_with_zero_gradients():
  # Case 2, batch row 1 has no real query.
  out, lse, _ = _results("chunked", FAST_CASES)[2]
  np.testing.assert_array_equal(out[1], 0.0)
  assert np.isneginf(lse[1]).all()


# ----------------------------------------------------------------------------
# Against jax.nn on rows with an allowed key


def test_agrees_with_jax_nn_on_rows_with_an_allowed_key():
  rng = np.random.default_rng(7)
  T = S = 16
  q, k, v = (jnp.asarray(_rand(rng, (B, T, N, 8)), jnp.float32) for _ in range(3))
  opts = dict(
    query_seq_lengths=jnp.array([16, 11]), key_value_seq_lengths=jnp.array([13, 16]), local_window_size=(4, 2)
  )

  @jax.jit
  def run(q, k, v):
    res = {}
    for causal in (False, True):
      res["jax.nn", causal] = jax.nn.dot_product_attention(
        q, k, v, is_causal=causal, return_residual=True, **opts
      )
      for impl in IMPLS:
        r = sdpa(
          q, k, v, is_causal=causal, return_residual=True, implementation=impl, block_size=(8, 4), **opts
        )
        res[impl, causal] = (r.output, r.lse)
    return res

  res = run(q, k, v)
  for causal in (False, True):
    live = ref_allowed(B, T, S, causal, (4, 2), [16, 11], [13, 16]).any(-1)  # [B, T]
    want_out, want_lse = (np.asarray(x)[live] for x in res["jax.nn", causal])
    for impl in IMPLS:
      out, lse = (np.asarray(x)[live] for x in res[impl, causal])
      np.testing.assert_allclose(out, want_out, rtol=2e-5, atol=2e-6)
      np.testing.assert_allclose(lse, want_lse, rtol=2e-5, atol=2e-6)


# ----------------------------------------------------------------------------
# Random compositions: chunked against dense


@functools.cache
def _composed(causal, window):
  T = S = 20

  @jax.jit
  def run(q, k, v, q_len, kv_len, q_seg, kv_seg, mask):
    opts = dict(
      is_causal=causal,
      local_window_size=window,
      query_seq_lengths=q_len,
      key_value_seq_lengths=kv_len,
      segment_ids=(q_seg, kv_seg),
      mask=mask,
    )
    dense = sdpa(q, k, v, implementation="dense", **opts)
    # Query blocks ragged (6 into 20), key blocks dividing (5).
    return dense, [sdpa(q, k, v, implementation="chunked", block_size=(6, 5), **opts)]

  return run, T, S


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), n_docs=st.integers(1, 5))
@pytest.mark.parametrize(
  "structure_",
  [
    (True, (5, 0)),
    pytest.param(("bottom_right", None), marks=pytest.mark.slow),
    pytest.param((False, 3), marks=pytest.mark.slow),
  ],
)
def test_property_random_structures_chunked_equals_dense(structure_, seed, n_docs):
  # The chunked path, block sizes dividing the length and not, against the dense one.
  run, T, S = _composed(*structure_)
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(_rand(rng, (B, T, N, 4)), jnp.float32) for _ in range(3))
  q_len, kv_len = rng.integers(0, T + 3, B), rng.integers(0, S + 3, B)
  q_seg = np.sort(rng.integers(0, n_docs, (B, T)), axis=1)
  kv_seg = np.sort(rng.integers(0, n_docs, (B, S)), axis=1)
  mask = rng.random((B, 1, T, S)) > 0.2
  dense, chunked = run(q, k, v, q_len, kv_len, q_seg, kv_seg, mask)
  for c in chunked:
    np.testing.assert_allclose(c, dense, rtol=1e-5, atol=1e-6)


_STRUCTURES = dict(
  causal=st.sampled_from([False, True, "bottom_right"]),
  window=st.sampled_from([None, (3, 0), (0, 5), (2, 2)]),
  lengths=st.booleans(),
  docs=st.integers(0, 4),
  seed=st.integers(0, 99),
)


def test_block_mask_holds_every_allowed_block():
  # Random structures, their block masks computed by one compiled function.
  rng = np.random.default_rng(0)
  configs = []
  for _ in range(12):
    T, S = (int(n) for n in rng.integers(1, 41, 2))
    bq, bk = (int(n) for n in rng.integers(1, 10, 2))
    causal = [False, True, "bottom_right"][rng.integers(3)]
    window = [None, (3, 0), (0, 5), (2, 2)][rng.integers(4)]
    configs.append(
      (T, S, bq, bk, causal, window, bool(rng.integers(2)), int(rng.integers(5)), int(rng.integers(99)))
    )
  cases = [_block_mask_case(*c) for c in configs]

  def masks_and_ranges(sts):
    masks = [structure.block_mask(st_, bd, *c[:4]) for st_, (_, bd, _), c in zip(sts, cases, configs)]
    return [(m, structure.ranges(m)) for m in masks]

  results = jax.jit(masks_and_ranges)([case[0] for case in cases])
  for (got, ranges), (_, _, want), c in zip(results, cases, configs):
    _check_block_mask(np.asarray(got), np.asarray(ranges), want, c[7] and (c[4] or c[5] is not None))


def test_tile_full_is_true_exactly_for_tiles_the_band_allows_whole():
  # The forward pass skips the mask of a tile that tile_full calls full: it
  # must be True only when every pair of the tile is allowed (and no key is
  # padding), and True for every such tile, or the skip is wasted. NumPy
  # checks every pair of every tile, with and without shard offsets.
  bq, bk, s_true = 4, 8, 30
  t0s, s0s = np.meshgrid(np.arange(0, 40, bq), np.arange(0, 32, bk), indexing="ij")
  t0s, s0s = t0s.ravel(), s0s.ravel()
  kinds = set()
  for bd in (structure.Band(None, 0), structure.Band(-6, 0), structure.Band(-3, 5), structure.Band(2, None)):
    for q_off, kv_off in ((None, None), (8, 16)):
      st_ = structure.Structure(q_offset=q_off, kv_offset=kv_off)
      full = jax.jit(jax.vmap(lambda t0, s0: structure.tile_full(st_, bd, t0, s0, bq, bk, s_true)))
      got = np.asarray(full(jnp.asarray(t0s), jnp.asarray(s0s)))
      for t0, s0, g in zip(t0s, s0s, got):
        t = np.arange(t0, t0 + bq)[:, None] + (q_off or 0)
        s = np.arange(s0, s0 + bk)[None, :] + (kv_off or 0)
        ok = (np.arange(s0, s0 + bk)[None, :] < s_true) & np.ones((bq, 1), bool)
        if bd.lo is not None:
          ok &= s - t >= bd.lo
        if bd.hi is not None:
          ok &= s - t <= bd.hi
        assert bool(g) == bool(ok.all()), (bd, q_off, t0, s0)
      kinds |= set(got.tolist())
  assert kinds == {True, False}  # both kinds of tile occur


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(T=st.integers(1, 40), S=st.integers(1, 40), bq=st.integers(1, 9), bk=st.integers(1, 9), **_STRUCTURES)
def test_property_block_mask_any_shape(T, S, bq, bk, causal, window, lengths, docs, seed):
  st_, bd, want = _block_mask_case(T, S, bq, bk, causal, window, lengths, docs, seed)
  got = structure.block_mask(st_, bd, T, S, bq, bk)
  superset = docs and (causal or window is not None)
  _check_block_mask(np.asarray(got), np.asarray(structure.ranges(got)), want, superset)


def _block_mask_case(T, S, bq, bk, causal, window, lengths, docs, seed):
  """A structure, its band, and the blocks that hold an allowed pair in some row (from the reference)."""
  rng = np.random.default_rng(seed)
  q_len = rng.integers(0, T + 2, B) if lengths else None
  kv_len = rng.integers(0, S + 2, B) if lengths else None
  q_seg = kv_seg = None
  if docs:
    q_seg, kv_seg = np.sort(rng.integers(0, docs, (B, T))), np.sort(rng.integers(0, docs, (B, S)))
  allowed = ref_allowed(B, T, S, causal, window, q_len, kv_len, q_seg, kv_seg).any(0)
  nq, nk = -(-T // bq), -(-S // bk)
  allowed = np.pad(allowed, ((0, nq * bq - T), (0, nk * bk - S)))
  want = allowed.reshape(nq, bq, nk, bk).any(axis=(1, 3))
  return structure.Structure(q_len, kv_len, q_seg, kv_seg), structure.band(causal, window, T, S), want


def _check_block_mask(got, ranges, want, superset):
  # Every block with an allowed pair is visited, and exactly those unless
  # segments meet a band (the two block tests are then each necessary, not
  # jointly sufficient).
  assert np.all(got >= want)
  if not superset:
    np.testing.assert_array_equal(got, want)
  # The ranges are hulls of the rows of the block mask.
  for r, row in zip(ranges, got):
    idx = np.flatnonzero(row)
    assert tuple(r) == ((idx[0], idx[-1] + 1) if idx.size else (0, 0))


# ----------------------------------------------------------------------------
# Transforms, debug mode, the layer


def test_vmap_with_structure():
  # Gradients under jit: the reference test above; eager against jit: test_attention.py.
  rng = np.random.default_rng(3)
  q, k, v = (jnp.asarray(_rand(rng, (3, 10, N, 4)), jnp.float32) for _ in range(3))
  q_len, seg = jnp.array([10, 6, 3]), jnp.asarray(np.sort(rng.integers(0, 3, (3, 10)), axis=1))

  def f(q, k, v, q_len, seg):
    return sdpa(
      q,
      k,
      v,
      is_causal=True,
      query_seq_lengths=q_len,
      segment_ids=seg,
      implementation="chunked",
      block_size=4,
    )

  @jax.jit
  def run(*a):
    # vmap over the batch (the block ranges then differ per example) equals the batched call.
    return f(*a), jax.vmap(f)(*a)

  out, out_vm = run(q, k, v, q_len, seg)
  np.testing.assert_allclose(out_vm, out, rtol=1e-5, atol=1e-6)


def test_key_value_batch_broadcasts_and_one_query_decodes():
  # A key/value batch of 1 serves 3 queries (as PyTorch's SDPA allows); one
  # decoding query per row against a cache filled to key_value_seq_lengths.
  rng = np.random.default_rng(4)
  q, k, v = (jnp.asarray(_rand(rng, s), jnp.float32) for s in ((3, 1, N, 4), (1, 21, N, 4), (1, 21, N, 4)))
  kv_len = jnp.array([21, 9, 1])
  opts = dict(key_value_seq_lengths=kv_len, is_causal="bottom_right", block_size=8)
  run = jax.jit(lambda q, k, v: [sdpa(q, k, v, implementation=i, **opts) for i in IMPLS])
  kb, vb = (np.broadcast_to(x, (3,) + x.shape[1:]) for x in (k, v))
  allowed = ref_allowed(3, 1, 21, "bottom_right", None, None, np.asarray(kv_len))
  z = np.zeros(q.shape)
  want = ref(q, kb, vb, allowed, z, z[..., 0])[0]
  for out in run(q, k, v):
    assert out.shape == (3, 1, N, 4)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
  # The gradients through the chunked kernel's loop over (batch row, key
  # head) lanes, those of the shared keys and values summed over the rows.
  g = _rand(rng, q.shape)
  loss = lambda q, k, v, i: jnp.sum(sdpa(q, k, v, implementation=i, **opts) * g)
  with by_lane():
    grads = jax.jit(lambda q, k, v: [jax.grad(loss, (0, 1, 2))(q, k, v, i) for i in IMPLS])(q, k, v)
  dq, dk, dv = ref(q, kb, vb, allowed, g, z[..., 0])[2][:3]
  for got in grads:
    for a, b in zip(got, (dq, dk.sum(0, keepdims=True), dv.sum(0, keepdims=True))):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_second_order_through_the_chunked_path_and_a_clear_forward_mode_error():
  # jax.hessian is forward over reverse: the chunked VJP's passes are plain JAX
  # code, so it works (against the dense path, whose derivatives the reference
  # test checks). Forward mode alone meets the custom VJP: a clear error.
  with jax.enable_x64(True):
    rng = np.random.default_rng(5)
    q, k, v = (jnp.asarray(_rand(rng, s)) for s in ((1, 5, N, 3), (1, 6, 1, 3), (1, 6, 1, 3)))
    sink = jnp.array([0.3, -0.2])
    opts = dict(is_causal="bottom_right", local_window_size=(3, 1), logit_soft_cap=2.0, block_size=(2, 4))

    def loss(q, sink, impl):
      out = sdpa(q, k, v, sink_logits=sink, key_value_seq_lengths=jnp.array([5]), implementation=impl, **opts)
      return jnp.sum(jnp.sin(out))

    run = jax.jit(lambda q, sink: [jax.hessian(loss, (0, 1))(q, sink, i) for i in IMPLS])
    dense, chunked = run(q, sink)
    for a, b in zip(jax.tree.leaves(chunked), jax.tree.leaves(dense)):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    with pytest.raises(TypeError, match='implementation must be "chunked_jvp" or "dense" under forward-mode'):
      jax.jvp(lambda q: loss(q, sink, "chunked"), (q,), (q,))


def test_dense_path_creates_no_infinities():
  # jax.nn's own check: an eager masked call under debug_infs must not trip.
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(_rand(rng, (1, 6, 1, 4)), jnp.float32) for _ in range(3))
  mask = jnp.asarray(rng.random((1, 1, 6, 6)) > 0.5).at[..., 2, :].set(False)
  with jax.debug_infs(True):
    out = sdpa(q, k, v, mask=mask, is_causal=True, implementation="dense")
  np.testing.assert_array_equal(out[0, 2], 0.0)


def test_multi_head_attention_passes_the_options_through():
  params = {
    name: {"kernel": jnp.asarray(_rand(np.random.default_rng(i), shape), jnp.float32) / 3}
    for i, (name, shape) in enumerate(
      [("query", (6, N, 3)), ("key", (6, N, 3)), ("value", (6, N, 3)), ("out", (N, 3, 6))]
    )
  }
  x = jnp.asarray(_rand(np.random.default_rng(9), (B, 8, 6)), jnp.float32)
  opts = dict(
    is_causal=True,
    query_seq_lengths=jnp.array([8, 5]),
    local_window_size=(2, 0),
    logit_soft_cap=3.0,
    sink_logits=jnp.array([0.5, -1.0]),
    bias=jnp.zeros((N, 8, 8)),
    block_size=4,
    return_residual=True,
  )
  res = jax.jit(lambda p, x: [multi_head_attention(p, x, implementation=i, **opts) for i in IMPLS])(params, x)
  for r in res:
    assert isinstance(r, AttentionResult) and r.weights is None and r.lse.shape == (B, 8, N)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    qh, kh, vh = (
      np.einsum("btd,dnh->btnh", np.asarray(x, np.float64), p[n]["kernel"]) for n in ("query", "key", "value")
    )
    allowed = ref_allowed(B, 8, 8, True, (2, 0), [8, 5])
    z = np.zeros_like(qh)
    att, lse, _ = ref(qh, kh, vh, allowed, z, z[..., 0], None, 3.0, np.array([0.5, -1.0]))
    np.testing.assert_allclose(
      r.output, np.einsum("btnh,nho->bto", att, p["out"]["kernel"]), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(r.lse, lse, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------
# Errors


def _qkv(T=4, S=4):
  return jnp.ones((2, T, 2, 8)), jnp.ones((2, S, 2, 8)), jnp.ones((2, S, 2, 8))


@pytest.mark.parametrize(
  "kwargs, exc, match",
  [
    (dict(query_seq_lengths=jnp.array([1, 2, 3])), ValueError, r"query_seq_lengths must have shape \(2,\)"),
    (
      dict(query_seq_lengths=jnp.array([1.0, 2.0])),
      TypeError,
      "query_seq_lengths must have an integer dtype",
    ),
    (dict(key_value_seq_lengths=jnp.array([1, -2])), ValueError, "key_value_seq_lengths must be >= 0"),
    (dict(segment_ids=jnp.zeros((2, 5), int)), ValueError, r"segment_ids must have shape \(2, 4\)"),
    (dict(segment_ids=jnp.zeros((2, 4))), TypeError, "segment_ids must have an integer dtype"),
    (dict(S=6, segment_ids=jnp.zeros((2, 4), int)), ValueError, "segment_ids must be a .* pair when T"),
    (
      dict(S=6, segment_ids=(jnp.zeros((2, 4), int), jnp.zeros((2, 4), int))),
      ValueError,
      r"segment_ids\[1\] must have shape \(2, 6\)",
    ),
    (dict(segment_ids=(jnp.zeros((2, 4), int),)), ValueError, "segment_ids must be an array or a"),
    (dict(local_window_size=(2, -1)), ValueError, "local_window_size must be >= 0"),
    (dict(local_window_size=(1, 2, 3)), ValueError, "local_window_size must be an int or a"),
    (dict(local_window_size=2.0), TypeError, "local_window_size must be a Python int"),
    (dict(logit_soft_cap=0.0), ValueError, "logit_soft_cap must be > 0"),
    (dict(logit_soft_cap=-1), ValueError, "logit_soft_cap must be > 0"),
    (dict(sink_logits=jnp.zeros(3)), ValueError, r"sink_logits must have shape \(2,\)"),
    (dict(sink_logits=jnp.zeros(2, int)), TypeError, "sink_logits must have a floating dtype"),
    (dict(is_causal="top_left"), TypeError, "is_causal must be a Python bool or"),
  ],
)
def test_errors(kwargs, exc, match):
  q, k, v = _qkv(S=kwargs.pop("S", 4))
  with pytest.raises(exc, match="^scaled_dot_product_attention: " + match):
    sdpa(q, k, v, **kwargs)
