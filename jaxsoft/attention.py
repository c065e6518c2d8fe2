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
  skipped, forward and backward. The kernel lives in
  :mod:`jaxsoft._chunked_attention`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsoft import _chunked_attention as chunked
from jaxsoft import _validate as V
from jaxsoft._dtypes import compute_dtype
from jaxsoft.softmax import softmax

__all__ = [
  "AttentionResult",
  "scaled_dot_product_attention",
  "init_multi_head_attention",
  "multi_head_attention",
]

# Default (query block, key block) of the chunked path and the T * S above which
# `implementation=None` picks it; both chosen from measurements on a 2-core
# AVX-512 CPU (see benchmarks/bench_attention.py).
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
# Dense path (head-major, as the kernel: see jaxsoft._chunked_attention)


def _dense(q, k, v, bias, mask, is_causal, dropout_rate, dropout_key):
  """Head-major q, k, v -> out [B,K,G,T,Hv], weights [B,K,G,T,S]."""
  logits = chunked.qk(q, k)
  if bias is not None:
    logits = logits + bias
  if is_causal:
    causal = chunked.causal_allowed(0, 0, q.shape[3], k.shape[2])
    mask = causal if mask is None else mask & causal
  # The softmax's empty-slice rule: a row with no allowed key (or no key at
  # all) gets zero weights, and zero gradients through its custom JVP.
  weights = softmax(logits, where=mask)
  if dropout_rate > 0.0:
    keep = chunked.bernoulli(dropout_key, 1.0 - dropout_rate, weights.shape)
    weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
  return chunked.pv(weights, v), weights


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


def _check_arguments(
  fn,
  query,
  key,
  value,
  bias,
  mask,
  is_causal,
  dropout_rate,
  dropout_key,
  return_weights,
  implementation,
  block_size,
):
  """The argument checks of :func:`scaled_dot_product_attention`, with errors labelled ``fn``.

  Returns ``query``, ``key`` and ``value`` as arrays, the dropout key (None
  without dropout) and the ``(query_block, key_block)`` sizes.
  """
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
  if dropout_rate == 0:
    dropout_key = None
  elif dropout_key is None:
    V.fail(fn, "dropout_key", "be a jax.random key when dropout_rate > 0", None)
  else:
    dropout_key = V.check_key(fn, "dropout_key", dropout_key)
  V.check_option(fn, "implementation", implementation, (None, "dense", "chunked"))
  blocks = _parse_blocks(fn, block_size)
  if return_weights and implementation == "chunked":
    V.fail(fn, "return_weights", 'be False with implementation="chunked" (it never forms the weights)', True)
  return query, key, value, dropout_key, blocks


def _attention(
  fn,
  query,
  key,
  value,
  bias,
  mask,
  is_causal,
  scale,
  dropout_rate,
  dropout_key,
  return_weights,
  implementation,
  block_size,
):
  """:func:`scaled_dot_product_attention`, with errors labelled ``fn`` (the public function called)."""
  query, key, value, dropout_key, blocks = _check_arguments(
    fn,
    query,
    key,
    value,
    bias,
    mask,
    is_causal,
    dropout_rate,
    dropout_key,
    return_weights,
    implementation,
    block_size,
  )
  *batch, T, N, H = query.shape
  batch = tuple(batch)
  S, K, Hv = key.shape[-3], key.shape[-2], value.shape[-1]
  if implementation is None:
    implementation = "dense" if (return_weights or T * S <= _DENSE_MAX_ELEMENTS) else "chunked"

  cdtype = compute_dtype(query.dtype)
  B = math.prod(batch)
  G = N // K
  if scale is None:
    scale = 1.0 / math.sqrt(H)
  # Head-major (see jaxsoft._chunked_attention). Scaling the T x H queries is
  # cheaper than scaling the T x S logits.
  q = (query.astype(cdtype) * jnp.asarray(scale, cdtype)).reshape(B, T, K, G, H)
  q = jnp.transpose(q, (0, 2, 3, 1, 4))
  k = jnp.transpose(key.astype(cdtype).reshape(B, S, K, H), (0, 2, 1, 3))
  v = jnp.transpose(value.astype(cdtype).reshape(B, S, K, Hv), (0, 2, 1, 3))
  if mask is not None:
    mask = _split_heads_mask(jnp.asarray(mask), batch, B, N, K)
  if bias is not None:
    bias = _split_heads_mask(jnp.asarray(bias).astype(cdtype), batch, B, N, K)

  if implementation == "dense":
    out, weights = _dense(q, k, v, bias, mask, is_causal, dropout_rate, dropout_key)
  else:
    out = chunked.attention(
      q, k, v, bias, mask, dropout_key, causal=is_causal, dropout_rate=dropout_rate, blocks=blocks
    )
  out = jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(batch + (T, N, Hv)).astype(query.dtype)
  if return_weights:
    return AttentionResult(out, weights.reshape(batch + (N, T, S)).astype(query.dtype))
  return out


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

  A query row with no allowed key (every ``a`` is 0, every bias entry is
  ``-inf``, or ``S = 0``) outputs zeros and receives zero gradients; nothing
  is NaN. ``jax.nn.dot_product_attention`` returns the mean of the values
  there; PyTorch's ``scaled_dot_product_attention`` returns zeros too since
  version 2.5 (NaN before).

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
    implementation: ``"dense"``, ``"chunked"`` or ``None`` (dense when the
      weights are requested or ``T * S <= 2**17``, chunked otherwise).
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
  return _attention(
    "scaled_dot_product_attention",
    query,
    key,
    value,
    bias,
    mask,
    is_causal,
    scale,
    dropout_rate,
    dropout_key,
    return_weights,
    implementation,
    block_size,
  )


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
  key = V.check_key(fn, "key", key)
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
    # Drawn flat and reshaped: the same numbers, and XLA's CPU compiler is
    # several times faster on a flat threefry draw (see chunked.bernoulli).
    w = jax.random.normal(k, (math.prod(shape),), jnp.float32).reshape(shape)
    p = {"kernel": (w / math.sqrt(fan_in)).astype(dtype)}
    if use_bias:
      p["bias"] = jnp.zeros(bias_shape, dtype)
    return p

  return {
    "query": dense(kq, (d_model, num_heads, head_dim), d_model, (num_heads, head_dim)),
    "key": dense(kk, (d_model, num_kv_heads, head_dim), d_model, (num_kv_heads, head_dim)),
    "value": dense(kv, (d_model, num_kv_heads, head_dim), d_model, (num_kv_heads, head_dim)),
    "out": dense(ko, (num_heads, head_dim, d_out), num_heads * head_dim, (d_out,)),
  }


def _check_params(fn, params):
  """``params`` must be the dict of :func:`init_multi_head_attention`, with consistent shapes."""
  what = "(the dict from init_multi_head_attention)"
  if not isinstance(params, dict):
    V.fail(fn, "params", f"be a dict {what}", type(params).__name__, exc=TypeError)
  for name in ("query", "key", "value", "out"):
    if name not in params:
      V.fail(fn, "params", f'have a "{name}" entry {what}', f"keys {sorted(map(str, params))}", exc=TypeError)
    p = params[name]
    if not isinstance(p, dict) or "kernel" not in p:
      got = f"keys {sorted(map(str, p))}" if isinstance(p, dict) else type(p).__name__
      V.fail(
        fn, f'params["{name}"]', 'be a dict with a "kernel" entry (and optionally "bias")', got, exc=TypeError
      )
  kernel = {name: params[name]["kernel"] for name in ("query", "key", "value", "out")}
  V.check_ndim(fn, 'params["query"]["kernel"]', kernel["query"], 3, " ([d_model, N, head_dim])")
  d_model, N, H = np.shape(kernel["query"])
  V.check_ndim(fn, 'params["key"]["kernel"]', kernel["key"], 3, " ([d_model, K, head_dim])")
  K = np.shape(kernel["key"])[1]
  if np.shape(kernel["key"]) != (d_model, K, H) or K == 0 or N % K:
    V.fail(
      fn,
      'params["key"]["kernel"]',
      f"have shape ({d_model}, K, {H}) with K dividing the {N} query heads",
      np.shape(kernel["key"]),
    )
  V.check_ndim(fn, 'params["value"]["kernel"]', kernel["value"], 3, " ([d_model, K, head_dim_v])")
  Hv = np.shape(kernel["value"])[2]
  V.check_shape(
    fn, 'params["value"]["kernel"]', kernel["value"], (d_model, K, Hv), " ([d_model, K, head_dim_v])"
  )
  V.check_ndim(fn, 'params["out"]["kernel"]', kernel["out"], 3, " ([N, head_dim_v, d_out])")
  d_out = np.shape(kernel["out"])[2]
  V.check_shape(fn, 'params["out"]["kernel"]', kernel["out"], (N, Hv, d_out), " ([N, head_dim_v, d_out])")
  for name, shape in (("query", (N, H)), ("key", (K, H)), ("value", (K, Hv)), ("out", (d_out,))):
    if "bias" in params[name]:
      V.check_shape(fn, f'params["{name}"]["bias"]', params[name]["bias"], shape)
  return d_model


def _check_layer_arguments(fn, params, x, context):
  """The argument checks of :func:`multi_head_attention`; returns ``x`` and ``context`` as arrays."""
  d_model = _check_params(fn, params)
  V.check_array(fn, "x", x)
  V.check_floating(fn, "x", x)
  x = jnp.asarray(x)
  V.check_min_ndim(fn, "x", x, 2, " ([B..., T, d_model])")
  if x.shape[-1] != d_model:
    V.fail(fn, "x", f"have {d_model} features (d_model) in its last axis", f"shape {x.shape}")
  if context is None:
    return x, x
  V.check_array(fn, "context", context)
  V.check_floating(fn, "context", context)
  context = jnp.asarray(context)
  if context.ndim != x.ndim or context.shape[:-2] != x.shape[:-2] or context.shape[-1] != d_model:
    V.fail(fn, "context", f"have shape {x.shape[:-2] + ('S', d_model)}", f"shape {context.shape}")
  return x, context


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
  x, context = _check_layer_arguments(fn, params, x, context)

  def project(p, inp):
    y = jnp.einsum("...d,dnh->...nh", inp, p["kernel"].astype(inp.dtype))
    return y + p["bias"].astype(inp.dtype) if "bias" in p else y

  q = project(params["query"], x)
  k = project(params["key"], context)
  v = project(params["value"], context)
  res = _attention(
    fn, q, k, v, None, mask, is_causal, None, dropout_rate, dropout_key, return_weights, implementation, None
  )
  attn = res.output if return_weights else res
  po = params["out"]
  out = jnp.einsum("...nh,nho->...o", attn, po["kernel"].astype(x.dtype))
  if "bias" in po:
    out = out + po["bias"].astype(x.dtype)
  return AttentionResult(out, res.weights) if return_weights else out
