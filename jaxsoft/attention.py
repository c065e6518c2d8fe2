"""Scaled dot-product attention (dense and chunked) and a multi-head layer.

Shapes follow :func:`jax.nn.dot_product_attention`: queries are
``[B..., T, N, H]``, keys ``[B..., S, K, H]`` and values ``[B..., S, K, H_v]``
with any number of leading batch dimensions (including none). ``N`` query heads
share ``K`` key/value heads (``N % K == 0``): query head ``n`` reads key head
``n // (N // K)``, which gives multi-head (``K == N``), grouped-query and
multi-query (``K == 1``) attention.

Two implementations compute the same function:

* ``"dense"`` materializes the ``[B..., N, T, S]`` weights, like ``jax.nn``.
* ``"chunked"`` runs an online softmax (Milakov & Gimelshein 2018) over key
  blocks for each query block, as in FlashAttention (Dao et al. 2022) and
  Rabe & Staats (2021). Its custom VJP keeps only the output and the per-row
  log-normalizer and recomputes each block in the backward pass, so memory is
  linear in ``T + S``. Under ``is_causal`` blocks above the diagonal are
  skipped, forward and backward.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxsoft import _validate as V
from jaxsoft._dtypes import compute_dtype

__all__ = [
  "AttentionResult",
  "scaled_dot_product_attention",
  "init_multi_head_attention",
  "multi_head_attention",
]

# Default (query block, key block) of the chunked path and the T * S above which
# `implementation=None` picks it; both chosen from measurements on a 2-core
# AVX-512 CPU (see benchmarks/bench_attention.py and the module's report).
_DEFAULT_BLOCKS = (256, 512)
_DENSE_MAX_ELEMENTS = 256 * 512


class AttentionResult(NamedTuple):
  """Attention output and the weights that produced it.

  Attributes:
    output: ``[B..., T, N, H_v]``.
    weights: ``[B..., N, T, S]``, the softmax weights after dropout.
  """

  output: jax.Array
  weights: jax.Array


# ----------------------------------------------------------------------------
# Both paths work head-major: q [B,K,G,T,H], k [B,K,S,H], v [B,K,S,Hv]; bias and
# mask are [b,k,g,t,s] with each axis either full or 1. Folding the G query
# heads of a key head into the rows makes every product a plain batched matmul
# over (B, K): XLA's CPU dots are several times slower on other layouts.


def _fold(x):
  return x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3], x.shape[4])


def _qk(q, k):
  """[B,K,G,T,H] x [B,K,S,H] -> [B,K,G,T,S]: rows times keys."""
  out = jnp.einsum("bkth,bksh->bkts", _fold(q), k)
  return out.reshape(q.shape[:4] + (k.shape[2],))


def _pv(p, v):
  """[B,K,G,T,S] x [B,K,S,Hv] -> [B,K,G,T,Hv]: weights times values."""
  out = jnp.einsum("bkts,bksh->bkth", _fold(p), v)
  return out.reshape(p.shape[:4] + (v.shape[3],))


def _tp(p, x):
  """[B,K,G,T,S] x [B,K,G,T,D] -> [B,K,S,D]: transposed weights times rows, summed over G."""
  return jnp.einsum("bkts,bkth->bksh", _fold(p), _fold(x))


# ----------------------------------------------------------------------------
# Dense path


@jax.custom_jvp
def _masked_softmax(logits):
  """Softmax over the last axis where -inf entries get 0 and all -inf rows give 0."""
  # The stabilizing shift is a constant for the gradient (softmax is shift
  # invariant); an all -inf row shifts by 0 so it yields exp(-inf) = 0, not NaN.
  m = jnp.max(logits, axis=-1, keepdims=True)
  m = jnp.where(m == -jnp.inf, 0.0, m)
  e = jnp.exp(logits - m)
  total = jnp.sum(e, axis=-1, keepdims=True)
  return e / jnp.where(total > 0, total, 1.0)


@_masked_softmax.defjvp
def _masked_softmax_jvp(primals, tangents):
  # The closed form w * (t - <w, t>) is zero wherever w is, so masked entries
  # and fully masked rows get exactly zero derivatives (autodiff of the
  # formula above would also pass through the shift and the division guard).
  w = _masked_softmax(primals[0])
  wt = w * tangents[0]
  return w, wt - w * jnp.sum(wt, axis=-1, keepdims=True)


def _causal_allowed(t0, s0, tq, sk):
  """Top-left aligned causal mask of a [tq, sk] block starting at (t0, s0)."""
  rows = t0 + lax.broadcasted_iota(jnp.int32, (tq, sk), 0)
  cols = s0 + lax.broadcasted_iota(jnp.int32, (tq, sk), 1)
  return rows >= cols


def _dense(q, k, v, bias, mask, is_causal, dropout_rate, dropout_key):
  """Head-major q, k, v (see above) -> out [B,K,G,T,Hv], weights [B,K,G,T,S]."""
  T, S = q.shape[3], k.shape[2]
  logits = _qk(q, k)
  if bias is not None:
    logits = logits + bias
  allowed = mask
  if is_causal:
    causal = _causal_allowed(0, 0, T, S)
    allowed = causal if allowed is None else allowed & causal
  if allowed is not None:
    logits = jnp.where(allowed, logits, -jnp.inf)
  weights = _masked_softmax(logits)
  if dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_key, 1.0 - dropout_rate, weights.shape)
    weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
  return _pv(weights, v), weights


# ----------------------------------------------------------------------------
# Chunked path


class _Blocks(NamedTuple):
  bq: int  # query block
  bk: int  # key block
  t: int  # true query length (before padding)
  s: int  # true key length
  causal: bool
  dropout_rate: float


def _slice_pair(x, i, j, c: _Blocks):
  """The [.., bq, bk] block (i, j) of a [.., t|1, s|1] mask or bias (size-1 axes kept)."""
  if x is None:
    return None
  if x.shape[-2] != 1:
    x = lax.dynamic_slice_in_dim(x, i * c.bq, c.bq, axis=x.ndim - 2)
  if x.shape[-1] != 1:
    x = lax.dynamic_slice_in_dim(x, j * c.bk, c.bk, axis=x.ndim - 1)
  return x


def _block_logits(qi, kj, bias, mask, i, j, c: _Blocks):
  """Masked logits [B,K,G,bq,bk] of query block i against key block j."""
  s = _qk(qi, kj)
  b = _slice_pair(bias, i, j, c)
  if b is not None:
    s = s + b
  allowed = _slice_pair(mask, i, j, c)
  if c.causal:
    causal = _causal_allowed(i * c.bq, j * c.bk, c.bq, c.bk)
    allowed = causal if allowed is None else allowed & causal
  if c.s % c.bk:  # padded keys at the end of the last block
    cols = j * c.bk + lax.broadcasted_iota(jnp.int32, (1, c.bk), 1)
    valid = cols < c.s
    allowed = valid if allowed is None else allowed & valid
  if allowed is not None:
    s = jnp.where(allowed, s, -jnp.inf)
  return s


def _dropout_scale(key, i, j, shape, c: _Blocks):
  """Dropout multiplier of block (i, j): 0 or 1 / (1 - rate); the same bits in both passes."""
  bits_key = jax.random.fold_in(jax.random.fold_in(key, i), j)
  keep = jax.random.bernoulli(bits_key, 1.0 - c.dropout_rate, shape)
  return jnp.where(keep, 1.0 / (1.0 - c.dropout_rate), 0.0)


def _num_key_blocks(i, nk, c: _Blocks):
  """Key blocks that query block i must visit (all, or those left of the diagonal)."""
  if not c.causal:
    return nk
  return jnp.minimum(nk, ((i + 1) * c.bq + c.bk - 1) // c.bk)


def _chunked_forward(q, k, v, bias, mask, dropout_key, c: _Blocks):
  B, K, G, Tp, H = q.shape
  Hv = v.shape[-1]
  nq, nk = Tp // c.bq, k.shape[2] // c.bk
  dtype = q.dtype

  def query_block(i, carry):
    out, lse = carry
    qi = lax.dynamic_slice_in_dim(q, i * c.bq, c.bq, axis=3)

    def key_block(j, state):
      m, l, acc = state
      kj = lax.dynamic_slice_in_dim(k, j * c.bk, c.bk, axis=2)
      vj = lax.dynamic_slice_in_dim(v, j * c.bk, c.bk, axis=2)
      s = _block_logits(qi, kj, bias, mask, i, j, c)
      m_new = jnp.maximum(m, jnp.max(s, axis=-1))
      # Rows with nothing allowed so far keep m = -inf; shifting them by 0
      # keeps exp(-inf - 0) = 0 instead of exp(-inf + inf) = NaN.
      shift = jnp.where(m_new == -jnp.inf, 0.0, m_new)
      p = jnp.exp(s - shift[..., None])
      alpha = jnp.exp(m - shift)
      l = l * alpha + jnp.sum(p, axis=-1)
      if c.dropout_rate > 0.0:
        p = p * _dropout_scale(dropout_key, i, j, p.shape, c)
      acc = acc * alpha[..., None] + _pv(p, vj)
      return m_new, l, acc

    init = (
      jnp.full((B, K, G, c.bq), -jnp.inf, dtype),
      jnp.zeros((B, K, G, c.bq), dtype),
      jnp.zeros((B, K, G, c.bq, Hv), dtype),
    )
    m, l, acc = lax.fori_loop(0, _num_key_blocks(i, nk, c), key_block, init)
    has_key = l > 0
    oi = acc / jnp.where(has_key, l, 1.0)[..., None]
    lse_i = jnp.where(has_key, m + jnp.log(jnp.where(has_key, l, 1.0)), -jnp.inf)
    out = lax.dynamic_update_slice_in_dim(out, oi, i * c.bq, axis=3)
    lse = lax.dynamic_update_slice_in_dim(lse, lse_i, i * c.bq, axis=3)
    return out, lse

  init = (jnp.zeros((B, K, G, Tp, Hv), dtype), jnp.zeros((B, K, G, Tp), dtype))
  return lax.fori_loop(0, nq, query_block, init)


def _reduce_to(x, shape):
  """Sums ``x`` over the axes where ``shape`` has size 1 (undoing broadcasting)."""
  axes = tuple(a for a, (n, m) in enumerate(zip(x.shape, shape)) if m == 1 and n != 1)
  return jnp.sum(x, axis=axes, keepdims=True) if axes else x


def _chunked_backward(q, k, v, bias, mask, dropout_key, out, lse, g, need_dbias, c: _Blocks):
  B, K, G, Tp, H = q.shape
  nq, nk = Tp // c.bq, k.shape[2] // c.bk
  # delta_i = <dO_i, O_i> = sum_j P_ij dP_ij: the softmax-Jacobian term per row.
  delta = jnp.sum(g * out, axis=-1)
  # A fully masked row has lse = -inf; +inf instead makes every exp(s - lse) 0.
  lse = jnp.where(lse == -jnp.inf, jnp.inf, lse)

  def key_block(j, carry):
    dq, dk, dv, dbias = carry
    kj = lax.dynamic_slice_in_dim(k, j * c.bk, c.bk, axis=2)
    vj = lax.dynamic_slice_in_dim(v, j * c.bk, c.bk, axis=2)

    def query_block(i, state):
      dq, dkj, dvj, dbias = state
      qi = lax.dynamic_slice_in_dim(q, i * c.bq, c.bq, axis=3)
      gi = lax.dynamic_slice_in_dim(g, i * c.bq, c.bq, axis=3)
      lse_i = lax.dynamic_slice_in_dim(lse, i * c.bq, c.bq, axis=3)
      delta_i = lax.dynamic_slice_in_dim(delta, i * c.bq, c.bq, axis=3)
      s = _block_logits(qi, kj, bias, mask, i, j, c)
      p = jnp.exp(s - lse_i[..., None])
      dp = _qk(gi, vj)
      if c.dropout_rate > 0.0:
        z = _dropout_scale(dropout_key, i, j, p.shape, c)
        dvj = dvj + _tp(p * z, gi)
        dp = dp * z
      else:
        dvj = dvj + _tp(p, gi)
      ds = p * (dp - delta_i[..., None])
      dqi = lax.dynamic_slice_in_dim(dq, i * c.bq, c.bq, axis=3)
      dqi = dqi + _pv(ds, kj)
      dq = lax.dynamic_update_slice_in_dim(dq, dqi, i * c.bq, axis=3)
      dkj = dkj + _tp(ds, qi)
      if need_dbias:
        start = [0, 0, 0, i * c.bq if bias.shape[3] != 1 else 0, j * c.bk if bias.shape[4] != 1 else 0]
        old = _slice_pair(dbias, i, j, c)
        dbias = lax.dynamic_update_slice(dbias, old + _reduce_to(ds, old.shape), start)
      return dq, dkj, dvj, dbias

    # Under causal masking, query blocks that end before this key block starts see none of it.
    first = (j * c.bk) // c.bq if c.causal else 0
    init = (dq, jnp.zeros_like(kj), jnp.zeros_like(vj), dbias)
    dq, dkj, dvj, dbias = lax.fori_loop(first, nq, query_block, init)
    dk = lax.dynamic_update_slice_in_dim(dk, dkj, j * c.bk, axis=2)
    dv = lax.dynamic_update_slice_in_dim(dv, dvj, j * c.bk, axis=2)
    return dq, dk, dv, dbias

  dbias = jnp.zeros(bias.shape, q.dtype) if need_dbias else None
  init = (jnp.zeros_like(q), jnp.zeros_like(k), jnp.zeros_like(v), dbias)
  return lax.fori_loop(0, nk, key_block, init)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _chunked(q, k, v, bias, mask, dropout_key, c: _Blocks):
  return _chunked_forward(q, k, v, bias, mask, dropout_key, c)[0]


def _chunked_fwd(q, k, v, bias, mask, dropout_key, c):
  # Optional arguments that are None arrive as None, the others wrapped.
  args = [None if a is None else a.value for a in (q, k, v, bias, mask, dropout_key)]
  out, lse = _chunked_forward(*args, c)
  # The pytree structure of the flag ((), or None) tells the backward pass,
  # statically, whether the bias is differentiated: a constant bias (ALiBi,
  # padding) then costs no T x S gradient.
  flag = () if (bias is not None and bias.perturbed) else None
  return out, (*args, out, lse, flag)


def _chunked_bwd(c, res, g):
  q, k, v, bias, mask, dropout_key, out, lse, flag = res
  if isinstance(g, SymbolicZero):
    return (None,) * 6
  dq, dk, dv, dbias = _chunked_backward(q, k, v, bias, mask, dropout_key, out, lse, g, flag is not None, c)
  return dq, dk, dv, dbias, None, None


_chunked.defvjp(_chunked_fwd, _chunked_bwd, symbolic_zeros=True)


def _pad_axis(x, axis, multiple, value=0):
  n = x.shape[axis]
  extra = -n % multiple
  if extra == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths, constant_values=value)


def _pad_ts(x, bq, bk):
  """Pads the full-length T and S axes of a [b,k,g,t,s] mask or bias to whole blocks."""
  if x is None:
    return None
  if x.shape[3] != 1:
    x = _pad_axis(x, 3, bq)
  if x.shape[4] != 1:
    x = _pad_axis(x, 4, bk)
  return x


def _run_chunked(q, k, v, bias, mask, is_causal, dropout_rate, dropout_key, blocks):
  """Head-major q, k, v -> out [B,K,G,T,Hv] via the chunked kernel."""
  T, S = q.shape[3], k.shape[2]
  # Blocks never exceed the (8-rounded) lengths, so short inputs are not padded much.
  bq = min(blocks[0], -(-T // 8) * 8)
  bk = min(blocks[1], -(-S // 8) * 8)
  c = _Blocks(bq, bk, T, S, bool(is_causal), float(dropout_rate))
  q, k, v = _pad_axis(q, 3, bq), _pad_axis(k, 2, bk), _pad_axis(v, 2, bk)
  out = _chunked(q, k, v, _pad_ts(bias, bq, bk), _pad_ts(mask, bq, bk), dropout_key, c)
  return out[:, :, :, :T]


# ----------------------------------------------------------------------------
# Public function


def _split_heads_mask(x, batch, B, N, K):
  """A mask/bias broadcastable to batch + (N, T, S) as [B|1, K|1, G|1, T|1, S|1]."""
  x = jnp.reshape(x, (1,) * (len(batch) + 3 - x.ndim) + x.shape)
  xb = x.shape[: len(batch)]
  if all(d == 1 for d in xb):
    x = x.reshape((1,) + x.shape[len(batch) :])
  else:  # rare: a mask that varies over some batch axes and broadcasts over others
    x = jnp.broadcast_to(x, tuple(batch) + x.shape[len(batch) :]).reshape((B,) + x.shape[len(batch) :])
  n = x.shape[1]
  if n == 1:
    return x.reshape(x.shape[0], 1, 1, *x.shape[2:])
  return x.reshape(x.shape[0], K, N // K, *x.shape[2:])


def _parse_blocks(fn, block_size):
  if block_size is None:
    return _DEFAULT_BLOCKS
  if isinstance(block_size, (tuple, list)):
    if len(block_size) != 2:
      V.fail(fn, "block_size", "be an int or a (query_block, key_block) pair", repr(block_size))
    return (
      V.check_int(fn, "block_size", block_size[0], minimum=1),
      V.check_int(fn, "block_size", block_size[1], minimum=1),
    )
  b = V.check_int(fn, "block_size", block_size, minimum=1)
  return (b, b)


def scaled_dot_product_attention(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  *,
  bias: jax.Array | None = None,
  mask: jax.Array | None = None,
  is_causal: bool = False,
  scale: float | None = None,
  dropout_rate: float = 0.0,
  dropout_key: jax.Array | None = None,
  return_weights: bool = False,
  implementation: str | None = None,
  block_size: int | tuple[int, int] | None = None,
) -> jax.Array | AttentionResult:
  r"""Scaled dot-product attention that is exact and never NaN under masks.

  .. math::
    \mathrm{out}_{tn} = \sum_s w_{nts} v_{s,k(n)}, \quad
    w_{nts} = \frac{a_{nts}\, e^{\ell_{nts}}}{\sum_{s'} a_{nts'}\, e^{\ell_{nts'}}}, \quad
    \ell_{nts} = \mathrm{scale}\; q_{tn} \cdot k_{s,k(n)} + \mathrm{bias}_{nts}

  where :math:`a_{nts} \in \{0, 1\}` combines ``mask`` and ``is_causal``, and
  :math:`k(n) = \lfloor n / (N/K) \rfloor` is the key head that query head
  :math:`n` reads.

  A query row with no allowed key (every ``a`` is 0, or every bias entry is
  ``-inf``) outputs zeros and receives zero gradients; nothing is NaN.
  ``jax.nn.dot_product_attention`` returns the mean of the values there and
  PyTorch returns NaN.

  ``is_causal`` lets query ``t`` attend to keys ``s <= t`` (top-left aligned,
  as in PyTorch and ``jax.nn``). When ``T > S`` the queries ``t >= S`` see every
  key; when ``T < S`` the keys ``s > T - 1`` are seen by no query. For a
  decoding-style bottom-right alignment pass an explicit ``mask``.

  ``implementation="chunked"`` never materializes the weights: it runs an
  online softmax over ``block_size`` key blocks for each query block and its
  custom VJP recomputes the blocks in the backward pass (memory
  :math:`O(T + S)` per head). Under dropout the two implementations draw
  different (equally distributed) random masks.

  Args:
    query: ``[B..., T, N, H]``, floating.
    key: ``[B..., S, K, H]``, same dtype, with ``N % K == 0``.
    value: ``[B..., S, K, H_v]``, same dtype.
    bias: additive logits broadcastable to ``[B..., N, T, S]``; may hold
      ``-inf``. Differentiable.
    mask: boolean, broadcastable to ``[B..., N, T, S]``, True where attention
      is allowed.
    is_causal: apply a top-left aligned causal mask (see above).
    scale: logit scale; default ``1 / sqrt(H)``.
    dropout_rate: probability of dropping each weight; kept weights are scaled
      by ``1 / (1 - dropout_rate)``.
    dropout_key: a ``jax.random`` key, required when ``dropout_rate > 0``.
    return_weights: also return the weights (dense implementation only).
    implementation: ``"dense"``, ``"chunked"`` or ``None`` (dense when
      ``T * S <= 2**17`` or weights are not requested, chunked otherwise).
    block_size: chunk sizes, an int or a ``(query_block, key_block)`` pair;
      default ``(256, 512)``. Blocks need not divide the lengths.

  Returns:
    The output ``[B..., T, N, H_v]`` in the dtype of ``query`` (half precision
    is computed in float32); with ``return_weights=True`` an
    :class:`AttentionResult` ``(output, weights)`` with weights
    ``[B..., N, T, S]`` (after dropout).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoft.attention import scaled_dot_product_attention
    >>> q = jnp.array([[[1.0]], [[0.0]]])           # T=2, N=1, H=1
    >>> kv = jnp.array([[[1.0]], [[2.0]]])          # S=2, K=1, H=1
    >>> mask = jnp.array([[True, True], [False, False]])
    >>> out = scaled_dot_product_attention(q, kv, kv, mask=mask)
    >>> print(out[:, 0, 0])
    [1.7310586 0.       ]

  References:
    Vaswani et al., `Attention Is All You Need
    <https://arxiv.org/abs/1706.03762>`_, 2017.
    Rabe & Staats, `Self-attention Does Not Need O(n^2) Memory
    <https://arxiv.org/abs/2112.05682>`_, 2021.
    Dao et al., `FlashAttention <https://arxiv.org/abs/2205.14135>`_, 2022.
  """
  fn = "scaled_dot_product_attention"
  for name, x in (("query", query), ("key", key), ("value", value)):
    V.check_array(fn, name, x)
    V.check_floating(fn, name, x)
    V.check_min_ndim(fn, name, x, 3, " ([B..., length, heads, head_dim])")
  query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
  if key.dtype != query.dtype:
    V.fail(fn, "key", f"have the dtype of query ({query.dtype})", key.dtype, exc=TypeError)
  if value.dtype != query.dtype:
    V.fail(fn, "value", f"have the dtype of query ({query.dtype})", value.dtype, exc=TypeError)
  *batch, T, N, H = query.shape
  batch = tuple(batch)
  if key.ndim != query.ndim or key.shape[:-3] != batch or key.shape[-1] != H:
    V.fail(fn, "key", f"have shape {batch + ('S', 'K', H)} (batch and head_dim of query)", key.shape)
  S, K = key.shape[-3:-1]
  if N % K:
    V.fail(fn, "key", f"have a number of heads that divides the query's {N}", K)
  if value.shape[:-1] != key.shape[:-1]:
    V.fail(fn, "value", f"have shape {key.shape[:-1] + ('H_v',)} (key's but the last axis)", value.shape)
  target = batch + (N, T, S)
  if mask is not None:
    V.check_array(fn, "mask", mask)
    V.check_bool(fn, "mask", mask)
    V.check_broadcastable(fn, "mask", np.shape(mask), target, " ([B..., N, T, S])")
  if bias is not None:
    V.check_array(fn, "bias", bias)
    V.check_floating(fn, "bias", bias)
    V.check_broadcastable(fn, "bias", np.shape(bias), target, " ([B..., N, T, S])")
  if not isinstance(is_causal, (bool, np.bool_)):
    V.fail(fn, "is_causal", "be a Python bool", repr(is_causal), exc=TypeError)
  V.check_range(fn, "dropout_rate", dropout_rate, 0.0, 1.0, hi_open=True)
  if not isinstance(dropout_rate, (int, float, np.number)):
    V.fail(fn, "dropout_rate", "be a Python float", type(dropout_rate).__name__, exc=TypeError)
  if dropout_rate > 0 and dropout_key is None:
    V.fail(fn, "dropout_key", "be a jax.random key when dropout_rate > 0", None)
  V.check_option(fn, "implementation", implementation, (None, "dense", "chunked"))
  blocks = _parse_blocks(fn, block_size)
  if return_weights and implementation == "chunked":
    V.fail(fn, "return_weights", 'be False with implementation="chunked" (it never forms the weights)', True)
  if implementation is None:
    implementation = "dense" if (return_weights or T * S <= _DENSE_MAX_ELEMENTS) else "chunked"

  cdtype = compute_dtype(query.dtype)
  B = math.prod(batch)
  G = N // K
  if scale is None:
    scale = 1.0 / math.sqrt(H)
  # Scaling the T x H queries is cheaper than scaling the T x S logits.
  q = (query.astype(cdtype) * jnp.asarray(scale, cdtype)).reshape(B, T, K, G, H)
  q = jnp.transpose(q, (0, 2, 3, 1, 4))
  k = jnp.transpose(key.astype(cdtype).reshape(B, S, K, H), (0, 2, 1, 3))
  v = jnp.transpose(value.astype(cdtype).reshape(B, S, K, value.shape[-1]), (0, 2, 1, 3))
  if mask is not None:
    mask = _split_heads_mask(jnp.asarray(mask), batch, B, N, K)
  if bias is not None:
    bias = _split_heads_mask(jnp.asarray(bias).astype(cdtype), batch, B, N, K)
  if dropout_rate == 0:
    dropout_key = None

  if implementation == "dense":
    out, weights = _dense(q, k, v, bias, mask, is_causal, dropout_rate, dropout_key)
  else:
    out = _run_chunked(q, k, v, bias, mask, is_causal, dropout_rate, dropout_key, blocks)
  out = jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(batch + (T, N, value.shape[-1]))
  out = out.astype(query.dtype)
  if return_weights:
    weights = weights.reshape(batch + (N, T, S)).astype(query.dtype)
    return AttentionResult(out, weights)
  return out


# ----------------------------------------------------------------------------
# Multi-head layer


def init_multi_head_attention(
  key: jax.Array,
  *,
  d_model: int,
  num_heads: int,
  num_kv_heads: int | None = None,
  head_dim: int | None = None,
  d_out: int | None = None,
  use_bias: bool = True,
  dtype: Any = jnp.float32,
) -> dict:
  r"""Parameters of a multi-head (or grouped-query) attention layer.

  Every kernel is drawn from :math:`\mathcal{N}(0, 1/\mathrm{fan\_in})` (LeCun
  normal) and every bias is zero. For inputs with unit-variance features this
  keeps queries, keys and values at variance about 1, the logits at variance
  about 1 (thanks to the ``1/sqrt(head_dim)`` scale), and the output projection
  maps unit-variance attention outputs to unit-variance features. (Attention
  averages values, so the output variance is 1 for peaked weights and smaller
  for flat ones.)

  Args:
    key: a ``jax.random`` key.
    d_model: input feature size (of ``x`` and of ``context``).
    num_heads: number of query heads ``N``.
    num_kv_heads: number of key/value heads ``K``, dividing ``num_heads``;
      default ``num_heads``. ``1`` gives multi-query attention.
    head_dim: per-head size; default ``d_model // num_heads``.
    d_out: output feature size; default ``d_model``.
    use_bias: add bias vectors to every projection.
    dtype: parameter dtype.

  Returns:
    A dict ``{"query", "key", "value", "out"}`` of dicts with ``"kernel"``
    (``[d_model, N, head_dim]``, ``[d_model, K, head_dim]`` twice, and
    ``[N, head_dim, d_out]``) and, with ``use_bias``, ``"bias"``
    (``[N, head_dim]``, ``[K, head_dim]`` twice, ``[d_out]``).

  Examples:
    >>> import jax
    >>> from jaxsoft.attention import init_multi_head_attention
    >>> params = init_multi_head_attention(jax.random.key(0), d_model=16, num_heads=4, num_kv_heads=2)
    >>> print(jax.tree.map(lambda a: a.shape, params)["key"])
    {'bias': (2, 4), 'kernel': (16, 2, 4)}
  """
  fn = "init_multi_head_attention"
  d_model = V.check_int(fn, "d_model", d_model, minimum=1)
  num_heads = V.check_int(fn, "num_heads", num_heads, minimum=1)
  num_kv_heads = (
    num_heads if num_kv_heads is None else V.check_int(fn, "num_kv_heads", num_kv_heads, minimum=1)
  )
  if num_heads % num_kv_heads:
    V.fail(fn, "num_kv_heads", f"divide num_heads ({num_heads})", num_kv_heads)
  if head_dim is None:
    if d_model % num_heads:
      V.fail(fn, "head_dim", f"be given when num_heads ({num_heads}) does not divide d_model", d_model)
    head_dim = d_model // num_heads
  head_dim = V.check_int(fn, "head_dim", head_dim, minimum=1)
  d_out = d_model if d_out is None else V.check_int(fn, "d_out", d_out, minimum=1)
  if not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
    V.fail(fn, "dtype", "be a floating dtype", jnp.dtype(dtype), exc=TypeError)

  kq, kk, kv, ko = jax.random.split(key, 4)

  def dense(k, shape, fan_in, bias_shape):
    p = {"kernel": (jax.random.normal(k, shape, jnp.float32) / math.sqrt(fan_in)).astype(dtype)}
    if use_bias:
      p["bias"] = jnp.zeros(bias_shape, dtype)
    return p

  return {
    "query": dense(kq, (d_model, num_heads, head_dim), d_model, (num_heads, head_dim)),
    "key": dense(kk, (d_model, num_kv_heads, head_dim), d_model, (num_kv_heads, head_dim)),
    "value": dense(kv, (d_model, num_kv_heads, head_dim), d_model, (num_kv_heads, head_dim)),
    "out": dense(ko, (num_heads, head_dim, d_out), num_heads * head_dim, (d_out,)),
  }


def multi_head_attention(
  params: dict,
  x: jax.Array,
  context: jax.Array | None = None,
  *,
  mask: jax.Array | None = None,
  is_causal: bool = False,
  dropout_rate: float = 0.0,
  dropout_key: jax.Array | None = None,
  return_weights: bool = False,
  implementation: str | None = None,
) -> jax.Array | AttentionResult:
  r"""Multi-head attention layer over a params dict from :func:`init_multi_head_attention`.

  .. math::
    \mathrm{out} = \sum_n \mathrm{attn}(x W^Q_n, c W^K_{k(n)}, c W^V_{k(n)}) W^O_n + b^O

  with :math:`c = x` (self-attention) when ``context`` is None and
  :math:`k(n)` the key/value head of query head :math:`n` (grouped-query).

  Args:
    params: the dict returned by :func:`init_multi_head_attention`.
    x: queries' features ``[B..., T, d_model]``.
    context: keys' and values' features ``[B..., S, d_model]``; default ``x``.
    mask: boolean, broadcastable to ``[B..., N, T, S]``, True where allowed.
    is_causal: top-left aligned causal mask (see
      :func:`scaled_dot_product_attention`).
    dropout_rate: dropout on the attention weights.
    dropout_key: a ``jax.random`` key, required when ``dropout_rate > 0``.
    return_weights: also return the weights ``[B..., N, T, S]``.
    implementation: as in :func:`scaled_dot_product_attention`.

  Returns:
    ``[B..., T, d_out]`` in the dtype of ``x``, or an :class:`AttentionResult`
    with the weights when ``return_weights`` is True.

  Examples:
    >>> import jax
    >>> from jaxsoft.attention import init_multi_head_attention, multi_head_attention
    >>> params = init_multi_head_attention(jax.random.key(0), d_model=8, num_heads=2)
    >>> x = jax.random.normal(jax.random.key(1), (3, 5, 8))
    >>> print(multi_head_attention(params, x, is_causal=True).shape)
    (3, 5, 8)
  """
  fn = "multi_head_attention"
  if not isinstance(params, dict) or not {"query", "key", "value", "out"} <= set(params):
    V.fail(fn, "params", "be the dict from init_multi_head_attention", type(params).__name__, exc=TypeError)
  V.check_array(fn, "x", x)
  V.check_floating(fn, "x", x)
  x = jnp.asarray(x)
  d_model = params["query"]["kernel"].shape[0]
  V.check_min_ndim(fn, "x", x, 2, " ([B..., T, d_model])")
  if x.shape[-1] != d_model:
    V.fail(fn, "x", f"have {d_model} features (d_model) in its last axis", f"shape {x.shape}")
  if context is None:
    context = x
  else:
    V.check_array(fn, "context", context)
    V.check_floating(fn, "context", context)
    context = jnp.asarray(context)
    if context.ndim != x.ndim or context.shape[:-2] != x.shape[:-2] or context.shape[-1] != d_model:
      V.fail(fn, "context", f"have shape {x.shape[:-2] + ('S', d_model)}", f"shape {context.shape}")

  def project(p, inp):
    y = jnp.einsum("...d,dnh->...nh", inp, p["kernel"].astype(inp.dtype))
    return y + p["bias"].astype(inp.dtype) if "bias" in p else y

  q = project(params["query"], x)
  k = project(params["key"], context)
  v = project(params["value"], context)
  res = scaled_dot_product_attention(
    q,
    k,
    v,
    mask=mask,
    is_causal=is_causal,
    dropout_rate=dropout_rate,
    dropout_key=dropout_key,
    return_weights=return_weights,
    implementation=implementation,
  )
  attn = res.output if return_weights else res
  po = params["out"]
  out = jnp.einsum("...nh,nho->...o", attn, po["kernel"].astype(x.dtype))
  if "bias" in po:
    out = out + po["bias"].astype(x.dtype)
  return AttentionResult(out, res.weights) if return_weights else out
