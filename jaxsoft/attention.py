"""Scaled dot-product attention (dense and chunked) and a multi-head layer.

Shapes follow :func:`jax.nn.dot_product_attention`: queries are
``[B..., T, N, H]``, keys ``[B..., S, K, H]`` and values ``[B..., S, K, H_v]``
with any number of leading batch dimensions (including none). ``N`` query heads
share ``K`` key/value heads (``N % K == 0``): query head ``n`` reads key head
``n // (N // K)``, which gives multi-head (``K == N``), grouped-query and
multi-query (``K == 1``) attention.

The implementations compute the same function:

* ``"dense"`` materializes the ``[B..., N, T, S]`` weights, like ``jax.nn``.
* ``"chunked"`` runs an online softmax (Milakov & Gimelshein 2018) over key
  blocks for each query block, as in FlashAttention (Dao et al. 2022) and
  Rabe & Staats (2021). Its custom VJP keeps only the output and the per-row
  log-normalizer and recomputes each block in the backward pass, so memory is
  linear in ``T + S``. Under ``is_causal`` blocks above the diagonal are
  skipped, forward and backward. The kernel lives in
  :mod:`jaxsoft._chunked_attention`.
* ``"chunked_jvp"`` is the same kernel with a custom JVP instead (one more
  pass over the blocks, linear in the tangents), so forward mode works too;
  reverse mode is JAX's transpose of that pass.
* ``"ring"`` splits the sequence over the devices of a mesh axis (context
  parallelism): each device runs the chunked kernel on its query shard while
  the key/value shards travel around the ring (:mod:`jaxsoft._context_parallel`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsoft import _attention_structure as structure
from jaxsoft import _chunked_attention as chunked
from jaxsoft import _context_parallel as context_parallel
from jaxsoft import _online_logsumexp as online
from jaxsoft import _validate as V
from jaxsoft._dtypes import compute_dtype

__all__ = [
  "AttentionResult",
  "scaled_dot_product_attention",
  "init_multi_head_attention",
  "multi_head_attention",
]

# Default (query block, key block) pairs of the chunked path: its forward pass
# (query blocks of 512 rows or more keep both cores of the CPU busy; narrower
# key blocks under a causal or windowed band, whose edge tiles are partly
# wasted work) and its backward pass; and the T * S above which
# `implementation=None` picks it. All chosen from wall-time measurements on a
# quiet 2-core CPU (see benchmarks/RESULTS.md): with the lanes of the kernel
# run one at a time, smaller blocks under a narrow window no longer pay.
_DEFAULT_BLOCKS = (1024, 512)
_DEFAULT_BANDED_BLOCKS = (512, 256)
_DEFAULT_BACKWARD_BLOCKS = (512, 256)
_DENSE_MAX_ELEMENTS = 256 * 512


class AttentionResult(NamedTuple):
  """Attention output, and the weights and log-normalizers that produced it when requested.

  Attributes:
    output: ``[B..., T, N, H_v]``.
    weights: ``[B..., N, T, S]``, the softmax weights after dropout
      (``return_weights``), else None.
    lse: ``[B..., T, N]``, the natural log of each row's softmax normalizer,
      sink term included, ``-inf`` for a row with nothing allowed and no sink
      (``return_residual``), else None. Float32 (float64 for float64 inputs).
  """

  output: jax.Array
  weights: jax.Array | None = None
  lse: jax.Array | None = None


# ----------------------------------------------------------------------------
# Dense path (head-major, as the kernel: see jaxsoft._chunked_attention)


# The softmax over keys with an optional sink logit, and its log-normalizer. The
# derivative of the formulas is right for finite logits but gives 0 * inf =
# NaN for excluded entries and rows with nothing allowed; this rule states it
# directly (d lse = sum_s w_s dl_s + w_sink d sink, d w_s = w_s (dl_s - d lse))
# and keeps it exactly 0 there. It is linear in the tangents, so reverse mode
# is its transpose.
@jax.custom_jvp
def _normalize(logits, allowed, sink):
  """Weights [..., S] and the finite log-normalizer [...] (see the online logsumexp)."""
  state, p = online.reduce(logits, -1, allowed)
  if sink is not None:
    state, alpha, _ = online.merge(state, chunked.sink_state(sink, state.m.shape, logits.dtype))
    p = p * alpha
  return p / online.safe(state.s), online.log_normalizer(state)[..., 0]


@_normalize.defjvp
def _normalize_jvp(primals, tangents):
  logits, allowed, sink = primals
  t, _, t_sink = tangents
  w, lse = _normalize(logits, allowed, sink)
  dlse = jnp.sum(w * t, axis=-1)
  if sink is not None:
    dlse = dlse + jnp.exp(sink[..., 0] - lse) * t_sink[..., 0]
  return (w, lse), (w * (t - dlse[..., None]), dlse)


def _dense(q, k, v, bias, mask, sink, st, dropout_key, *, band, cap, dropout_rate):
  """Head-major q, k, v -> out [B,K,G,T,Hv], weights [B,K,G,T,S], log-normalizer [B,K,G,T].

  Every excluded pair is excluded by a select, never by a ``-inf`` logit, so
  an input without infinities creates none (``jax.debug_infs``).
  """
  T, S = q.shape[3], k.shape[2]
  logits = chunked.soft_cap(chunked.qk(q, k), cap)
  if bias is not None:
    logits = logits + bias
  allowed = structure.allowed(st, band, 0, 0, T, S)
  if allowed is not None:
    allowed = allowed[:, None, None] if allowed.ndim == 3 else allowed
  if mask is not None:
    allowed = mask if allowed is None else mask & allowed
  weights, lse = _normalize(logits, allowed, sink)
  if dropout_rate > 0.0:
    keep = chunked.bernoulli(dropout_key, 1.0 - dropout_rate, weights.shape)
    weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
  return chunked.pv(weights, v), weights, lse


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


def _parse_blocks(fn, block_size, band):
  """The (query block, key block) pairs of the forward and the backward pass."""
  if block_size is None:
    forward = _DEFAULT_BLOCKS if band == structure.Band() else _DEFAULT_BANDED_BLOCKS
    return forward, _DEFAULT_BACKWARD_BLOCKS
  if isinstance(block_size, (tuple, list)):
    if len(block_size) != 2:
      V.fail(fn, "block_size", "be an int or a (query_block, key_block) pair", repr(block_size))
    blocks = (
      V.check_int(fn, "block_size", block_size[0], minimum=1),
      V.check_int(fn, "block_size", block_size[1], minimum=1),
    )
  else:
    b = V.check_int(fn, "block_size", block_size, minimum=1)
    blocks = (b, b)
  return blocks, blocks


def _check_lengths(fn, name, lengths, batch, B):
  """Sequence lengths: an integer array of shape ``batch``, >= 0 when concrete; returned as ``[B]``."""
  V.check_array(fn, name, lengths)
  V.check_integer(fn, name, lengths)
  V.check_shape(fn, name, lengths, batch, " (the batch dimensions of query)")
  values = V.concrete(lengths)
  if values is not None and values.size and values.min() < 0:
    V.fail(fn, name, "be >= 0", int(values.min()))
  return jnp.asarray(lengths).reshape(B)


def _check_segments(fn, segment_ids, batch, B, T, S):
  """One array ``[B..., T]`` (self-attention, T == S) or a pair; returned as ``[B, T]`` and ``[B, S]``."""
  if isinstance(segment_ids, (tuple, list)):
    if len(segment_ids) != 2:
      V.fail(
        fn, "segment_ids", "be an array or a (query_segment_ids, key_segment_ids) pair", repr(segment_ids)
      )
    pair = (("segment_ids[0]", segment_ids[0], T, "T"), ("segment_ids[1]", segment_ids[1], S, "S"))
  else:
    if T != S:
      V.fail(fn, "segment_ids", f"be a (query_segment_ids, key_segment_ids) pair when T ({T}) != S", S)
    pair = (("segment_ids", segment_ids, T, "T"),) * 2
  out = []
  for name, ids, n, letter in pair:
    V.check_array(fn, name, ids)
    V.check_integer(fn, name, ids)
    V.check_shape(fn, name, ids, batch + (n,), f" ([B..., {letter}])")
    out.append(jnp.asarray(ids).reshape(B, n))
  return out


def _check_window(fn, window):
  """``local_window_size``: an int ``w`` (meaning ``(w, w)``) or a ``(left, right)`` pair, each >= 0."""
  sides = window if isinstance(window, (tuple, list)) else (window, window)
  if len(sides) != 2:
    V.fail(fn, "local_window_size", "be an int or a (left, right) pair", repr(window))
  return tuple(V.check_int(fn, "local_window_size", w, minimum=0) for w in sides)


def _check_arguments(fn, query, key, value, bias, mask, is_causal, options):
  """The argument checks of :func:`scaled_dot_product_attention`, with errors labelled ``fn``.

  Returns ``query``, ``key`` and ``value`` as arrays and ``options`` checked:
  the structure as a :class:`~jaxsoft._attention_structure.Structure` with
  its band, the dropout key (None without dropout), the ``(query_block,
  key_block)`` sizes and the sinks as an array.
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
  try:  # the batch dimensions of query and key/value broadcast (as PyTorch's)
    batch = tuple(np.broadcast_shapes(tuple(batch), key.shape[:-3]))
  except ValueError:
    batch = None
  if batch is None or key.shape[-1] != H:
    want = f"have shape (B..., S, K, {H}) with batch dimensions broadcastable with query's {query.shape[:-3]}"
    V.fail(fn, "key", want, key.shape)
  S, K = key.shape[-3:-1]
  if N % K:
    V.fail(fn, "key", f"have a number of heads that divides the query's {N}", K)
  if value.shape[:-1] != key.shape[:-1]:
    V.fail(fn, "value", f"have shape {key.shape[:-1] + ('H_v',)} (key's but the last axis)", value.shape)
  query = jnp.broadcast_to(query, batch + query.shape[-3:])
  key, value = (
    jnp.broadcast_to(key, batch + key.shape[-3:]),
    jnp.broadcast_to(value, batch + value.shape[-3:]),
  )
  target = batch + (N, T, S)
  if mask is not None:
    V.check_array(fn, "mask", mask)
    V.check_bool(fn, "mask", mask)
    V.check_broadcastable(fn, "mask", np.shape(mask), target, " ([B..., N, T, S])")
  if bias is not None:
    V.check_array(fn, "bias", bias)
    V.check_floating(fn, "bias", bias)
    V.check_broadcastable(fn, "bias", np.shape(bias), target, " ([B..., N, T, S])")
  if not (isinstance(is_causal, (bool, np.bool_)) or is_causal == "bottom_right"):
    V.fail(fn, "is_causal", 'be a Python bool or "bottom_right"', repr(is_causal), exc=TypeError)
  o = dict(options)
  B = math.prod(batch)
  st = structure.Structure()
  if o["query_seq_lengths"] is not None:
    st = st._replace(q_len=_check_lengths(fn, "query_seq_lengths", o["query_seq_lengths"], batch, B))
  if o["key_value_seq_lengths"] is not None:
    st = st._replace(kv_len=_check_lengths(fn, "key_value_seq_lengths", o["key_value_seq_lengths"], batch, B))
  if o["segment_ids"] is not None:
    q_seg, kv_seg = _check_segments(fn, o["segment_ids"], batch, B, T, S)
    st = st._replace(q_seg=q_seg, kv_seg=kv_seg)
  window = None if o["local_window_size"] is None else _check_window(fn, o["local_window_size"])
  o["structure"], o["band"] = st, structure.band(is_causal, window, T, S)
  cap = o["logit_soft_cap"]
  if cap is not None:
    number = V.as_number(fn, "logit_soft_cap", cap)
    if number is None:
      V.fail(fn, "logit_soft_cap", "be a Python float (static)", type(cap).__name__, exc=TypeError)
    V.check_positive(fn, "logit_soft_cap", number)
    o["logit_soft_cap"] = number
  if o["sink_logits"] is not None:
    V.check_array(fn, "sink_logits", o["sink_logits"])
    V.check_floating(fn, "sink_logits", o["sink_logits"])
    V.check_shape(fn, "sink_logits", o["sink_logits"], (N,), " ([N], one per query head)")
    o["sink_logits"] = jnp.asarray(o["sink_logits"])
  rate = o["dropout_rate"]
  V.check_range(fn, "dropout_rate", rate, 0.0, 1.0, hi_open=True)
  if not isinstance(rate, (int, float, np.number)):
    V.fail(fn, "dropout_rate", "be a Python float", type(rate).__name__, exc=TypeError)
  if rate == 0:
    o["dropout_key"] = None
  elif o["dropout_key"] is None:
    V.fail(fn, "dropout_key", "be a jax.random key when dropout_rate > 0", None)
  else:
    o["dropout_key"] = V.check_key(fn, "dropout_key", o["dropout_key"])
  V.check_option(fn, "implementation", o["implementation"], (None, "dense", "chunked", "chunked_jvp", "ring"))
  o["block_size"] = _parse_blocks(fn, o["block_size"], o["band"])
  if o["implementation"] is None and o["mesh"] is not None:
    o["implementation"] = "ring"
  if o["return_weights"] and o["implementation"] in ("chunked", "chunked_jvp", "ring"):
    want = f'be False with implementation="{o["implementation"]}" (it never forms the weights)'
    V.fail(fn, "return_weights", want, True)
  if o["implementation"] == "ring":
    for name, x in (("mask", mask), ("bias", bias)):
      if x is not None:
        V.fail(
          fn, name, 'be None with implementation="ring" (a dense [T, S] array defeats the split)', "an array"
        )
    o["ring"] = context_parallel.ring(
      fn,
      o["mesh"],
      o["axis_name"],
      T=T,
      S=S,
      band=o["band"],
      cap=o["logit_soft_cap"],
      is_causal=bool(is_causal),
      blocks=o["block_size"][0],
      dropout_rate=rate,
    )
  elif o["mesh"] is not None or o["axis_name"] is not None:
    name = "mesh" if o["mesh"] is not None else "axis_name"
    V.fail(fn, name, 'be None unless implementation="ring"', f'implementation="{o["implementation"]}"')
  return query, key, value, o


def _attention(fn, query, key, value, bias, mask, is_causal, scale, **options):
  """:func:`scaled_dot_product_attention`, with errors labelled ``fn`` (the public function called)."""
  query, key, value, o = _check_arguments(fn, query, key, value, bias, mask, is_causal, options)
  *batch, T, N, H = query.shape
  batch = tuple(batch)
  S, K, Hv = key.shape[-3], key.shape[-2], value.shape[-1]
  implementation = o["implementation"]
  if implementation is None:
    implementation = "dense" if (o["return_weights"] or T * S <= _DENSE_MAX_ELEMENTS) else "chunked"

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
  sink = o["sink_logits"]
  if sink is not None:
    sink = sink.astype(cdtype).reshape(1, K, G, 1, 1)

  args = (q, k, v, bias, mask, sink, o["structure"], o["dropout_key"])
  kwargs = dict(band=o["band"], cap=o["logit_soft_cap"], dropout_rate=o["dropout_rate"])
  if implementation == "dense":
    out, weights, lse = _dense(*args, **kwargs)
  else:
    try:
      if implementation == "ring":
        out, lse = context_parallel.attention(*args, ring=o["ring"])
      else:
        # The chunked kernel reads the keys and values in their own layout.
        seq_major = (key.astype(cdtype).reshape(B, S, K, H), value.astype(cdtype).reshape(B, S, K, Hv))
        blocks, backward_blocks = o["block_size"]
        out, lse = chunked.attention(
          q,
          *seq_major,
          *args[3:],
          **kwargs,
          blocks=blocks,
          backward_blocks=backward_blocks,
          forward_mode=implementation == "chunked_jvp",
        )
    except TypeError as e:
      # The chunked kernel and the ring have a custom VJP (their memory-lean
      # backward pass), and JAX differentiates such a function in reverse mode only.
      if "forward-mode" not in str(e):
        raise
      got = f'"{implementation}"' if o["implementation"] else '"chunked" (picked by implementation=None)'
      want = 'be "chunked_jvp" or "dense" under forward-mode differentiation (jax.jvp, jax.jacfwd)'
      V.fail(fn, "implementation", want, got, exc=TypeError)
  out = jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(batch + (T, N, Hv)).astype(query.dtype)
  if not (o["return_weights"] or o["return_residual"]):
    return out
  result = AttentionResult(out)
  if o["return_weights"]:
    result = result._replace(weights=weights.reshape(batch + (N, T, S)).astype(query.dtype))
  if o["return_residual"]:
    # The finite log-normalizer is the lowest number exactly where a row has
    # nothing allowed and no sink: there it is -inf.
    lse = jnp.where(lse == jnp.finfo(lse.dtype).min, -jnp.inf, lse)
    result = result._replace(lse=jnp.transpose(lse, (0, 3, 1, 2)).reshape(batch + (T, N)))
  return result


def scaled_dot_product_attention(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  *,
  bias: jax.Array | None = None,
  mask: jax.Array | None = None,
  is_causal: bool | str = False,
  scale: float | None = None,
  query_seq_lengths: jax.Array | None = None,
  key_value_seq_lengths: jax.Array | None = None,
  segment_ids: jax.Array | tuple[jax.Array, jax.Array] | None = None,
  local_window_size: int | tuple[int, int] | None = None,
  logit_soft_cap: float | None = None,
  sink_logits: jax.Array | None = None,
  dropout_rate: float = 0.0,
  dropout_key: jax.Array | None = None,
  return_weights: bool = False,
  return_residual: bool = False,
  implementation: str | None = None,
  block_size: int | tuple[int, int] | None = None,
  mesh: jax.sharding.Mesh | None = None,
  axis_name: str | None = None,
) -> jax.Array | AttentionResult:
  r"""Scaled dot-product attention that is exact and never NaN under masks.

  .. math::
    \mathrm{out}_{tn} = \sum_s w_{nts} v_{s,k(n)}, \quad
    w_{nts} = \frac{a_{nts}\, e^{\ell_{nts}}}{e^{c_n} + \sum_{s'} a_{nts'}\, e^{\ell_{nts'}}}, \quad
    \ell_{nts} = \mathrm{cap}\big(\mathrm{scale}\; q_{tn} \cdot k_{s,k(n)}\big) + \mathrm{bias}_{nts}

  where :math:`a_{nts} \in \{0, 1\}` is the logical AND of ``mask``,
  ``is_causal`` and the structure options below, :math:`k(n) = \lfloor n /
  (N/K) \rfloor` is the key head that query head :math:`n` reads,
  :math:`\mathrm{cap}(x) = c \tanh(x / c)` with ``logit_soft_cap`` ``c``
  (the identity without it), and :math:`e^{c_n}` is the sink term of head
  :math:`n` (absent without ``sink_logits``).

  A query row with no allowed key (every ``a`` is 0, every bias entry is
  ``-inf``, or ``S = 0``) outputs zeros and receives zero gradients; nothing
  is NaN. ``jax.nn.dot_product_attention`` returns the mean of the values
  there; PyTorch's ``scaled_dot_product_attention`` returns zeros too since
  version 2.5 (NaN before).

  **Structure without a dense mask.** A padded, packed and windowed batch is
  described by ``query_seq_lengths``, ``key_value_seq_lengths``,
  ``segment_ids`` and ``local_window_size`` (the names and meanings of
  ``jax.nn``), never by a ``[T, S]`` array: the chunked path computes from
  them which (query block, key block) pairs hold an allowed pair and visits
  only those, forward and backward, so its cost follows the allowed blocks.
  The visited key blocks of a query block are a range shared by the batch
  rows (the hull of their allowed blocks). A dense ``mask`` and ``bias`` still
  work but do not drive the skipping.

  ``is_causal=True`` lets query ``t`` attend to keys ``s <= t`` (top-left
  aligned, as in PyTorch and ``jax.nn``): when ``T > S`` the queries ``t >=
  S`` see every key; when ``T < S`` the keys ``s > T - 1`` are seen by no
  query. ``is_causal="bottom_right"`` lets it attend ``s <= t + S - T``
  (FlashAttention 2.1+, PyTorch's ``causal_lower_right``): the alignment of
  decoding and chunked prefill. ``local_window_size`` is centred on the same
  diagonal: on ``t + S - T`` under ``"bottom_right"``, on ``t`` otherwise.

  ``implementation="chunked"`` never materializes the weights: it runs an
  online softmax over ``block_size`` key blocks for each query block and its
  custom VJP recomputes the blocks in the backward pass (memory
  :math:`O(T + S)` per head). Reverse mode and second order through it
  (``jax.hessian``, forward over reverse) work; forward mode alone
  (``jax.jvp``, ``jax.jacfwd``) does not, because JAX gives a function with a
  custom VJP no forward rule. For forward mode use
  ``implementation="chunked_jvp"``: the same forward pass with a custom JVP,
  whose tangent is one more pass over the same blocks (linear in the
  tangents, each block's weights recomputed from the row's log-normalizer,
  memory :math:`O(T + S)` per head). Its reverse mode is JAX's transpose of
  that pass, also memory-lean but measured 1.1x (no mask) to 2.2x (a narrow
  window) the time of the hand-written backward (``benchmarks/RESULTS.md``),
  so train with ``"chunked"``; JAX 0.10 has no public
  way to give one function both a forward rule and its own backward pass.
  An eager forward-mode call on ``"chunked"`` names both choices; under
  ``jit`` JAX's own message appears. Under dropout the dense and the chunked
  implementations draw different (equally distributed) random masks.

  The batch dimensions of ``query`` and of ``key``/``value`` broadcast
  against each other (a key/value batch of 1 serves every query row).

  **Context parallelism.** ``implementation="ring"`` (picked when a ``mesh``
  is given) splits the sequence over the devices of the mesh axis
  ``axis_name`` with ``jax.shard_map``: each device keeps ``T / D`` queries
  and the ``S / D`` keys and values pass from device to device with
  ``lax.ppermute``, each step merged into the running softmax by its
  log-normalizer (ring attention), so memory per device is ``O(T / D)``,
  forward and backward (a custom VJP that runs the ring again). Pass global
  arrays (ideally already sharded along the sequence on that axis); the
  result is the global output, sharded the same way. Under ``is_causal`` the
  devices hold one early and one late chunk each ("zigzag"), so that they do
  the same work; the permutation is applied and undone inside. With a window
  shorter than a shard the ring visits only the neighbouring shards. Every
  structure option, the soft cap, sinks, ``return_residual`` and dropout
  work; ``mask`` and ``bias`` do not (a dense ``[T, S]`` array is what the
  split avoids). Dropout uses the blocks of the whole sequence, keyed by
  their global place, so it draws the same bits as the chunked path with
  the same ``block_size``, for any number of devices; those blocks must
  divide each device's chunks. ``T`` and ``S`` must be divisible by
  ``D`` (``2D`` under ``is_causal``). It is an implementation rather than a
  separate function because it computes the same function of the same
  arguments, and so reaches :func:`multi_head_attention` unchanged.

  Args:
    query: ``[B..., T, N, H]``, floating.
    key: ``[B..., S, K, H]``, same dtype, with ``N % K == 0``; its batch
      dimensions broadcast with the query's.
    value: ``[B..., S, K, H_v]``, same dtype.
    bias: additive logits broadcastable to ``[B..., N, T, S]``, added after
      the soft cap; may hold ``-inf``. Differentiable.
    mask: boolean, broadcastable to ``[B..., N, T, S]``, True where attention
      is allowed.
    is_causal: ``False``, ``True`` (top-left aligned) or ``"bottom_right"``
      (see above).
    scale: logit scale; default ``1 / sqrt(H)``.
    query_seq_lengths: int ``[B...]``: query positions ``>= length`` are
      padding (they output zeros).
    key_value_seq_lengths: int ``[B...]``: key positions ``>= length`` are
      never attended.
    segment_ids: int ``[B..., T]`` (needs ``T == S``), or a pair
      ``(query_segment_ids [B..., T], key_segment_ids [B..., S])``: query
      ``t`` attends key ``s`` only when their ids are equal (packed
      documents).
    local_window_size: an int ``w`` or ``(left, right)``: query ``t``
      attends keys ``t - left <= s <= t + right`` (``w`` means ``(w, w)``),
      aligned as ``is_causal``.
    logit_soft_cap: a float ``c > 0``: the logits become ``c * tanh(scale *
      q.k / c)`` before the bias (Gemma 2).
    sink_logits: float ``[N]``: one extra logit per head in each row's
      normalizer, whose value vector is zero (attention sinks, gpt-oss).
      Differentiable.
    dropout_rate: probability of dropping each weight; kept weights are scaled
      by ``1 / (1 - dropout_rate)``.
    dropout_key: a ``jax.random`` key, required when ``dropout_rate > 0``.
    return_weights: also return the weights (dense implementation only).
    return_residual: also return the log of each row's normalizer
      (differentiable).
    implementation: ``"dense"``, ``"chunked"``, ``"chunked_jvp"`` (forward
      mode too), ``"ring"`` or ``None``
      (ring when a ``mesh`` is given; else dense when the weights are
      requested or ``T * S <= 2**17``, chunked otherwise).
    block_size: chunk sizes, an int or a ``(query_block, key_block)`` pair,
      used by the forward and the backward pass alike. Default: each pass
      its own measured best on the CPU, forward ``(1024, 512)``, ``(512,
      256)`` under ``is_causal`` or a window; backward ``(512, 256)``
      (with dropout the backward pass keeps the forward's blocks: the bits
      are keyed by block; the ring uses the forward's for both). Blocks need
      not divide the lengths.
    mesh: a ``jax.sharding.Mesh`` whose axis ``axis_name`` splits the
      sequence (``implementation="ring"`` only). Its other axes are left to
      JAX's automatic partitioning: on ``Auto`` axes a batch sharded over
      them stays so; on ``Explicit`` ones the inputs are replicated over them.
    axis_name: the mesh axis of the sequence; default the mesh's only axis.

  Returns:
    The output ``[B..., T, N, H_v]`` in the dtype of ``query`` (half precision
    is computed in float32); with ``return_weights`` or ``return_residual`` an
    :class:`AttentionResult` ``(output, weights, lse)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoft.attention import scaled_dot_product_attention
    >>> q = jnp.array([[[1.0]], [[0.0]]])           # T=2, N=1, H=1
    >>> kv = jnp.array([[[1.0]], [[2.0]]])          # S=2, K=1, H=1
    >>> mask = jnp.array([[True, True], [False, False]])
    >>> out = scaled_dot_product_attention(q, kv, kv, mask=mask)
    >>> print(out[:, 0, 0])
    [1.7310586 0.       ]

    Two sequences of lengths 3 and 2, the second padded, causal:

    >>> x = jnp.arange(12.0).reshape(2, 3, 1, 2) / 10  # B=2, T=3, N=1, H=2
    >>> res = scaled_dot_product_attention(
    ...   x, x, x, is_causal=True, query_seq_lengths=jnp.array([3, 2]), return_residual=True)
    >>> print(res.output[1, :, 0, 0])
    [0.6       0.7119633 0.       ]
    >>> print(", ".join(f"{v:.5f}" for v in res.lse[1, :, 0].tolist()))
    0.60104, 1.60545, -inf

  References:
    Vaswani et al., `Attention Is All You Need
    <https://arxiv.org/abs/1706.03762>`_, 2017.
    Rabe & Staats, `Self-attention Does Not Need O(n^2) Memory
    <https://arxiv.org/abs/2112.05682>`_, 2021.
    Dao et al., `FlashAttention <https://arxiv.org/abs/2205.14135>`_, 2022.
    Gemma Team, `Gemma 2 <https://arxiv.org/abs/2408.00118>`_, 2024 (soft cap).
    Xiao et al., `Efficient Streaming Language Models with Attention Sinks
    <https://arxiv.org/abs/2309.17453>`_, 2023.
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
    query_seq_lengths=query_seq_lengths,
    key_value_seq_lengths=key_value_seq_lengths,
    segment_ids=segment_ids,
    local_window_size=local_window_size,
    logit_soft_cap=logit_soft_cap,
    sink_logits=sink_logits,
    dropout_rate=dropout_rate,
    dropout_key=dropout_key,
    return_weights=return_weights,
    return_residual=return_residual,
    implementation=implementation,
    block_size=block_size,
    mesh=mesh,
    axis_name=axis_name,
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
  bias: jax.Array | None = None,
  mask: jax.Array | None = None,
  is_causal: bool | str = False,
  query_seq_lengths: jax.Array | None = None,
  key_value_seq_lengths: jax.Array | None = None,
  segment_ids: jax.Array | tuple[jax.Array, jax.Array] | None = None,
  local_window_size: int | tuple[int, int] | None = None,
  logit_soft_cap: float | None = None,
  sink_logits: jax.Array | None = None,
  dropout_rate: float = 0.0,
  dropout_key: jax.Array | None = None,
  return_weights: bool = False,
  return_residual: bool = False,
  implementation: str | None = None,
  block_size: int | tuple[int, int] | None = None,
  mesh: jax.sharding.Mesh | None = None,
  axis_name: str | None = None,
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
    bias, mask, is_causal, query_seq_lengths, key_value_seq_lengths, segment_ids: as in
      :func:`scaled_dot_product_attention`, applied to the projected heads; so
      are local_window_size, logit_soft_cap, sink_logits, dropout_rate,
      dropout_key, return_weights, return_residual, implementation, block_size,
      mesh and axis_name.

  Returns:
    ``[B..., T, d_out]`` in the dtype of ``x``, or an :class:`AttentionResult`
    ``(output, weights, lse)`` when ``return_weights`` or ``return_residual``
    is True.

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
    fn,
    q,
    k,
    v,
    bias,
    mask,
    is_causal,
    None,
    query_seq_lengths=query_seq_lengths,
    key_value_seq_lengths=key_value_seq_lengths,
    segment_ids=segment_ids,
    local_window_size=local_window_size,
    logit_soft_cap=logit_soft_cap,
    sink_logits=sink_logits,
    dropout_rate=dropout_rate,
    dropout_key=dropout_key,
    return_weights=return_weights,
    return_residual=return_residual,
    implementation=implementation,
    block_size=block_size,
    mesh=mesh,
    axis_name=axis_name,
  )
  attn = res.output if isinstance(res, AttentionResult) else res
  po = params["out"]
  out = jnp.einsum("...nh,nho->...o", attn, po["kernel"].astype(x.dtype))
  if "bias" in po:
    out = out + po["bias"].astype(x.dtype)
  return res._replace(output=out) if isinstance(res, AttentionResult) else out
