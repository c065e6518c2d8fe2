r"""Softmax losses for large vocabularies, without the ``[tokens, vocab]`` logits.

* :func:`linear_cross_entropy` is exactly ``cross_entropy(hidden @ weight +
  bias, labels)``, evaluated block by block (token chunk x vocabulary chunk)
  with a custom VJP that recomputes each block's logits in the backward pass
  (Cut Cross-Entropy, Wijmans et al. 2024; Liger Kernel's fused linear
  cross-entropy).
* :func:`sampled_softmax_cross_entropy` estimates the normalizer from a few
  classes drawn from a proposal, with the log-Q correction (Jean et al. 2015).

Public through :mod:`jaxsoft.losses` and :mod:`jaxsoft`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxsoft import _online_logsumexp as online
from jaxsoft import _validate as V
from jaxsoft import _vocab_parallel as VP
from jaxsoft._classification import check_lm_options, is_zero, soft_cap
from jaxsoft._dtypes import compute_dtype
from jaxsoft._labels import class_labels
from jaxsoft._reduction import REDUCTIONS, reduce_loss
from jaxsoft.softmax import logsumexp

__all__ = ["linear_cross_entropy", "sampled_softmax_cross_entropy"]

_SAMPLERS = ("log_uniform", "uniform")
# Blocks of 1024 tokens x 4096 classes (16 MiB of float32 logits) measured
# fastest on a 2-core CPU at d=512: large enough for the matmul to run at full
# speed, small enough that a block's logits, probabilities and gradient stay
# in cache between the matmul and the elementwise work.
_TOKEN_CHUNK = 1024
_VOCAB_CHUNK = 4096
# The one-pass gradient of a "mean" or "sum" loss keeps one token chunk's
# logits over the whole vocabulary (384 x V floats: 192 MiB at V = 131072),
# visited in chunks of 2048 classes. Each token chunk also reads and writes all
# of the weight's gradient, so fewer, larger chunks pay less of that traffic,
# and more memory: at N=8192, d=512, V=131072 (value_and_grad, fresh
# subprocesses, 2026-12-01) 512 tokens took 0.75x jax-cce's time but 1.02x its
# peak RSS, 384 tokens 0.81x and 0.98x; at N=4096, 256 tokens took 0.86x.
# 2048 classes took 0.93x the time of 4096 (N=1024, in-process A/B). Both caps
# apply on top of the user's chunk_size.
_GRAD_TOKEN_CHUNK = 384
_GRAD_VOCAB_CHUNK = 2048


def _balanced(n: int, target: int) -> int:
  """The chunk size <= target that splits ``n`` into the fewest, most even chunks."""
  k = -(-n // target)
  return -(-n // k)


def _assemble(parts, n: int, chunk: int):
  """``[k, chunk, ...]`` per-chunk results back to ``[n, ...]``.

  Chunk ``i`` starts at ``min(i * chunk, n - chunk)``: the last chunk is moved
  back to end at ``n`` (no padding copy of the inputs), so its first
  ``k * chunk - n`` rows repeat rows already computed and are dropped.
  """
  k = parts.shape[0]
  if k * chunk == n:
    return parts.reshape((n,) + parts.shape[2:])
  head = parts[:-1].reshape(((k - 1) * chunk,) + parts.shape[2:])
  return jnp.concatenate([head, parts[-1, k * chunk - n :]], axis=0)


def _start(i, chunk: int, n: int):
  return jnp.minimum(i * chunk, n - chunk)


def _add_at(x, x_j, axis, *, start):
  """``x`` with ``x_j`` added to its slice at ``start`` along ``axis``.

  A moved-back last chunk's repeated entries carry zero gradient, so adding
  keeps the values the chunk before gave them.
  """
  old = lax.dynamic_slice_in_dim(x, start, x_j.shape[axis], axis=axis)
  return lax.dynamic_update_slice_in_dim(x, old + x_j, start, axis=axis)


# Half-precision (bf16/f16) operands of the block matmuls: either fed to the
# matmul as they are with float32 accumulation (preferred_element_type), or
# upcast to float32 first. Per platform, the faster one: on the CPU, XLA's
# bf16 matmul measured 1.22x the float32 time and the upcast 1.06x
# (``python -m benchmarks.bench_vocab``), so the CPU upcasts; GPUs and TPUs
# multiply bf16 natively with float32 accumulation (not measured here). The
# loss and gradients agree with float32 to bf16 rounding either way. A
# platform not listed keeps half operands.
UPCAST_HALF_OPERANDS = {"cpu": True, "gpu": False, "tpu": False}


def _upcast() -> bool:
  return UPCAST_HALF_OPERANDS.get(jax.default_backend(), False)


def _matmul(a, b, dtype):
  """``a @ b`` accumulated in ``dtype``, half operands upcast or not per platform."""
  if _upcast():
    return jnp.dot(a.astype(dtype), b.astype(dtype))
  return jnp.dot(a, b, preferred_element_type=dtype)


def _block_logits(h_i, w, b, v0, tv, dtype):
  """Logits of one block, ``h_i @ weight[:, v0:v0+tv] + bias[v0:v0+tv]``, in ``dtype``."""
  w_j = lax.dynamic_slice_in_dim(w, v0, tv, axis=1)
  b_j = lax.dynamic_slice_in_dim(b, v0, tv)
  z = _matmul(h_i, w_j, dtype)
  return z.astype(dtype) + b_j.astype(dtype), w_j


def _accumulate(carry, z, ok, cw_j, need_u, need_h):
  """Merges one vocabulary chunk's (capped) logits ``z`` into the running ``(state, t, u)``.

  ``state`` is the online logsumexp, ``t = sum_c e^{z_c - m} z_c`` (when
  ``need_h``), rescaled with the running max like the sum, and ``u = sum_c
  cw_c z_c`` (when ``need_u``); columns outside ``ok`` do not count.
  """
  state, t, u = carry
  z = jnp.where(ok, z, -jnp.inf)
  part, e = online.reduce(z, 1)
  state, alpha, beta = online.merge(state, part)
  if need_h:
    # e = 0 at a -inf logit (a class masked by its bias): its term is 0, not 0 * -inf.
    t = t * alpha + beta * jnp.sum(jnp.where(e > 0, e * z, 0), 1, keepdims=True)
  if need_u:
    u = u + jnp.sum(jnp.where(ok, cw_j * z, 0), 1, keepdims=True)
  return state, t, u


def _chunked_stats(h, w, b, cw, cap, tn, tv, dtype, need_u, need_h):
  """Per-token statistics of the logits ``z = cap(h @ w + b)``, vocabulary chunk by chunk.

  Returns ``(lse, u, H)``: the logsumexp by the online logsumexp, ``u =
  sum_c cw_c z_c`` (when ``need_u``) and the entropy ``H = lse - sum_c p_c
  z_c`` (when ``need_h``), carried as ``t = sum_c e^{z_c - m} z_c`` and
  rescaled with the running max like the sum ``s``. The others are None.
  """
  n, vocab = h.shape[0], w.shape[1]
  cols = jnp.arange(tv)

  def token_chunk(_, i):
    h_i = lax.dynamic_slice_in_dim(h, _start(i, tn, n), tn, axis=0)

    def vocab_chunk(carry, j):
      v0 = _start(j, tv, vocab)
      z, _ = _block_logits(h_i, w, b, v0, tv, dtype)
      # Columns of a moved-back last chunk were counted by the chunk before.
      ok = v0 + cols >= j * tv
      cw_j = lax.dynamic_slice_in_dim(cw, v0, tv) if need_u else None
      return _accumulate(carry, soft_cap(z, cap), ok, cw_j, need_u, need_h), None

    zeros = jnp.zeros((tn, 1), dtype)
    init = VP.vary_like((online.empty((tn, 1), dtype), zeros, zeros), h, w, b, cw)
    (state, t, u), _ = lax.scan(vocab_chunk, init, jnp.arange(-(-vocab // tv)))
    lse = online.logsumexp(state)
    ent = lse - t / online.safe(state.s)
    return None, (lse[:, 0], u[:, 0], ent[:, 0])

  _, parts = lax.scan(token_chunk, None, jnp.arange(-(-n // tn)))
  lse, u, ent = (_assemble(x, n, tn) for x in parts)
  return lse, u if need_u else None, ent if need_h else None


def _stats_forward(h, w, b, y, cw, cap, tn, tv, need_u, need_h):
  dtype = compute_dtype(jnp.result_type(h, w))
  cap = cap.astype(dtype) if cap is not None else None
  # With a soft cap, sum_c cw_c z_c is not linear in h and is accumulated by
  # the chunks; without one it is h @ (W cw) + b . cw, in closed form.
  chunk_u = need_u and cap is not None
  lse, u, ent = _chunked_stats(h, w, b, cw.astype(dtype), cap, tn, tv, dtype, chunk_u, need_h)
  if need_u and cap is None:
    cw_ = cw.astype(dtype)
    u = jnp.dot(h.astype(dtype), jnp.dot(w.astype(dtype), cw_)) + jnp.dot(b.astype(dtype), cw_)
  # The label logit is one gathered column per token.
  w_y = jnp.take(w, y, axis=1).astype(dtype)
  z_y = soft_cap(jnp.sum(h.astype(dtype) * w_y.T, axis=1) + b[y].astype(dtype), cap)
  zeros = jnp.zeros_like(lse)
  return (lse, z_y, zeros if u is None else u, zeros if ent is None else ent), (lse, ent)


def _block_backward(h_i, w_j, z_raw, lse_i, ent_i, y_i, g_i, cw_j, v0, cap, ok, need_u, need_h):
  """One block's share of the gradients, from its raw logits and the per-token cotangents.

  ``g_i = (g_lse, g_zy, g_u, g_H)``, columns ``[tn, 1]``, are the cotangents
  of the four per-token statistics; the block gradient of the logits is
  ``dz_c = p_c g_lse + [c = y] g_zy + cw_c g_u - p_c (z_c - lse + H) g_H``
  (``d lse / dz = p``, ``d H / dz_c = -p_c (z_c - lse + H)``), then through
  the cap ``dz_raw = dz (1 - tanh^2)``, ``dcap = sum dz (tanh(r) - r (1 -
  tanh^2(r)))`` with ``r = z_raw / cap``. Entries outside ``ok`` give 0.
  Returns ``(dhidden_i, dweight_j, dbias_j, dclass_weight_j, dcap)``.
  """
  g_lse, g_zy, g_u, g_h = g_i
  dtype = z_raw.dtype
  z = soft_cap(z_raw, cap)
  # A token whose every class is -inf (a vocabulary shard masked by its bias)
  # has lse = -inf; floored, its p = exp(-inf - lowest) is 0 instead of NaN.
  p = jnp.exp(z - jnp.maximum(lse_i, jnp.finfo(dtype).min))
  dz = p * g_lse + jnp.where(y_i == v0 + jnp.arange(z.shape[1]), g_zy, 0)
  dcw = jnp.zeros((z.shape[1],), dtype)
  if need_u:
    dz = dz + g_u * cw_j[None, :]
    dcw = jnp.sum(jnp.where(ok, g_u * z, 0), axis=0)
  if need_h:
    dz = dz - jnp.where(p > 0, p * (z - lse_i + ent_i), 0) * g_h
  dz = jnp.where(ok, dz, 0)
  dcap = jnp.zeros((), dtype)
  if cap is not None:
    tanh = z / cap
    dcap = jnp.sum(dz * (tanh - z_raw / cap * (1 - tanh * tanh)))
    dz = dz * (1 - tanh * tanh)
  dz_in = dz if _upcast() else dz.astype(h_i.dtype)
  dh_i = _matmul(dz_in, w_j.T, dtype)
  return dh_i, _matmul(h_i.T, dz_in, dtype), jnp.sum(dz, axis=0), dcw, dcap


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _fused_stats(h, w, b, y, cw, cap, tn, tv, need_u, need_h):
  """Per token, for ``z = cap(h @ w + b)``: ``(lse, z_y, sum_c cw_c z_c, entropy)``; never holds ``[N, V]``.

  ``u`` and the entropy are zeros unless ``need_u`` / ``need_h``. Every loss
  term, reduction and option outside this is plain JAX, differentiated by
  autodiff through these four outputs.
  """
  return _stats_forward(h, w, b, y, cw, cap, tn, tv, need_u, need_h)[0]


def _fused_stats_fwd(h, w, b, y, cw, cap, tn, tv, need_u, need_h):
  out, (lse, ent) = _stats_forward(h, w, b, y, cw, cap, tn, tv, need_u, need_h)
  return out, (h, w, b, y, cw, cap, lse, ent)


def _fused_stats_bwd(tn, tv, need_u, need_h, res, g):
  """The gradients from the cotangents of the four statistics (:func:`_block_backward`).

  The outer loop runs over vocabulary chunks so that each chunk of
  ``weight`` and its gradient are visited once; the token chunks inside it
  recompute the block's logits from the saved logsumexp.
  """
  h, w, b, y, cw, cap, lse, ent = res
  g_lse, g_zy, g_u, g_h = g
  n, d = h.shape
  vocab = w.shape[1]
  dtype = lse.dtype
  g_lse, g_zy, g_u, g_h = (x.astype(dtype) for x in (g_lse, g_zy, g_u, g_h))
  cw_c = cw.astype(dtype)
  cap_c = cap.astype(dtype) if cap is not None else None
  rows, cols = jnp.arange(tn), jnp.arange(tv)

  def vocab_chunk(carry, j):
    dh, dw, db, dcw, dcap = carry
    v0 = _start(j, tv, vocab)
    col_ok = v0 + cols >= j * tv
    cw_j = lax.dynamic_slice_in_dim(cw_c, v0, tv)

    def token_chunk(acc, i):
      t0 = _start(i, tn, n)
      h_i = lax.dynamic_slice_in_dim(h, t0, tn, axis=0)
      piece = lambda x: None if x is None else lax.dynamic_slice_in_dim(x, t0, tn)[:, None]
      # Rows of a moved-back last token chunk were done by the chunk before.
      ok = (t0 + rows >= i * tn)[:, None] & col_ok
      z_raw, w_j = _block_logits(h_i, w, b, v0, tv, dtype)
      g_i = tuple(piece(x) for x in (g_lse, g_zy, g_u, g_h))
      dh_i, *parts = _block_backward(
        h_i, w_j, z_raw, piece(lse), piece(ent), piece(y), g_i, cw_j, v0, cap_c, ok, need_u, need_h
      )
      return tuple(x + dx for x, dx in zip(acc, parts)), dh_i

    init = (jnp.zeros((d, tv), dtype), jnp.zeros((tv,), dtype), jnp.zeros((tv,), dtype), jnp.zeros((), dtype))
    init = VP.vary_like(init, h, w, b, cw, lse)
    (dw_j, db_j, dcw_j, dcap_j), dh_parts = lax.scan(token_chunk, init, jnp.arange(-(-n // tn)))
    dh = dh + _assemble(dh_parts, n, tn)
    add = functools.partial(_add_at, start=v0)
    return (dh, add(dw, dw_j, 1), add(db, db_j, 0), add(dcw, dcw_j, 0), dcap + dcap_j), None

  init = (
    jnp.zeros((n, d), dtype),
    jnp.zeros((d, vocab), dtype),
    jnp.zeros((vocab,), dtype),
    jnp.zeros((vocab,), dtype),
    jnp.zeros((), dtype),
  )
  init = VP.vary_like(init, h, w, b, cw, lse)
  (dh, dw, db, dcw, dcap), _ = lax.scan(vocab_chunk, init, jnp.arange(-(-vocab // tv)))
  dcap = None if cap is None else dcap.astype(cap.dtype)
  return (dh.astype(h.dtype), dw.astype(w.dtype), db.astype(b.dtype), None, dcw.astype(cw.dtype), dcap)


_fused_stats.defvjp(_fused_stats_fwd, _fused_stats_bwd)


def _scalar_value(y, lse, z_y, u, cw, eps, a_main, a_z, vocab):
  """``a_main * sum(per-token loss) + a_z * sum(lse^2)`` (``a_z`` None: no z-loss)."""
  per, lse_k, _, _ = _token_loss(y, lse, z_y, u, cw, eps, vocab)
  value = a_main * jnp.sum(per)
  return value if a_z is None else value + a_z * jnp.sum(jnp.square(lse_k))


@functools.partial(jax.custom_vjp, nondiff_argnums=(9, 10, 11, 12))
def _scalar_loss(h, w, b, y, cw, cap, eps, a_main, a_z, tn, tv, need_u, need_h):
  """The scalar loss of ``"mean"`` or ``"sum"`` (:func:`_scalar_value` of the statistics).

  With ``need_h`` (the aux outputs), ``(loss, (lse, z_y, entropy))`` per
  token. Evaluated alone, it is the chunked statistics pass. Differentiated,
  its forward rule computes the loss and every gradient in one pass
  (:func:`_scalar_loss_fwd`), and the backward rule only scales them.
  """
  cw_in = jnp.ones((w.shape[1],), w.dtype) if cw is None else cw
  (lse, z_y, u, ent), _ = _stats_forward(h, w, b, y.index, cw_in, cap, tn, tv, need_u, need_h)
  value = _scalar_value(y, lse, z_y, u if need_u else None, cw, eps, a_main, a_z, w.shape[1])
  return (value, (lse, z_y, ent)) if need_h else value


def _scalar_loss_fwd(h, w, b, y, cw, cap, eps, a_main, a_z, tn, tv, need_u, need_h):
  """The loss and its gradients in one pass: three ``N x d x V`` products instead of four.

  A scalar loss's cotangent is one number, so the gradients can be formed
  before it is known and scaled after (Liger Kernel's fused linear
  cross-entropy does the same). Token chunk by token chunk: (1) the chunk's
  raw logits over the whole vocabulary are computed once, kept in a
  ``[token_chunk, V]`` buffer, and reduced to ``lse``, ``z_y`` and ``u``;
  (2) autodiff of the per-token loss gives each token's cotangents of those
  statistics; (3) a second pass over the kept logits forms ``dz``
  (:func:`_block_backward`) and accumulates the gradients. The chunked
  statistics-then-recompute order needs a fourth product (the logits
  twice); this one trades it for the buffer, which is why the token chunk
  here is at most ``_GRAD_TOKEN_CHUNK``. With ``need_h``, the statistics
  are outputs too; the backward rule applies their cotangents, when any is
  nonzero, by the statistics' own backward pass (:func:`_fused_stats_bwd`).
  """
  n, d = h.shape
  vocab = w.shape[1]
  dtype = compute_dtype(jnp.result_type(h, w))
  tn = _balanced(n, min(tn, _GRAD_TOKEN_CHUNK))
  tv = _balanced(vocab, min(tv, _GRAD_VOCAB_CHUNK))
  cw_c = jnp.ones((vocab,), dtype) if cw is None else cw.astype(dtype)
  cap_c = None if cap is None else cap.astype(dtype)
  rows, cols = jnp.arange(tn), jnp.arange(tv)
  vocab_chunks = jnp.arange(-(-vocab // tv))

  def terms(y_i, lse, z_y, u, cw_, eps_, a_main_, a_z_):
    return _scalar_value(y_i, lse, z_y, u if need_u else None, cw_, eps_, a_main_, a_z_, vocab)

  def token_chunk(carry, i):
    dw, db, dcw, dcap, d_params, value = carry
    t0 = _start(i, tn, n)
    h_i = lax.dynamic_slice_in_dim(h, t0, tn, axis=0)
    y_i = jax.tree.map(lambda x: lax.dynamic_slice_in_dim(x, t0, tn), y)
    # Rows of a moved-back last token chunk were done by the chunk before.
    row_ok = t0 + rows >= i * tn
    y_i = y_i._replace(keep=y_i.keep & row_ok)

    def logits_pass(c, j):
      buf, acc = c
      v0 = _start(j, tv, vocab)
      z_raw, _ = _block_logits(h_i, w, b, v0, tv, dtype)
      ok = v0 + cols >= j * tv
      acc = _accumulate(
        acc, soft_cap(z_raw, cap_c), ok, lax.dynamic_slice_in_dim(cw_c, v0, tv), need_u, need_h
      )
      return (lax.dynamic_update_slice_in_dim(buf, z_raw, v0, axis=1), acc), None

    zeros = jnp.zeros((tn, 1), dtype)
    init = (jnp.zeros((tn, vocab), dtype), (online.empty((tn, 1), dtype), zeros, zeros))
    (buf, (state, t, u)), _ = lax.scan(logits_pass, init, vocab_chunks)
    lse = online.logsumexp(state)[:, 0]
    ent = lse - t[:, 0] / online.safe(state.s[:, 0])
    z_y = soft_cap(jnp.take_along_axis(buf, y_i.index[:, None], axis=1)[:, 0], cap_c)
    value_i, vjp = jax.vjp(functools.partial(terms, y_i), lse, z_y, u[:, 0], cw, eps, a_main, a_z)
    g_lse, g_zy, g_u, *g_params = vjp(jnp.ones_like(value_i))
    g_i = (g_lse[:, None], g_zy[:, None], g_u[:, None], None)

    def grad_pass(c, j):
      dh_i, dw, db, dcw, dcap = c
      v0 = _start(j, tv, vocab)
      ok = row_ok[:, None] & (v0 + cols >= j * tv)
      z_raw = lax.dynamic_slice_in_dim(buf, v0, tv, axis=1)
      w_j = lax.dynamic_slice_in_dim(w, v0, tv, axis=1)
      cw_j = lax.dynamic_slice_in_dim(cw_c, v0, tv)
      dh_ij, dw_j, db_j, dcw_j, dcap_j = _block_backward(
        h_i, w_j, z_raw, lse[:, None], None, y_i.index[:, None], g_i, cw_j, v0, cap_c, ok, need_u, False
      )
      add = functools.partial(_add_at, start=v0)
      return (dh_i + dh_ij, add(dw, dw_j, 1), add(db, db_j, 0), add(dcw, dcw_j, 0), dcap + dcap_j), None

    init = (jnp.zeros((tn, d), dtype), dw, db, dcw, dcap)
    (dh_i, dw, db, dcw, dcap), _ = lax.scan(grad_pass, init, vocab_chunks)
    d_params = jax.tree.map(jnp.add, d_params, tuple(g_params))
    return (dw, db, dcw, dcap, d_params, value + value_i), (dh_i, lse, z_y, ent)

  params = (cw, eps, a_main, a_z)
  init = (
    jnp.zeros((d, vocab), dtype),
    jnp.zeros((vocab,), dtype),
    jnp.zeros((vocab,), dtype),
    jnp.zeros((), dtype),
    jax.tree.map(jnp.zeros_like, params),
    jnp.zeros((), dtype),
  )
  (dw, db, dcw, dcap, d_params, value), parts = lax.scan(token_chunk, init, jnp.arange(-(-n // tn)))
  dh, lse, z_y, ent = (_assemble(x, n, tn) for x in parts)
  d_cw, d_eps, d_a_main, d_a_z = d_params
  grads = (
    dh.astype(h.dtype),
    dw.astype(w.dtype),
    db.astype(b.dtype),
    None,
    None if cw is None else (d_cw + dcw).astype(cw.dtype),
    None if cap is None else dcap.astype(cap.dtype),
    d_eps,
    d_a_main,
    d_a_z,
  )
  if not need_h:
    return value, grads
  stats_res = (h, w, b, y.index, cw_c, cap, lse, ent)
  return (value, (lse, z_y, ent)), (grads, stats_res)


def _scalar_loss_bwd(tn, tv, need_u, need_h, res, g):
  if not need_h:
    return jax.tree.map(lambda x: x * g.astype(x.dtype), res)
  grads, stats_res = res
  g, (g_lse, g_zy, g_h) = g
  grads = jax.tree.map(lambda x: x * g.astype(x.dtype), grads)
  # Cotangents of the aux outputs (usually zero: the aux are logged, not
  # differentiated) take the statistics' backward pass, only when present.
  g_stats = (g_lse, g_zy, jnp.zeros_like(g_lse), g_h)
  stats_bwd = lambda: _fused_stats_bwd(tn, tv, False, True, stats_res, g_stats)
  nothing = lambda: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(stats_bwd))
  present = jnp.any(jnp.stack([jnp.any(x != 0) for x in g_stats]))
  dh, dw, db, _, dcw, dcap = lax.cond(present, stats_bwd, nothing)
  add = lambda x, dx: None if x is None else x + dx.astype(x.dtype)
  g_hid, g_w, g_b, g_y, g_cw, g_cap, *rest = grads
  return (add(g_hid, dh), add(g_w, dw), add(g_b, db), g_y, add(g_cw, dcw), add(g_cap, dcap), *rest)


_scalar_loss.defvjp(_scalar_loss_fwd, _scalar_loss_bwd)


def _reduction_scales(y, class_weight, z_loss, reduction, dtype):
  """``(a_main, a_z)`` such that the ``"mean"`` or ``"sum"`` loss is :func:`_scalar_value`.

  The factors :func:`reduce_loss` applies: 1 for ``"sum"``; for ``"mean"``
  one over the counted tokens' ``sum w_y`` (main term) and over their number
  (z-loss), 0 when nothing counts. ``a_z`` is None without a z-loss.
  """
  one = jnp.ones((), dtype)
  w_y = y.keep.astype(dtype)
  if class_weight is not None:
    w_y = jnp.where(y.keep, class_weight.astype(dtype)[y.index], 0)
  a_z = None if is_zero(z_loss) else z_loss * reduce_loss(one, y.keep.astype(dtype), reduction)
  return reduce_loss(one, w_y, reduction), a_z


def _chunk_sizes(fn, chunk_size, n, vocab):
  """``(token_chunk, vocab_chunk)`` from None, an int or a pair, capped at the sizes."""
  if chunk_size is None:
    tn, tv = _TOKEN_CHUNK, _VOCAB_CHUNK
  elif isinstance(chunk_size, (tuple, list)):
    if len(chunk_size) != 2:
      V.fail(
        fn,
        "chunk_size",
        "be None, an int or a (token_chunk, vocab_chunk) pair",
        repr(chunk_size),
        exc=TypeError,
      )
    tn = V.check_int(fn, "chunk_size[0]", chunk_size[0], minimum=1)
    tv = V.check_int(fn, "chunk_size[1]", chunk_size[1], minimum=1)
  else:
    tn, tv = _TOKEN_CHUNK, V.check_int(fn, "chunk_size", chunk_size, minimum=1)
  # Evenly sized chunks waste at most one row/column per chunk in the last one.
  return _balanced(max(n, 1), min(tn, max(n, 1))), _balanced(vocab, min(tv, vocab))


def _check_hidden_weight(fn, hidden, weight, bias, labels, reduction):
  """The checks shared by both vocabulary losses; fills in a zero bias."""
  for name, x in (("hidden", hidden), ("weight", weight)):
    V.check_array(fn, name, x)
  hidden, weight = jnp.asarray(hidden), jnp.asarray(weight)
  V.check_floating(fn, "hidden", hidden)
  V.check_floating(fn, "weight", weight)
  V.check_min_ndim(fn, "hidden", hidden, 1, " ([..., d])")
  V.check_ndim(fn, "weight", weight, 2, " ([d, V])")
  d = hidden.shape[-1]
  if weight.shape[0] != d:
    V.fail(fn, "weight", f"have shape ({d}, V) (d = hidden.shape[-1])", tuple(weight.shape))
  vocab = weight.shape[1]
  if vocab < 1:
    V.fail(fn, "weight", "have at least one class (V >= 1)", tuple(weight.shape))
  if bias is None:
    bias = jnp.zeros((vocab,), weight.dtype)
  else:
    V.check_array(fn, "bias", bias)
    bias = jnp.asarray(bias)
    V.check_floating(fn, "bias", bias)
    V.check_shape(fn, "bias", bias, (vocab,), " (one per class, weight.shape[1])")
  V.check_array(fn, "labels", labels)
  labels = jnp.asarray(labels)
  V.check_integer(fn, "labels", labels)
  V.check_shape(fn, "labels", labels, hidden.shape[:-1], " (hidden.shape[:-1])")
  V.check_option(fn, "reduction", reduction, REDUCTIONS)
  return hidden, weight, bias, labels


def linear_cross_entropy(
  hidden,
  weight,
  labels,
  *,
  bias=None,
  chunk_size=None,
  class_weight=None,
  ignore_index=None,
  label_smoothing=0.0,
  where=None,
  reduction="mean",
  z_loss=0.0,
  logit_soft_cap=None,
  return_aux=False,
  mesh=None,
  axis_name=None,
):
  r"""Cross-entropy of a linear output layer, without materializing the logits.

  Equals ``cross_entropy(hidden @ weight + bias, labels, ...)`` on every
  option: per token, with :math:`z = \mathrm{cap}(h W + b)`, class weights
  :math:`w` (``class_weight``) and :math:`\mathrm{lse}_i = \log \sum_c e^{z_{ic}}`,

  .. math::
    \ell_i = (1 - \varepsilon)\, w_{y_i} (\mathrm{lse}_i - z_{i y_i})
      + \frac{\varepsilon}{V} \sum_c w_c (\mathrm{lse}_i - z_{ic})
      + \lambda_z \mathrm{lse}_i^2,
    \qquad \mathrm{cap}(x) = c \tanh(x / c),

  with the ``ignore_index``, ``where``, ``label_smoothing``, ``reduction``,
  ``z_loss``, ``logit_soft_cap`` and ``return_aux`` semantics of
  :func:`jaxsoft.cross_entropy` (its ``weight`` is ``class_weight`` here:
  ``weight`` is the projection; ``"mean"`` divides by :math:`\sum w_{y_i}`
  over the counted tokens, the z-loss term by their number, and is 0 when
  none count). The logits are computed in blocks of ``token_chunk x
  vocab_chunk`` inside ``lax.scan``: the forward pass keeps only a running
  max and sum per token (and, for ``return_aux``, the running
  :math:`\sum_c e^{z_c - m} z_c` that gives the entropy; with a soft cap and
  smoothing, :math:`\sum_c w_c z_c`), and a custom VJP recomputes each block
  in the backward pass to form ``dlogits`` and accumulate ``dhidden +=
  dlogits @ W_chunk.T``, ``dW_chunk += hidden_chunk.T @ dlogits``. Memory is
  ``O(N d + d V + token_chunk * vocab_chunk)``, never ``N x V``; the
  gradients (also in ``class_weight``, ``label_smoothing``, ``z_loss`` and
  ``logit_soft_cap``) equal the dense ones to rounding.

  **Training (a scalar loss) takes one pass.** For ``"mean"`` or ``"sum"``
  without ``axis_name``, the cotangent of the loss is one number, so the
  forward rule of the custom VJP forms every gradient at once and the
  backward rule only scales them (as Liger Kernel's fused linear
  cross-entropy does): token chunk by token chunk, the chunk's logits over
  the whole vocabulary are computed once, kept, and used for both the
  normalizer and ``dlogits``. That is three ``N x d x V`` products instead
  of four (the logits are not recomputed), for one more buffer of
  ``min(token_chunk, 384) x V`` floats (192 MiB at ``V = 131072``), visited
  ``min(vocab_chunk, 2048)`` classes at a time. The aux
  outputs come from the same pass; differentiating through them (rare: they
  are usually logged) adds the recomputing backward pass, run only when
  their cotangents are nonzero. Evaluated without differentiation, or for
  ``"none"``, the pass above runs.

  **Vocabulary parallelism** (Megatron-LM's vocab-parallel cross-entropy):
  with ``axis_name``, ``weight`` is split by columns over the devices of that
  mesh axis, device :math:`k` of :math:`D` holding classes
  :math:`[kV/D, (k+1)V/D)`. Each device runs the chunked pass above on its
  own columns, and one all-reduce of the per-token max and one of the sums
  (normalizer, label logit, smoothing and entropy terms) give every device
  the global statistics; the backward pass leaves each device the gradient
  of its own columns (sharded like ``weight``) and sums the gradient of
  ``hidden`` over the axis. Per-device memory for the weight and its
  gradient is :math:`O(dV/D)`; the result equals the single-device loss to
  float rounding, on every option. Two ways to call it:

  * ``mesh=mesh, axis_name="v"`` on global arrays: the function runs its
    own ``jax.shard_map`` over ``mesh``, splitting ``weight`` (and ``bias``,
    ``class_weight``) along ``"v"`` (``V`` must be a multiple of the axis
    size), with ``hidden`` and ``labels`` replicated; the loss comes back
    replicated and ``jax.grad`` gives a weight gradient sharded
    ``PartitionSpec(None, "v")``.
  * ``axis_name="v"`` alone, inside the caller's ``shard_map`` over a mesh
    with that axis (a model already written per device; tokens may be split
    over other axes, as in data parallelism): ``weight``, ``bias`` and
    ``class_weight`` are this device's shards (``[d, V/D]``, ``[V/D]``),
    ``labels`` hold global class ids, and every device of the axis gets
    the loss of its tokens.

  Args:
    hidden: floating ``[..., d]`` (usually ``[N, d]``), the last hidden layer.
    weight: floating ``[d, V]``, the output projection.
    labels: integer ``hidden.shape[:-1]``, class ids in ``[0, V)`` (or
      ``ignore_index``).
    bias: optional ``[V]``.
    chunk_size: None (1024 tokens x 4096 classes), an int (the vocabulary
      chunk, 1024 tokens), or a ``(token_chunk, vocab_chunk)`` pair. Chunks
      larger than the sizes are capped, and sizes that do not divide ``N``
      or ``V`` are evened out (``V=32000, 4096 -> 8 chunks of 4000``). A
      static Python value.
    class_weight: optional floating ``[V]``, per-class weights.
    ignore_index: optional label value whose tokens are skipped.
    label_smoothing: in ``[0, 1]``, mixes the target with the uniform one.
    where: optional boolean broadcastable to ``labels.shape``; False skips a
      token like ``ignore_index``, whatever its label.
    reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    z_loss: :math:`\lambda_z \ge 0` (PaLM uses 1e-4).
    logit_soft_cap: None, or :math:`c > 0` (Gemma 2 uses 30).
    return_aux: also return per-token ``{"lse", "log_prob", "entropy"}``,
      computed in the same chunked pass.
    mesh: optional ``jax.sharding.Mesh``: split the global ``weight`` over
      its axis ``axis_name`` (see vocabulary parallelism above).
    axis_name: None (one device), or the mesh axis that splits the
      vocabulary; without ``mesh``, the call must be inside ``shard_map``
      over that axis and ``weight`` is the local shard. ``chunk_size``
      then applies to each device's columns.

  Returns:
    A scalar, or the per-token losses ``labels.shape`` for ``"none"``
    (skipped tokens 0), in the dtype of ``hidden`` (half precision is
    computed in float32). With ``return_aux``, ``(loss, aux)`` as in
    :func:`jaxsoft.cross_entropy`.

  Raises:
    ValueError: shape mismatches, bad options, or (when concrete) counted
      labels out of range; under ``jit`` such a token's loss is NaN, as in
      :func:`jaxsoft.cross_entropy`. With ``mesh``, an ``axis_name`` that
      is not one of its axes or a ``V`` that the axis size does not divide.
    TypeError: ``mesh`` without ``axis_name``.
    NameError: ``axis_name`` without ``mesh`` outside ``shard_map``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoft import linear_cross_entropy, cross_entropy
    >>> h = jax.random.normal(jax.random.key(0), (6, 4))
    >>> w = jax.random.normal(jax.random.key(1), (4, 10))
    >>> y = jnp.array([0, 3, 9, 2, 2, 7])
    >>> print(linear_cross_entropy(h, w, y, chunk_size=(4, 3)).round(4))
    6.0564
    >>> print(cross_entropy(h @ w, y).round(4))
    6.0564
    >>> loss, aux = linear_cross_entropy(h, w, y, z_loss=1e-4, logit_soft_cap=30.0, return_aux=True)
    >>> print(aux["log_prob"].shape, round(float(loss), 4))
    (6,) 6.0236

    The vocabulary split over a mesh axis (here of one device; on ``D``
    devices each holds ``w[:, k*V/D:(k+1)*V/D]``):

    >>> from jax.sharding import Mesh
    >>> mesh = Mesh(jax.devices()[:1], ("v",))
    >>> print(linear_cross_entropy(h, w, y, mesh=mesh, axis_name="v").round(4))
    6.0564

  References:
    Wijmans et al., 2024, "Cut Your Losses in Large-Vocabulary Language
    Models" (Cut Cross-Entropy); Hsu et al., 2024, "Liger Kernel" (fused
    linear cross-entropy); Milakov & Gimelshein, 2018, "Online normalizer
    calculation for softmax"; Shoeybi et al., 2019, "Megatron-LM"
    (vocabulary-parallel cross-entropy).
  """
  fn = "linear_cross_entropy"
  hidden, weight, bias, labels = _check_hidden_weight(fn, hidden, weight, bias, labels, reduction)
  V.check_range(fn, "label_smoothing", label_smoothing, 0.0, 1.0)
  check_lm_options(fn, z_loss, logit_soft_cap, return_aux)
  v_local, vocab = VP.vocab_sizes(fn, mesh, axis_name, weight.shape[1])
  n = labels.size
  tn, tv = _chunk_sizes(fn, chunk_size, n, v_local)
  # The class weights of weight's columns feed the chunked pass; the loss
  # needs every class's (inside shard_map only this device's are here).
  cw = cw_cols = _check_class_weight(fn, class_weight, weight.shape[1])
  if cw is not None and axis_name is not None and mesh is None:
    cw = VP.gather_columns(cw_cols, axis_name)
  y = class_labels(fn, labels, vocab, ignore_index=ignore_index, where=where)
  dtype = compute_dtype(hidden.dtype)
  need_u = not is_zero(label_smoothing)
  cap = None if logit_soft_cap is None else jnp.asarray(logit_soft_cap, dtype)
  if n and reduction != "none" and axis_name is None:
    # A scalar loss on one device: the one-pass gradient (see _scalar_loss_fwd).
    flat = jax.tree.map(lambda x: x.reshape(n), y)
    a_main, a_z = _reduction_scales(flat, cw, z_loss, reduction, dtype)
    eps = jnp.asarray(label_smoothing, dtype)
    args = (hidden.reshape(n, -1), weight, bias, flat, cw, cap, eps, a_main, a_z)
    out = _scalar_loss(*args, tn, tv, need_u, return_aux)
    if not return_aux:
      return out.astype(hidden.dtype)
    loss, stats = out
    lse, z_y, ent = (x.reshape(labels.shape) for x in stats)
    return loss.astype(hidden.dtype), _aux(y, lse, z_y, ent, hidden.dtype)
  if n == 0:
    lse = z_y = u = ent = jnp.zeros(labels.shape, dtype)
  else:
    cw_in = jnp.ones((weight.shape[1],), dtype) if cw_cols is None else cw_cols
    local_stats = lambda h, w, b, y_, cw_, cap_: _fused_stats(
      h, w, b, y_, cw_, cap_, tn, tv, need_u, return_aux
    )
    args = (hidden.reshape(n, -1), weight, bias, y.index.reshape(n), cw_in, cap)
    if axis_name is None:
      stats = local_stats(*args)
    elif mesh is None:
      stats = VP.merged_stats(local_stats, *args, axis_name=axis_name)
    else:
      stats = VP.sharded_stats(local_stats, *args, mesh=mesh, axis_name=axis_name)
    lse, z_y, u, ent = (x.reshape(labels.shape) for x in stats)
  return _lm_loss(
    y,
    lse,
    z_y,
    vocab=vocab,
    u=u if need_u else None,
    ent=ent,
    class_weight=cw,
    label_smoothing=label_smoothing,
    z_loss=z_loss,
    reduction=reduction,
    return_aux=return_aux,
    dtype=hidden.dtype,
  )


def _check_class_weight(fn, class_weight, vocab):
  if class_weight is None:
    return None
  V.check_array(fn, "class_weight", class_weight)
  class_weight = jnp.asarray(class_weight)
  V.check_floating(fn, "class_weight", class_weight)
  V.check_shape(fn, "class_weight", class_weight, (vocab,), " (one per class, weight.shape[1])")
  return class_weight


def _token_loss(y, lse, z_y, u, class_weight, label_smoothing, vocab):
  """Per token ``(1 - eps) w_y (lse - z_y) + eps / V (W lse - u)``, and ``lse``, ``z_y``, ``w_y``.

  (``W = sum_c w_c``, ``u = sum_c w_c z_c``; PyTorch's weighted smoothing;
  ``u`` None means no smoothing.) Skipped tokens are 0, counted labels out
  of range NaN (:meth:`ClassLabels.loss`). The returned ``lse`` and ``z_y``
  are 0 at skipped tokens.
  """
  cdt = lse.dtype
  # Skipped tokens become 0 before any product, so no 0 * inf (a -inf label
  # logit gathered at the safe index) reaches a gradient.
  lse_k, zy_k = jnp.where(y.keep, lse, 0), jnp.where(y.keep, z_y, 0)
  w_y = jnp.ones(lse.shape, cdt) if class_weight is None else class_weight.astype(cdt)[y.index]
  main = w_y * (lse_k - zy_k)
  if u is not None:
    eps = jnp.asarray(label_smoothing, cdt)
    total = vocab if class_weight is None else jnp.sum(class_weight.astype(cdt))
    # A -inf logit (a class masked by its bias) makes u -inf: with eps = 0 it
    # must not become 0 * -inf = NaN.
    u_k = jnp.where(y.keep & (jnp.isfinite(u) | (eps != 0)), u, 0)
    main = (1 - eps) * main + eps / vocab * (total * lse_k - u_k)
  return y.loss(main), lse_k, zy_k, w_y


def _lm_loss(
  y, lse, z_y, *, vocab, u, ent, class_weight, label_smoothing, z_loss, reduction, return_aux, dtype
):
  """The loss, its reduction and the aux outputs from the per-token statistics.

  The per-token loss of :func:`_token_loss`, the mean dividing by ``sum
  w_y``, plus ``z_loss * lse**2`` averaged over the counted tokens. Plain
  JAX: autodiff carries the gradients to the statistics.
  """
  per, lse_k, _, w_y = _token_loss(y, lse, z_y, u, class_weight, label_smoothing, vocab)
  loss = reduce_loss(per, jnp.where(y.keep, w_y, 0), reduction)
  if not is_zero(z_loss):
    loss = loss + reduce_loss(z_loss * jnp.square(lse_k), y.keep.astype(lse.dtype), reduction)
  loss = loss.astype(dtype)
  return (loss, _aux(y, lse, z_y, ent, dtype)) if return_aux else loss


def _aux(y, lse, z_y, ent, dtype):
  """The per-token aux outputs ``{"lse", "log_prob", "entropy"}``, 0 at skipped tokens."""
  lse_k, zy_k = jnp.where(y.keep, lse, 0), jnp.where(y.keep, z_y, 0)
  aux = {"lse": lse_k, "log_prob": zy_k - lse_k, "entropy": jnp.where(y.keep, ent, 0)}
  return {k: v.astype(dtype) for k, v in aux.items()}


def _draw_candidates(key, sampler: str, num_samples: int, vocab: int):
  r"""``num_samples`` class ids drawn with replacement, and ``log Q`` of each.

  ``"uniform"``: :math:`Q(c) = 1/V`. ``"log_uniform"``: the Zipfian
  :math:`Q(c) = \log\frac{c+2}{c+1} / \log(V+1)` (TensorFlow's
  ``log_uniform_candidate_sampler``), drawn by inverting its CDF
  :math:`F(c) = \log(c+2)/\log(V+1)`.
  """
  if sampler == "uniform":
    ids = jax.random.randint(key, (num_samples,), 0, vocab)
    return ids, jnp.full((num_samples,), -math.log(vocab), jnp.float32)
  log_v1 = math.log(vocab + 1.0)
  u = jax.random.uniform(key, (num_samples,), jnp.float32)
  # floor(exp(u log(V+1))) - 1 is in [0, V]; rounding can reach V, clip it.
  ids = jnp.clip(jnp.floor(jnp.exp(u * log_v1)).astype(jnp.int32) - 1, 0, vocab - 1)
  log_q = jnp.log(jnp.log1p(1.0 / (ids + 1.0))) - math.log(log_v1)
  return ids, log_q


def _check_sampling(fn, key, num_samples, sampler, remove_accidental_hits, vocab):
  """The sampled softmax's own options; returns the key, typed."""
  num_samples = V.check_int(fn, "num_samples", num_samples, minimum=1)
  if num_samples > vocab:
    V.fail(fn, "num_samples", f"be <= the vocabulary size {vocab} (weight.shape[1])", num_samples)
  V.check_option(fn, "sampler", sampler, _SAMPLERS)
  if not isinstance(remove_accidental_hits, bool):
    V.fail(fn, "remove_accidental_hits", "be a bool", repr(remove_accidental_hits), exc=TypeError)
  return V.check_key(fn, "key", key)


def sampled_softmax_cross_entropy(
  hidden,
  weight,
  labels,
  key,
  *,
  num_samples,
  bias=None,
  sampler="log_uniform",
  remove_accidental_hits=True,
  ignore_index=None,
  where=None,
  reduction="mean",
  z_loss=0.0,
  logit_soft_cap=None,
  return_aux=False,
):
  r"""Sampled softmax cross-entropy with the log-Q correction (a training loss).

  ``num_samples`` = :math:`S` classes :math:`c_1..c_S` are drawn **with
  replacement** from a proposal :math:`Q`, shared by all tokens. The
  normalizer over the classes other than the label is estimated by
  importance sampling, each sampled logit corrected by the log of its
  expected count :math:`\log(S\, Q(c))`:

  .. math::
    \ell_i = \log\Big(e^{z_{i y_i}} + \sum_{s=1}^{S} m_{is}\,
      e^{z_{i c_s} - \log(S\, Q(c_s))}\Big) - z_{i y_i},
    \qquad z = h W + b,

  with :math:`m_{is} = [c_s \ne y_i]` when ``remove_accidental_hits`` (else
  1). With hits removed, the sum inside the log is an unbiased estimate of
  :math:`\sum_c e^{z_{ic}}`, so the loss (by Jensen, from below) and its
  gradient approach the full softmax cross-entropy as ``num_samples`` grows.
  Keeping hits counts the label's mass twice and biases the loss upward.
  Cost is ``O(N d S)`` instead of ``O(N d V)``. Use it to train; evaluate
  (perplexity) with the full :func:`jaxsoft.cross_entropy` or
  :func:`linear_cross_entropy`.

  Proposals: ``"uniform"``, :math:`Q(c) = 1/V`; ``"log_uniform"`` (Zipfian,
  for classes sorted by decreasing frequency),
  :math:`Q(c) = \log\frac{c+2}{c+1} / \log(V+1)`.

  Args:
    hidden: floating ``[..., d]``.
    weight: floating ``[d, V]``.
    labels: integer ``hidden.shape[:-1]`` in ``[0, V)``.
    key: a ``jax.random`` key (``jax.random.key``, or a legacy ``uint32[2]``
      ``jax.random.PRNGKey``); the same key draws the same classes.
    num_samples: number of draws ``S``, a Python int in ``[1, V]``.
    bias: optional ``[V]``.
    sampler: ``"log_uniform"`` or ``"uniform"``.
    remove_accidental_hits: mask draws equal to a token's own label.
    ignore_index, where, reduction, z_loss, logit_soft_cap: as in
      :func:`jaxsoft.cross_entropy` (the cap applies to the logits before
      the log-Q correction; ``z_loss`` squares the estimated normalizer).
    return_aux: also return per-token ``{"lse", "log_prob", "entropy"}``,
      here estimates: the estimated normalizer
      :math:`\widehat{\mathrm{lse}}_i` (the log of the sum above),
      :math:`z_{iy_i} - \widehat{\mathrm{lse}}_i`, and
      :math:`\widehat{\mathrm{lse}}_i - \sum_j \pi_{ij} z_{ij}` with
      :math:`\pi_i` the softmax of the corrected logits inside the log (the
      self-normalized importance-sampling estimate of the entropy).

  Returns:
    A scalar, or per-token losses ``labels.shape`` for ``"none"``, in the
    dtype of ``hidden``; with ``return_aux``, ``(loss, aux)``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoft import sampled_softmax_cross_entropy
    >>> h = jax.random.normal(jax.random.key(0), (6, 4))
    >>> w = jax.random.normal(jax.random.key(1), (4, 10))
    >>> y = jnp.array([0, 3, 9, 2, 2, 7])
    >>> loss = sampled_softmax_cross_entropy(h, w, y, jax.random.key(2), num_samples=5)
    >>> print(loss.round(4))
    5.9449

  References:
    Jean et al., 2015, "On Using Very Large Target Vocabulary for Neural
    Machine Translation"; Bengio & Senecal, 2008, "Adaptive importance
    sampling to accelerate training of a neural probabilistic language
    model"; TensorFlow, ``tf.nn.sampled_softmax_loss``.
  """
  fn = "sampled_softmax_cross_entropy"
  hidden, weight, bias, labels = _check_hidden_weight(fn, hidden, weight, bias, labels, reduction)
  check_lm_options(fn, z_loss, logit_soft_cap, return_aux)
  vocab = weight.shape[1]
  key = _check_sampling(fn, key, num_samples, sampler, remove_accidental_hits, vocab)
  y = class_labels(fn, labels, vocab, ignore_index=ignore_index, where=where)
  dtype = compute_dtype(jnp.result_type(hidden, weight))
  cap = None if logit_soft_cap is None else jnp.asarray(logit_soft_cap, dtype)

  ids, log_q = _draw_candidates(key, sampler, num_samples, vocab)
  h = hidden.astype(dtype)
  # One gather of the label and sampled columns: its gradient is then a single
  # scatter into one [d, V] buffer, the only vocabulary-sized array of the pass.
  cols = jnp.concatenate([y.index.reshape(-1), ids])
  w_cols = jnp.take(weight, cols, axis=1).astype(dtype)
  b_cols = bias[cols].astype(dtype)
  n = labels.size
  z_y = soft_cap(jnp.sum(h * w_cols[:, :n].T.reshape(h.shape), -1) + b_cols[:n].reshape(labels.shape), cap)
  z_s = soft_cap(jnp.dot(h, w_cols[:, n:]) + b_cols[n:], cap)
  a_s = z_s - (math.log(num_samples) + log_q.astype(dtype))
  if remove_accidental_hits:
    a_s = jnp.where(ids == y.index[..., None], -jnp.inf, a_s)
  a = jnp.concatenate([z_y[..., None], a_s], axis=-1)
  lse = logsumexp(a, -1)
  ent = None
  if return_aux:
    pi = jnp.exp(a - lse[..., None])
    z = jnp.concatenate([z_y[..., None], z_s], axis=-1)
    ent = lse - jnp.sum(jnp.where(pi > 0, pi * z, 0), -1)
  return _lm_loss(
    y,
    lse,
    z_y,
    vocab=vocab,
    u=None,
    ent=ent,
    class_weight=None,
    label_smoothing=0.0,
    z_loss=z_loss,
    reduction=reduction,
    return_aux=return_aux,
    dtype=hidden.dtype,
  )
