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


def _block_logits(h_i, w, b, v0, tv, dtype):
  """Logits of one block, ``h_i @ weight[:, v0:v0+tv] + bias[v0:v0+tv]``, in ``dtype``."""
  w_j = lax.dynamic_slice_in_dim(w, v0, tv, axis=1)
  b_j = lax.dynamic_slice_in_dim(b, v0, tv)
  z = jnp.dot(h_i, w_j, preferred_element_type=dtype)
  return z.astype(dtype) + b_j.astype(dtype), w_j


def _chunked_lse(h, w, b, tn, tv, dtype):
  """Per-token logsumexp of ``h @ w + b`` by the online logsumexp over vocabulary chunks."""
  n, vocab = h.shape[0], w.shape[1]
  cols = jnp.arange(tv)

  def token_chunk(_, i):
    h_i = lax.dynamic_slice_in_dim(h, _start(i, tn, n), tn, axis=0)

    def vocab_chunk(state, j):
      v0 = _start(j, tv, vocab)
      z, _ = _block_logits(h_i, w, b, v0, tv, dtype)
      # Columns of a moved-back last chunk were counted by the chunk before.
      z = jnp.where(v0 + cols >= j * tv, z, -jnp.inf)
      state, _, _ = online.merge(state, online.reduce(z, 1)[0])
      return state, None

    state, _ = lax.scan(vocab_chunk, online.empty((tn, 1), dtype), jnp.arange(-(-vocab // tv)))
    return None, online.logsumexp(state)[:, 0]

  _, parts = lax.scan(token_chunk, None, jnp.arange(-(-n // tn)))
  return _assemble(parts, n, tn)


def _fused_forward(h, w, b, y, eps, tn, tv):
  dtype = compute_dtype(jnp.result_type(h, w))
  lse = _chunked_lse(h, w, b, tn, tv, dtype)
  # The label logit and the sum of all logits (for smoothing) are cheap in
  # closed form: one gathered column per token, and h @ (sum of columns).
  w_y = jnp.take(w, y, axis=1).astype(dtype)
  z_y = jnp.sum(h.astype(dtype) * w_y.T, axis=1) + b[y].astype(dtype)
  z_sum = jnp.dot(h.astype(dtype), jnp.sum(w.astype(dtype), axis=1)) + jnp.sum(b.astype(dtype))
  eps = eps.astype(dtype)
  # eps = 0 must not turn a -inf logit (a class masked by its bias) into NaN.
  loss = lse - (1 - eps) * z_y - jnp.where(eps == 0, 0, eps / w.shape[1] * z_sum)
  return loss, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _fused_nll(h, w, b, y, eps, tn, tv):
  """Per-token smoothed cross-entropy of ``h @ w + b``; never holds ``[N, V]``."""
  return _fused_forward(h, w, b, y, eps, tn, tv)[0]


def _fused_nll_fwd(h, w, b, y, eps, tn, tv):
  loss, lse = _fused_forward(h, w, b, y, eps, tn, tv)
  return loss, (h, w, b, y, eps, lse)


def _fused_nll_bwd(tn, tv, res, g):
  """dlogits = g * (softmax - (1 - eps) onehot - eps / V), block by block.

  The outer loop runs over vocabulary chunks so that each chunk of ``weight``
  and its gradient are visited once; the token chunks inside it recompute the
  block's logits from the saved logsumexp.
  """
  h, w, b, y, eps, lse = res
  n, d = h.shape
  vocab = w.shape[1]
  dtype = lse.dtype
  g = g.astype(dtype)
  eps = eps.astype(dtype)
  rows, cols = jnp.arange(tn), jnp.arange(tv)

  def vocab_chunk(carry, j):
    dh, dw, db = carry
    v0 = _start(j, tv, vocab)
    col_ok = v0 + cols >= j * tv

    def token_chunk(acc, i):
      dw_j, db_j = acc
      t0 = _start(i, tn, n)
      h_i = lax.dynamic_slice_in_dim(h, t0, tn, axis=0)
      # Rows of a moved-back last token chunk were done by the chunk before.
      g_i = jnp.where(t0 + rows >= i * tn, lax.dynamic_slice_in_dim(g, t0, tn), 0)
      lse_i = lax.dynamic_slice_in_dim(lse, t0, tn)
      y_i = lax.dynamic_slice_in_dim(y, t0, tn)
      z, w_j = _block_logits(h_i, w, b, v0, tv, dtype)
      p = jnp.exp(z - lse_i[:, None])
      target = (1 - eps) * (y_i[:, None] == v0 + cols[None, :]) + eps / vocab
      dz = jnp.where(col_ok, g_i[:, None] * (p - target), 0)
      dz_in = dz.astype(h.dtype)
      dw_j = dw_j + jnp.dot(h_i.T, dz_in, preferred_element_type=dtype)
      db_j = db_j + jnp.sum(dz, axis=0)
      dh_i = jnp.dot(dz_in, w_j.T, preferred_element_type=dtype)
      return (dw_j, db_j), dh_i

    init = (jnp.zeros((d, tv), dtype), jnp.zeros((tv,), dtype))
    (dw_j, db_j), dh_parts = lax.scan(token_chunk, init, jnp.arange(-(-n // tn)))
    dh = dh + _assemble(dh_parts, n, tn)
    # Columns outside col_ok got dz = 0, so adding keeps the earlier chunk's values.
    dw = lax.dynamic_update_slice_in_dim(dw, lax.dynamic_slice_in_dim(dw, v0, tv, axis=1) + dw_j, v0, axis=1)
    db = lax.dynamic_update_slice_in_dim(db, lax.dynamic_slice_in_dim(db, v0, tv) + db_j, v0, axis=0)
    return (dh, dw, db), None

  init = (jnp.zeros((n, d), dtype), jnp.zeros((d, vocab), dtype), jnp.zeros((vocab,), dtype))
  (dh, dw, db), _ = lax.scan(vocab_chunk, init, jnp.arange(-(-vocab // tv)))
  return (dh.astype(h.dtype), dw.astype(w.dtype), db.astype(b.dtype), None, jnp.zeros_like(eps))


_fused_nll.defvjp(_fused_nll_fwd, _fused_nll_bwd)


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
  ignore_index=None,
  label_smoothing=0.0,
  where=None,
  reduction="mean",
):
  r"""Cross-entropy of a linear output layer, without materializing the logits.

  Equals ``cross_entropy(hidden @ weight + bias, labels, ...)``: per token

  .. math::
    \ell_i = \log \sum_c e^{z_{ic}} - (1 - \varepsilon) z_{i y_i}
      - \frac{\varepsilon}{V} \sum_c z_{ic},
    \qquad z = h W + b,

  with the ``ignore_index``, ``where``, ``label_smoothing`` and ``reduction``
  semantics of :func:`jaxsoft.cross_entropy` (``"mean"`` divides by the
  number of counted tokens, and is 0 when none count). The logits are
  computed in blocks of ``token_chunk x vocab_chunk`` inside ``lax.scan``:
  the forward pass keeps only a running max and sum per token, and a custom
  VJP recomputes each block in the backward pass to form
  ``dlogits = g (softmax - (1-eps) onehot - eps/V)`` and accumulate
  ``dhidden += dlogits @ W_chunk.T``, ``dW_chunk += hidden_chunk.T @ dlogits``.
  Memory is ``O(N d + d V + token_chunk * vocab_chunk)``, never ``N x V``; the
  gradients equal the dense ones to rounding.

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
    ignore_index: optional label value whose tokens are skipped.
    label_smoothing: in ``[0, 1]``, mixes the target with the uniform one.
    where: optional boolean broadcastable to ``labels.shape``; False skips a
      token like ``ignore_index``, whatever its label.
    reduction: ``"mean"``, ``"sum"`` or ``"none"``.

  Returns:
    A scalar, or the per-token losses ``labels.shape`` for ``"none"``
    (skipped tokens 0), in the dtype of ``hidden`` (half precision is
    computed in float32).

  Raises:
    ValueError: shape mismatches, bad options, or (when concrete) counted
      labels out of range; under ``jit`` such a token's loss is NaN, as in
      :func:`jaxsoft.cross_entropy`.

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

  References:
    Wijmans et al., 2024, "Cut Your Losses in Large-Vocabulary Language
    Models" (Cut Cross-Entropy); Hsu et al., 2024, "Liger Kernel" (fused
    linear cross-entropy); Milakov & Gimelshein, 2018, "Online normalizer
    calculation for softmax".
  """
  fn = "linear_cross_entropy"
  hidden, weight, bias, labels = _check_hidden_weight(fn, hidden, weight, bias, labels, reduction)
  V.check_range(fn, "label_smoothing", label_smoothing, 0.0, 1.0)
  n, vocab = labels.size, weight.shape[1]
  tn, tv = _chunk_sizes(fn, chunk_size, n, vocab)
  y = class_labels(fn, labels, vocab, ignore_index=ignore_index, where=where)
  dtype = compute_dtype(hidden.dtype)
  if n == 0:
    per = jnp.zeros(labels.shape, dtype)
  else:
    eps = jnp.asarray(label_smoothing, dtype)
    per = _fused_nll(hidden.reshape(n, -1), weight, bias, y.index.reshape(n), eps, tn, tv)
    per = per.reshape(labels.shape)
  return reduce_loss(y.loss(per), y.keep.astype(per.dtype), reduction).astype(hidden.dtype)


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
  reduction="mean",
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
    reduction: ``"mean"``, ``"sum"`` or ``"none"``.

  Returns:
    A scalar, or per-token losses ``labels.shape`` for ``"none"``, in the
    dtype of ``hidden``.

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
  vocab = weight.shape[1]
  key = _check_sampling(fn, key, num_samples, sampler, remove_accidental_hits, vocab)
  y = class_labels(fn, labels, vocab)
  dtype = compute_dtype(jnp.result_type(hidden, weight))

  ids, log_q = _draw_candidates(key, sampler, num_samples, vocab)
  h = hidden.astype(dtype)
  # One gather of the label and sampled columns: its gradient is then a single
  # scatter into one [d, V] buffer, the only vocabulary-sized array of the pass.
  cols = jnp.concatenate([y.index.reshape(-1), ids])
  w_cols = jnp.take(weight, cols, axis=1).astype(dtype)
  b_cols = bias[cols].astype(dtype)
  n = labels.size
  z_y = jnp.sum(h * w_cols[:, :n].T.reshape(h.shape), -1) + b_cols[:n].reshape(labels.shape)
  z_s = jnp.dot(h, w_cols[:, n:]) + b_cols[n:]
  z_s = z_s - (math.log(num_samples) + log_q.astype(dtype))
  if remove_accidental_hits:
    z_s = jnp.where(ids == y.index[..., None], -jnp.inf, z_s)
  per = logsumexp(jnp.concatenate([z_y[..., None], z_s], axis=-1), -1) - z_y
  return reduce_loss(y.loss(per), y.keep.astype(per.dtype), reduction).astype(hidden.dtype)
