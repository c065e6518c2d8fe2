"""Tests for jaxsoft.losses against float64 NumPy references.

The cross-entropy reference below is a NumPy transcription of
torch.nn.functional.cross_entropy (aten LossNLL.cpp: nll_loss_nd plus the
label-smoothing and probability-target branches). PyTorch is not needed to
run it. Two documented differences are encoded: a mean over zero counted
examples is 0 (PyTorch: NaN), and 0 * log 0 = 0 for probability targets.
"""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _grad_check import check_grads as check_grads_compiled
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads
from scipy import special

from jaxsoft.losses import cross_entropy, entropy, generalized_kl_divergence, kl_divergence, nll_loss

# --- float64 NumPy references ------------------------------------------------


def np_log_softmax(x, axis=-1):
  x = np.asarray(x, np.float64)
  m = np.max(x, axis=axis, keepdims=True)
  z = x - m
  return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def _safe_div(a, b):
  return 0.0 if b == 0 else a / b


def np_nll_loss(
  log_probs,
  target,
  *,
  axis=-1,
  weight=None,
  ignore_index=None,
  label_smoothing=0.0,
  where=None,
  reduction="mean",
):
  """PyTorch nll_loss / cross_entropy semantics on given log-probabilities."""
  lp = np.moveaxis(np.asarray(log_probs, np.float64), axis, -1)
  C = lp.shape[-1]
  w = np.ones(C) if weight is None else np.asarray(weight, np.float64)
  target = np.asarray(target)
  if np.issubdtype(target.dtype, np.floating):
    # cross_entropy_loss_prob_target: smooth, weight, sum over classes, mean / N.
    t = np.moveaxis(np.asarray(target, np.float64), axis, -1)
    if label_smoothing > 0:
      t = t * (1 - label_smoothing) + label_smoothing / C
    terms = t * w * lp
    per = -np.sum(np.where(t * w == 0, 0.0, terms), -1)
    keep = np.ones(per.shape, bool) if where is None else np.broadcast_to(where, per.shape)
    per = np.where(keep, per, 0.0)
    if reduction == "none":
      return per
    if reduction == "sum":
      return per.sum()
    return _safe_div(per.sum(), keep.sum())
  # Class-index targets: nll_loss_nd, then the label-smoothing branch.
  keep = np.ones(target.shape, bool) if ignore_index is None else target != ignore_index
  if where is not None:
    keep = keep & np.broadcast_to(where, target.shape)
  safe = np.where(keep, target, 0)
  lp_y = np.take_along_axis(lp, safe[..., None], -1)[..., 0]
  w_y = np.where(keep, w[safe], 0.0)
  nll = np.where(keep, -w_y * lp_y, 0.0)
  smooth = np.where(keep, -np.sum(lp * w, -1), 0.0)
  if reduction == "none":
    nll_r, smooth_r = nll, smooth
  elif reduction == "sum":
    nll_r, smooth_r = nll.sum(), smooth.sum()
  else:
    den = w_y.sum()  # == number of counted examples when weight is None
    nll_r, smooth_r = _safe_div(nll.sum(), den), _safe_div(smooth.sum(), den)
  if label_smoothing == 0:
    return nll_r
  return (1 - label_smoothing) * nll_r + label_smoothing / C * smooth_r


def np_cross_entropy(logits, target, *, axis=-1, **kw):
  return np_nll_loss(np_log_softmax(logits, axis), target, axis=axis, **kw)


def np_ce_derivatives(
  logits, target, tangent, *, weight=None, label_smoothing=0.0, where=None, reduction="mean"
):
  """Gradient of the reduced cross-entropy wrt logits [N, C], and its Hessian times ``tangent``.

  Derived by hand from the per-example loss
  (1 - eps) w_y (lse - z_y) + eps / C sum_c w_c (lse - z_c): its gradient is
  (1 - eps) w_y (p - onehot_y) + eps / C (W p - w) with W = sum_c w_c, and its
  Hessian a (diag p - p p^T) with a = (1 - eps) w_y + eps / C W. Probability
  targets t (smoothed): gradient (sum_c w_c t_c) p - w t, the same Hessian with
  a = sum_c w_c t_c. ``"none"`` differentiates the sum of the per-example losses.
  """
  x = np.asarray(logits, np.float64)
  C = x.shape[-1]
  eps = label_smoothing
  w = np.ones(C) if weight is None else np.asarray(weight, np.float64)
  keep = np.ones(x.shape[:-1], bool) if where is None else np.broadcast_to(where, x.shape[:-1])
  target = np.asarray(target)
  with np.errstate(invalid="ignore"):  # skipped rows may hold -inf logits
    p = np.exp(np_log_softmax(x))
  if np.issubdtype(target.dtype, np.floating):
    tw = (target * (1 - eps) + eps / C) * w
    a = tw.sum(-1)
    g = a[..., None] * p - tw
    den = keep.sum()
  else:
    ys = np.where(keep, target, 0)
    w_y = w[ys]
    a = (1 - eps) * w_y + eps / C * w.sum()
    g = (1 - eps) * w_y[..., None] * (p - np.eye(C)[ys]) + eps / C * (w.sum() * p - w)
    den = np.sum(np.where(keep, w_y, 0.0))
  coef = keep.astype(np.float64)
  if reduction == "mean":
    coef = coef / den if den else 0 * coef
  v = np.asarray(tangent, np.float64)
  hv = a[..., None] * (p * v - p * np.sum(p * v, -1, keepdims=True))
  return (
    np.where(keep[..., None], coef[..., None] * g, 0.0),
    np.where(keep[..., None], coef[..., None] * hv, 0.0),
  )


# One batch shape for most cases: the compiled kernels of eager calls are
# cached per shape, so cases that share it share their compilation.
N, C = 6, 5


def rand(shape, seed=0, scale=2.0):
  return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


def rand_probs(shape, seed=0):
  return np.random.default_rng(seed).dirichlet(np.ones(shape[-1]), size=shape[:-1]).astype(np.float32)


def assert_close(got, want, rtol=1e-5, atol=1e-6):
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol)


# --- hand-checked values -----------------------------------------------------

LECTURE = jnp.array([[0.9, 1.2, -0.4]])
LECTURE_CE = np.log(np.sum(np.exp([0.9, 1.2, -0.4]))) - 1.2  # -log softmax(logits)[1]


def test_lecture_example():
  np.testing.assert_allclose(cross_entropy(LECTURE, jnp.array([1])), LECTURE_CE, rtol=1e-6)
  np.testing.assert_allclose(cross_entropy(LECTURE, jnp.array([[0.0, 1.0, 0.0]])), LECTURE_CE, rtol=1e-6)
  np.testing.assert_allclose(cross_entropy(LECTURE[0], jnp.array(1)), LECTURE_CE, rtol=1e-6)
  # The lecture's softmax, rounded to 4 digits.
  np.testing.assert_allclose(
    nll_loss(jnp.log(jnp.array([[0.3813, 0.5147, 0.1039]])), jnp.array([1])), LECTURE_CE, atol=1e-4
  )


def test_lecture_cross_entropy_of_distributions():
  # H(p, q) = sum p log 1/q = cross_entropy(log q, p, reduction="none").
  p = jnp.array([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]])
  q = jnp.array([[0.25, 0.25, 0.5], [0.5, 0.5, 0.0]])
  got = cross_entropy(jnp.log(q), p, reduction="none")
  want = [0.5 * np.log(4) + 0.25 * np.log(4) + 0.25 * np.log(2), np.log(2)]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # And H(p, q) = H(p) + KL(p || q).
  np.testing.assert_allclose(got, entropy(p) + kl_divergence(p, q), rtol=1e-6)


def test_weighted_mean_by_hand():
  # Example 0: logits [0, 0], label 0 -> log 2. Example 1: logits [0, log 3],
  # label 1 -> log(4/3). Weights [1, 3]: mean = (log 2 + 3 log(4/3)) / (1 + 3).
  x = jnp.array([[0.0, 0.0], [0.0, np.log(3.0)]])
  y = jnp.array([0, 1])
  w = jnp.array([1.0, 3.0])
  l0, l1 = np.log(2), np.log(4 / 3)
  np.testing.assert_allclose(cross_entropy(x, y, weight=w), (l0 + 3 * l1) / 4, rtol=1e-6)
  np.testing.assert_allclose(cross_entropy(x, y, weight=w, reduction="sum"), l0 + 3 * l1, rtol=1e-6)
  np.testing.assert_allclose(cross_entropy(x, y, weight=w, reduction="none"), [l0, 3 * l1], rtol=1e-6)
  np.testing.assert_allclose(cross_entropy(x, y), (l0 + l1) / 2, rtol=1e-6)
  # Probability targets: the weighted mean divides by N, not by the weights.
  q = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  np.testing.assert_allclose(cross_entropy(x, q, weight=w), (l0 + 3 * l1) / 2, rtol=1e-6)
  # Ignoring example 1 leaves l0 / w_0.
  np.testing.assert_allclose(cross_entropy(x, y, weight=w, ignore_index=1), l0, rtol=1e-6)


def test_label_smoothing_by_hand():
  # C = 2, eps = 0.2, logits [0, log 3] and label 1:
  # (1 - eps) log(4/3) + eps / 2 (log 4 + log(4/3)).
  x = jnp.array([[0.0, np.log(3.0)]])
  eps = 0.2
  want = (1 - eps) * np.log(4 / 3) + eps / 2 * (np.log(4) + np.log(4 / 3))
  np.testing.assert_allclose(cross_entropy(x, jnp.array([1]), label_smoothing=eps), want, rtol=1e-6)
  np.testing.assert_allclose(cross_entropy(x, jnp.array([[0.0, 1.0]]), label_smoothing=eps), want, rtol=1e-6)
  # label_smoothing = 1: the target is uniform whatever the label, (log 4 + log(4/3)) / 2.
  for y in (0, 1):
    np.testing.assert_allclose(
      cross_entropy(x, jnp.array([y]), label_smoothing=1.0), (np.log(4) + np.log(4 / 3)) / 2, rtol=1e-6
    )


def test_entropy_and_kl_values():
  # One call per function, a hand-checked value per row.
  p = jnp.array([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
  np.testing.assert_allclose(entropy(p), [np.log(2), 0.0, np.log(4)], rtol=1e-6)
  p = jnp.array([[0.5, 0.5], [0.0, 1.0], [0.3, 0.7], [0.5, 0.5]])
  q = jnp.array([[0.9, 0.1], [0.5, 0.5], [0.3, 0.7], [1.0, 0.0]])
  kl = kl_divergence(p, q)
  np.testing.assert_allclose(
    kl[:3], [0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1), np.log(2), 0.0], rtol=1e-6, atol=1e-7
  )
  assert kl[3] == np.inf


# --- options against the PyTorch-semantics reference -------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
@pytest.mark.parametrize("ignore_index", [None, 2, -100])
@pytest.mark.parametrize("weighted", [False, True])
def test_integer_labels_match_reference(weighted, ignore_index, label_smoothing, reduction):
  with jax.enable_x64(True):
    rng = np.random.default_rng(20)
    x = rng.normal(size=(N, C)) * 2
    y = rng.integers(0, C, size=N)
    if ignore_index is not None:
      y[[1, 4]] = ignore_index
    w = rng.random(C) + 0.1 if weighted else None
    kw = dict(weight=w, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction)
    got = cross_entropy(jnp.asarray(x), jnp.asarray(y), **kw)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, np_cross_entropy(x, y, **kw), rtol=1e-12, atol=1e-14)
    lp = np_log_softmax(x)
    got = nll_loss(jnp.asarray(lp), jnp.asarray(y), **kw)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, np_nll_loss(lp, y, **kw), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
@pytest.mark.parametrize("weighted", [False, True])
def test_probability_labels_match_reference(weighted, label_smoothing, reduction):
  with jax.enable_x64(True):
    rng = np.random.default_rng(21)
    x = rng.normal(size=(N, C)) * 2
    q = rng.dirichlet(np.ones(C), size=N)
    q[0] = np.eye(C)[2]
    w = rng.random(C) + 0.1 if weighted else None
    kw = dict(weight=w, label_smoothing=label_smoothing, reduction=reduction)
    got = cross_entropy(jnp.asarray(x), jnp.asarray(q), **kw)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, np_cross_entropy(x, q, **kw), rtol=1e-12, atol=1e-14)
    lp = np_log_softmax(x)
    got = nll_loss(jnp.asarray(lp), jnp.asarray(q), **kw)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, np_nll_loss(lp, q, **kw), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("probs", [False, True])
def test_class_axis_not_last(probs):
  # PyTorch layout (N, C, d): classes on axis 1.
  x = rand((3, 5, 4), seed=22)
  y = (
    rand_probs((3, 4, 5), seed=23).transpose(0, 2, 1)
    if probs
    else np.random.default_rng(24).integers(0, 5, size=(3, 4))
  )
  w = np.array([0.5, 1.0, 2.0, 1.5, 1.0], np.float32)
  for reduction in ("mean", "none"):
    kw = dict(weight=w, label_smoothing=0.1, reduction=reduction)
    assert_close(cross_entropy(x, y, axis=1, **kw), np_cross_entropy(x, y, axis=1, **kw))
    lp = np_log_softmax(x, 1).astype(np.float32)
    assert_close(nll_loss(lp, y, axis=1, **kw), np_nll_loss(lp, y, axis=1, **kw))
  assert cross_entropy(x, y, axis=1, reduction="none").shape == (3, 4)


@pytest.mark.parametrize("probs", [False, True])
def test_where_matches_reference(probs):
  x = rand((3, 4, 5), seed=25)
  y = rand_probs((3, 4, 5), seed=26) if probs else np.random.default_rng(27).integers(0, 5, size=(3, 4))
  where = np.random.default_rng(28).random((3, 4)) < 0.5
  w = None if probs else np.array([1.0, 2.0, 0.5, 1.0, 3.0], np.float32)
  for reduction in ("mean", "sum", "none"):
    kw = dict(weight=w, where=where, reduction=reduction, label_smoothing=0.2)
    assert_close(cross_entropy(x, y, **kw), np_cross_entropy(x, y, **kw))
  # A broadcastable where (per batch row).
  assert_close(cross_entropy(x, y, where=where[:, :1]), np_cross_entropy(x, y, where=where[:, :1]))


# --- ignored / masked examples and empty means -------------------------------

KEPT = np.array([True, False, True, False, True, True])


def _junk_logits():
  x = rand((N, C), seed=29)
  # Examples 1 and 3 will be skipped: fill them with values that would poison
  # an unguarded loss or gradient.
  x[1] = -np.inf
  x[3] = [1e30, -1e30, 3e38, -3e38, 0.0]
  return x


@pytest.mark.parametrize("mode", ["ignore_index", "where"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.25])
@pytest.mark.parametrize("weighted", [False, True])
def test_skipped_examples_contribute_exactly_zero(mode, label_smoothing, weighted):
  x = jnp.asarray(_junk_logits())
  y = jnp.array([0, 1, 2, 1, 4, 3])
  w = jnp.array([0.5, 2.0, 1.0, 1.5, 3.0]) if weighted else None
  if mode == "ignore_index":
    y = jnp.where(KEPT, y, -100)
    kw = dict(ignore_index=-100)
  else:
    kw = dict(where=jnp.asarray(KEPT))
  kw.update(weight=w, label_smoothing=label_smoothing)
  # The reference sees only the kept examples: the skipped ones must not matter.
  ref = dict(weight=w, label_smoothing=label_smoothing, where=KEPT)
  xs = np.where(KEPT[:, None], np.asarray(x), 0.0)
  ys = np.where(KEPT, np.asarray(y), 0)
  for reduction in ("mean", "sum"):
    loss, g = jax.value_and_grad(lambda x: cross_entropy(x, y, reduction=reduction, **kw))(x)
    assert_close(loss, np_cross_entropy(xs, ys, reduction=reduction, **ref))
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(g[~KEPT], 0.0)
    assert_close(g, np_ce_derivatives(xs, ys, 0 * xs, reduction=reduction, **ref)[0])
  per = cross_entropy(x, y, reduction="none", **kw)
  np.testing.assert_array_equal(per[~KEPT], 0.0)
  # nll_loss on the same log-probabilities.
  lp = jax.nn.log_softmax(x)
  g = jax.grad(lambda lp: nll_loss(lp, y, **kw))(lp)
  np.testing.assert_array_equal(g[~KEPT], 0.0)
  assert np.all(np.isfinite(g))


def test_masked_probability_targets_contribute_zero():
  x = jnp.asarray(_junk_logits())
  q = rand_probs((N, C), seed=30)
  where = jnp.asarray(KEPT)
  xs = np.where(KEPT[:, None], np.asarray(x), 0.0)
  assert_close(cross_entropy(x, q, where=where), np_cross_entropy(xs, q, where=KEPT))
  g = jax.grad(lambda x: cross_entropy(x, q, where=where, label_smoothing=0.1))(x)
  np.testing.assert_array_equal(g[~KEPT], 0.0)
  assert np.all(np.isfinite(g))
  assert_close(g, np_ce_derivatives(xs, q, 0 * xs, where=KEPT, label_smoothing=0.1)[0])


@pytest.mark.parametrize("case", ["all_ignored", "all_masked", "zero_weight", "probs_masked"])
def test_mean_over_zero_examples_is_zero(case):
  x = jnp.asarray(rand((N, C), seed=31))
  y = jnp.array([1, 2, 1, 2, 1, 2])
  kw = {}
  if case == "all_ignored":
    y = jnp.full(N, -100)
    kw = dict(ignore_index=-100)
  elif case == "all_masked":
    kw = dict(where=jnp.zeros(N, bool))
  elif case == "zero_weight":
    kw = dict(weight=jnp.array([1.0, 0.0, 0.0, 1.0, 1.0]))
  else:
    y = jnp.asarray(rand_probs((N, C), seed=32))
    kw = dict(where=jnp.zeros(N, bool))
  for ls in (0.0, 0.2):
    f = lambda x: cross_entropy(x, y, label_smoothing=ls, **kw)
    loss, g = jax.value_and_grad(f)(x)
    assert loss == 0 and not np.isnan(loss)
    np.testing.assert_array_equal(g, 0.0)
    loss, g = jax.value_and_grad(lambda lp: nll_loss(lp, y, label_smoothing=ls, **kw))(jax.nn.log_softmax(x))
    assert loss == 0
    np.testing.assert_array_equal(g, 0.0)
  assert cross_entropy(x, y, reduction="sum", **kw) == 0


# --- out-of-range labels ----------------------------------------------------------


@pytest.mark.parametrize("fn", [cross_entropy, nll_loss])
@pytest.mark.parametrize("bad", [C, -1, 100])
def test_out_of_range_labels_raise_when_concrete(fn, bad):
  x = jnp.zeros((N, C))
  y = jnp.array([0, 1, 2, 3, 4, bad])
  with pytest.raises(ValueError, match="labels must be in"):
    fn(x, y)
  # ignore_index itself may be out of range.
  np.testing.assert_allclose(fn(x, y, ignore_index=bad), np.log(C) if fn is cross_entropy else 0.0, rtol=1e-6)


@pytest.mark.parametrize("fn", [cross_entropy, nll_loss])
def test_out_of_range_labels_excluded_by_where_are_allowed(fn):
  # where excludes an example like ignore_index does: its label (padding such
  # as -1) must not matter, eagerly or under jit.
  x = jnp.zeros((N, C))
  y = jnp.array([0, 1, 2, 3, 4, -1])
  where = jnp.arange(N) < N - 1
  want = np.log(C) if fn is cross_entropy else 0.0
  np.testing.assert_allclose(fn(x, y, where=where), want, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(fn)(x, y, where=where), want, rtol=1e-6)
  with pytest.raises(ValueError, match="labels must be in"):
    fn(x, y, where=~where)


def test_out_of_range_labels_under_jit_give_nan():
  x = rand((N, C), seed=33)
  f = jax.jit(cross_entropy, static_argnames=("reduction", "ignore_index"))
  y = np.array([0, C, 2, 3, 4, 1])
  per = f(x, y, reduction="none")
  assert np.isnan(per[1])
  ok = np.arange(N) != 1
  assert_close(np.asarray(per)[ok], np_cross_entropy(x[ok], y[ok], reduction="none"))
  assert np.isnan(f(x, np.where(ok, y, -3)))
  # The ignore_index value stays allowed under jit.
  assert not np.isnan(f(x, np.where(ok, y, -100), ignore_index=-100))
  g = jax.jit(jax.grad(lambda x, y: nll_loss(x, y)))(x, y)
  assert np.isnan(jax.jit(nll_loss)(x, y))
  assert g.shape == x.shape


# --- gradients with respect to probability labels -------------------------------


def test_label_gradient_is_minus_log_p_where_the_label_is_zero():
  # optax's SoftmaxCrossEntropyTest inputs: d loss / d labels = -log_softmax,
  # also where a label is 0 (the 0 log 0 rule must not zero it there).
  x = np.array([[10.0, 1.0, -2.0], [1.0, 4.0, 0.2]], np.float32)
  t = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], np.float32)
  g = jax.grad(lambda t: cross_entropy(x, t, reduction="sum"))(jnp.asarray(t))
  assert_close(g, -np_log_softmax(x), rtol=1e-5, atol=1e-5)
  g = jax.grad(lambda t: nll_loss(np_log_softmax(x).astype(np.float32), t, reduction="sum"))(jnp.asarray(t))
  assert_close(g, -np_log_softmax(x), rtol=1e-5, atol=1e-5)
  # With weights and smoothing: d/dt_c = -(1 - eps) w_c log p_c.
  w = np.array([0.5, 2.0, 1.0], np.float32)
  g = jax.grad(lambda t: cross_entropy(x, t, weight=w, label_smoothing=0.1, reduction="sum"))(jnp.asarray(t))
  assert_close(g, -0.9 * w * np_log_softmax(x), rtol=1e-5, atol=1e-5)
  # Where log p is -inf and the label is 0, the term (and its gradients) is 0, never NaN.
  x = np.array([[0.0, -np.inf, 1.0]], np.float32)
  t = jnp.array([[0.5, 0.0, 0.5]])
  loss, (gx, gt) = jax.value_and_grad(lambda x, t: cross_entropy(x, t), (0, 1))(jnp.asarray(x), t)
  assert np.isfinite(loss) and np.all(np.isfinite(gx)) and np.all(np.isfinite(gt))
  assert_close(gt, np.where(np.isinf(x), 0.0, -np.nan_to_num(np_log_softmax(x), neginf=0.0)))
  # A label with mass on a class ruled out by the logits: the loss is inf.
  assert cross_entropy(x, jnp.array([[0.0, 1.0, 0.0]])) == np.inf


def test_check_grads_with_respect_to_labels_and_weights():
  # One compiled check for every loss that takes probabilities: cross_entropy
  # and nll_loss in their labels and weights, entropy, KL and generalized KL in
  # both arguments. Zeros among the labels are where the old rule failed.
  x = rand((3, 4), seed=60, scale=1.0)
  t = rand_probs((3, 4), seed=61)
  t[0] = [0.0, 1.0, 0.0, 0.0]
  q = rand_probs((3, 4), seed=62)
  w = np.array([0.5, 1.0, 2.0, 1.5], np.float32)

  def f(t, w, q):
    lp = jax.nn.log_softmax(x)
    return (
      cross_entropy(x, t, weight=w, label_smoothing=0.2, reduction="sum")
      + nll_loss(lp, t, weight=w, reduction="sum")
      + cross_entropy(x, np.array([0, 3, 1]), weight=w, label_smoothing=0.2)
      + jnp.sum(kl_divergence(t + 0.1, q) + generalized_kl_divergence(2 * q, t + 0.1) + entropy(q))
    )

  check_grads_compiled(f, (t, w, q), order=1, eps=1e-3, atol=2e-2, rtol=2e-2)


# --- language-model options: class_where, tuple axis, z-loss, soft cap, aux -----


def np_ce_lm(
  x,
  y,
  *,
  weight=None,
  ignore_index=None,
  label_smoothing=0.0,
  where=None,
  class_where=None,
  reduction="mean",
  z_loss=0.0,
  cap=None,
):
  """Loss and aux of cross_entropy with every option, per example from the formulas, in float64 ([N, C])."""
  x = np.asarray(x, np.float64)
  N, C = x.shape
  if cap is not None:
    x = cap * np.tanh(x / cap)
  allowed = np.ones(x.shape, bool) if class_where is None else np.broadcast_to(class_where, x.shape)
  x = np.where(allowed, x, -np.inf)
  w = np.ones(C) if weight is None else np.asarray(weight, np.float64)
  eps = label_smoothing
  y = np.asarray(y)
  probs = np.issubdtype(y.dtype, np.floating)
  keep = np.ones(N, bool) if where is None else np.broadcast_to(where, (N,)).copy()
  keep &= allowed.any(-1)
  if ignore_index is not None:
    keep &= y != ignore_index
  per, den = np.zeros(N), np.zeros(N)
  aux = {k: np.zeros(N) for k in ("lse", "log_prob", "entropy")}
  for i in range(N):
    if not keep[i]:
      continue
    a = allowed[i]
    lse = np.log(np.sum(np.exp(x[i][a])))
    lp = x[i] - lse
    n = a.sum()
    if probs:
      t = np.where(a, y[i] * (1 - eps) + eps / n, 0.0)
      per[i] = -np.sum(t[a] * w[a] * lp[a])
      den[i] = 1.0
      aux["log_prob"][i] = np.sum(y[i][a] * lp[a])
    else:
      per[i] = (1 - eps) * w[y[i]] * -lp[y[i]] + eps / n * -np.sum(w[a] * lp[a])
      den[i] = w[y[i]]
      aux["log_prob"][i] = lp[y[i]]
    aux["lse"][i] = lse
    aux["entropy"][i] = -np.sum(np.exp(lp[a]) * lp[a])
  zl = z_loss * aux["lse"] ** 2
  if reduction == "none":
    loss = per + zl
  elif reduction == "sum":
    loss = per.sum() + zl.sum()
  else:
    loss = _safe_div(per.sum(), den.sum()) + _safe_div(zl.sum(), keep.sum())
  return loss, aux


LM_CASES = [
  dict(z_loss=0.1),
  dict(cap=2.0),
  dict(z_loss=0.05, cap=1.5, label_smoothing=0.2),
  dict(class_where="mask", label_smoothing=0.1),
  dict(class_where="mask", z_loss=0.1, cap=3.0, weighted=True, where=True),
  dict(weighted=True, label_smoothing=0.3, z_loss=0.2, ignore_index=True),
]


def _lm_inputs(case, probs):
  case = dict(case)
  x = rand((N, C), seed=80)
  rng = np.random.default_rng(81)
  y = rand_probs((N, C), seed=82) if probs else rng.integers(0, C, size=N)
  kw = {}
  if case.pop("weighted", False):
    kw["weight"] = np.array([0.5, 1.0, 2.0, 1.5, 1.0], np.float32)
  if case.pop("where", False):
    kw["where"] = np.array([True, False, True, True, True, False])
  if case.pop("ignore_index", False) and not probs:
    y[1] = -100
    kw["ignore_index"] = -100
  if case.get("class_where") == "mask":
    m = rng.random((N, C)) < 0.7
    m[3] = False  # an example with no allowed class is skipped
    if not probs:
      m[np.arange(N), y] = True  # the label stays allowed (else its loss is inf)
      m[3] = False
    case["class_where"] = m
  return x, y, case | kw


@pytest.mark.parametrize("probs", [False, True])
@pytest.mark.parametrize("case", range(len(LM_CASES)))
def test_lm_options_match_reference(case, probs):
  x, y, kw = _lm_inputs(LM_CASES[case], probs)
  cap = kw.pop("cap", None)
  for reduction in ("mean", "sum", "none"):
    loss, aux = cross_entropy(x, y, reduction=reduction, logit_soft_cap=cap, return_aux=True, **kw)
    want, want_aux = np_ce_lm(x, y, reduction=reduction, cap=cap, **kw)
    assert_close(loss, want, rtol=2e-5, atol=2e-5)
    for k in want_aux:
      assert aux[k].shape == (N,) and aux[k].dtype == jnp.float32
      assert_close(aux[k], want_aux[k], rtol=2e-5, atol=2e-5)
  # Without return_aux: the same loss, alone.
  assert_close(cross_entropy(x, y, logit_soft_cap=cap, **kw), np_ce_lm(x, y, cap=cap, **kw)[0], rtol=2e-5)


def test_class_where_matches_optax_rules():
  # optax's test_mask: probability labels with classes masked out equal the
  # loss on the remaining classes alone; per_logit_mask: a row with no class is 0.
  x, t = rand((8,), seed=83), rand_probs((8,), seed=84)
  m = np.array([True, False, True, True, False, True, True, False])
  assert_close(cross_entropy(x, t, class_where=m), np_cross_entropy(x[m], t[m] / 1.0), rtol=2e-5)
  ys = np.array([[10.0, 1.0, -2.0], [1.0, 4.0, 0.2]], np.float32)
  per_logit = np.array([[1, 0, 0], [0, 0, 0]], bool)
  for labels in (np.array([0, 0]), np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], np.float32)):
    out, g = jax.value_and_grad(
      lambda x: jnp.sum(cross_entropy(x, labels, class_where=per_logit, reduction="none"))
    )(jnp.asarray(ys))
    assert out == 0 and np.all(np.isfinite(g))
    np.testing.assert_array_equal(g[1], 0.0)
  # The per-example where keeps its meaning beside class_where.
  both = cross_entropy(
    ys, np.array([0, 1]), where=np.array([True, False]), class_where=np.array([True, True, False])
  )
  assert_close(both, np_cross_entropy(ys[:1, :2], np.array([0])))
  # A label on an excluded class has probability 0: the loss is inf.
  assert cross_entropy(ys, np.array([2, 1]), class_where=np.array([True, True, False])) == np.inf


@pytest.mark.parametrize("axis", [(3, 0, -3)])
def test_tuple_axis_flattens_classes_in_the_order_given(axis):
  # optax's test_axes: an integer label is a flat index into the class axes, in the order given.
  shape = (2, 3, 4, 5)
  axes = tuple(a % 4 for a in axis)
  batch = tuple(a for a in range(4) if a not in axes)
  x = rand(shape, seed=85)
  flat = x.transpose(batch + axes).reshape(tuple(shape[a] for a in batch) + (-1,))
  y = np.random.default_rng(86).integers(0, flat.shape[-1], size=flat.shape[:-1])
  w = np.random.default_rng(87).random(tuple(shape[a] for a in axes)).astype(np.float32)
  kw = dict(label_smoothing=0.1, reduction="none")
  assert_close(
    cross_entropy(x, y, axis=axis, weight=w, **kw),
    np_cross_entropy(flat, y, weight=w.ravel(), **kw),
    rtol=2e-5,
  )
  t = rand_probs(flat.shape, seed=88)
  inv = np.argsort(batch + axes)
  t_nd = t.reshape(tuple(shape[a] for a in batch + axes)).transpose(inv)
  assert_close(cross_entropy(x, t_nd, axis=axis, **kw), np_cross_entropy(flat, t, **kw), rtol=2e-5)


def test_tuple_axis_optax_example():
  logits = jnp.arange(24, dtype=jnp.float32).reshape(1, 2, 3, 4)
  labels = jnp.ravel_multi_index((jnp.array([[1, 2]]), jnp.array([[1, 3]])), (3, 4))
  assert_close(cross_entropy(logits, labels, axis=(2, 3), reduction="none"), [[6.4587, 0.4587]], atol=1e-4)


def _lm_loss_of(probs):
  """One jitted loss of (logits, z_loss, cap, weight, labels) with every option, shared by the gradient tests."""
  x, y, kw = _lm_inputs(LM_CASES[4], probs)

  def f(x, z_loss, cap, w, t):
    labels = t if probs else y
    loss, aux = cross_entropy(
      x,
      labels,
      weight=w,
      where=kw["where"],
      class_where=kw["class_where"],
      label_smoothing=0.1,
      z_loss=z_loss,
      logit_soft_cap=cap,
      return_aux=True,
    )
    return loss + jnp.sum(aux["lse"] * 0.3 + aux["log_prob"] * 0.7 - aux["entropy"])

  args = (x, np.float32(0.1), np.float32(3.0), kw["weight"], rand_probs((N, C), seed=82))
  return f, args, kw


@pytest.mark.parametrize("probs", [False, True])
def test_lm_options_gradients(probs):
  # Every float option is differentiable (logits, z_loss, soft cap, class
  # weights, probability labels), through the loss and the aux outputs.
  f, args, kw = _lm_loss_of(probs)
  check_grads_compiled(f, args, order=1, eps=1e-3, atol=3e-2, rtol=3e-2)
  # Skipped examples (where False, no allowed class) get exactly zero gradients.
  g = jax.jit(jax.grad(f))(*args)
  skipped = ~kw["where"] | ~kw["class_where"].any(-1)
  np.testing.assert_array_equal(np.asarray(g)[skipped], 0.0)
  # d/d z_loss of the mean is the mean of lse^2 over the counted examples.
  x, z, cap, w, t = args
  _, aux = np_ce_lm(
    x,
    t if probs else _lm_inputs(LM_CASES[4], probs)[1],
    cap=3.0,
    **{k: kw[k] for k in ("where", "class_where")},
  )
  gz = jax.grad(
    lambda z: cross_entropy(
      x,
      t if probs else _lm_inputs(LM_CASES[4], probs)[1],
      where=kw["where"],
      class_where=kw["class_where"],
      logit_soft_cap=3.0,
      z_loss=z,
    )
  )(0.1)
  assert_close(gz, np.sum(aux["lse"] ** 2) / np.sum(~skipped), rtol=1e-5)


def test_lm_options_errors():
  x, y = jnp.zeros((2, 3)), jnp.array([0, 1])
  with pytest.raises(ValueError, match="cross_entropy: z_loss must be >= 0"):
    cross_entropy(x, y, z_loss=-1e-4)
  for cap in (0.0, -30.0):
    with pytest.raises(ValueError, match="cross_entropy: logit_soft_cap must be > 0"):
      cross_entropy(x, y, logit_soft_cap=cap)
  with pytest.raises(TypeError, match="return_aux"):
    cross_entropy(x, y, return_aux=1)
  with pytest.raises(ValueError, match="class_where"):
    cross_entropy(x, y, class_where=jnp.ones((2, 4), bool))
  with pytest.raises(TypeError, match="class_where"):
    cross_entropy(x, y, class_where=jnp.ones(3))
  with pytest.raises(ValueError, match=r"weight must have shape \(2, 3\)"):
    cross_entropy(jnp.zeros((1, 2, 3)), jnp.array([0]), axis=(1, 2), weight=jnp.ones(6))


# --- entropy and KL -------------------------------------------------------------


def test_kl_where_and_generalized_match_optax_numbers():
  # optax's KLDivergenceTest / GeneralizedKLDivergenceTest inputs; optax's
  # (log_predictions, targets) is (targets, exp(log_predictions)) here.
  log_ps = np.array(
    [
      [-2.9957, -3.5066, -3.9120, -1.2040, -0.6931, -2.3026],
      [-1.6094, -1.6094, -1.6094, -2.3026, -1.8971, -1.8971],
    ]
  )
  qs = np.array([[0.2, 0.2, 0.2, 0.1, 0.15, 0.15], [0.05, 0.03, 0.02, 0.3, 0.5, 0.0]])
  assert_close(kl_divergence(qs, np.exp(log_ps)), [0.8875577, 0.7592807], atol=1e-4)
  assert_close(generalized_kl_divergence(qs, np.exp(log_ps)), [0.88757247, 0.859308], atol=1e-4)
  # where: the masked entries drop out of the sum, as if absent (optax's test_mask).
  p, q = rand_probs((2, 6), seed=63), rand((2, 6), seed=64) ** 2
  m = np.array([[True, False, True, True, False, True], [False] * 6])
  for fn, ref in (
    (kl_divergence, lambda p, q: special.rel_entr(p, q)),
    (generalized_kl_divergence, lambda p, q: special.kl_div(p, q)),
  ):
    want = np.where(m, ref(p.astype(np.float64), q.astype(np.float64)), 0).sum(-1)
    assert_close(fn(p, q, where=m), want)
    # A masked inf (q = 0 under p > 0) changes nothing, and its gradient is 0.
    q0 = q.copy()
    q0[0, 1] = 0.0
    assert_close(fn(p, q0, where=m), want)
    g = jax.grad(lambda q: jnp.sum(fn(p, q, where=m)))(jnp.asarray(q0))
    assert np.all(np.asarray(g)[~m] == 0) and np.all(np.isfinite(g))
  assert np.isinf(kl_divergence(np.array([0.5, 0.5]), np.array([1.0, 0.0])))
  # Unnormalized measures: D >= 0, 0 at p = q, and KL when both sum to one.
  assert_close(generalized_kl_divergence(q, q), np.zeros(2), atol=1e-6)
  assert_close(generalized_kl_divergence(p, rand_probs((2, 6), 65)), kl_divergence(p, rand_probs((2, 6), 65)))
  with pytest.raises(ValueError, match="generalized_kl_divergence: where"):
    generalized_kl_divergence(p, q, where=np.ones(5, bool))


def test_entropy_and_kl_gradients_at_zero_probability_are_finite():
  # d(p log p)/dp is taken as 0 at p = 0, so the chain rule through an
  # underflowed softmax stays finite; d KL / d p = log(p / q) + 1, and -log q at p = 0
  # (the generalized KL's -p adds -1).
  z = jnp.array([0.0, -200.0, 1.0])
  g = jax.grad(lambda z: entropy(jax.nn.softmax(z)))(z)
  p = np.exp(np_log_softmax(np.asarray(z)))
  with np.errstate(divide="ignore"):
    want = -p * (np.log(p) - np.sum(p * np.where(p > 0, np.log(p), 0)))  # dH/dz = -p (log p - E log p)
  assert_close(g, np.where(p > 0, want, 0))
  p = np.array([0.0, 0.25, 0.75])
  q = np.array([0.2, 0.3, 0.5])
  assert_close(
    jax.grad(lambda p: kl_divergence(p, q))(jnp.asarray(p)),
    [-np.log(0.2), np.log(0.25 / 0.3) + 1, np.log(0.75 / 0.5) + 1],
  )
  assert_close(
    jax.grad(lambda p: generalized_kl_divergence(p, q))(jnp.asarray(p)),
    [-np.log(0.2) - 1, np.log(0.25 / 0.3), np.log(0.75 / 0.5)],
  )


def test_entropy_kl_match_reference_and_axes():
  p = rand_probs((3, 4, 5), seed=34)
  q = rand_probs((3, 4, 5), seed=35)
  p[0, 0, :2] = 0
  p[0, 0] /= p[0, 0].sum()
  for axis in (-1, (1, 2)):
    pp = p if axis == -1 else p / p.sum((1, 2), keepdims=True)
    qq = q if axis == -1 else q / q.sum((1, 2), keepdims=True)
    assert_close(entropy(pp, axis=axis), special.entr(pp.astype(np.float64)).sum(axis))
    want = special.rel_entr(pp.astype(np.float64), qq).sum(axis)
    assert_close(kl_divergence(pp, qq, axis=axis), want)
  # Cross-entropy decomposes: H(p, q) = H(p) + KL(p || q).
  assert_close(
    cross_entropy(np.log(q), p, reduction="none"),
    np.asarray(entropy(p), np.float64) + np.asarray(kl_divergence(p, q), np.float64),
  )


def test_entropy_kl_dtypes_and_grads():
  p = rand_probs((3, 4, 5), seed=36)
  q = rand_probs((3, 4, 5), seed=37)
  p[0, 0] = [0.0, 0.5, 0.0, 0.25, 0.25]
  pb = jnp.asarray(p, jnp.bfloat16)
  assert entropy(pb).dtype == jnp.bfloat16 and kl_divergence(pb, pb).dtype == jnp.bfloat16
  with jax.enable_x64(True):
    p64, q64 = p.astype(np.float64), q.astype(np.float64)
    assert entropy(jnp.asarray(p64)).dtype == jnp.float64
    np.testing.assert_allclose(
      kl_divergence(jnp.asarray(p64), jnp.asarray(q64)), special.rel_entr(p64, q64).sum(-1), rtol=1e-13
    )
  # d KL / d q = -p / q: zero where p is 0.
  g = jax.grad(lambda q: jnp.sum(kl_divergence(p, q)))(jnp.asarray(q))
  assert_close(g, -p / q.astype(np.float64))
  assert np.all(np.asarray(g)[p == 0] == 0)
  # d H / d p = -log p - 1 (where p > 0).
  p = rand_probs((3, 4, 5), seed=38)
  assert_close(jax.grad(lambda p: jnp.sum(entropy(p)))(jnp.asarray(p)), -np.log(p.astype(np.float64)) - 1)


@pytest.mark.slow  # order-2 numerical check in float64; closed forms above run by default
def test_entropy_kl_check_grads():
  with jax.enable_x64(True):
    p = np.random.default_rng(37).dirichlet(np.ones(4), size=2)
    q = np.random.default_rng(38).dirichlet(np.ones(4), size=2)
    check_grads(
      lambda p, q: kl_divergence(p, q) + entropy(p),
      (jnp.asarray(p), jnp.asarray(q)),
      order=2,
      modes=("fwd", "rev"),
      eps=1e-6,
    )


# --- dtypes -------------------------------------------------------------------


@pytest.mark.parametrize("probs", [False, True])
def test_bfloat16_in_bfloat16_out(probs):
  x32 = rand((N, C), seed=39)
  y = rand_probs((N, C), seed=40) if probs else np.random.default_rng(41).integers(0, C, size=N)
  x = jnp.asarray(x32, jnp.bfloat16)
  yb = jnp.asarray(y, jnp.bfloat16) if probs else y
  for reduction in ("mean", "none"):
    out = cross_entropy(x, yb, reduction=reduction, label_smoothing=0.1)
    assert out.dtype == jnp.bfloat16
    want = np_cross_entropy(
      np.asarray(x.astype(jnp.float32)),
      np.asarray(jnp.asarray(yb).astype(jnp.float32)) if probs else y,
      reduction=reduction,
      label_smoothing=0.1,
    )
    np.testing.assert_allclose(np.asarray(out.astype(jnp.float32)), want, rtol=2**-7)
  out = nll_loss(jax.nn.log_softmax(x), yb)
  assert out.dtype == jnp.bfloat16


# --- gradients and transforms --------------------------------------------------


@pytest.mark.parametrize("probs", [False, True])
def test_gradient_and_hessian_closed_form(probs):
  # Gradient and Hessian-vector product (forward over reverse) with weights and
  # smoothing, against the hand-derived float64 forms; nll_loss is linear in
  # its input, so its gradient is constant and its Hessian 0.
  x = rand((N, C), seed=45)
  y = rand_probs((N, C), seed=46) if probs else np.array([0, 3, 1, 1, 2, 4])
  w = np.array([0.5, 1.0, 2.0, 1.5, 1.0], np.float32)
  v = rand((N, C), seed=47)
  kw = dict(weight=w, label_smoothing=0.2)
  grad = jax.grad(lambda x: cross_entropy(x, y, **kw))
  g, hv = jax.jvp(grad, (jnp.asarray(x),), (jnp.asarray(v),))
  want_g, want_hv = np_ce_derivatives(x, y, v, **kw)
  assert_close(g, want_g)
  assert_close(hv, want_hv)
  # Unweighted and unsmoothed: (softmax - onehot) / N.
  p = np.exp(np_log_softmax(x))
  target = y if probs else np.eye(C)[y]
  assert_close(jax.grad(cross_entropy)(jnp.asarray(x), y), (p - target) / N)
  lp = np_log_softmax(x).astype(np.float32)
  grad = jax.grad(lambda lp: nll_loss(lp, y, reduction="sum", **kw))
  g, hv = jax.jvp(grad, (jnp.asarray(lp),), (jnp.asarray(v),))
  t = (target * 0.8 + 0.2 / C) * w
  assert_close(g, -t)
  np.testing.assert_array_equal(hv, 0.0)


@pytest.mark.slow  # order-2 numerical check; the closed forms above run by default
@pytest.mark.parametrize("probs", [False, True])
def test_check_grads(probs):
  x = jnp.asarray(rand((3, 4), seed=47, scale=1.0))
  y = jnp.asarray(rand_probs((3, 4), seed=48)) if probs else jnp.array([0, 3, 1])
  w = jnp.array([0.5, 1.0, 2.0, 1.5])
  # One check for both functions: each check_grads(order=2) costs seconds.
  f = lambda x: (
    cross_entropy(x, y, weight=w, label_smoothing=0.2) + nll_loss(x, y, weight=w, reduction="none")
  )
  check_grads(f, (x,), order=2, modes=("fwd", "rev"), atol=1e-2, rtol=1e-2)


def test_jit_vmap_jvp():
  x = rand((3, N, C), seed=49)
  y = np.random.default_rng(50).integers(0, C, size=(3, N))
  w = np.array([1.0, 2.0, 0.5, 1.0, 3.0], np.float32)
  f = jax.jit(lambda x, y: cross_entropy(x, y, weight=w, label_smoothing=0.1))
  got = jax.vmap(f)(x, y)
  want = np.array([np_cross_entropy(x[i], y[i], weight=w, label_smoothing=0.1) for i in range(3)])
  assert_close(got, want)
  where = np.random.default_rng(51).random((3, N)) < 0.5
  got = jax.jit(jax.vmap(lambda x, y, m: cross_entropy(x, y, where=m)))(x, y, where)
  assert_close(got, [np_cross_entropy(x[i], y[i], where=where[i]) for i in range(3)])
  got = jax.jit(jax.vmap(jax.grad(lambda x, y: nll_loss(x, y, reduction="sum"))))(x, y)
  np.testing.assert_array_equal(got, -np.eye(C, dtype=np.float32)[y])
  t = rand((N, C), seed=52)
  p = np.exp(np_log_softmax(x[0]))
  _, dy = jax.jvp(lambda x: cross_entropy(x, y[0], reduction="sum"), (jnp.asarray(x[0]),), (jnp.asarray(t),))
  assert_close(dy, np.sum((p - np.eye(C)[y[0]]) * t), rtol=1e-5, atol=1e-5)


def test_label_smoothing_may_be_traced():
  # A sweep over smoothing values under jit and vmap must trace, and match the
  # float64 reference at each value.
  x = rand((N, C), seed=53)
  y = np.random.default_rng(54).integers(0, C, size=N)
  eps = [0.0, 0.1, 0.3]
  swept = jax.jit(jax.vmap(lambda e: cross_entropy(x, y, label_smoothing=e)))(jnp.array(eps))
  assert_close(swept, [np_cross_entropy(x, y, label_smoothing=e) for e in eps])


# --- properties ------------------------------------------------------------------

logits_st = hnp.arrays(np.float32, (N, C), elements=st.floats(-30, 30, width=32))
labels_st = hnp.arrays(np.int32, (N,), elements=st.integers(0, C - 1))
weights_st = st.none() | hnp.arrays(np.float32, (C,), elements=st.floats(0.125, 4, width=32))
smooth_st = st.sampled_from([0.0, 0.1, 0.5, 1.0])


@given(logits_st, labels_st, weights_st, smooth_st)
def test_property_nonnegative_and_matches_reference(x, y, w, eps):
  kw = dict(weight=w, label_smoothing=eps)
  per = np.asarray(cross_entropy(x, y, reduction="none", **kw), np.float64)
  assert np.all(per >= 0)
  assert_close(per, np_cross_entropy(x, y, reduction="none", **kw), rtol=1e-5, atol=1e-5)
  assert float(cross_entropy(x, y, **kw)) >= 0


@given(logits_st, labels_st, weights_st, smooth_st)
def test_property_one_hot_equals_integer_label(x, y, w, eps):
  onehot = np.eye(C, dtype=np.float32)[y]
  for reduction in ("none", "sum"):
    kw = dict(weight=w, label_smoothing=eps, reduction=reduction)
    assert_close(
      cross_entropy(x, onehot, **kw), np.asarray(cross_entropy(x, y, **kw), np.float64), rtol=1e-5, atol=1e-5
    )
  # Unweighted, the means agree too (both divide by N).
  assert_close(
    cross_entropy(x, onehot, label_smoothing=eps),
    float(cross_entropy(x, y, label_smoothing=eps)),
    rtol=1e-5,
    atol=1e-5,
  )


@given(logits_st, labels_st, weights_st, st.sampled_from(["mean", "sum", "none"]))
def test_property_cross_entropy_is_nll_of_log_softmax(x, y, w, reduction):
  kw = dict(weight=w, reduction=reduction, label_smoothing=0.1)
  lp = jax.nn.log_softmax(jnp.asarray(x))
  assert_close(cross_entropy(x, y, **kw), np.asarray(nll_loss(lp, y, **kw), np.float64), rtol=1e-5, atol=1e-5)


# --- errors -----------------------------------------------------------------------


@pytest.mark.parametrize("fn,name", [(cross_entropy, "logits"), (nll_loss, "log_probs")])
def test_errors(fn, name):
  x = jnp.zeros((4, 3))
  y = jnp.array([0, 1, 2, 0])
  with pytest.raises(TypeError, match=name):
    fn(jnp.zeros((4, 3), jnp.int32), y)
  with pytest.raises(ValueError, match="labels"):
    fn(x, jnp.array([0, 1, 2]))  # wrong batch shape
  with pytest.raises(ValueError, match="labels"):
    fn(x, jnp.zeros((4, 3), jnp.int32))  # integer labels with a class axis
  with pytest.raises(ValueError, match="labels"):
    fn(x, jnp.zeros((4,), jnp.float32))  # probabilities without the class axis
  with pytest.raises(TypeError, match="labels"):
    fn(x, jnp.zeros((4,), bool))
  with pytest.raises(TypeError, match="labels"):
    fn(x, "0120")
  for eps in (-0.1, 1.5, float("nan")):
    with pytest.raises(ValueError, match="label_smoothing"):
      fn(x, y, label_smoothing=eps)
  with pytest.raises(ValueError, match="reduction"):
    fn(x, y, reduction="avg")
  with pytest.raises(ValueError, match="reduction"):
    fn(x, y, reduction=None)
  with pytest.raises(ValueError, match="weight"):
    fn(x, y, weight=jnp.ones(4))
  with pytest.raises(ValueError, match="weight"):
    fn(x, y, weight=jnp.ones((1, 3)))
  with pytest.raises(TypeError, match="where"):
    fn(x, y, where=jnp.ones(4))
  with pytest.raises(ValueError, match="where"):
    fn(x, y, where=jnp.ones(3, bool))
  with pytest.raises(TypeError, match="ignore_index"):
    fn(x, y, ignore_index=1.5)
  with pytest.raises(ValueError, match="ignore_index"):
    fn(x, jnp.full((4, 3), 1 / 3), ignore_index=-100)
  with pytest.raises(ValueError, match="axis"):
    fn(x, y, axis=2)


def test_error_message_format():
  with pytest.raises(ValueError, match=r"cross_entropy: labels must have shape \(8,\)"):
    cross_entropy(jnp.zeros((8, 3)), jnp.zeros((8, 3), jnp.int32))
  with pytest.raises(ValueError, match=r"weight must have shape \(3,\).*got \(4,\)"):
    cross_entropy(jnp.zeros((8, 3)), jnp.zeros(8, jnp.int32), weight=jnp.ones(4))
  with pytest.raises(
    ValueError, match=r"nll_loss: labels must be in \[0, 3\) or ignore_index=-100, got \[5\]"
  ):
    nll_loss(jnp.zeros((2, 3)), jnp.array([5, -100]), ignore_index=-100)


def test_entropy_kl_errors():
  with pytest.raises(TypeError, match="probs"):
    entropy(jnp.array([1, 0]))
  with pytest.raises(TypeError, match="q"):
    kl_divergence(jnp.array([0.5, 0.5]), jnp.array([1, 0]))
  with pytest.raises(ValueError, match="q"):
    kl_divergence(jnp.array([0.5, 0.5]), jnp.array([0.2, 0.3, 0.5]))
  with pytest.raises(ValueError, match="axis"):
    entropy(jnp.array([0.5, 0.5]), axis=1)
