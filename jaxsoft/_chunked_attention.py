"""The chunked attention kernel: an online softmax over key blocks, with a custom VJP.

For each query block the forward pass runs the online logsumexp
(:mod:`jaxsoft._online_logsumexp`) over the key blocks, as in FlashAttention
(Dao et al. 2022) and Rabe & Staats (2021), and keeps only the output and the
per-row log-normalizer. The backward pass recomputes each block's weights from
that log-normalizer, so memory is linear in ``T + S``.

Layout (shared with the dense path of :mod:`jaxsoft.attention`): everything is
head-major, q ``[B,K,G,T,H]``, k ``[B,K,S,H]``, v ``[B,K,S,Hv]``, and bias and
mask ``[b,k,g,t,s]`` with each axis either full or 1. Folding the ``G`` query
heads of a key head into the rows makes every product a plain batched matmul
over ``(B, K)``: XLA's CPU dots are several times slower on other layouts.

Which blocks are visited is data, not control flow: per query block ``i`` a
range ``[first, last)`` of the key blocks that may hold an allowed pair (the
forward loop), and per key block ``j`` the range of query blocks that may
(the backward loop), both computed from the static structure by
:func:`key_block_ranges` and its transpose :func:`query_block_ranges`.
Inside a visited block every pair is still masked element by element
(:func:`_block_logits`), so a range may hold blocks without an allowed pair
(wasted work) but must hold every block with one. A new structured mask
extends those two places: which pairs of a block are allowed, and which
blocks can hold an allowed pair.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxsoft import _online_logsumexp as online

# ----------------------------------------------------------------------------
# Head-major products


def _fold(x):
  return x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3], x.shape[4])


def qk(q, k):
  """[B,K,G,T,H] x [B,K,S,H] -> [B,K,G,T,S]: rows times keys."""
  out = jnp.einsum("bkth,bksh->bkts", _fold(q), k)
  return out.reshape(q.shape[:4] + (k.shape[2],))


def pv(p, v):
  """[B,K,G,T,S] x [B,K,S,Hv] -> [B,K,G,T,Hv]: weights times values."""
  out = jnp.einsum("bkts,bksh->bkth", _fold(p), v)
  return out.reshape(p.shape[:4] + (v.shape[3],))


def _tp(p, x):
  """[B,K,G,T,S] x [B,K,G,T,D] -> [B,K,S,D]: transposed weights times rows, summed over G."""
  return jnp.einsum("bkts,bkth->bksh", _fold(p), _fold(x))


def bernoulli(key, p, shape):
  """``jax.random.bernoulli(key, p, shape)``, drawn flat and reshaped: the same bits.

  XLA's CPU compiler spends seconds on the multi-dimensional counters of the
  (partitionable) threefry generator: measured 3 s for a ``[1, 2, 1, 16, 16]``
  draw against 0.3 s flat.
  """
  return jax.random.bernoulli(key, p, (math.prod(shape),)).reshape(shape)


def causal_allowed(t0, s0, tq, sk):
  """Top-left aligned causal mask of a [tq, sk] block starting at (t0, s0)."""
  rows = t0 + lax.broadcasted_iota(jnp.int32, (tq, sk), 0)
  cols = s0 + lax.broadcasted_iota(jnp.int32, (tq, sk), 1)
  return rows >= cols


# ----------------------------------------------------------------------------
# The static block plan and the block ranges


class BlockPlan(NamedTuple):
  """The static tiling of one call: block sizes, true lengths and the structure."""

  bq: int  # query block
  bk: int  # key block
  t: int  # true query length (before padding to whole blocks)
  s: int  # true key length
  causal: bool

  @property
  def nq(self) -> int:
    return -(-self.t // self.bq)

  @property
  def nk(self) -> int:
    return -(-self.s // self.bk)


def key_block_ranges(plan: BlockPlan) -> np.ndarray:
  """``[nq, 2]``: per query block, the ``[first, last)`` key blocks that may hold an allowed pair."""
  ranges = np.zeros((plan.nq, 2), np.int32)
  ranges[:, 1] = plan.nk
  if plan.causal:
    # The last (unpadded) row of query block i sees the keys up to itself.
    ends = np.minimum((np.arange(plan.nq) + 1) * plan.bq, plan.t)
    ranges[:, 1] = np.minimum(plan.nk, -(-ends // plan.bk))
  return ranges


def query_block_ranges(key_ranges: np.ndarray, nk: int) -> np.ndarray:
  """``[nk, 2]``: per key block, the ``[first, last)`` hull of the query blocks whose range holds it."""
  j = np.arange(nk)
  needs = (key_ranges[:, :1] <= j) & (j < key_ranges[:, 1:])  # [nq, nk]
  nq = needs.shape[0]
  any_ = needs.any(axis=0)
  first = np.where(any_, needs.argmax(axis=0), 0)
  last = np.where(any_, nq - needs[::-1].argmax(axis=0), 0)
  return np.stack([first, last], axis=1).astype(np.int32)


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


def _block_logits(qi, kj, bias, mask, i, j, plan: BlockPlan):
  """Logits [B,K,G,bq,bk] of query block i against key block j, -inf where not allowed."""
  s = qk(qi, kj)
  b = _slice_pair(bias, i, j, plan)
  if b is not None:
    s = s + b
  allowed = _slice_pair(mask, i, j, plan)
  if plan.causal:
    causal = causal_allowed(i * plan.bq, j * plan.bk, plan.bq, plan.bk)
    allowed = causal if allowed is None else allowed & causal
  if plan.s % plan.bk:  # padded keys at the end of the last block
    cols = j * plan.bk + lax.broadcasted_iota(jnp.int32, (1, plan.bk), 1)
    valid = cols < plan.s
    allowed = valid if allowed is None else allowed & valid
  if allowed is not None:
    s = jnp.where(allowed, s, -jnp.inf)
  return s


def _dropout_scale(key, i, j, shape, rate):
  """Dropout multiplier of block (i, j): 0 or 1 / (1 - rate); the same bits in both passes."""
  bits_key = jax.random.fold_in(jax.random.fold_in(key, i), j)
  keep = bernoulli(bits_key, 1.0 - rate, shape)
  return jnp.where(keep, 1.0 / (1.0 - rate), 0.0)


# ----------------------------------------------------------------------------
# Forward, backward, custom VJP


def _forward(q, k, v, bias, mask, dropout_key, key_ranges, plan: BlockPlan, rate):
  """-> out [B,K,G,Tp,Hv] and the log-normalizer [B,K,G,Tp] (finite, see the online logsumexp)."""
  B, K, G, Tp, _ = q.shape
  Hv = v.shape[-1]
  bq, bk = plan.bq, plan.bk

  def query_block(i, carry):
    out, lse = carry
    qi = lax.dynamic_slice_in_dim(q, i * bq, bq, axis=3)

    def key_block(j, carry):
      state, acc = carry
      kj = lax.dynamic_slice_in_dim(k, j * bk, bk, axis=2)
      vj = lax.dynamic_slice_in_dim(v, j * bk, bk, axis=2)
      block, p = online.reduce(_block_logits(qi, kj, bias, mask, i, j, plan), -1)
      state, alpha, beta = online.merge(state, block)
      if rate > 0.0:
        p = p * _dropout_scale(dropout_key, i, j, p.shape, rate)
      return state, acc * alpha + pv(p, vj) * beta

    init = (online.empty((B, K, G, bq, 1), q.dtype), jnp.zeros((B, K, G, bq, Hv), q.dtype))
    state, acc = lax.fori_loop(key_ranges[i, 0], key_ranges[i, 1], key_block, init)
    out = lax.dynamic_update_slice_in_dim(out, acc / online.safe(state.s), i * bq, axis=3)
    lse = lax.dynamic_update_slice_in_dim(lse, online.log_normalizer(state)[..., 0], i * bq, axis=3)
    return out, lse

  init = (jnp.zeros((B, K, G, Tp, Hv), q.dtype), jnp.zeros((B, K, G, Tp), q.dtype))
  return lax.fori_loop(0, plan.nq, query_block, init)


def _reduce_to(x, shape):
  """Sums ``x`` over the axes where ``shape`` has size 1 (undoing broadcasting)."""
  axes = tuple(a for a, (n, m) in enumerate(zip(x.shape, shape)) if m == 1 and n != 1)
  return jnp.sum(x, axis=axes, keepdims=True) if axes else x


def _backward(q, k, v, bias, mask, dropout_key, query_ranges, out, lse, g, need_dbias, plan, rate):
  bq, bk = plan.bq, plan.bk
  # delta_i = <dO_i, O_i> = sum_j P_ij dP_ij: the softmax-Jacobian term per row.
  delta = jnp.sum(g * out, axis=-1)

  def key_block(j, carry):
    dq, dk, dv, dbias = carry
    kj = lax.dynamic_slice_in_dim(k, j * bk, bk, axis=2)
    vj = lax.dynamic_slice_in_dim(v, j * bk, bk, axis=2)

    def query_block(i, carry):
      dq, dkj, dvj, dbias = carry
      qi = lax.dynamic_slice_in_dim(q, i * bq, bq, axis=3)
      gi = lax.dynamic_slice_in_dim(g, i * bq, bq, axis=3)
      lse_i = lax.dynamic_slice_in_dim(lse, i * bq, bq, axis=3)
      delta_i = lax.dynamic_slice_in_dim(delta, i * bq, bq, axis=3)
      # The log-normalizer is finite, so a row with nothing allowed gets exp(-inf) = 0.
      p = jnp.exp(_block_logits(qi, kj, bias, mask, i, j, plan) - lse_i[..., None])
      dp = qk(gi, vj)
      if rate > 0.0:
        z = _dropout_scale(dropout_key, i, j, p.shape, rate)
        dvj = dvj + _tp(p * z, gi)
        dp = dp * z
      else:
        dvj = dvj + _tp(p, gi)
      ds = p * (dp - delta_i[..., None])
      dqi = lax.dynamic_slice_in_dim(dq, i * bq, bq, axis=3)
      dq = lax.dynamic_update_slice_in_dim(dq, dqi + pv(ds, kj), i * bq, axis=3)
      dkj = dkj + _tp(ds, qi)
      if need_dbias:
        start = [0, 0, 0, i * bq if bias.shape[3] != 1 else 0, j * bk if bias.shape[4] != 1 else 0]
        old = _slice_pair(dbias, i, j, plan)
        dbias = lax.dynamic_update_slice(dbias, old + _reduce_to(ds, old.shape), start)
      return dq, dkj, dvj, dbias

    init = (dq, jnp.zeros_like(kj), jnp.zeros_like(vj), dbias)
    dq, dkj, dvj, dbias = lax.fori_loop(query_ranges[j, 0], query_ranges[j, 1], query_block, init)
    dk = lax.dynamic_update_slice_in_dim(dk, dkj, j * bk, axis=2)
    dv = lax.dynamic_update_slice_in_dim(dv, dvj, j * bk, axis=2)
    return dq, dk, dv, dbias

  dbias = jnp.zeros(bias.shape, q.dtype) if need_dbias else None
  init = (jnp.zeros_like(q), jnp.zeros_like(k), jnp.zeros_like(v), dbias)
  return lax.fori_loop(0, plan.nk, key_block, init)


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9))
def _kernel(q, k, v, bias, mask, dropout_key, key_ranges, query_ranges, plan, rate):
  return _forward(q, k, v, bias, mask, dropout_key, key_ranges, plan, rate)[0]


def _kernel_fwd(q, k, v, bias, mask, dropout_key, key_ranges, query_ranges, plan, rate):
  # Optional arguments that are None arrive as None, the others wrapped.
  args = [None if a is None else a.value for a in (q, k, v, bias, mask, dropout_key)]
  out, lse = _forward(*args, key_ranges.value, plan, rate)
  # The pytree structure of the flag ((), or None) tells the backward pass,
  # statically, whether the bias is differentiated: a constant bias (ALiBi,
  # padding) then costs no T x S gradient.
  flag = () if (bias is not None and bias.perturbed) else None
  return out, (*args, query_ranges.value, out, lse, flag)


def _kernel_bwd(plan, rate, res, g):
  *args, query_ranges, out, lse, flag = res
  if isinstance(g, SymbolicZero):
    return (None,) * 8
  dq, dk, dv, dbias = _backward(*args, query_ranges, out, lse, g, flag is not None, plan, rate)
  return dq, dk, dv, dbias, None, None, None, None


_kernel.defvjp(_kernel_fwd, _kernel_bwd, symbolic_zeros=True)


# ----------------------------------------------------------------------------
# Entry point


def _pad_axis(x, axis, multiple):
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
    x = _pad_axis(x, 3, bq)
  if x.shape[4] != 1:
    x = _pad_axis(x, 4, bk)
  return x


def attention(q, k, v, bias, mask, dropout_key, *, causal: bool, dropout_rate: float, blocks):
  """Head-major q, k, v (see the module docstring) -> out [B,K,G,T,Hv].

  ``blocks`` is the (query block, key block) pair; ``dropout_key`` is unused
  when ``dropout_rate`` is 0.
  """
  T, S = q.shape[3], k.shape[2]
  if T == 0 or S == 0:
    # No query, or no key to attend to: a query with no allowed key outputs zeros.
    return jnp.zeros(q.shape[:4] + v.shape[3:], q.dtype)
  # Blocks never exceed the (8-rounded) lengths, so short inputs are not padded much.
  plan = BlockPlan(min(blocks[0], -(-T // 8) * 8), min(blocks[1], -(-S // 8) * 8), T, S, bool(causal))
  key_ranges = key_block_ranges(plan)
  query_ranges = query_block_ranges(key_ranges, plan.nk)
  # The loop indices come from these ranges: in the default integer type, as
  # the other slice offsets.
  key_ranges, query_ranges = jnp.asarray(key_ranges, dtype=int), jnp.asarray(query_ranges, dtype=int)
  q = _pad_axis(q, 3, plan.bq)
  k, v = _pad_axis(k, 2, plan.bk), _pad_axis(v, 2, plan.bk)
  bias, mask = _pad_ts(bias, plan.bq, plan.bk), _pad_ts(mask, plan.bq, plan.bk)
  out = _kernel(q, k, v, bias, mask, dropout_key, key_ranges, query_ranges, plan, float(dropout_rate))
  return out[:, :, :, :T]
