"""The chunked path with different blocks in its forward and backward pass, against float64 NumPy.

With no ``block_size`` the chunked path's forward and backward pass each use
their own default blocks; the tests set those defaults to small, different,
non-dividing sizes (so that both passes pad the inputs and tile them
differently) and compare the output and the gradients with a float64
reference written here. One jitted function per case.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsoft import _attention_structure as structure
from jaxsoft import attention
from jaxsoft.attention import scaled_dot_product_attention


def _allowed(T, S, causal, window):
  t, s = np.arange(T)[:, None], np.arange(S)[None, :]
  a = np.ones((T, S), bool)
  if causal:
    a &= s <= t
  if window is not None:
    a &= (t - s <= window[0]) & (s - t <= window[1])
  return a


def _reference(q, k, v, g, causal, window):
  """Output and the gradients of ``sum(out * g)`` w.r.t. q, k, v, in float64 ([T, N, H] inputs, K key heads)."""
  q, k, v, g = (np.asarray(x, np.float64) for x in (q, k, v, g))
  T, N, H = q.shape
  S, K = k.shape[:2]
  kr, vr = np.repeat(k, N // K, axis=1), np.repeat(v, N // K, axis=1)
  scale = 1 / np.sqrt(H)
  a = _allowed(T, S, causal, window)
  logits = np.where(a, np.einsum("tnh,snh->nts", q, kr) * scale, -np.inf)
  m = logits.max(-1, keepdims=True)
  e = np.where(a, np.exp(logits - np.where(np.isfinite(m), m, 0)), 0)
  total = e.sum(-1, keepdims=True)
  p = e / np.where(total > 0, total, 1)
  out = np.einsum("nts,snh->tnh", p, vr)
  dv = np.einsum("nts,tnh->snh", p, g)
  dp = np.einsum("tnh,snh->nts", g, vr)
  ds = p * (dp - (dp * p).sum(-1, keepdims=True))
  dq = np.einsum("nts,snh->tnh", ds, kr) * scale
  dk = np.einsum("nts,tnh->snh", ds, q) * scale
  fold = lambda x: x.reshape(S, K, N // K, -1).sum(2)  # the query heads of a key head
  return out, dq, fold(dk), fold(dv)


# (T, S, N, K, is_causal, local_window_size, forward blocks, backward blocks)
CASES = {
  # The backward pass's blocks end past the forward's: rows 24..32 (which the
  # forward pass never visits) and keys 40..48 (past its padding to 40).
  "gqa, backward blocks past the forward's": (20, 37, 2, 1, False, None, (8, 8), (16, 24)),
  "causal": (40, 56, 2, 2, True, None, (16, 24), (24, 8)),
  "causal window": (40, 50, 2, 2, True, (8, 0), (16, 16), (8, 24)),
}


def _patch_defaults(monkeypatch, forward, backward):
  for name in ("_DEFAULT_BLOCKS", "_DEFAULT_BANDED_BLOCKS"):
    monkeypatch.setattr(attention, name, forward)
  monkeypatch.setattr(attention, "_DEFAULT_BACKWARD_BLOCKS", backward)


@pytest.mark.parametrize(
  "is_causal, window, forward",
  [
    (False, None, (1024, 512)),  # no band
    (True, None, (512, 256)),  # causal
    (False, (600, 0), (512, 256)),  # a window
    (True, (255, 0), (512, 256)),
    (False, (100, 100), (512, 256)),
  ],
)
def test_default_blocks_follow_the_documented_rule(is_causal, window, forward):
  # The docstring's rule: forward (1024, 512), (512, 256) under a causal or
  # windowed band; backward (512, 256).
  band = structure.band(is_causal, window, 4096, 4096)
  assert attention._parse_blocks("f", None, band) == (forward, (512, 256))
  # A given block_size applies to both passes.
  assert attention._parse_blocks("f", (64, 32), band) == ((64, 32), (64, 32))


@pytest.mark.parametrize("name", list(CASES))
def test_different_forward_and_backward_blocks_match_the_reference(monkeypatch, name):
  T, S, N, K, causal, window, forward, backward = CASES[name]
  _patch_defaults(monkeypatch, forward, backward)
  rng = np.random.default_rng(0)
  q, g = rng.normal(size=(T, N, 8)), rng.normal(size=(T, N, 8))
  k, v = rng.normal(size=(S, K, 8)), rng.normal(size=(S, K, 8))

  def loss(q, k, v):
    out = scaled_dot_product_attention(
      q, k, v, is_causal=causal, local_window_size=window, implementation="chunked"
    )
    return jnp.sum(out * g), out

  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
    *(jnp.asarray(x, jnp.float32) for x in (q, k, v))
  )
  want = _reference(q, k, v, g, causal, window)
  for got, ref in zip((out, *grads), want):
    np.testing.assert_allclose(np.asarray(got), ref, rtol=2e-5, atol=2e-5)


def test_dropout_keeps_the_forward_blocks_in_the_backward_pass(monkeypatch):
  """The dropout bits are keyed by block, so the backward pass must redraw them on the forward's blocks."""
  _patch_defaults(monkeypatch, (8, 16), (24, 8))
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.normal(size=(40, 2, 8)), jnp.float32) for _ in range(3))
  key = jax.random.key(3)

  def grads(block_size):
    def loss(q, k, v):
      out = scaled_dot_product_attention(
        q, k, v, dropout_rate=0.5, dropout_key=key, implementation="chunked", block_size=block_size
      )
      return jnp.sum(jnp.sin(out))

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)

  # Explicit blocks apply to both passes: the gradient of one dropout mask.
  for got, want in zip(grads(None), grads((8, 16))):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
