r"""Adaptive softmax (Grave et al., 2017) with PyTorch's parameter layout.

The vocabulary, sorted by decreasing frequency, is split by ``cutoffs``
:math:`c_0 < c_1 < \dots < c_{K-1} < V` into a shortlist :math:`[0, c_0)`
and :math:`K` tail clusters :math:`[c_i, c_{i+1})` (:math:`c_K = V`). A head
softmax over the shortlist and one logit per cluster gives
:math:`p(\text{class})` for shortlist classes and :math:`p(\text{cluster})`
for the others, and each cluster has its own small softmax, through a
projection to :math:`h_i = \lfloor d / \text{div\_value}^{i+1} \rfloor`
dimensions:

.. math::
  \log p(y) = \log p_{\text{head}}(c_0 + i) + \log p_i(y - c_i)
  \qquad (c_i \le y < c_{i+1}).

Parameters are a plain dict laid out as ``torch.nn.AdaptiveLogSoftmaxWithLoss``
(``head_bias=False``), with every matrix stored ``[in, out]`` (PyTorch stores
``[out, in]``: transpose to load its weights):
``{"head": [d, c_0 + K], "tail": [{"proj": [d, h_i], "out": [h_i, c_{i+1} - c_i]}, ...]}``,
the head's columns being the shortlist logits then one logit per cluster in
order.

Public through :mod:`jaxsoft.losses` and :mod:`jaxsoft`.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxsoft import _validate as V
from jaxsoft._labels import class_labels
from jaxsoft._reduction import reduce_loss
from jaxsoft._vocab import linear_cross_entropy
from jaxsoft.softmax import log_softmax

__all__ = ["AdaptiveSoftmaxOutput", "adaptive_log_softmax", "adaptive_log_prob", "init_adaptive_softmax"]


class AdaptiveSoftmaxOutput(NamedTuple):
  """The result of :func:`adaptive_log_softmax` (PyTorch's ``_ASMoutput``).

  Attributes:
    log_prob: the log-probability of each label, shaped like the labels (0
      for skipped examples).
    loss: the mean of ``-log_prob`` over the counted examples (0 when none
      count).
  """

  log_prob: jax.Array
  loss: jax.Array


def _check_cutoffs(fn, cutoffs, vocab):
  """A list of strictly increasing ints in ``(0, vocab)``."""
  if not isinstance(cutoffs, (list, tuple)) or not cutoffs:
    V.fail(fn, "cutoffs", "be a non-empty list of ints", repr(cutoffs), exc=TypeError)
  cutoffs = [V.check_int(fn, "cutoffs", c) for c in cutoffs]
  if any(b <= a for a, b in zip(cutoffs, cutoffs[1:])) or cutoffs[0] <= 0 or cutoffs[-1] >= vocab:
    V.fail(fn, "cutoffs", f"be strictly increasing ints in (0, {vocab}) (the vocabulary size)", cutoffs)
  return cutoffs


def _tail_dims(fn, d, cutoffs, div_value):
  V.check_positive(fn, "div_value", div_value)
  dims = [int(d // div_value ** (i + 1)) for i in range(len(cutoffs))]
  if min(dims) < 1:
    V.fail(
      fn, "div_value", f"leave every tail projection >= 1 wide (d // div_value**(i+1) with d = {d})", dims
    )
  return dims


def init_adaptive_softmax(key, d, vocab, cutoffs, div_value=4.0, dtype=jnp.float32):
  r"""Parameters of an adaptive softmax, initialized as PyTorch's ``nn.Linear``.

  Every matrix ``[in, out]`` is drawn from :math:`U(-1/\sqrt{in}, 1/\sqrt{in})`
  (PyTorch's default for ``nn.Linear``). Tail cluster :math:`i` projects to
  :math:`h_i = \lfloor d / \text{div\_value}^{i+1} \rfloor` dimensions.

  Args:
    key: a ``jax.random`` key.
    d: the hidden size.
    vocab: the vocabulary size :math:`V`.
    cutoffs: strictly increasing ints in ``(0, V)``.
    div_value: the factor by which each cluster's projection shrinks.
    dtype: floating dtype of the parameters.

  Returns:
    ``{"head": [d, cutoffs[0] + K], "tail": [{"proj": [d, h_i], "out": [h_i, size_i]}, ...]}``.

  Examples:
    >>> import jax
    >>> from jaxsoft import init_adaptive_softmax
    >>> params = init_adaptive_softmax(jax.random.key(0), 16, 100, [10, 40])
    >>> print(params["head"].shape, [(t["proj"].shape, t["out"].shape) for t in params["tail"]])
    (16, 12) [((16, 4), (4, 30)), ((16, 1), (1, 60))]
  """
  fn = "init_adaptive_softmax"
  key = V.check_key(fn, "key", key)
  d = V.check_int(fn, "d", d, minimum=1)
  vocab = V.check_int(fn, "vocab", vocab, minimum=2)
  cutoffs = _check_cutoffs(fn, cutoffs, vocab)
  dims = _tail_dims(fn, d, cutoffs, div_value)
  return _init(key, d, vocab, tuple(cutoffs), tuple(dims), jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _init(key, d, vocab, cutoffs, dims, dtype):
  bounds = cutoffs + (vocab,)
  keys = jax.random.split(key, 1 + 2 * len(cutoffs))

  def linear(k, n_in, n_out):
    bound = 1 / math.sqrt(n_in)
    return jax.random.uniform(k, (n_in, n_out), dtype, -bound, bound)

  head = linear(keys[0], d, cutoffs[0] + len(cutoffs))
  tail = [
    {"proj": linear(keys[1 + 2 * i], d, h), "out": linear(keys[2 + 2 * i], h, bounds[i + 1] - bounds[i])}
    for i, h in enumerate(dims)
  ]
  return {"head": head, "tail": tail}


def _check_params(fn, hidden, params, cutoffs):
  """Checks the inputs against the layout; returns ``(hidden, head, tail, vocab)``."""
  V.check_array(fn, "hidden", hidden)
  hidden = jnp.asarray(hidden)
  V.check_floating(fn, "hidden", hidden)
  V.check_min_ndim(fn, "hidden", hidden, 1, " ([..., d])")
  d = hidden.shape[-1]
  if not isinstance(params, dict) or "head" not in params or "tail" not in params:
    V.fail(fn, "params", 'be a dict with "head" and "tail" (init_adaptive_softmax)', type(params).__name__)
  tail = params["tail"]
  if not isinstance(tail, (list, tuple)) or not tail:
    V.fail(fn, "params['tail']", "be a non-empty list of clusters", type(tail).__name__, exc=TypeError)
  vocab = 0
  if isinstance(cutoffs, (list, tuple)) and cutoffs and "out" in tail[-1]:
    vocab = int(cutoffs[-1]) + jnp.shape(tail[-1]["out"])[-1]
  cutoffs = _check_cutoffs(fn, cutoffs, vocab)
  if len(tail) != len(cutoffs):
    V.fail(fn, "params['tail']", f"have one cluster per cutoff ({len(cutoffs)})", len(tail))
  head = jnp.asarray(params["head"])
  V.check_shape(fn, "params['head']", head, (d, cutoffs[0] + len(cutoffs)), " (d, shortlist + clusters)")
  bounds = cutoffs + [vocab]
  out = []
  for i, t in enumerate(tail):
    if not isinstance(t, dict) or "proj" not in t or "out" not in t:
      V.fail(fn, f"params['tail'][{i}]", 'be a dict with "proj" and "out"', repr(t)[:40])
    proj, o = jnp.asarray(t["proj"]), jnp.asarray(t["out"])
    V.check_ndim(fn, f"params['tail'][{i}]['proj']", proj, 2)
    V.check_shape(fn, f"params['tail'][{i}]['proj']", proj, (d, proj.shape[1]), " (d, h_i)")
    size = bounds[i + 1] - bounds[i]
    V.check_shape(fn, f"params['tail'][{i}]['out']", o, (proj.shape[1], size), " (h_i, cluster size)")
    out.append((proj, o))
  return hidden, head, out, cutoffs, vocab


def adaptive_log_softmax(hidden, params, labels, *, cutoffs, ignore_index=None, where=None, chunk_size=None):
  r"""Log-probabilities of the labels under an adaptive softmax, and the mean loss.

  .. math::
    \log p(y) = \begin{cases}
      \log \mathrm{softmax}(h W_{\text{head}})_y & y < c_0 \\
      \log \mathrm{softmax}(h W_{\text{head}})_{c_0 + i}
      + \log \mathrm{softmax}(h P_i O_i)_{y - c_i} & c_i \le y < c_{i+1}
    \end{cases}

  the loss being the mean of :math:`-\log p(y)` over the counted examples,
  as ``torch.nn.AdaptiveLogSoftmaxWithLoss`` returns ``(output, loss)``.
  The head and each cluster are evaluated by :func:`linear_cross_entropy`
  (blocks, no ``[N, V]`` array); a cluster's softmax is computed for every
  token (static shapes) but only its tokens count, so the cost is about
  :math:`N (d (c_0 + K) + \sum_i (d h_i + h_i (c_{i+1} - c_i)))` instead of
  :math:`N d V`.

  Args:
    hidden: floating ``[..., d]``.
    params: as returned by :func:`init_adaptive_softmax`.
    labels: integer ``hidden.shape[:-1]`` in ``[0, V)``.
    cutoffs: strictly increasing ints in ``(0, V)``; ``V`` is
      ``cutoffs[-1]`` plus the last cluster's size.
    ignore_index: optional label value whose examples are skipped.
    where: optional boolean broadcastable to ``labels.shape``; False skips.
    chunk_size: passed to :func:`linear_cross_entropy`.

  Returns:
    :class:`AdaptiveSoftmaxOutput` ``(log_prob, loss)``, in the dtype of ``hidden``.

  Raises:
    ValueError: cutoffs not strictly increasing or not below the vocabulary,
      parameter shapes off the layout, counted labels out of ``[0, V)`` when
      concrete (a NaN ``log_prob`` under ``jit``).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoft import adaptive_log_softmax, adaptive_log_prob, init_adaptive_softmax
    >>> params = init_adaptive_softmax(jax.random.key(0), 8, 50, [10, 30], div_value=2.0)
    >>> h = jax.random.normal(jax.random.key(1), (4, 8))
    >>> y = jnp.array([3, 12, 45, 0])
    >>> out = adaptive_log_softmax(h, params, y, cutoffs=[10, 30])
    >>> full = adaptive_log_prob(h, params, cutoffs=[10, 30])
    >>> print(bool(jnp.allclose(out.log_prob, full[jnp.arange(4), y], atol=1e-5)), out.loss.shape)
    True ()

  References:
    Grave, Joulin, Cissé, Grangier & Jégou, 2017, "Efficient softmax
    approximation for GPUs"; PyTorch, ``torch.nn.AdaptiveLogSoftmaxWithLoss``.
  """
  fn = "adaptive_log_softmax"
  hidden, head, tail, cutoffs, vocab = _check_params(fn, hidden, params, cutoffs)
  V.check_array(fn, "labels", labels)
  labels = jnp.asarray(labels)
  V.check_integer(fn, "labels", labels)
  V.check_shape(fn, "labels", labels, hidden.shape[:-1], " (hidden.shape[:-1])")
  y = class_labels(fn, labels, vocab, ignore_index=ignore_index, where=where)
  if isinstance(chunk_size, list):
    chunk_size = tuple(chunk_size)
  # The checks above run eagerly (concrete labels are range-checked); the
  # computation is one compiled program, also when called eagerly.
  return _adaptive_loss(hidden, head, tail, y, tuple(cutoffs), chunk_size)


@functools.partial(jax.jit, static_argnums=(4, 5))
def _adaptive_loss(hidden, head, tail, y, cutoffs, chunk_size):
  shortlist = cutoffs[0]
  # The head's target: the class itself in the shortlist, else its cluster's column.
  cluster = jnp.sum(y.index[..., None] >= jnp.asarray(cutoffs), -1) - 1  # -1 in the shortlist
  head_target = jnp.where(cluster < 0, y.index, shortlist + cluster)
  lce = lambda h, w, t, keep: (
    -linear_cross_entropy(h, w, t, where=keep, reduction="none", chunk_size=chunk_size)
  )
  log_prob = lce(hidden, head, head_target, y.keep)
  for i, (proj, out) in enumerate(tail):
    in_i = y.keep & (cluster == i)
    # Tokens of other clusters are excluded: their (out of range) targets are never read.
    log_prob = log_prob + lce(hidden @ proj.astype(hidden.dtype), out, y.index - cutoffs[i], in_i)
  log_prob = -y.loss(-log_prob)
  loss = reduce_loss(-log_prob, y.keep.astype(log_prob.dtype), "mean")
  return AdaptiveSoftmaxOutput(log_prob, loss)


def adaptive_log_prob(hidden, params, *, cutoffs):
  r"""All :math:`V` log-probabilities of an adaptive softmax, ``[..., V]``.

  The shortlist columns are the head's log-softmax; cluster :math:`i`'s are
  :math:`\log p_{\text{head}}(c_0 + i) + \log \mathrm{softmax}(h P_i O_i)`
  (PyTorch's ``log_prob``). Each row sums to 1 in probability. This builds
  ``[..., V]``: for a loss use :func:`adaptive_log_softmax`.

  Args:
    hidden: floating ``[..., d]``.
    params: as returned by :func:`init_adaptive_softmax`.
    cutoffs: strictly increasing ints in ``(0, V)``.

  Returns:
    ``[..., V]`` log-probabilities in the dtype of ``hidden``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoft import adaptive_log_prob, init_adaptive_softmax
    >>> params = init_adaptive_softmax(jax.random.key(0), 8, 50, [10, 30], div_value=2.0)
    >>> lp = adaptive_log_prob(jnp.ones((2, 8)), params, cutoffs=[10, 30])
    >>> print(lp.shape, jnp.exp(lp).sum(-1).round(5))
    (2, 50) [1. 1.]
  """
  hidden, head, tail, cutoffs, _ = _check_params("adaptive_log_prob", hidden, params, cutoffs)
  shortlist = cutoffs[0]
  head_lp = log_softmax(hidden @ head.astype(hidden.dtype))
  parts = [head_lp[..., :shortlist]]
  for i, (proj, out) in enumerate(tail):
    cluster_lp = log_softmax((hidden @ proj.astype(hidden.dtype)) @ out.astype(hidden.dtype))
    parts.append(head_lp[..., shortlist + i : shortlist + i + 1] + cluster_lp)
  return jnp.concatenate(parts, axis=-1)
