"""Tests for linear_cross_entropy and sampled_softmax_cross_entropy (jaxsoft/_vocab.py).

References are float64 NumPy computations of the materialized loss and its
closed-form gradients, written here. The chunked loss compiles once per
static configuration (shapes, chunk sizes, options): most cases share the
compiled functions and the shapes below.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _grad_check import check_grads as check_grads_compiled
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from jaxsoft._vocab import _chunk_sizes, _draw_candidates
from jaxsoft.losses import cross_entropy, linear_cross_entropy, nll_loss, sampled_softmax_cross_entropy

IGNORE = -100

# ---------------------------------------------------------------- references


def ref_dense(h, w, b, y, *, eps=0.0, keep=None, reduction="mean"):
  """Loss and (dh, dw, db) of the summed/averaged loss, float64, materialized.

  A token counts where ``keep`` is True and its label is not IGNORE.
  """
  h, w, b = (np.asarray(a, np.float64) for a in (h, w, b))
  y = np.asarray(y)
  n, vocab = h.shape[0], w.shape[1]
  keep = (np.ones(n, bool) if keep is None else np.asarray(keep)) & (y != IGNORE)
  ys = np.where(keep, y, 0)
  z = h @ w + b
  m = z.max(1, keepdims=True)
  lse = (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]
  per = lse - (1 - eps) * z[np.arange(n), ys] - eps / vocab * z.sum(1)
  per = np.where(keep, per, 0.0)
  p = np.exp(z - lse[:, None])
  onehot = np.eye(vocab)[ys]
  if reduction == "mean":
    den = keep.sum()
    loss, coef = (per.sum() / den, keep / den) if den else (0.0, np.zeros(n))
  else:  # "sum", and the gradient of sum(per) for "none"
    loss = per.sum() if reduction == "sum" else per
    coef = keep.astype(np.float64)
  dz = coef[:, None] * (p - (1 - eps) * onehot - eps / vocab)
  return loss, (dz @ w.T, h.T @ dz, dz.sum(0))


def ref_sampled(h, w, b, y, ids, log_q, *, remove_hits=True):
  """Per-token sampled softmax loss for given candidates, float64."""
  h, w, b = (np.asarray(a, np.float64) for a in (h, w, b))
  ids, log_q, y = np.asarray(ids), np.asarray(log_q, np.float64), np.asarray(y)
  z = h @ w + b
  z_y = z[np.arange(len(y)), y]
  z_s = z[:, ids] - np.log(len(ids)) - log_q
  if remove_hits:
    z_s = np.where(ids[None, :] == y[:, None], -np.inf, z_s)
  allz = np.concatenate([z_y[:, None], z_s], 1)
  m = allz.max(1, keepdims=True)
  return (m[:, 0] + np.log(np.exp(allz - m).sum(1))) - z_y


def ref_sampled_grads(h, w, b, y, ids, log_q, *, remove_hits=True):
  """(dh, dw, db) of the mean sampled loss for given candidates, float64.

  Per token the loss is logsumexp(a) - a_0 with a = [z_y, z_c1 - log(S Q_1), ...]
  (hits at -inf): d loss / d a = softmax(a) - e_0, and each entry of a is
  one logit, so its derivative lands on that logit's class.
  """
  h, w, b = (np.asarray(a, np.float64) for a in (h, w, b))
  ids, log_q, y = np.asarray(ids), np.asarray(log_q, np.float64), np.asarray(y)
  n, rows = len(y), np.arange(len(y))
  z = h @ w + b
  a = np.concatenate([z[rows, y][:, None], z[:, ids] - np.log(len(ids)) - log_q], 1)
  if remove_hits:
    a[:, 1:] = np.where(ids[None, :] == y[:, None], -np.inf, a[:, 1:])
  p = np.exp(a - a.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  dz = np.zeros_like(z)
  dz[rows, y] += p[:, 0] - 1
  np.add.at(dz, (rows[:, None], ids[None, :]), p[:, 1:])
  dz /= n
  return dz @ w.T, h.T @ dz, dz.sum(0)


def log_uniform_q(vocab):
  c = np.arange(vocab)
  return np.log((c + 2) / (c + 1)) / np.log(vocab + 1)


def data(n, d, vocab, seed=0):
  rng = np.random.default_rng(seed)
  h = rng.normal(size=(n, d)).astype(np.float32)
  w = (rng.normal(size=(d, vocab)) / np.sqrt(d)).astype(np.float32)
  b = rng.normal(size=(vocab,)).astype(np.float32)
  y = rng.integers(0, vocab, size=n).astype(np.int32)
  return h, w, b, y


def assert_close(got, want, tol):
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=tol)


@functools.partial(jax.jit, static_argnames=("chunk", "reduction"))
def lce_value_and_grad(h, w, b, y, keep, eps, chunk, reduction="mean"):
  """Value and (dh, dw, db) of the summed linear_cross_entropy, IGNORE labels ignored."""

  def loss(h, w, b):
    per = linear_cross_entropy(
      h,
      w,
      y,
      bias=b,
      chunk_size=chunk,
      ignore_index=IGNORE,
      label_smoothing=eps,
      where=keep,
      reduction=reduction,
    )
    return jnp.sum(per), per

  (_, per), grads = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(h, w, b)
  return per, grads


# The shapes most cases share: neither chunk divides its size, so the last
# token chunk and the last vocabulary chunk are both moved back.
N, D, V, CHUNK = 13, 5, 29, (4, 7)
KEEP = np.arange(N) % 4 != 1


def labels_with_ignored(y):
  y = y.copy()
  y[[2, 7]] = IGNORE
  return y


# ------------------------------------------------- linear_cross_entropy values


@pytest.mark.parametrize(
  "n,vocab,chunk",
  [
    (12, 30, (4, 6)),  # chunks divide N and V
    (N, V, CHUNK),  # neither divides: moved-back last chunks
    (N, V, (N, V)),  # one block
    (N, V, (1, 1)),  # one logit at a time
    (3, 1, (2, 1)),  # one class: loss and gradients 0
  ],
)
@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_lce_matches_float64_reference(n, vocab, chunk, eps):
  h, w, b, y = data(n, D, vocab)
  y = labels_with_ignored(y) if n > 7 else y
  keep = np.arange(n) % 4 != 1
  loss, grads = lce_value_and_grad(h, w, b, y, keep, eps, chunk)
  want, want_grads = ref_dense(h, w, b, y, eps=eps, keep=keep)
  assert_close(loss, want, 2e-6)
  for g, r in zip(grads, want_grads):
    assert_close(g, r, 2e-6)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_lce_reductions(reduction):
  # "mean" is the case above; "none" differentiates the sum of the per-token losses.
  h, w, b, y = data(N, D, V, seed=1)
  y = labels_with_ignored(y)
  per, grads = lce_value_and_grad(h, w, b, y, KEEP, 0.1, CHUNK, reduction)
  want, want_grads = ref_dense(h, w, b, y, eps=0.1, keep=KEEP, reduction=reduction)
  assert per.shape == (() if reduction == "sum" else (N,))
  assert_close(per, want, 2e-6)
  for g, r in zip(grads, want_grads):
    assert_close(g, r, 2e-6)


def test_lce_equals_cross_entropy_of_the_logits():
  # The documented identity, on every option linear_cross_entropy has.
  h, w, b, y = data(N, D, V, seed=2)
  y = labels_with_ignored(y)

  @jax.jit
  def both(h, w, b):
    out = []
    for reduction in ("mean", "sum", "none"):
      opts = dict(ignore_index=IGNORE, label_smoothing=0.1, where=KEEP, reduction=reduction)
      out.append(
        (linear_cross_entropy(h, w, y, bias=b, chunk_size=CHUNK, **opts), cross_entropy(h @ w + b, y, **opts))
      )
    return out

  for got, want in both(h, w, b):
    assert_close(got, np.asarray(want, np.float64), 1e-5)


def test_lce_float64_exact():
  h, w, b, y = data(N, D, V, seed=3)
  y = labels_with_ignored(y)
  with jax.enable_x64(True):
    args = [jnp.asarray(a, jnp.float64) for a in (h, w, b)]
    loss, grads = lce_value_and_grad(*args, y, KEEP, 0.2, CHUNK)
    assert loss.dtype == jnp.float64
  want, want_grads = ref_dense(h, w, b, y, eps=0.2, keep=KEEP)
  assert_close(loss, want, 1e-12)
  for g, r in zip(grads, want_grads):
    assert_close(g, r, 1e-12)


def test_lce_no_bias_and_batch_dims():
  h, w, _, y = data(12, D, V, seed=4)
  got = linear_cross_entropy(h.reshape(3, 4, D), w, y.reshape(3, 4), chunk_size=CHUNK, reduction="none")
  assert got.shape == (3, 4)
  want = ref_dense(h, w, np.zeros(V), y, reduction="none")[0]
  assert_close(got.reshape(-1), want, 2e-6)


def test_chunk_sizes():
  # None: 1024 tokens x 4096 classes, capped at the sizes; an int is the
  # vocabulary chunk; sizes that do not divide are evened out.
  assert _chunk_sizes("f", None, 13, 29) == (13, 29)
  assert _chunk_sizes("f", None, 5000, 32000) == (1000, 4000)
  assert _chunk_sizes("f", 5, 13, 29) == (13, 5)
  assert _chunk_sizes("f", (100, 100), 7, 40) == (7, 40)
  assert _chunk_sizes("f", (4, 7), 13, 29) == (4, 6)
  assert _chunk_sizes("f", (4, 7), 0, 29) == (1, 6)
  # The defaults and the int form run the loss they parse to.
  h, w, b, y = data(N, D, V, seed=5)
  want = ref_dense(h, w, b, y, reduction="none")[0]
  for chunk in (None, 5):
    assert_close(linear_cross_entropy(h, w, y, bias=b, chunk_size=chunk, reduction="none"), want, 2e-6)


# ------------------------------------------------------- edge cases (contract)


def test_lce_all_ignored_or_masked_is_zero_with_zero_grads():
  h, w, b, y = data(N, D, V)
  for labels, keep in ((np.full(N, IGNORE), KEEP), (y, np.zeros(N, bool))):
    loss, grads = lce_value_and_grad(h, w, b, labels, keep, 0.1, CHUNK)
    assert float(loss) == 0.0
    assert all(float(jnp.abs(g).max()) == 0.0 for g in grads)
  assert float(linear_cross_entropy(h, w, np.full(N, -1), ignore_index=-1)) == 0.0


def test_lce_ignored_tokens_do_not_touch_gradients():
  h, w, b, y = data(N, D, V)
  y = labels_with_ignored(y)
  h2 = h.copy()
  h2[[1, 2]] = 1e3  # wild tokens, one excluded by where, one by ignore_index, must change nothing
  loss, (dh, dw, db) = lce_value_and_grad(h, w, b, y, KEEP, 0.0, CHUNK)
  loss2, (dh2, dw2, db2) = lce_value_and_grad(h2, w, b, y, KEEP, 0.0, CHUNK)
  assert float(loss) == float(loss2)
  np.testing.assert_array_equal(dw, dw2)
  np.testing.assert_array_equal(db, db2)
  np.testing.assert_array_equal(np.asarray(dh2)[[1, 2]], 0.0)


def test_lce_large_logits_finite():
  h, w, b, y = data(N, D, V)
  loss, grads = lce_value_and_grad(h * 1e4, w, b, y, KEEP, 0.0, CHUNK)
  assert all(np.isfinite(np.asarray(a)).all() for a in (loss, *grads))
  assert_close(loss, ref_dense(h * 1e4, w, b, y, keep=KEEP)[0], 1e-4)


def test_lce_neg_inf_bias_masks_classes():
  h, w, b, y = data(N, D, V)
  b = np.where(np.arange(V) < 4, -np.inf, b).astype(np.float32)
  y = 4 + y % (V - 4)
  loss, (_, _, db) = lce_value_and_grad(h, w, b, y, KEEP, 0.0, CHUNK)
  assert_close(loss, ref_dense(h, w[:, 4:], b[4:], y - 4, keep=KEEP)[0], 2e-6)
  assert np.isfinite(np.asarray(db)).all() and float(jnp.abs(db[:4]).max()) == 0.0


def test_lce_bfloat16_dtype():
  h, w, b, y = data(N, D, V)
  out = linear_cross_entropy(jnp.asarray(h, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16), y, chunk_size=CHUNK)
  assert out.dtype == jnp.bfloat16
  assert_close(out.astype(jnp.float32), ref_dense(h, w, np.zeros(V), y)[0], 3e-2)


@pytest.mark.parametrize("upcast", [False, True])
def test_lce_bfloat16_gradients_within_bf16_rounding(upcast, monkeypatch):
  # Both ways of running the half-precision block matmuls (half operands with
  # float32 accumulation, or upcast operands) give the float32 gradients of the
  # same bf16-rounded inputs to bf16 rounding (measured: ~4e-3 relative).
  from jaxsoft import _vocab

  monkeypatch.setitem(_vocab.UPCAST_HALF_OPERANDS, jax.default_backend(), upcast)
  h, w, b, y = data(N, D, V)
  hb, wb = jnp.asarray(h, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
  _, want = ref_dense(np.asarray(hb, np.float32), np.asarray(wb, np.float32), np.zeros(V), y)
  got = jax.jit(jax.grad(lambda h, w: linear_cross_entropy(h, w, y, chunk_size=CHUNK), (0, 1)))(hb, wb)
  for g, r in zip(got, want):
    assert g.dtype == jnp.bfloat16
    err = np.max(np.abs(np.asarray(g, np.float64) - r)) / np.max(np.abs(r))
    assert err < 2e-2, err


# ------------------------------------------------------------------ transforms


def test_lce_jit_vmap_grad():
  h, w, b, y = data(N, D, V)
  hs = np.stack([h, 2 * h])
  got = jax.jit(jax.vmap(jax.grad(lambda h: linear_cross_entropy(h, w, y, bias=b, chunk_size=CHUNK))))(hs)
  for i in range(2):
    assert_close(got[i], ref_dense(hs[i], w, b, y)[1][0], 2e-6)


@pytest.mark.slow  # numerical differences; the float64 closed forms above run by default
def test_lce_check_grads():
  h, w, b, y = data(5, 3, 7)
  with jax.enable_x64(True):
    args = tuple(jnp.asarray(a, jnp.float64) for a in (h, w, b))
    f = lambda h, w, b: linear_cross_entropy(h, w, y, bias=b, chunk_size=(2, 3), label_smoothing=0.1)
    check_grads(jax.jit(f), args, order=1, modes=["rev"])


@pytest.mark.slow  # one compilation per drawn configuration; the structured cases above run by default
@settings(max_examples=12)
@given(
  n=st.integers(1, 9),
  vocab=st.integers(1, 12),
  tn=st.integers(1, 10),
  tv=st.integers(1, 13),
  seed=st.integers(0, 100),
)
def test_lce_property_any_chunks(n, vocab, tn, tv, seed):
  h, w, b, y = data(n, 3, vocab, seed)
  loss, grads = lce_value_and_grad(h, w, b, y, np.ones(n, bool), 0.0, (tn, tv))
  want, want_grads = ref_dense(h, w, b, y)
  assert_close(loss, want, 2e-6)
  for g, r in zip(grads, want_grads):
    assert_close(g, r, 2e-6)


# ------------------------------------------------------------ one label rule


def test_excluded_labels_are_never_read():
  # An example excluded by where may hold any label, as in cross_entropy:
  # the losses agree eagerly and under jit.
  h = jnp.ones((2, 3))
  w = jnp.ones((3, 4)) * 0.1
  y = jnp.array([1, -5])
  m = jnp.array([True, False])
  want = np.log(4)  # equal logits over 4 classes
  np.testing.assert_allclose(cross_entropy(h @ w, y, where=m), want, rtol=1e-6)
  np.testing.assert_allclose(linear_cross_entropy(h, w, y, where=m), want, rtol=1e-6)
  np.testing.assert_allclose(
    jax.jit(lambda h, w, y: linear_cross_entropy(h, w, y, where=m))(h, w, y), want, rtol=1e-6
  )
  # ignore_index, and both at once.
  np.testing.assert_allclose(linear_cross_entropy(h, w, jnp.array([1, 7]), ignore_index=7), want, rtol=1e-6)
  np.testing.assert_allclose(
    linear_cross_entropy(h, w, jnp.array([-5, 9]), ignore_index=-5, where=jnp.array([True, False])), 0.0
  )


LOSSES = {
  "cross_entropy": lambda h, w, y: cross_entropy(h @ w, y),
  "nll_loss": lambda h, w, y: nll_loss(jax.nn.log_softmax(h @ w), y),
  "linear_cross_entropy": lambda h, w, y: linear_cross_entropy(h, w, y),
  "sampled_softmax_cross_entropy": lambda h, w, y: sampled_softmax_cross_entropy(
    h, w, y, jax.random.key(0), num_samples=2
  ),
}


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("bad", [-1, 4])
def test_counted_out_of_range_label_raises_or_is_nan(name, bad):
  # One rule for every loss with class indices: concrete labels are checked
  # (the message names labels), traced ones give a NaN loss.
  loss = LOSSES[name]
  h, w = jnp.ones((2, 3)), jnp.ones((3, 4)) * 0.1
  y = jnp.array([1, bad])
  with pytest.raises(ValueError, match=rf"{name}: labels must be in \[0, 4\), got \[{bad}\]"):
    loss(h, w, y)
  assert np.isnan(jax.jit(loss)(h, w, y))
  assert np.isfinite(jax.jit(loss)(h, w, jnp.array([1, 3])))


# -------------------------------------------------------------------- errors


@pytest.mark.parametrize(
  "kwargs,exc,match",
  [
    (dict(weight=np.zeros((4, 9), np.float32)), ValueError, "weight"),
    (dict(labels=np.zeros(5, np.int32)), ValueError, "labels"),
    (dict(labels=np.zeros(6, np.float32)), TypeError, "labels"),
    (dict(labels=np.full(6, 9)), ValueError, "labels"),
    (dict(bias=np.zeros(8, np.float32)), ValueError, "bias"),
    (dict(chunk_size=0), ValueError, "chunk_size"),
    (dict(chunk_size=(1, 2, 3)), TypeError, "chunk_size"),
    (dict(chunk_size=2.5), TypeError, "chunk_size"),
    (dict(reduction="avg"), ValueError, "reduction"),
    (dict(label_smoothing=1.5), ValueError, "label_smoothing"),
    (dict(where=np.ones(4, bool)), ValueError, "where"),
    (dict(where=np.ones(6)), TypeError, "where"),
    (dict(ignore_index=0.5), TypeError, "ignore_index"),
  ],
)
def test_lce_errors(kwargs, exc, match):
  args = dict(
    hidden=np.zeros((6, 3), np.float32), weight=np.zeros((3, 9), np.float32), labels=np.zeros(6, np.int32)
  )
  args.update(kwargs)
  with pytest.raises(exc, match=match):
    linear_cross_entropy(args.pop("hidden"), args.pop("weight"), args.pop("labels"), **args)


@pytest.mark.parametrize(
  "kwargs,exc,match",
  [
    (dict(num_samples=10), ValueError, "num_samples"),
    (dict(num_samples=0), ValueError, "num_samples"),
    (dict(sampler="zipf"), ValueError, "sampler"),
    (dict(weight=np.zeros((4, 9), np.float32)), ValueError, "weight"),
    (dict(labels=np.zeros((6, 1), np.int32)), ValueError, "labels"),
    (dict(labels=np.full(6, 9)), ValueError, "labels"),
    (dict(remove_accidental_hits=1), TypeError, "remove_accidental_hits"),
    (dict(key=0), TypeError, r"sampled_softmax_cross_entropy: key must be a jax.random key"),
    (dict(key=np.zeros(2, np.int32)), TypeError, "key"),
    (dict(key=jax.random.split(jax.random.key(0))), ValueError, "key must be a single key"),
  ],
)
def test_sampled_errors(kwargs, exc, match):
  args = dict(
    hidden=np.zeros((6, 3), np.float32),
    weight=np.zeros((3, 9), np.float32),
    labels=np.zeros(6, np.int32),
    key=jax.random.key(0),
    num_samples=4,
  )
  args.update(kwargs)
  with pytest.raises(exc, match=match):
    sampled_softmax_cross_entropy(
      args.pop("hidden"), args.pop("weight"), args.pop("labels"), args.pop("key"), **args
    )


# ------------------------------------------------------------ sampled softmax

SN, SD, SV = 16, 4, 12  # the sampled softmax cases' shapes


@pytest.mark.parametrize("sampler", ["uniform", "log_uniform"])
@pytest.mark.parametrize("remove_hits", [True, False])
def test_sampled_matches_reference_for_its_draws(sampler, remove_hits):
  h, w, b, y = data(SN, SD, SV)
  key = jax.random.key(3)
  got = sampled_softmax_cross_entropy(
    h, w, y, key, num_samples=7, bias=b, sampler=sampler, remove_accidental_hits=remove_hits, reduction="none"
  )
  ids, _ = _draw_candidates(key, sampler, 7, SV)
  ids = np.asarray(ids)
  log_q = np.full(7, -np.log(SV)) if sampler == "uniform" else np.log(log_uniform_q(SV)[ids])
  want = ref_sampled(h, w, b, y, ids, log_q, remove_hits=remove_hits)
  assert_close(got, want, 2e-6)
  for reduction, r in (("mean", np.mean(want)), ("sum", np.sum(want))):
    got = sampled_softmax_cross_entropy(
      h,
      w,
      y,
      key,
      num_samples=7,
      bias=b,
      sampler=sampler,
      remove_accidental_hits=remove_hits,
      reduction=reduction,
    )
    assert_close(got, r, 2e-6)


@pytest.mark.parametrize("remove_hits", [True, False])
def test_sampled_gradients_match_reference_for_its_draws(remove_hits):
  h, w, b, y = data(SN, SD, SV)
  key = jax.random.key(3)
  loss = lambda h, w, b: sampled_softmax_cross_entropy(
    h, w, y, key, num_samples=7, bias=b, sampler="uniform", remove_accidental_hits=remove_hits
  )
  grads = jax.jit(jax.grad(loss, (0, 1, 2)))(h, w, b)
  ids = np.asarray(_draw_candidates(key, "uniform", 7, SV)[0])
  want = ref_sampled_grads(h, w, b, y, ids, np.full(7, -np.log(SV)), remove_hits=remove_hits)
  for g, r in zip(grads, want):
    assert_close(g, r, 2e-6)


def test_sampled_keys_typed_or_legacy():
  # A legacy uint32[2] key is the threefry key with the same data.
  h, w, b, y = data(SN, SD, SV)
  f = lambda key: sampled_softmax_cross_entropy(h, w, y, key, num_samples=7, bias=b, reduction="none")
  typed = f(jax.random.key(5))
  np.testing.assert_array_equal(f(jax.random.PRNGKey(5)), typed)
  assert_close(jax.jit(f)(jax.random.PRNGKey(5)), np.asarray(typed, np.float64), 2e-6)
  assert not np.array_equal(f(jax.random.key(6)), typed)


@pytest.mark.parametrize("sampler,vocab", [("uniform", 10), ("log_uniform", 10), ("log_uniform", 1000)])
def test_sampler_frequencies(sampler, vocab):
  draws = 400_000
  ids, log_q = _draw_candidates(jax.random.key(1), sampler, draws, vocab)
  q = np.full(vocab, 1 / vocab) if sampler == "uniform" else log_uniform_q(vocab)
  assert_close(np.exp(np.asarray(log_q)), q[np.asarray(ids)], 1e-5)
  freq = np.bincount(np.asarray(ids), minlength=vocab) / draws
  if vocab > 10:  # compare the head, and the mass of ten equal-probability-ish bins
    edges = np.unique(np.geomspace(1, vocab, 11).astype(int)) - 1
    freq, q = np.add.reduceat(freq, edges), np.add.reduceat(q, edges)
  se = np.sqrt(q * (1 - q) / draws)
  assert np.all(np.abs(freq - q) < 5 * se + 1e-7), (freq, q)


@functools.partial(jax.jit, static_argnames="sampler")
def sampled_over_keys(h, w, b, y, keys, sampler):
  """Per-token losses with S = V - 1 draws, hits removed, for each key; and each key's draws."""
  vocab = w.shape[1]

  def one(key):
    per = sampled_softmax_cross_entropy(
      h, w, y, key, num_samples=vocab - 1, bias=b, sampler=sampler, reduction="none"
    )
    return per, _draw_candidates(key, sampler, vocab - 1, vocab)[0]

  return jax.vmap(one)(keys)


# Both cases below run the one compiled sampled_over_keys per sampler.
KEYS = jax.random.split(jax.random.key(7), 4000)


@pytest.mark.parametrize("sampler", ["uniform", "log_uniform"])
def test_sampled_normalizer_unbiased(sampler):
  # With hits removed, exp(loss) = Zhat / exp(z_y) and E[Zhat] = Z exactly.
  h, w, b, y = data(4, 3, 20, seed=5)
  per, _ = sampled_over_keys(h, w, b, y, KEYS, sampler)
  ratio = np.exp(np.asarray(per, np.float64))
  full = np.exp(ref_dense(h, w, b, y, reduction="none")[0])
  se = ratio.std(0) / np.sqrt(len(KEYS))
  assert np.all(np.abs(ratio.mean(0) - full) < 4.5 * se), (ratio.mean(0), full, se)
  # and the loss itself is close to the full one (Jensen gap ~ Var/2 at S = V - 1)
  assert_close(np.asarray(per, np.float64).mean(0), np.log(full), 0.05)


def test_sampled_uniform_equal_logits_counts_hits_exactly():
  # Equal logits: with a uniform proposal every non-hit draw contributes
  # exactly 1/(S Q) = V/(V-1), so the estimate depends only on the number of
  # accidental hits; E[hits] = (V-1)/V makes E[Zhat] = V, the full normalizer.
  vocab = 20
  h, w, b = np.zeros((4, 3), np.float32), np.zeros((3, vocab), np.float32), np.zeros(vocab, np.float32)
  y = np.array([0, 1, 2, 19], np.int32)
  per, ids = sampled_over_keys(h, w, b, y, KEYS, "uniform")
  hits = np.asarray(ids[:, None, :] == y[None, :, None]).sum(-1)
  want = np.log(1 + vocab / (vocab - 1) * (vocab - 1 - hits))
  assert_close(per, want, 1e-6)


@pytest.mark.parametrize(
  "sampler,bounds",
  [
    ("uniform", (0.95, 0.985)),
    ("log_uniform", (0.9, 0.94)),
  ],
)
@pytest.mark.slow  # a property of the estimator, 600 gradients; its gradients for given draws are tested above
def test_sampled_gradient_points_along_full_gradient(sampler, bounds):
  # The sampled loss is a ratio estimator (biased for finite S), so the
  # averaged gradient converges to a direction near, not equal to, the full
  # one. Measured: uniform 0.969 (S=20), 0.992 (S=59); log-uniform, a poor
  # proposal for these unsorted classes, 0.925 and 0.955.
  vocab, n = 60, 32
  h, w, b, y = data(n, 6, vocab, seed=9)
  ref = ref_dense(h, w, b, y)[1][1].ravel()
  keys = jax.random.split(jax.random.key(4), 300)
  cosines = []
  for num_samples, bound in zip((20, vocab - 1), bounds):
    g = jax.jit(
      jax.vmap(
        jax.grad(
          lambda w, k: sampled_softmax_cross_entropy(
            h, w, y, k, num_samples=num_samples, bias=b, sampler=sampler
          )
        ),
        (None, 0),
      )
    )(w, keys)
    avg = np.asarray(g, np.float64).mean(0).ravel()
    cosines.append(avg @ ref / np.linalg.norm(avg) / np.linalg.norm(ref))
    assert cosines[-1] > bound, (num_samples, cosines)
  assert cosines[1] > cosines[0]


def test_sampled_transforms_and_dtype():
  h, w, b, y = data(SN, SD, SV)
  f = jax.jit(lambda h, k: sampled_softmax_cross_entropy(h, w, y, k, num_samples=7, bias=b))
  out = f(h, jax.random.key(0))
  assert out.shape == () and out.dtype == jnp.float32
  eager = sampled_softmax_cross_entropy(h, w, y, jax.random.key(0), num_samples=7, bias=b)
  assert_close(out, float(eager), 2e-6)
  g = jax.vmap(jax.grad(f), (0, None))(np.stack([h, h]), jax.random.key(0))
  assert g.shape == (2, SN, SD) and np.isfinite(np.asarray(g)).all()
  bf = sampled_softmax_cross_entropy(
    jnp.asarray(h, jnp.bfloat16), w, y, jax.random.key(0), num_samples=7, bias=b
  )
  assert bf.dtype == jnp.bfloat16
  assert_close(bf.astype(jnp.float32), float(eager), 3e-2)


# ------------------------------------- language-model options (both losses)


def ref_lm(h, w, b, y, keep, *, cw=None, eps=0.0, z_loss=0.0, cap=None):
  """Loss under each reduction and per-token aux of the options, from the formulas, float64, materialized."""
  h, w, b = (np.asarray(a, np.float64) for a in (h, w, b))
  z = h @ w + b
  if cap is not None:
    z = cap * np.tanh(z / cap)
  n, vocab = z.shape
  cw = np.ones(vocab) if cw is None else np.asarray(cw, np.float64)
  ys = np.where(keep, y, 0)
  m = z.max(1, keepdims=True)
  lse = (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]
  lp = z - lse[:, None]
  p = np.exp(lp)
  per = (1 - eps) * cw[ys] * -lp[np.arange(n), ys] + eps / vocab * -(lp * cw).sum(1)
  per, zl = np.where(keep, per, 0.0), np.where(keep, z_loss * lse**2, 0.0)
  losses = {
    "mean": per.sum() / np.sum(np.where(keep, cw[ys], 0)) + zl.sum() / keep.sum(),
    "sum": per.sum() + zl.sum(),
    "none": per + zl,
  }
  aux = {"lse": lse, "log_prob": lp[np.arange(n), ys], "entropy": -(p * lp).sum(1)}
  return losses, {k: np.where(keep, v, 0.0) for k, v in aux.items()}


LN, LD, LV = 7, 4, 10  # 7 tokens in chunks of 3 and 10 classes in chunks of 4: both last chunks move back


@jax.jit
def lce_lm(h, w, b, y, keep, cw, eps, z_loss, cap):
  """Every reduction of linear_cross_entropy with every option (traced), and the aux: one compile."""
  kw = dict(
    bias=b,
    chunk_size=(3, 4),
    class_weight=cw,
    label_smoothing=eps,
    where=keep,
    z_loss=z_loss,
    logit_soft_cap=cap,
  )
  out = {r: linear_cross_entropy(h, w, y, reduction=r, **kw) for r in ("sum", "none")}
  out["mean"], aux = linear_cross_entropy(h, w, y, return_aux=True, **kw)
  return out, aux


LCE_LM_CASES = [
  dict(z_loss=0.1),
  dict(cap=1.5),
  dict(eps=0.2, z_loss=0.05, cap=2.0),
  dict(weighted=True, eps=0.3, z_loss=0.2, cap=3.0),
]


def _lce_lm_args(case):
  h, w, b, y = data(LN, LD, LV, seed=11)
  keep = np.array([True, True, False, True, True, True, False])
  cw = (
    np.random.default_rng(12).uniform(0.5, 2.0, LV).astype(np.float32)
    if case.get("weighted")
    else np.ones(LV, np.float32)
  )
  # A cap of 1e6 is the identity to float32 rounding at these logits.
  opts = dict(eps=case.get("eps", 0.0), z_loss=case.get("z_loss", 0.0), cap=case.get("cap", 1e6))
  return (h, w, b, y, keep, cw), opts


@pytest.mark.parametrize("case", range(len(LCE_LM_CASES)))
def test_lce_lm_options_match_reference(case):
  (h, w, b, y, keep, cw), opts = _lce_lm_args(LCE_LM_CASES[case])
  out, aux = lce_lm(h, w, b, y, keep, cw, *(np.float32(v) for v in opts.values()))
  want, want_aux = ref_lm(h, w, b, y, keep, cw=cw, **opts)
  for r in want:
    assert_close(out[r], want[r], 2e-5)
  for k in want_aux:
    assert aux[k].shape == (LN,)
    assert_close(aux[k], want_aux[k], 2e-5)


def _lm_objective(loss_fn):
  (_, _, _, y, keep, _), _ = _lce_lm_args(dict(weighted=True))

  def f(h, w, b, cw, eps, z_loss, cap):
    loss, aux = loss_fn(h, w, b, y, keep, cw, eps, z_loss, cap)
    return loss + jnp.sum(0.3 * aux["lse"] + 0.5 * aux["log_prob"] - aux["entropy"])

  return f


_LCE_OBJECTIVE = _lm_objective(
  lambda h, w, b, y, keep, cw, eps, z_loss, cap: linear_cross_entropy(
    h,
    w,
    y,
    bias=b,
    chunk_size=(3, 4),
    class_weight=cw,
    label_smoothing=eps,
    where=keep,
    z_loss=z_loss,
    logit_soft_cap=cap,
    return_aux=True,
  )
)


def test_lce_lm_options_gradients_equal_the_dense_ones():
  # The chunked custom VJP against autodiff of the materialized cross_entropy
  # (itself checked against closed forms and central differences), in every
  # float input and option, and exact zeros for the skipped tokens.
  (h, w, b, y, keep, cw), _ = _lce_lm_args(dict(weighted=True))
  dense = _lm_objective(
    lambda h, w, b, y, keep, cw, eps, z_loss, cap: cross_entropy(
      h @ w + b,
      y,
      weight=cw,
      label_smoothing=eps,
      where=keep,
      z_loss=z_loss,
      logit_soft_cap=cap,
      return_aux=True,
    )
  )
  args = (h, w, b, cw, np.float32(0.2), np.float32(0.1), np.float32(2.0))
  argnums = tuple(range(7))
  got, want = jax.jit(lambda *a: (jax.grad(_LCE_OBJECTIVE, argnums)(*a), jax.grad(dense, argnums)(*a)))(*args)
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(got[0])[~keep], 0.0)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_lce_scalar_loss_gradients_equal_the_dense_ones(reduction):
  # A "mean" or "sum" loss takes the one-pass gradient (gradients formed in the forward
  # rule, scaled by the cotangent): every float input against autodiff of the
  # materialized cross_entropy, the value against the float64 formulas, a cotangent
  # other than 1, and exact zeros for the skipped tokens; also with the aux requested
  # but not differentiated (their zero cotangents skip the extra pass).
  # chunk_size=(3, 4) at N=7, V=LV moves the last token and vocabulary chunks back.
  (h, w, b, y, keep, cw), _ = _lce_lm_args(dict(weighted=True))
  opts = dict(eps=0.2, z_loss=0.1, cap=2.0)

  def loss_of(fn, aux=False):
    def f(h, w, b, cw, eps, z_loss, cap):
      kw = dict(label_smoothing=eps, where=keep, z_loss=z_loss, logit_soft_cap=cap, reduction=reduction)
      if fn is cross_entropy:
        return 3.0 * cross_entropy(h @ w + b, y, weight=cw, **kw)
      out = linear_cross_entropy(h, w, y, bias=b, chunk_size=(3, 4), class_weight=cw, return_aux=aux, **kw)
      return 3.0 * (out[0] if aux else out)

    return jax.value_and_grad(f, argnums=tuple(range(7)))

  args = (h, w, b, cw, *(np.float32(v) for v in opts.values()))
  lce, lce_aux, dense = (
    loss_of(linear_cross_entropy),
    loss_of(linear_cross_entropy, True),
    loss_of(cross_entropy),
  )
  *results, (want_v, want) = jax.jit(lambda *a: (lce(*a), lce_aux(*a), dense(*a)))(*args)
  for got_v, got in results:
    assert_close(got_v, 3.0 * ref_lm(h, w, b, y, keep, cw=cw, **opts)[0][reduction], 2e-5)
    assert_close(got_v, want_v, 2e-6)
    for g, r in zip(got, want):
      np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(got[0])[~keep], 0.0)


@pytest.mark.slow  # central differences through the chunked scans; the dense comparison runs by default
def test_lce_lm_options_check_grads():
  (h, w, b, y, keep, cw), _ = _lce_lm_args(dict(weighted=True))
  args = (h, w, b, cw, np.float32(0.2), np.float32(0.1), np.float32(2.0))
  check_grads_compiled(_LCE_OBJECTIVE, args, order=1, modes=("rev",), eps=1e-3, atol=2e-2, rtol=2e-2)


def test_lce_default_options_are_the_plain_loss():
  # z_loss=0, no cap, no aux: the loss of before, and the aux pass (the statistics
  # path; the plain mean takes the scalar-loss path) gives it to float rounding.
  h, w, b, y = data(LN, LD, LV, seed=13)
  plain = linear_cross_entropy(h, w, y, bias=b, chunk_size=(3, 4))
  loss, aux = linear_cross_entropy(h, w, y, bias=b, chunk_size=(3, 4), return_aux=True)
  assert_close(float(loss), float(plain), 2e-7)
  assert_close(-np.mean(aux["log_prob"]), float(plain), 1e-6)


@pytest.mark.parametrize(
  "kwargs,exc,match",
  [
    (dict(z_loss=-1.0), ValueError, "z_loss must be >= 0"),
    (dict(logit_soft_cap=0.0), ValueError, "logit_soft_cap must be > 0"),
    (dict(return_aux="yes"), TypeError, "return_aux"),
    (dict(class_weight=np.ones(3, np.float32)), ValueError, "class_weight must have shape"),
    (dict(class_weight=np.ones(LV, np.int32)), TypeError, "class_weight"),
  ],
)
def test_lce_lm_option_errors(kwargs, exc, match):
  h, w, b, y = data(LN, LD, LV)
  with pytest.raises(exc, match="linear_cross_entropy: " + match):
    linear_cross_entropy(h, w, y, **kwargs)
  if "class_weight" not in kwargs:
    with pytest.raises(exc, match="sampled_softmax_cross_entropy: " + match):
      sampled_softmax_cross_entropy(h, w, y, jax.random.key(0), num_samples=3, **kwargs)


def test_sampled_lm_options_match_reference_for_its_draws():
  # ignore_index, where, each reduction, z-loss, soft cap and the aux
  # estimates, for given draws, against the formulas in float64.
  h, w, b, y = data(SN, SD, SV)
  y[2] = IGNORE
  keep = np.ones(SN, bool)
  keep[5] = False
  key, cap, zl = jax.random.key(3), 2.0, 0.1
  ids = np.asarray(_draw_candidates(key, "uniform", 7, SV)[0])
  z = cap * np.tanh((h.astype(np.float64) @ w + b) / cap)
  ys = np.where(y == IGNORE, 0, y)
  z_y = z[np.arange(SN), ys]
  a = np.concatenate(
    [z_y[:, None], np.where(ids == ys[:, None], -np.inf, z[:, ids] - np.log(7) + np.log(SV))], 1
  )
  lse = np.log(np.exp(a).sum(1))
  pi = np.exp(a - lse[:, None])
  zz = np.concatenate([z_y[:, None], z[:, ids]], 1)
  counted = keep & (y != IGNORE)
  per = np.where(counted, lse - z_y + zl * lse**2, 0)
  want_aux = {"lse": lse, "log_prob": z_y - lse, "entropy": lse - (pi * zz).sum(1)}
  kw = dict(
    num_samples=7, bias=b, sampler="uniform", ignore_index=IGNORE, where=keep, z_loss=zl, logit_soft_cap=cap
  )
  f = lambda h, reduction="mean", return_aux=True: sampled_softmax_cross_entropy(
    h, w, y, key, reduction=reduction, return_aux=return_aux, **kw
  )
  # One compiled program: every reduction, the loss without aux, and the gradient.
  got = jax.jit(
    lambda h: (
      {r: f(h, r) for r in ("none", "sum", "mean")},
      f(h, return_aux=False),
      jax.grad(f, has_aux=True)(h)[0],
    )
  )(h)
  for reduction, r in (("none", per), ("sum", per.sum()), ("mean", per.sum() / counted.sum())):
    loss, aux = got[0][reduction]
    assert_close(loss, r, 2e-5)
    for k, v in want_aux.items():
      assert_close(aux[k], np.where(counted, v, 0), 2e-5)
  # The aux does not change the loss; skipped tokens get zero gradients.
  assert float(got[1]) == float(got[0]["mean"][0])
  np.testing.assert_array_equal(np.asarray(got[2])[~counted], 0.0)


def test_lce_one_pass_gradient_under_vmap_with_and_without_aux_cotangents():
  # The aux cotangents take an extra backward pass under lax.cond; under vmap the
  # condition is per lane (a select): lane 0 does not differentiate the aux (c = 0),
  # lane 1 does. Against autodiff of the materialized cross_entropy, lane by lane.
  (h, w, b, y, keep, cw), _ = _lce_lm_args(dict(weighted=True))
  kw = dict(where=keep, z_loss=0.1, logit_soft_cap=2.0, return_aux=True)

  def objective(fn):
    def f(h, c):
      if fn is cross_entropy:
        loss, aux = cross_entropy(h @ w + b, y, weight=cw, **kw)
      else:
        loss, aux = linear_cross_entropy(h, w, y, bias=b, chunk_size=(3, 4), class_weight=cw, **kw)
      return loss + c * jnp.sum(aux["entropy"] - 0.5 * aux["log_prob"])

    return jax.vmap(jax.grad(f))

  hs, cs = np.stack([h, h[::-1]]), np.array([0.0, 0.7], np.float32)
  got, want = jax.jit(
    lambda hs, cs: (objective(linear_cross_entropy)(hs, cs), objective(cross_entropy)(hs, cs))
  )(hs, cs)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_lm_options_under_vmap():
  # Options traced (z_loss, cap) and the aux under jit(vmap), for both losses, against per-batch calls.
  (h, w, b, y, keep, cw), _ = _lce_lm_args(dict(weighted=True))
  hs, ys = np.stack([h, h[::-1]]), np.stack([y, y[::-1]])

  def f(h, y, z_loss, cap):
    kw = dict(z_loss=z_loss, logit_soft_cap=cap, return_aux=True)
    return linear_cross_entropy(h, w, y, bias=b, chunk_size=(3, 4), **kw), cross_entropy(h @ w + b, y, **kw)

  got = jax.jit(jax.vmap(f, (0, 0, None, None)))(hs, ys, 0.1, 2.0)
  for i in range(2):
    want, want_aux = ref_lm(hs[i], w, b, ys[i], np.ones(LN, bool), z_loss=0.1, cap=2.0)
    for loss, aux in got:
      assert_close(loss[i], want["mean"], 2e-5)
      assert_close(aux["entropy"][i], want_aux["entropy"], 2e-5)
