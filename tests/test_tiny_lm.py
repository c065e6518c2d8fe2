"""The tiny_lm experiment: a smoke run through the CLI and its exact rerun, the packing of documents
into rows, and the model (segment_ids, sliding window, likelihood) against a float64 NumPy reference."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from experiments import tiny_lm  # noqa: E402
from experiments.__main__ import main  # noqa: E402

S = tiny_lm.SMOKE


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("runs")
  assert main(["run", "tiny_lm", "--smoke", "--runs-dir", str(root)]) == 0
  (run_dir,) = (root / "tiny_lm").iterdir()
  return run_dir


@pytest.mark.slow
def test_smoke_run_and_its_rerun_are_identical(smoke_run, capsys):
  files = {p.name for p in smoke_run.iterdir()}
  assert {
    "summary.json",
    "metrics.jsonl",
    "method_timing.json",
    "loss_curves.png",
    "attention_map.png",
  } <= files
  s = json.loads((smoke_run / "summary.json").read_text())
  assert s["train_step_peak_bytes"] > 0
  timing = json.loads((smoke_run / "method_timing.json").read_text())
  metrics = [json.loads(line) for line in (smoke_run / "metrics.jsonl").read_text().splitlines()]
  for m in tiny_lm.METHODS:
    assert timing[m]["tokens_per_second"] > 0 and s[f"{m}.output_layer_peak_bytes"] > 0
    # Each method logs its training and validation loss at every point, and learns.
    val_nll = [r[f"{m}.val_nll"] for r in metrics if f"{m}.val_nll" in r]
    assert len(val_nll) == S.steps // S.eval_every and val_nll[-1] < val_nll[0], m
    assert s[f"{m}.val_perplexity"] == pytest.approx(math.exp(val_nll[-1]), rel=1e-12)

  capsys.readouterr()
  assert main(["rerun", str(smoke_run)]) == 0
  assert "summaries identical" in capsys.readouterr().out
  (rerun,) = [d for d in smoke_run.parent.iterdir() if d != smoke_run]
  assert (rerun / "metrics.jsonl").read_text() == (smoke_run / "metrics.jsonl").read_text()


# -- packing --------------------------------------------------------------------------


def test_pack_matches_a_loop_over_the_stream():
  rng = np.random.default_rng(0)
  docs = [np.r_[tiny_lm.DOC, rng.integers(2, 50, n)].astype(np.int32) for n in (3, 0, 9, 20, 1, 14)]
  L = 8
  rows = tiny_lm.pack(docs, L)
  stream = [t for d in docs for t in d]
  doc_of = [i for i, d in enumerate(docs) for _ in d]
  n_rows = (len(stream) - 1) // L
  assert rows["tokens"].shape == (n_rows, L)
  for r in range(n_rows):
    for t in range(L):
      i = r * L + t
      assert rows["tokens"][r, t] == stream[i] and rows["targets"][r, t] == stream[i + 1]
      assert rows["segment_ids"][r, t] == doc_of[i]
      assert rows["valid"][r, t] == (doc_of[i + 1] == doc_of[i])  # no target across documents
      # Position: words since the document's part of this row began.
      start = next(s for s in range(t + 1) if doc_of[r * L + s] == doc_of[i])
      assert rows["positions"][r, t] == t - start


# -- the model against a float64 NumPy reference ----------------------------------------


def _layer_norm(p, x):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def _gelu(x):  # jax.nn.gelu's default (tanh) form
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _reference(p, rows, config):
  """Hidden states and every layer's attention weights with explicit [T, S] masks, in float64."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  seg = rows["segment_ids"]
  T = seg.shape[1]
  t, s = np.arange(T)[:, None], np.arange(T)[None, :]
  x = p["embed"][rows["tokens"]] + p["pos"][rows["positions"]]
  weights = []
  for i, blk in enumerate(p["blocks"]):
    allowed = (s <= t) & (seg[:, :, None] == seg[:, None, :])  # causal, same document
    if i % 2 == 0:
      allowed = allowed & (t - s <= config.local_window_size)  # the sliding window
    a, h = blk["attn"], _layer_norm(blk["ln1"], x)
    q, k, v = (
      np.einsum("btd,dnh->btnh", h, a[n]["kernel"]) + a[n]["bias"] for n in ("query", "key", "value")
    )
    logits = np.einsum("btnh,bsnh->bnts", q, k) / math.sqrt(q.shape[-1])
    logits = np.where(allowed[:, None], logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    weights.append(w)
    x = x + np.einsum("bnts,bsnh,nhd->btd", w, v, a["out"]["kernel"]) + a["out"]["bias"]
    h = _gelu(_layer_norm(blk["ln2"], x) @ blk["up"]["w"] + blk["up"]["b"])
    x = x + h @ blk["down"]["w"] + blk["down"]["b"]
  return _layer_norm(p["ln_f"], x), weights


@pytest.fixture(scope="module")
def packed_model():
  """SMOKE's model (its vocabulary size, so the programs compiled by the smoke run serve) and
  eight packed rows of documents of 3 to 20 words."""
  vocab = len(tiny_lm.documents(S.seed, S.val_fraction, S.min_count, S.corpus_files)[2])
  rng = np.random.default_rng(1)
  docs = [np.r_[tiny_lm.DOC, rng.integers(2, vocab, n)].astype(np.int32) for n in rng.integers(3, 21, 40)]
  rows = {k: v[: S.eval_rows] for k, v in tiny_lm.pack(docs, S.seq_len).items()}
  return tiny_lm.init_params(jax.random.key(S.seed), vocab=vocab, config=S), rows


def test_attention_stays_inside_documents_and_windows(packed_model):
  params, rows = packed_model
  _, ref = _reference(params, rows, S)
  r = int(np.argmax([len(np.unique(s)) for s in rows["segment_ids"]]))
  assert len(np.unique(rows["segment_ids"][r])) >= 3  # the row packs several documents
  got = tiny_lm.attention_weights(params, jax.tree.map(lambda a: jnp.asarray(a[r : r + 1]), rows), config=S)
  seg = rows["segment_ids"][r]
  for layer, (w, w_ref) in enumerate(zip(got, ref)):
    w = np.asarray(w[0])
    np.testing.assert_allclose(w, w_ref[r], atol=2e-6, rtol=1e-5)
    across = seg[:, None] != seg[None, :]
    assert np.all(w[:, across] == 0.0), layer  # exactly zero, not just small
    t, s = np.indices(across.shape)
    if layer % 2 == 0:
      assert np.all(w[:, t - s > S.local_window_size] == 0.0)
    else:  # the global layer reaches past the window inside a long document
      assert np.any(w[:, (t - s > S.local_window_size) & ~across] > 0)


def test_validation_likelihood_counts_only_targets_of_the_same_document(packed_model):
  params, rows = packed_model
  hidden, _ = _reference(params, rows, S)
  logits = hidden @ np.asarray(params["softmax"]["w"], np.float64) + np.asarray(params["softmax"]["b"])
  lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  log_p = np.take_along_axis(logits, rows["targets"][..., None], -1)[..., 0] - lse
  valid = rows["valid"]
  assert 0 < valid.sum() < valid.size
  got_log_p, count, sum_lse = tiny_lm.log_likelihood(
    params, jax.tree.map(jnp.asarray, rows), jnp.bool_(False), config=S
  )
  assert int(count) == valid.sum()
  np.testing.assert_allclose(float(got_log_p), log_p[valid].sum(), rtol=1e-5)
  np.testing.assert_allclose(float(sum_lse), lse[valid].sum(), rtol=1e-5)


# -- config ------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "args, expected",
  [
    (["--steps", "7"], "tiny_lm: --steps must be a multiple of eval_every (25), got 7"),
    (["--d_model", "30"], "--d_model must be a multiple of num_heads (4), got 30"),
    (["--cutoffs", "500,20"], "--cutoffs must be comma-separated increasing positive integers"),
    (["--local_window_size", "-1"], "--local_window_size must be 0 (no window) or positive, got -1"),
    (["--z_loss=-1e-4"], "--z_loss must be non-negative, got -0.0001"),
    (["--devices", "-1"], "--devices must be 0 (all) or a positive integer, got -1"),
    (["--devices", "64"], "--devices must be at most jax.device_count() = "),
    # Checked once the corpus is read (the vocabulary's size); still no directory.
    (["--smoke", "--cutoffs", "50,99999"], "--cutoffs must be below the vocabulary size"),
  ],
)
def test_bad_values_are_rejected_before_any_work(tmp_path, capsys, args, expected):
  assert main(["run", "tiny_lm", "--runs-dir", str(tmp_path), *args]) == 2
  err = capsys.readouterr().err
  assert expected in err and len(err.strip().splitlines()) == 1, err
  assert not (tmp_path / "tiny_lm").exists()


DEVICES_SCRIPT = """
import json, sys
from pathlib import Path
from experiments.__main__ import main
root = Path(sys.argv[1])
assert main(["run", "tiny_lm", "--smoke", "--devices", "4", "--runs-dir", str(root / "four")]) == 0
assert main(["run", "tiny_lm", "--smoke", "--seq_len", "36", "--devices", "4", "--runs-dir", str(root / "x")]) == 2
assert main(["run", "tiny_lm", "--smoke", "--runs-dir", str(root / "one")]) == 0
"""


@pytest.mark.slow
def test_four_devices_reproduce_the_single_device_training_curve(tmp_path, capsys):
  # Ring attention over 4 simulated devices (each holds two slices of every
  # row) trains the same model: every logged loss equal to float32 rounding.
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip()
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", PYTHONPATH=root)
  proc = subprocess.run(
    [sys.executable, "-c", DEVICES_SCRIPT, str(tmp_path)],
    capture_output=True,
    text=True,
    env=env,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "--seq_len must be a multiple of 2 * devices (8), got 36" in proc.stderr
  one, four = (
    [json.loads(line) for line in next((tmp_path / d / "tiny_lm").iterdir()).joinpath("metrics.jsonl").open()]
    for d in ("one", "four")
  )
  assert len(one) == len(four) > 0
  for a, b in zip(one, four):
    assert a.keys() == b.keys()
    for k in a:
      assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), k
