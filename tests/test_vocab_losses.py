"""Tests for linear_cross_entropy and sampled_softmax_cross_entropy (jaxsoft/_vocab.py).

References are float64 NumPy computations of the materialized loss and its
closed-form gradients, written here, plus jaxsoft.cross_entropy on
materialized logits.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from jaxsoft._vocab import _draw_candidates, linear_cross_entropy, sampled_softmax_cross_entropy
from jaxsoft.losses import cross_entropy

# ---------------------------------------------------------------- references


def ref_dense(h, w, b, y, *, eps=0.0, keep=None, reduction="mean"):
  """Loss and (dh, dw, db) of the summed/averaged loss, float64, materialized."""
  h, w, b = (np.asarray(a, np.float64) for a in (h, w, b))
  y = np.asarray(y)
  n, vocab = h.shape[0], w.shape[1]
  keep = np.ones(n, bool) if keep is None else np.asarray(keep)
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


# ------------------------------------------------- linear_cross_entropy values

_lce_vg = jax.jit(
  jax.value_and_grad(
    lambda h, w, b, y, keep, eps, cs: linear_cross_entropy(
      h, w, y, bias=b, chunk_size=cs, label_smoothing=eps, where=keep
    ),
    argnums=(0, 1, 2),
  ),
  static_argnums=(6,),
)


@pytest.mark.parametrize(
  "n,vocab,chunk",
  [
    (12, 30, (4, 6)),  # chunks divide N and V
    (13, 29, (4, 7)),  # neither divides: moved-back last chunks
    (13, 29, (13, 29)),  # one block
    (13, 29, (1, 1)),  # one logit at a time
    (13, 29, 5),  # int: vocabulary chunk only
    (13, 29, None),  # defaults, capped at the sizes
    (7, 40, (100, 100)),  # chunks larger than the sizes
  ],
)
@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_lce_matches_float64_reference(n, vocab, chunk, eps):
  h, w, b, y = data(n, 5, vocab)
  keep = np.arange(n) % 4 != 1
  loss, grads = _lce_vg(h, w, b, y, keep, eps, chunk)
  want, want_grads = ref_dense(h, w, b, y, eps=eps, keep=keep)
  assert_close(loss, want, 2e-6)
  for g, r in zip(grads, want_grads):
    assert_close(g, r, 2e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_lce_matches_cross_entropy(reduction):
  h, w, b, y = data(11, 6, 23, seed=1)
  y[3] = -100
  opts = dict(ignore_index=-100, label_smoothing=0.1, reduction=reduction)
  f = lambda h, w, b: jnp.sum(linear_cross_entropy(h, w, y, bias=b, chunk_size=(4, 5), **opts))
  g = lambda h, w, b: jnp.sum(cross_entropy(h @ w + b, y, **opts))
  (lf, gf), (lg, gg) = (jax.value_and_grad(fn, (0, 1, 2))(h, w, b) for fn in (f, g))
  assert_close(lf, float(lg), 1e-5)
  for a, r in zip(gf, gg):
    assert_close(a, np.asarray(r, np.float64), 1e-5)
  per = linear_cross_entropy(h, w, y, bias=b, **opts)
  assert per.shape == (() if reduction != "none" else (11,))


def test_lce_float64_exact():
  h, w, b, y = data(9, 4, 17, seed=2)
  with jax.enable_x64(True):
    args = [jnp.asarray(a, jnp.float64) for a in (h, w, b)]
    loss, grads = jax.value_and_grad(
      lambda h, w, b: linear_cross_entropy(h, w, y, bias=b, chunk_size=(4, 5), label_smoothing=0.2), (0, 1, 2)
    )(*args)
    assert loss.dtype == jnp.float64
  want, want_grads = ref_dense(h, w, b, y, eps=0.2)
  assert_close(loss, want, 1e-12)
  for g, r in zip(grads, want_grads):
    assert_close(g, r, 1e-12)


def test_lce_no_bias_and_batch_dims():
  h, w, _, y = data(12, 5, 19, seed=3)
  got = linear_cross_entropy(h.reshape(3, 4, 5), w, y.reshape(3, 4), chunk_size=(5, 6), reduction="none")
  assert got.shape == (3, 4)
  want = ref_dense(h, w, np.zeros(19), y, reduction="none")[0]
  assert_close(got.reshape(-1), want, 2e-6)


# ------------------------------------------------------- edge cases (contract)


def test_lce_all_ignored_is_zero_with_zero_grads():
  h, w, b, y = data(5, 3, 8)
  f = lambda h, w, b: linear_cross_entropy(h, w, np.full(5, -1), bias=b, ignore_index=-1, chunk_size=(2, 3))
  loss, grads = jax.value_and_grad(f, (0, 1, 2))(h, w, b)
  assert float(loss) == 0.0
  assert all(float(jnp.abs(g).max()) == 0.0 for g in grads)


def test_lce_ignored_tokens_do_not_touch_gradients():
  h, w, b, y = data(6, 3, 8)
  h2 = h.copy()
  h2[2] = 1e3  # a wild ignored token must change nothing
  y2 = y.copy()
  y2[2] = -100
  f = lambda h: linear_cross_entropy(h, w, y2, bias=b, ignore_index=-100, chunk_size=(4, 3))
  g = jax.grad(lambda w: linear_cross_entropy(h, w, y2, bias=b, ignore_index=-100, chunk_size=(4, 3)))
  g2 = jax.grad(lambda w: linear_cross_entropy(h2, w, y2, bias=b, ignore_index=-100, chunk_size=(4, 3)))
  assert float(f(h)) == float(f(h2))
  np.testing.assert_array_equal(g(w), g2(w))
  assert float(jnp.abs(jax.grad(f)(h2)[2]).max()) == 0.0


def test_lce_large_logits_finite():
  h, w, b, y = data(6, 3, 10)
  out = jax.value_and_grad(lambda h: linear_cross_entropy(h * 1e4, w, y, chunk_size=(4, 3)))(h)
  assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(out))
  want = ref_dense(h * 1e4, w, np.zeros(10), y)[0]
  assert_close(out[0], want, 1e-4)


def test_lce_neg_inf_bias_masks_classes():
  h, w, b, y = data(6, 3, 10)
  b = np.where(np.arange(10) < 4, -np.inf, b).astype(np.float32)
  y = np.full(6, 7)
  loss, gb = jax.value_and_grad(lambda b: linear_cross_entropy(h, w, y, bias=b, chunk_size=(4, 3)))(b)
  want = ref_dense(h[:, :], w[:, 4:], b[4:], y - 4)[0]
  assert_close(loss, want, 2e-6)
  assert np.isfinite(np.asarray(gb)).all() and float(jnp.abs(gb[:4]).max()) == 0.0


def test_lce_bfloat16_dtype():
  h, w, b, y = data(8, 4, 12)
  out = linear_cross_entropy(jnp.asarray(h, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16), y, chunk_size=(3, 5))
  assert out.dtype == jnp.bfloat16
  assert_close(out.astype(jnp.float32), ref_dense(h, w, np.zeros(12), y)[0], 3e-2)


# ------------------------------------------------------------------ transforms


def test_lce_jit_vmap_grad():
  h, w, b, y = data(10, 4, 15)
  hs = np.stack([h, 2 * h])
  got = jax.jit(jax.vmap(jax.grad(lambda h: linear_cross_entropy(h, w, y, bias=b, chunk_size=(3, 4)))))(hs)
  for i in range(2):
    assert_close(got[i], ref_dense(hs[i], w, b, y)[1][0], 2e-6)


def test_lce_check_grads():
  h, w, b, y = data(5, 3, 7)
  with jax.enable_x64(True):
    args = tuple(jnp.asarray(a, jnp.float64) for a in (h, w, b))
    f = lambda h, w, b: linear_cross_entropy(h, w, y, bias=b, chunk_size=(2, 3), label_smoothing=0.1)
    check_grads(f, args, order=1, modes=["rev"])


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
  loss, grads = _lce_vg(h, w, b, y, np.ones(n, bool), 0.0, (tn, tv))
  want, want_grads = ref_dense(h, w, b, y)
  assert_close(loss, want, 2e-6)
  for g, r in zip(grads, want_grads):
    assert_close(g, r, 2e-6)


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
    (dict(remove_accidental_hits=1), TypeError, "remove_accidental_hits"),
  ],
)
def test_sampled_errors(kwargs, exc, match):
  args = dict(
    hidden=np.zeros((6, 3), np.float32),
    weight=np.zeros((3, 9), np.float32),
    labels=np.zeros(6, np.int32),
    num_samples=4,
  )
  args.update(kwargs)
  with pytest.raises(exc, match=match):
    sampled_softmax_cross_entropy(
      args.pop("hidden"), args.pop("weight"), args.pop("labels"), jax.random.key(0), **args
    )


# ------------------------------------------------------------ sampled softmax


@pytest.mark.parametrize("sampler", ["uniform", "log_uniform"])
@pytest.mark.parametrize("remove_hits", [True, False])
def test_sampled_matches_reference_for_its_draws(sampler, remove_hits):
  h, w, b, y = data(16, 4, 12)
  key = jax.random.key(3)
  got = sampled_softmax_cross_entropy(
    h, w, y, key, num_samples=7, bias=b, sampler=sampler, remove_accidental_hits=remove_hits, reduction="none"
  )
  ids, _ = _draw_candidates(key, sampler, 7, 12)
  ids = np.asarray(ids)
  log_q = np.full(7, -np.log(12)) if sampler == "uniform" else np.log(log_uniform_q(12)[ids])
  assert_close(got, ref_sampled(h, w, b, y, ids, log_q, remove_hits=remove_hits), 2e-6)
  mean = sampled_softmax_cross_entropy(
    h, w, y, key, num_samples=7, bias=b, sampler=sampler, remove_accidental_hits=remove_hits
  )
  assert_close(mean, float(np.mean(got)), 1e-6)


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


@pytest.mark.parametrize("sampler", ["uniform", "log_uniform"])
def test_sampled_normalizer_unbiased(sampler):
  # With hits removed, exp(loss) = Zhat / exp(z_y) and E[Zhat] = Z exactly.
  vocab = 20
  h, w, b, y = data(4, 3, vocab, seed=5)
  keys = jax.random.split(jax.random.key(7), 4000)
  per = jax.jit(
    jax.vmap(
      lambda k: sampled_softmax_cross_entropy(
        h, w, y, k, num_samples=vocab - 1, bias=b, sampler=sampler, reduction="none"
      )
    )
  )(keys)
  ratio = np.exp(np.asarray(per, np.float64))
  full = np.exp(ref_dense(h, w, b, y, reduction="none")[0])
  se = ratio.std(0) / np.sqrt(len(keys))
  assert np.all(np.abs(ratio.mean(0) - full) < 4.5 * se), (ratio.mean(0), full, se)
  # and the loss itself is close to the full one (Jensen gap ~ Var/2 at S = V - 1)
  assert_close(np.asarray(per, np.float64).mean(0), np.log(full), 0.05)


def test_sampled_uniform_equal_logits_counts_hits_exactly():
  # Equal logits: with a uniform proposal every non-hit draw contributes
  # exactly 1/(S Q) = V/(V-1), so the estimate depends only on the number of
  # accidental hits; E[hits] = (V-1)/V makes E[Zhat] = V, the full normalizer.
  vocab = 8
  h = np.zeros((3, 2), np.float32)
  w = np.zeros((2, vocab), np.float32)
  y = np.array([0, 1, 2])
  keys = jax.random.split(jax.random.key(0), 200)
  per = jax.vmap(
    lambda k: sampled_softmax_cross_entropy(
      h, w, y, k, num_samples=vocab - 1, sampler="uniform", reduction="none"
    )
  )(keys)
  ids = jax.vmap(lambda k: _draw_candidates(k, "uniform", vocab - 1, vocab)[0])(keys)
  hits = np.asarray(ids[:, None, :] == y[None, :, None]).sum(-1)
  want = np.log(1 + vocab / (vocab - 1) * (vocab - 1 - hits))
  assert_close(per, want, 1e-6)


@pytest.mark.parametrize("sampler,bounds", [("uniform", (0.95, 0.985)), ("log_uniform", (0.9, 0.94))])
def test_sampled_gradient_points_along_full_gradient(sampler, bounds):
  # The sampled loss is a ratio estimator (biased for finite S), so the
  # averaged gradient converges to a direction near, not equal to, the full
  # one. Measured: uniform 0.969 (S=20), 0.992 (S=59); log-uniform, a poor
  # proposal for these unsorted classes, 0.925 and 0.955.
  vocab, n = 60, 32
  h, w, b, y = data(n, 6, vocab, seed=9)
  ref = np.asarray(jax.grad(lambda w: cross_entropy(h @ w + b, y))(w), np.float64).ravel()
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
  h, w, b, y = data(8, 4, 30)
  f = jax.jit(lambda h, k: sampled_softmax_cross_entropy(h, w, y, k, num_samples=5))
  out = f(h, jax.random.key(0))
  assert out.shape == () and out.dtype == jnp.float32
  assert float(out) == float(sampled_softmax_cross_entropy(h, w, y, jax.random.key(0), num_samples=5))
  g = jax.vmap(jax.grad(f), (0, None))(np.stack([h, h]), jax.random.key(0))
  assert g.shape == (2, 8, 4) and np.isfinite(np.asarray(g)).all()
  bf = sampled_softmax_cross_entropy(jnp.asarray(h, jnp.bfloat16), w, y, jax.random.key(0), num_samples=5)
  assert bf.dtype == jnp.bfloat16


def test_docstring_examples():
  h = jax.random.normal(jax.random.key(0), (6, 4))
  w = jax.random.normal(jax.random.key(1), (4, 10))
  y = jnp.array([0, 3, 9, 2, 2, 7])
  assert f"{float(linear_cross_entropy(h, w, y, chunk_size=(4, 3))):.4f}" == "6.0564"
  assert f"{float(cross_entropy(h @ w, y)):.4f}" == "6.0564"
  assert f"{float(sampled_softmax_cross_entropy(h, w, y, jax.random.key(2), num_samples=5)):.4f}" == "5.9449"
