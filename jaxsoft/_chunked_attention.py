"""The chunked attention kernel: an online softmax over key blocks, with a custom VJP or a custom JVP.

For each query block the forward pass runs the online logsumexp
(:mod:`jaxsoft._online_logsumexp`) over the key blocks, as in FlashAttention
(Dao et al. 2022) and Rabe & Staats (2021), and keeps only the output and the
per-row log-normalizer. The backward pass recomputes each block's weights from
that log-normalizer, so memory is linear in ``T + S``.

The one forward pass carries one of two derivative rules: a custom VJP
(:func:`backward`, the hand-written FlashAttention backward pass, the
default), or, with ``forward_mode``, a custom JVP (:func:`tangent`, one more
pass over the blocks, linear in the tangents), which forward mode runs and
reverse mode transposes. JAX gives a function with a custom VJP no forward
mode, and cannot transpose a custom VJP inside a custom JVP's tangent, so one
function cannot carry both; the transposed tangent pass is the slower
backward pass (``benchmarks/RESULTS.md``), hence the choice.

Layout (shared with the dense path of :mod:`jaxsoft.attention`): q is
head-major ``[B,K,G,T,H]``, k and v ``[B,K,S,H]`` (or, in :func:`attention`,
the caller's ``[B,S,K,H]``), and bias and mask ``[b,k,g,t,s]`` with each
axis either full or 1. For query blocks of 64 rows or more the passes loop
over the (batch row, key head) lanes (:func:`_one_lane_at_a_time`), each
lane's keys and values copied head-major; shorter blocks (decoding) hold
every lane and read the caller's layout block by block. Every tile folds the
``G`` query heads of its key head into its rows, ``[1,1,G*bq,bk]`` (or
``[B,K,G*bq,bk]``), which makes every product a plain batched matmul: XLA's
CPU dots are several times slower on other layouts, and a 5-d tile costs a
copy of the logits (XLA lays it out differently from the dot's output).

Which blocks are visited is data, not control flow: per query block ``i`` a
range ``[first, last)`` of the key blocks that may hold an allowed pair (the
forward loop), and per key block ``j`` the range of query blocks that may
(the backward loop), both computed by :func:`block_ranges` from the
structure (:mod:`jaxsoft._attention_structure`: the causal/window band,
lengths and segment ids, all given as data, never as a ``[T, S]`` array).
The ranges are shared by the batch rows, so they cover the union of the
rows' allowed blocks. Inside a visited block every pair is still masked
element by element (:func:`_block_logits`), so a range may hold blocks
without an allowed pair (wasted work) but must hold every block with one.

The kernel may run on one shard of a longer sequence (the ring of
:mod:`jaxsoft._context_parallel`): the structure's offsets then give the
global positions of the shard's first query and key, so the band, the
lengths and the dropout bits are those of the whole sequence.
:func:`forward` and :func:`backward` are the two passes on padded inputs,
shared with the ring, whose backward adds up the gradients of the key shards
given the rows' final log-normalizers.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxsoft import _attention_structure as structure
from jaxsoft import _online_logsumexp as online

# ----------------------------------------------------------------------------
# Head-major products


def _fold(x):
  """[B,K,G,T,D] -> [B,K,G*T,D]: the query heads of a key head folded into the rows (free)."""
  return x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3], x.shape[4])


def _rows_keys(x, k):
  """[B,K,R,H] x [B,K,S,H] -> [B,K,R,S]: rows times keys."""
  return jnp.einsum("bkrh,bksh->bkrs", x, k)


def _rows_values(p, v):
  """[B,K,R,S] x [B,K,S,Hv] -> [B,K,R,Hv]: weights times values."""
  return jnp.einsum("bkrs,bksh->bkrh", p, v)


def _keys_rows(p, x):
  """[B,K,R,S] x [B,K,R,D] -> [B,K,S,D]: transposed weights times rows."""
  return jnp.einsum("bkrs,bkrh->bksh", p, x)


def qk(q, k):
  """[B,K,G,T,H] x [B,K,S,H] -> [B,K,G,T,S]: rows times keys."""
  return _rows_keys(_fold(q), k).reshape(q.shape[:4] + (k.shape[2],))


def pv(p, v):
  """[B,K,G,T,S] x [B,K,S,Hv] -> [B,K,G,T,Hv]: weights times values."""
  return _rows_values(_fold(p), v).reshape(p.shape[:4] + (v.shape[3],))


def _as_rows(x, G, bq):
  """A [b,k,g|1,bq|1,n] block in the folded row layout [b,k,G*bq|1,n] (broadcast where the rows differ)."""
  if x is None:
    return None
  if x.shape[2] == 1 and x.shape[3] == 1:
    return x[:, :, 0]
  return _fold(jnp.broadcast_to(x, x.shape[:2] + (G, bq, x.shape[4])))


def bernoulli(key, p, shape):
  """``jax.random.bernoulli(key, p, shape)``, drawn flat and reshaped: the same bits.

  XLA's CPU compiler spends seconds on the multi-dimensional counters of the
  (partitionable) threefry generator: measured 3 s for a ``[1, 2, 1, 16, 16]``
  draw against 0.3 s flat.
  """
  return jax.random.bernoulli(key, p, (math.prod(shape),)).reshape(shape)


def soft_cap(x, cap):
  """``cap * tanh(x / cap)`` (Gemma 2's logit soft-capping), or ``x`` when ``cap`` is None."""
  return x if cap is None else cap * jnp.tanh(x / cap)


# ----------------------------------------------------------------------------
# The static block plan and the block ranges


class BlockPlan(NamedTuple):
  """The static tiling of one call: block sizes, true lengths, the band and the soft cap."""

  bq: int  # query block
  bk: int  # key block
  t: int  # true query length (before padding to whole blocks)
  s: int  # true key length
  band: structure.Band
  cap: float | None  # logit soft cap

  @property
  def nq(self) -> int:
    return -(-self.t // self.bq)

  @property
  def nk(self) -> int:
    return -(-self.s // self.bk)


def block_ranges(st: structure.Structure, plan: BlockPlan):
  """``(key_ranges [nq, 2], query_ranges [nk, 2])``: the blocks each loop visits."""
  mask = structure.block_mask(st, plan.band, plan.t, plan.s, plan.bq, plan.bk)
  return structure.ranges(mask), structure.ranges(mask.T)


# ----------------------------------------------------------------------------
# One block


def _slice_pair(x, i, j, plan: BlockPlan):
  """The [.., bq, bk] block (i, j) of a [.., t|1, s|1] mask or bias (size-1 axes kept)."""
  if x is None:
    return None
  if x.shape[-2] != 1:
    x = lax.dynamic_slice_in_dim(x, i * plan.bq, plan.bq, axis=x.ndim - 2)
  if x.shape[-1] != 1:
    x = lax.dynamic_slice_in_dim(x, j * plan.bk, plan.bk, axis=x.ndim - 1)
  return x


def _block_allowed(mask, st, i, j, plan: BlockPlan, G):
  """Allowed pairs of block (i, j) in the folded row layout [B|1,K|1,G*bq|1,bk], or None when all are."""
  s_true = plan.s if plan.s % plan.bk else None  # padded keys at the end of the last block
  a = structure.allowed(st, plan.band, i * plan.bq, j * plan.bk, plan.bq, plan.bk, s_true)
  if a is not None:
    a = a[:, None, None] if a.ndim == 3 else a[None, None, None]
  m = _slice_pair(mask, i, j, plan)
  if m is not None:
    a = m if a is None else m & a
  return _as_rows(a, G, plan.bq)


def _block_logits(qi, kj, bias, i, j, plan: BlockPlan, G):
  """Logits [B,K,G*bq,bk] of the folded query block i against key block j (before masking), and the raw q.k.

  With a soft cap ``c`` the logits are ``c * tanh(q.k / c) + bias``; the raw
  product is returned for the backward pass, which needs ``tanh`` again.
  """
  raw = _rows_keys(qi, kj)
  s = soft_cap(raw, plan.cap)
  b = _as_rows(_slice_pair(bias, i, j, plan), G, plan.bq)
  return (s if b is None else s + b), raw


def _dropout_scale(key, st, i, j, shape, plan: BlockPlan, rate):
  """Dropout multiplier of block (i, j): 0 or 1 / (1 - rate); the same bits in both passes.

  The bits are keyed by the block's place in the whole sequence (its index
  plus the offset of a shard, in blocks), so a sequence split into shards of
  whole blocks draws the same bits as the unsplit one.
  """
  if st.q_offset is not None:
    i, j = i + st.q_offset // plan.bq, j + st.kv_offset // plan.bk
  bits_key = jax.random.fold_in(jax.random.fold_in(key, i), j)
  keep = bernoulli(bits_key, 1.0 - rate, shape)
  return jnp.where(keep, 1.0 / (1.0 - rate), 0.0)


# ----------------------------------------------------------------------------
# Forward, backward, custom VJP


def sink_state(sink, shape, dtype):
  """The online state of the sink logit alone (``exp(sink - sink) = 1``), or of nothing."""
  if sink is None:
    return online.empty(shape, dtype)
  return online.Partial(jnp.broadcast_to(sink, shape), jnp.ones(shape, dtype))


def _key_block(x, j, bk: int, seq_major: bool):
  """Key block ``j`` [B,K,bk,D] of a head-major [B,K,S,D] or sequence-major [B,S,K,D] key or value array."""
  if seq_major:
    return jnp.swapaxes(lax.dynamic_slice_in_dim(x, j * bk, bk, axis=1), 1, 2)
  return lax.dynamic_slice_in_dim(x, j * bk, bk, axis=2)


def _lane_start(x, index, axes):
  """Where the lane ``index`` starts in ``x`` along ``axes``: 0 along an axis of size 1 (broadcast)."""
  start = [0] * x.ndim
  for i, a in zip(index, axes):
    if x.shape[a] != 1:
      start[a] = i
  return start


def _lane(x, index, axes):
  """The slice of ``x`` at ``index`` along ``axes`` (kept, size 1); an axis of size 1 (broadcast) is read whole."""
  if x is None:
    return None
  sizes = [1 if a in axes and n != 1 else n for a, n in enumerate(x.shape)]
  return lax.dynamic_slice(x, _lane_start(x, index, axes), sizes)


def _add_lane(x, update, index, axes):
  """``x`` with ``update`` added at :func:`_lane`'s slice (a broadcast axis adds up its lanes)."""
  return lax.dynamic_update_slice(x, _lane(x, index, axes) + update, _lane_start(x, index, axes))


# Query blocks of at least this many rows run one lane at a time; shorter ones
# (decoding: one query row) all lanes at once, where a loop of tiny tiles
# would cost more than the cache saves (measured: 1.6x to 1.8x the time of
# one query against S = 4096 and 65536 keys, B = 8, N = 8).
_LANE_MIN_ROWS = 64


def by_lane(plan: BlockPlan) -> bool:
  """Whether the passes run one (batch row, key head) lane at a time (:func:`_one_lane_at_a_time`)."""
  return plan.bq >= _LANE_MIN_ROWS


def _one_lane_at_a_time(q, k, v, bias, mask, sink, st, dropout_key, seq_major, step, outputs):
  """``outputs`` after ``step(lane, outputs, inputs)`` for each (batch row, key head) ``lane``.

  ``inputs`` are the lane's ``(q, k, v, bias, mask, sink, st, dropout_key)``,
  each with its batch and head axes kept (size 1). The lanes run in a loop:
  one lane's tiles (``[1, 1, G*bq, bk]``) stay in cache where all lanes'
  would not (measured on the quiet CPU, 8 heads, time after / before: 0.75
  to 1.01 at B = 1, T = 4096; 0.80 to 0.89 at B = 4, T = 2048; see
  ``benchmarks/RESULTS.md``). The lane's keys and values are copied
  head-major (``[1, 1, S, D]``, a small copy read contiguously by every
  tile). The dropout key is folded with the lane, so that lanes draw
  different bits.
  """
  B, K = q.shape[:2]
  kv_axes = (0, 2) if seq_major else (0, 1)
  rows = lambda x, b: _lane(x, (b,), (0,))

  def lane(n, carry):
    index = (n // K, n % K)
    kl, vl = (_lane(x, index, kv_axes) for x in (k, v))
    if seq_major:
      kl, vl = jnp.swapaxes(kl, 1, 2), jnp.swapaxes(vl, 1, 2)
    st_l = st._replace(**{f: rows(getattr(st, f), index[0]) for f in ("q_len", "kv_len", "q_seg", "kv_seg")})
    key = None if dropout_key is None else jax.random.fold_in(dropout_key, n)
    heads = (_lane(x, index, (0, 1)) for x in (q, bias, mask, sink))
    ql, bl, ml, sl = heads
    return step(index, carry, (ql, kl, vl, bl, ml, sl, st_l, key))

  return lax.fori_loop(0, B * K, lane, outputs)


def forward(q, k, v, bias, mask, sink, st, dropout_key, key_ranges, plan: BlockPlan, rate, seq_major=False):
  """Padded inputs -> out [B,K,G,Tp,Hv] and the log-normalizer [B,K,G,Tp] (finite, see the online logsumexp).

  With ``seq_major`` the keys and values are [B,S,K,H] (the caller's layout).
  The (batch row, key head) lanes run one at a time (:func:`_one_lane_at_a_time`)
  when the query blocks are tall enough (:func:`by_lane`).
  """
  if not by_lane(plan):
    return _forward(q, k, v, bias, mask, sink, st, dropout_key, key_ranges, plan, rate, seq_major)
  B, K, G, Tp, _ = q.shape

  def step(index, carry, inputs):
    q, k, v, bias, mask, sink, st, key = inputs
    results = _forward(q, k, v, bias, mask, sink, st, key, key_ranges, plan, rate, False)
    return tuple(_add_lane(c, x, index, (0, 1)) for c, x in zip(carry, results))

  init = (jnp.zeros((B, K, G, Tp, v.shape[-1]), q.dtype), jnp.zeros((B, K, G, Tp), q.dtype))
  return _one_lane_at_a_time(q, k, v, bias, mask, sink, st, dropout_key, seq_major, step, init)


def _forward(q, k, v, bias, mask, sink, st, dropout_key, key_ranges, plan: BlockPlan, rate, seq_major):
  """:func:`forward` for all the lanes at once (every tile holds them all)."""
  B, K, G, Tp, _ = q.shape
  Hv = v.shape[-1]
  bq, bk = plan.bq, plan.bk

  def query_block(i, carry):
    out, lse = carry
    qi = _fold(lax.dynamic_slice_in_dim(q, i * bq, bq, axis=3))

    def key_block(j, carry, masked=True):
      state, acc = carry
      kj, vj = _key_block(k, j, bk, seq_major), _key_block(v, j, bk, seq_major)
      logits, _ = _block_logits(qi, kj, bias, i, j, plan, G)
      block, p = online.reduce(logits, -1, _block_allowed(mask, st, i, j, plan, G) if masked else None)
      state, alpha, beta = online.merge(state, block)
      if rate > 0.0:
        p = p * _fold(_dropout_scale(dropout_key, st, i, j, (B, K, G, bq, bk), plan, rate))
      return state, acc * alpha + _rows_values(p, vj) * beta

    if mask is None and structure.band_only(st) and plan.band != structure.Band():
      # Causal or windowed: most visited blocks lie wholly inside the band and
      # need no mask; only the blocks the band's edges cross build one.
      masked_block = key_block
      s_true = plan.s if plan.s % bk else None

      def key_block(j, carry):
        full = structure.tile_full(st, plan.band, i * bq, j * bk, bq, bk, s_true)
        return lax.cond(full, lambda c: masked_block(j, c, masked=False), lambda c: masked_block(j, c), carry)

    init = (
      jax.tree.map(_fold, sink_state(sink, (B, K, G, bq, 1), q.dtype)),
      jnp.zeros((B, K, G * bq, Hv), q.dtype),
    )
    state, acc = lax.fori_loop(key_ranges[i, 0], key_ranges[i, 1], key_block, init)
    o = (acc / online.safe(state.s)).reshape(B, K, G, bq, Hv)
    out = lax.dynamic_update_slice_in_dim(out, o, i * bq, axis=3)
    lse = lax.dynamic_update_slice_in_dim(
      lse, online.log_normalizer(state).reshape(B, K, G, bq), i * bq, axis=3
    )
    return out, lse

  init = (jnp.zeros((B, K, G, Tp, Hv), q.dtype), jnp.zeros((B, K, G, Tp), q.dtype))
  return lax.fori_loop(0, plan.nq, query_block, init)


def _reduce_to(x, shape):
  """Sums ``x`` over the axes where ``shape`` has size 1 (undoing broadcasting)."""
  axes = tuple(a for a, (n, m) in enumerate(zip(x.shape, shape)) if m == 1 and n != 1)
  return jnp.sum(x, axis=axes, keepdims=True) if axes else x


def row_delta(out, g, g_lse):
  """``delta_i = <dO_i, O_i> - d lse_i``: the softmax-Jacobian term of each row.

  ``<dO_i, O_i> = sum_j P_ij dP_ij``, and the log-normalizer's cotangent
  enters as ``d lse_i / d logit_ij = P_ij``.
  """
  delta = jnp.sum(g * out, axis=-1)
  return delta if g_lse is None else delta - g_lse


def sink_grad(sink, lse, delta):
  """The sink logits' gradient (shape of ``sink``): d out / d sink = -P_sink out, d lse / d sink = P_sink."""
  p_sink = jnp.exp(sink[..., 0] - lse)
  return _reduce_to(-p_sink * delta, sink.shape[:-1])[..., None]


def backward(
  q, k, v, bias, mask, st, dropout_key, query_ranges, lse, delta, g, need_dbias, plan, rate, seq_major=False
):
  """Padded inputs, the final log-normalizer, ``delta`` and ``g`` -> dq, dk, dv, dbias (None unless ``need_dbias``).

  With ``seq_major`` the keys and values, and so their gradients, are [B,S,K,H].

  ``lse`` and ``delta`` are those of the whole rows: the gradient of a block
  depends on the other blocks of its row only through them, so the
  gradients of a split key range add up. The (batch row, key head) lanes
  run one at a time, as in :func:`forward`.
  """
  if not by_lane(plan):
    args = (q, k, v, bias, mask, st, dropout_key, query_ranges, lse, delta, g, need_dbias, plan, rate)
    return _backward(*args, seq_major)
  kv_axes = (0, 2) if seq_major else (0, 1)

  def step(index, carry, inputs):
    q, k, v, bias, mask, _, st, key = inputs
    dq, dk, dv, dbias = carry
    per_lane = (_lane(x, index, (0, 1)) for x in (lse, delta, g))
    args = (q, k, v, bias, mask, st, key, query_ranges, *per_lane, need_dbias, plan, rate)
    dql, dkl, dvl, dbl = _backward(*args, False)
    if seq_major:
      dkl, dvl = jnp.swapaxes(dkl, 1, 2), jnp.swapaxes(dvl, 1, 2)
    # Keys, values or a bias shared by several lanes (broadcast) add up their gradients.
    dq = _add_lane(dq, dql, index, (0, 1))
    dk, dv = _add_lane(dk, dkl, index, kv_axes), _add_lane(dv, dvl, index, kv_axes)
    if need_dbias:
      dbias = _add_lane(dbias, dbl, index, (0, 1))
    return dq, dk, dv, dbias

  dbias = jnp.zeros(bias.shape, q.dtype) if need_dbias else None
  init = (jnp.zeros_like(q), jnp.zeros_like(k), jnp.zeros_like(v), dbias)
  return _one_lane_at_a_time(q, k, v, bias, mask, None, st, dropout_key, seq_major, step, init)


def _backward(
  q, k, v, bias, mask, st, dropout_key, query_ranges, lse, delta, g, need_dbias, plan, rate, seq_major
):
  """:func:`backward` for all the lanes at once."""
  B, K, G = q.shape[:3]
  bq, bk = plan.bq, plan.bk
  rows = lambda x, i: _fold(lax.dynamic_slice_in_dim(x, i * bq, bq, axis=3))
  column = lambda x, i: rows(x[..., None], i)

  def key_block(j, carry):
    dq, dk, dv, dbias = carry
    kj, vj = _key_block(k, j, bk, seq_major), _key_block(v, j, bk, seq_major)

    def query_block(i, carry):
      dq, dkj, dvj, dbias = carry
      qi, gi = rows(q, i), rows(g, i)
      logits, raw = _block_logits(qi, kj, bias, i, j, plan, G)
      # The log-normalizer is finite, so a row with nothing allowed gets p = 0.
      p = jnp.exp(logits - column(lse, i))
      allowed = _block_allowed(mask, st, i, j, plan, G)
      if allowed is not None:
        p = jnp.where(allowed, p, 0)
      dp = _rows_keys(gi, vj)
      if rate > 0.0:
        z = _fold(_dropout_scale(dropout_key, st, i, j, (B, K, G, bq, bk), plan, rate))
        dvj = dvj + _keys_rows(p * z, gi)
        dp = dp * z
      else:
        dvj = dvj + _keys_rows(p, gi)
      ds = p * (dp - column(delta, i))
      if need_dbias:
        start = [0, 0, 0, i * bq if bias.shape[3] != 1 else 0, j * bk if bias.shape[4] != 1 else 0]
        old = _slice_pair(dbias, i, j, plan)
        dbias = lax.dynamic_update_slice(
          dbias, old + _reduce_to(ds.reshape(B, K, G, bq, bk), old.shape), start
        )
      if plan.cap is not None:
        ds = ds * (1 - jnp.square(jnp.tanh(raw / plan.cap)))
      dqi = lax.dynamic_slice_in_dim(dq, i * bq, bq, axis=3)
      dqi = dqi + _rows_values(ds, kj).reshape(dqi.shape)
      dq = lax.dynamic_update_slice_in_dim(dq, dqi, i * bq, axis=3)
      dkj = dkj + _keys_rows(ds, qi)
      return dq, dkj, dvj, dbias

    init = (dq, jnp.zeros_like(kj), jnp.zeros_like(vj), dbias)
    dq, dkj, dvj, dbias = lax.fori_loop(query_ranges[j, 0], query_ranges[j, 1], query_block, init)
    if seq_major:
      dkj, dvj = jnp.swapaxes(dkj, 1, 2), jnp.swapaxes(dvj, 1, 2)
    dk = lax.dynamic_update_slice_in_dim(dk, dkj, j * bk, axis=1 if seq_major else 2)
    dv = lax.dynamic_update_slice_in_dim(dv, dvj, j * bk, axis=1 if seq_major else 2)
    return dq, dk, dv, dbias

  dbias = jnp.zeros(bias.shape, q.dtype) if need_dbias else None
  init = (jnp.zeros_like(q), jnp.zeros_like(k), jnp.zeros_like(v), dbias)
  return lax.fori_loop(0, plan.nk, key_block, init)


def _max_query_blocks(plan: BlockPlan) -> int:
  """A static bound on the number of query blocks a key block meets: ``nq``, or fewer under a window."""
  lo, hi = plan.band
  if lo is None or hi is None:
    return plan.nq
  # A key block's queries lie in a run of bk - 1 + hi - lo + 1 positions.
  return min(plan.nq, (plan.bk + hi - lo - 1) // plan.bq + 2)


def tangent(primals, out, lse, tangents, query_ranges, plan: BlockPlan, rate):
  r"""The tangents of ``out`` and of the log-normalizer: one more pass over the visited blocks, linear in ``tangents``.

  ``primals`` are the padded ``(q, k, v, bias, mask, sink, st,
  dropout_key)`` (k, v sequence-major), ``tangents`` those of ``(q, k, v,
  bias, sink)``, each None when zero. With the row's weights ``P = exp(logits
  - lse)`` known from the primal pass (no online rescaling) and ``dS`` the
  tangent of the logits,

  .. math::
    \dot{\ell}_t = \sum_s P_{ts} \dot{S}_{ts} + P_{t,\mathrm{sink}} \dot{\sigma}, \qquad
    \dot{o}_t = \sum_s P_{ts} z_{ts} (\dot{v}_s + \dot{S}_{ts} v_s) - \dot{\ell}_t o_t,

  ``z`` being the dropout multipliers. JAX transposes this pass for reverse
  mode, so it is written to transpose into a memory-lean backward pass (the
  FlashAttention backward: the cotangent of ``dS`` is ``P (dO v^T -
  delta)``): loops with static trip counts (each key block visits a static
  number of query-block slots, fewer under a window, and a ``lax.cond``
  skips the slots past its range: the order of :func:`backward`); each tile
  under ``jax.checkpoint``, reading the primals by index inside, so that its
  weights are recomputed in the backward pass and the only residuals are the
  inputs themselves (a tile's own inputs would be saved once per tile).
  """
  q, k, v, bias, mask, sink, st, dropout_key = primals
  tq, tk, tv, tbias, tsink = tangents
  B, K, G = q.shape[:3]
  Hv = v.shape[-1]
  bq, bk = plan.bq, plan.bk
  rows = lambda x, i: _fold(lax.dynamic_slice_in_dim(x, i * bq, bq, axis=3))

  def tile(primals, lse, i, j, tqi, tkj, tvj, tbias):
    q, k, v, bias, mask, st, dropout_key = primals
    qi = rows(q, i)
    kj, vj = _key_block(k, j, bk, True), _key_block(v, j, bk, True)
    logits, raw = _block_logits(qi, kj, bias, i, j, plan, G)
    p = jnp.exp(logits - rows(lse[..., None], i))
    allowed = _block_allowed(mask, st, i, j, plan, G)
    if allowed is not None:
      p = jnp.where(allowed, p, 0)
    ds = None
    if tqi is not None:
      ds = _rows_keys(tqi, kj)
    if tkj is not None:
      ds = _rows_keys(qi, tkj) if ds is None else ds + _rows_keys(qi, tkj)
    if ds is not None and plan.cap is not None:
      ds = ds * (1 - jnp.square(jnp.tanh(raw / plan.cap)))
    if tbias is not None:
      b = _as_rows(_slice_pair(tbias, i, j, plan), G, bq)
      ds = b if ds is None else ds + b
    pz = p
    if rate > 0.0:
      # The bits of :func:`forward`, drawn one (batch row, key head) lane at a time or all at once.
      if by_lane(plan):
        lanes = [jax.random.fold_in(dropout_key, n) for n in range(B * K)]
        z = jnp.stack([_dropout_scale(key, st, i, j, (G, bq, bk), plan, rate) for key in lanes])
      else:
        z = _dropout_scale(dropout_key, st, i, j, (B, K, G, bq, bk), plan, rate)
      pz = p * _fold(z.reshape(B, K, G, bq, bk))
    acc = jnp.zeros(qi.shape[:3] + (Hv,), q.dtype)
    rs = jnp.zeros(qi.shape[:3], q.dtype)
    if ds is not None:
      ds = jnp.broadcast_to(ds, p.shape)
      acc = acc + _rows_values(pz * ds, vj)
      rs = rs + jnp.sum(p * ds, axis=-1)
    if tvj is not None:
      acc = acc + _rows_values(pz, tvj)
    return acc.reshape(B, K, G, bq, Hv), rs.reshape(B, K, G, bq)

  @jax.checkpoint
  def visited_tile(primals, lse, visit, i, j, *tangents):
    zeros = (jnp.zeros((B, K, G, bq, Hv), q.dtype), jnp.zeros((B, K, G, bq), q.dtype))
    return lax.cond(visit, lambda: tile(primals, lse, i, j, *tangents), lambda: zeros)

  tile_primals = (q, k, v, bias, mask, st, dropout_key)

  def key_block(j, carry):
    tkj, tvj = (None if t is None else _key_block(t, j, bk, True) for t in (tk, tv))
    first, last = query_ranges[j, 0], query_ranges[j, 1]

    def query_block(c, carry):
      # The c-th query block of the key block's range; past its end the
      # clamped block is read but not visited.
      i = jnp.minimum(first + c, plan.nq - 1)
      tqi = None if tq is None else rows(tq, i)
      a, r = visited_tile(tile_primals, lse, first + c < last, i, j, tqi, tkj, tvj, tbias)
      acc, rs = carry
      acc = lax.dynamic_update_slice_in_dim(acc, lax.dynamic_slice_in_dim(acc, i * bq, bq, 3) + a, i * bq, 3)
      rs = lax.dynamic_update_slice_in_dim(rs, lax.dynamic_slice_in_dim(rs, i * bq, bq, 3) + r, i * bq, 3)
      return acc, rs

    return lax.fori_loop(0, _max_query_blocks(plan), query_block, carry)

  # Static bounds: JAX transposes a fori_loop only when they are.
  acc, rs = lax.fori_loop(0, plan.nk, key_block, (jnp.zeros_like(out), jnp.zeros_like(lse)))
  if tsink is not None:
    rs = rs + jnp.exp(sink[..., 0] - lse) * tsink[..., 0]
  return acc - rs[..., None] * out, rs


def _primal(q, k, v, bias, mask, sink, st, dropout_key, key_ranges, query_ranges, plans, rate):
  return forward(q, k, v, bias, mask, sink, st, dropout_key, key_ranges, plans[0], rate, seq_major=True)


_kernel = jax.custom_vjp(_primal, nondiff_argnums=(10, 11))
_jvp_kernel = jax.custom_jvp(_primal, nondiff_argnums=(10, 11))


def _kernel_fwd(q, k, v, bias, mask, sink, st, dropout_key, key_ranges, query_ranges, plans, rate):
  # Optional arguments that are None arrive as None, the others wrapped.
  value = lambda a: None if a is None else a.value
  args = [value(a) for a in (q, k, v, bias, mask, sink)]
  st, dropout_key = jax.tree.map(value, st, is_leaf=lambda a: a is None), value(dropout_key)
  out, lse = forward(*args, st, dropout_key, key_ranges.value, plans[0], rate, seq_major=True)
  # The pytree structure of the flag ((), or None) tells the backward pass,
  # statically, whether the bias is differentiated: a constant bias (ALiBi,
  # padding) then costs no T x S gradient.
  flag = () if (bias is not None and bias.perturbed) else None
  return (out, lse), (*args, st, dropout_key, query_ranges.value, out, lse, flag)


def _kernel_bwd(plans, rate, res, cotangents):
  *args, st, dropout_key, query_ranges, out, lse, flag = res
  g, g_lse = (None if isinstance(c, SymbolicZero) else c for c in cotangents)
  if g is None and g_lse is None:
    return (None,) * 10
  if g is None:
    g = jnp.zeros_like(out)
  q, k, v, bias, mask, sink = args
  delta = row_delta(out, g, g_lse)
  dq, dk, dv, dbias = backward(
    q,
    k,
    v,
    bias,
    mask,
    st,
    dropout_key,
    query_ranges,
    lse,
    delta,
    g,
    flag is not None,
    plans[1],
    rate,
    seq_major=True,
  )
  dsink = None if sink is None else sink_grad(sink, lse, delta)
  return dq, dk, dv, dbias, None, dsink, None, None, None, None


_kernel.defvjp(_kernel_fwd, _kernel_bwd, symbolic_zeros=True)


def _jvp_rule(plans, rate, primals, tangents):
  # The primal through the kernel itself, so that a derivative of this rule
  # (reverse over reverse) again meets this rule, never the forward loops.
  out, lse = _jvp_kernel(*primals, plans, rate)
  *primals, _, query_ranges = primals
  # Zero tangents arrive symbolic: a constant bias (ALiBi, padding) then
  # costs no T x S tangent, and its transpose no T x S gradient.
  tq, tk, tv, tbias, _, tsink = (None if isinstance(t, SymbolicZero) else t for t in tangents[:6])
  t_out, t_lse = tangent(primals, out, lse, (tq, tk, tv, tbias, tsink), query_ranges, plans[1], rate)
  return (out, lse), (t_out, t_lse)


_jvp_kernel.defjvp(_jvp_rule, symbolic_zeros=True)


# ----------------------------------------------------------------------------
# Entry point


def pad_axis(x, axis, multiple):
  extra = -x.shape[axis] % multiple
  if extra == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths)


def _pad_ts(x, bq, bk):
  """Pads the full-length T and S axes of a [b,k,g,t,s] mask or bias to whole blocks."""
  if x is None:
    return None
  if x.shape[3] != 1:
    x = pad_axis(x, 3, bq)
  if x.shape[4] != 1:
    x = pad_axis(x, 4, bk)
  return x


def _pad_rows(x, multiple):
  return None if x is None else pad_axis(x, 1, multiple)


def make_plan(T: int, S: int, band, cap, blocks) -> BlockPlan:
  """The plan of ``T`` queries against ``S`` keys (both > 0) with the requested ``blocks``."""
  # Blocks never exceed the (8-rounded) lengths, so short inputs are not padded
  # much, and a length under 8 (one decoding query) is one unpadded block.
  bq, bk = (n if n < 8 else min(b, -(-n // 8) * 8) for n, b in ((T, blocks[0]), (S, blocks[1])))
  return BlockPlan(bq, bk, T, S, band, cap)


def pad(q, k, v, bias, mask, st, mq: int, mk: int):
  """Pads the query and key axes of the inputs (k, v sequence-major) and of the segment ids to multiples of ``mq``, ``mk``."""
  q = pad_axis(q, 3, mq)
  k, v = pad_axis(k, 1, mk), pad_axis(v, 1, mk)
  bias, mask = _pad_ts(bias, mq, mk), _pad_ts(mask, mq, mk)
  st = st._replace(q_seg=_pad_rows(st.q_seg, mq), kv_seg=_pad_rows(st.kv_seg, mk))
  return q, k, v, bias, mask, st


def empty_result(q, v, sink):
  """The result when there is no query or no key: zeros, and the lowest number (or the sink) as lse."""
  lse = jnp.full(q.shape[:4], jnp.finfo(q.dtype).min, q.dtype)
  if sink is not None:
    lse = jnp.broadcast_to(sink[..., 0], lse.shape)
  return jnp.zeros(q.shape[:4] + v.shape[-1:], q.dtype), lse


def attention(
  q,
  k,
  v,
  bias,
  mask,
  sink,
  st,
  dropout_key,
  *,
  band,
  cap,
  dropout_rate: float,
  blocks,
  backward_blocks,
  forward_mode: bool = False,
):
  """Head-major q [B,K,G,T,H], sequence-major k, v [B,S,K,H] -> out [B,K,G,T,Hv], log-normalizer [B,K,G,T].

  The keys and values stay in the caller's layout: no whole transposed copy
  of them, or of their gradients, is made (a lane at a time is copied
  head-major, or each key block is transposed when it is read, and the
  gradients are written back in that layout).

  ``sink`` is None or ``[1,K,G,1,1]``; ``st`` a
  :class:`~jaxsoft._attention_structure.Structure`; ``band`` its static
  band; ``cap`` the soft cap or None; ``blocks`` and ``backward_blocks`` the
  (query block, key block) pairs of the forward and the backward pass (with
  dropout the backward pass uses ``blocks``: the bits are keyed by block);
  ``dropout_key`` is unused when ``dropout_rate`` is 0; ``forward_mode``
  picks the custom JVP (its tangent pass runs on the backward blocks). The log-normalizer is
  finite: the dtype's lowest number where a row has nothing allowed (and no
  sink).
  """
  T, S = q.shape[3], k.shape[1]
  if T == 0 or S == 0:
    # No query, or no key to attend to: a query with no allowed key outputs zeros.
    return empty_result(q, v, sink)
  plan = make_plan(T, S, band, cap, blocks)
  bplan = plan if dropout_rate > 0.0 else make_plan(T, S, band, cap, backward_blocks)
  key_ranges, _ = block_ranges(st, plan)
  _, query_ranges = block_ranges(st, bplan)
  # Both passes' blocks tile the padded arrays. Past the forward pass's last
  # query block the log-normalizer stays 0: the padded rows' cotangent is 0,
  # so the backward pass gives them (finite) weights times zero.
  mq, mk = math.lcm(plan.bq, bplan.bq), math.lcm(plan.bk, bplan.bk)
  q, k, v, bias, mask, st = pad(q, k, v, bias, mask, st, mq, mk)
  kernel = _jvp_kernel if forward_mode else _kernel
  out, lse = kernel(
    q, k, v, bias, mask, sink, st, dropout_key, key_ranges, query_ranges, (plan, bplan), float(dropout_rate)
  )
  return out[:, :, :, :T], lse[:, :, :, :T]
