"""Tests for the adaptive softmax (jaxsoft/_adaptive_softmax.py).

The reference is a float64 NumPy transcription of the forward pass of
torch.nn.AdaptiveLogSoftmaxWithLoss (head_bias=False): rows are grouped by
the cluster of their label, as PyTorch does, and each group's tail softmax is
computed on its rows only. When PyTorch is installed the same weights are
also loaded into its module.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _grad_check import check_grads as check_grads_compiled

from jaxsoft import adaptive_log_prob, adaptive_log_softmax, init_adaptive_softmax

D, V, CUTOFFS, DIV = 8, 40, [6, 20], 2.0
N = 9


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_adaptive(h, params, y, cutoffs):
  """PyTorch's forward: (output, loss), output[i] = log p(y_i)."""
  h = np.asarray(h, np.float64)
  head = np.asarray(params["head"], np.float64)
  head_lp = np_log_softmax(h @ head)
  vocab = cutoffs[-1] + np.asarray(params["tail"][-1]["out"]).shape[1]
  bounds = [0] + list(cutoffs) + [vocab]
  out = np.zeros(len(y))
  for i in range(len(bounds) - 1):
    lo, hi = bounds[i], bounds[i + 1]
    rows = np.nonzero((y >= lo) & (y < hi))[0]
    if rows.size == 0:
      continue
    if i == 0:
      out[rows] = head_lp[rows, y[rows]]
    else:
      t = params["tail"][i - 1]
      cluster_lp = np_log_softmax(
        h[rows] @ np.asarray(t["proj"], np.float64) @ np.asarray(t["out"], np.float64)
      )
      out[rows] = head_lp[rows, cutoffs[0] + i - 1] + cluster_lp[np.arange(rows.size), y[rows] - lo]
  return out, -out.mean()


def np_adaptive_log_prob(h, params, cutoffs):
  """PyTorch's ``log_prob``: every class's log-probability."""
  h = np.asarray(h, np.float64)
  head_lp = np_log_softmax(h @ np.asarray(params["head"], np.float64))
  parts = [head_lp[:, : cutoffs[0]]]
  for i, t in enumerate(params["tail"]):
    cl = np_log_softmax(h @ np.asarray(t["proj"], np.float64) @ np.asarray(t["out"], np.float64))
    parts.append(head_lp[:, cutoffs[0] + i : cutoffs[0] + i + 1] + cl)
  return np.concatenate(parts, 1)


PARAMS = init_adaptive_softmax(jax.random.key(0), D, V, CUTOFFS, div_value=DIV)
H = np.random.default_rng(1).normal(size=(N, D)).astype(np.float32)
# Labels in the shortlist, both clusters and both ends of each range.
Y = np.array([0, 5, 6, 19, 20, 39, 3, 25, 12], np.int32)


@jax.jit
def forward(h, params, y, keep):
  out = adaptive_log_softmax(h, params, y, cutoffs=CUTOFFS, where=keep, chunk_size=(4, 8))
  return out, adaptive_log_prob(h, params, cutoffs=CUTOFFS)


def test_layout_matches_pytorch():
  assert PARAMS["head"].shape == (D, CUTOFFS[0] + 2)
  h = [int(D // DIV ** (i + 1)) for i in range(2)]
  assert [(t["proj"].shape, t["out"].shape) for t in PARAMS["tail"]] == [
    ((D, h[0]), (h[0], 14)),
    ((D, h[1]), (h[1], 20)),
  ]
  # nn.Linear's default: U(-1/sqrt(in), 1/sqrt(in)).
  assert np.abs(PARAMS["head"]).max() <= 1 / np.sqrt(D)
  assert np.abs(PARAMS["tail"][1]["out"]).max() <= 1 / np.sqrt(h[1])


def test_matches_numpy_transcription_of_pytorch():
  (out, full) = forward(H, PARAMS, Y, np.ones(N, bool))
  want, want_loss = np_adaptive(H, PARAMS, Y, CUTOFFS)
  np.testing.assert_allclose(out.log_prob, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out.loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(full, np_adaptive_log_prob(H, PARAMS, CUTOFFS), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.exp(np.asarray(full, np.float64)).sum(-1), 1.0, rtol=1e-5)
  # where skips examples: log_prob 0, the mean over the others.
  keep = np.array([True, False] * 4 + [True])
  out, _ = forward(H, PARAMS, Y, keep)
  np.testing.assert_allclose(out.log_prob, np.where(keep, want, 0), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out.loss, -want[keep].mean(), rtol=1e-5)


def test_matches_pytorch_module():
  torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed: the NumPy transcription above stands in"
  )
  module = torch.nn.AdaptiveLogSoftmaxWithLoss(D, V, CUTOFFS, div_value=DIV, head_bias=False).double()
  with torch.no_grad():
    module.head.weight.copy_(torch.tensor(np.asarray(PARAMS["head"], np.float64).T))
    for seq, t in zip(module.tail, PARAMS["tail"]):
      seq[0].weight.copy_(torch.tensor(np.asarray(t["proj"], np.float64).T))
      seq[1].weight.copy_(torch.tensor(np.asarray(t["out"], np.float64).T))
    ref = module(torch.tensor(H, dtype=torch.float64), torch.tensor(Y, dtype=torch.long))
    ref_full = module.log_prob(torch.tensor(H, dtype=torch.float64))
  (out, full) = forward(H, PARAMS, Y, np.ones(N, bool))
  np.testing.assert_allclose(out.log_prob, ref.output.numpy(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out.loss, ref.loss.item(), rtol=1e-5)
  np.testing.assert_allclose(full, ref_full.numpy(), rtol=1e-5, atol=1e-5)


KEEP = np.array([True] * 4 + [False] + [True] * 4)


def _loss(h, params):
  out = adaptive_log_softmax(h, params, Y, cutoffs=CUTOFFS, where=KEEP, chunk_size=(4, 8))
  return out.loss + 0.1 * jnp.sum(out.log_prob)


def _dense_loss(h, params):
  # The same loss through the materialized log-probabilities: plain autodiff, no custom VJP.
  lp = adaptive_log_prob(h, params, cutoffs=CUTOFFS)[jnp.arange(N), Y]
  lp = jnp.where(KEEP, lp, 0)
  return -jnp.sum(lp) / KEEP.sum() + 0.1 * jnp.sum(lp)


def test_gradients_equal_the_dense_path():
  # The chunked (custom-VJP) gradients in the hidden states and every
  # parameter equal those of the dense path; skipped examples get exactly 0.
  grads, dense = jax.jit(lambda h, p: (jax.grad(_loss, (0, 1))(h, p), jax.grad(_dense_loss, (0, 1))(h, p)))(
    H, PARAMS
  )
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(dense)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(grads[0])[~KEEP], 0.0)


@pytest.mark.slow  # central differences through three chunked losses; the dense-path comparison runs by default
def test_check_grads():
  leaves, tree = jax.tree.flatten(PARAMS)
  f = lambda h, *leaves: _loss(h, jax.tree.unflatten(tree, leaves))
  check_grads_compiled(f, (H, *leaves), order=1, modes=("rev",), eps=1e-3, atol=2e-2, rtol=2e-2)


def test_errors():
  with pytest.raises(ValueError, match="init_adaptive_softmax: cutoffs must be strictly increasing"):
    init_adaptive_softmax(jax.random.key(0), D, V, [20, 6])
  with pytest.raises(ValueError, match="cutoffs"):
    init_adaptive_softmax(jax.random.key(0), D, V, [6, 40])
  with pytest.raises(TypeError, match="cutoffs"):
    init_adaptive_softmax(jax.random.key(0), D, V, 6)
  with pytest.raises(ValueError, match="div_value"):
    init_adaptive_softmax(jax.random.key(0), 2, V, [6, 20], div_value=4.0)
  with pytest.raises(TypeError, match="key"):
    init_adaptive_softmax(0, D, V, CUTOFFS)
  with pytest.raises(ValueError, match=r"adaptive_log_softmax: labels must be in \[0, 40\)"):
    adaptive_log_softmax(H, PARAMS, Y + 1, cutoffs=CUTOFFS)
  with pytest.raises(ValueError, match="adaptive_log_softmax: cutoffs"):
    adaptive_log_softmax(H, PARAMS, Y, cutoffs=[6, 6])
  with pytest.raises(ValueError, match=r"params\['tail'\]"):
    adaptive_log_softmax(H, PARAMS, Y, cutoffs=[6])
  with pytest.raises(ValueError, match=r"params\['head'\]"):
    adaptive_log_prob(H[:, :4], PARAMS, cutoffs=CUTOFFS)
