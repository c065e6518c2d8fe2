"""Next-word model on Python's own docs: full vs fused linear vs sampled vs adaptive softmax.

The corpus is English text that ships with CPython: every docstring of the
standard library (read with ``ast``, never imported) and the documentation
topics of ``pydoc_data``. Documents are split train/validation by a seeded
permutation; the vocabulary is every lower-cased word seen at least twice in
training (the rest map to ``<unk>``). The model reads the ``context`` previous
words (embeddings concatenated), one tanh hidden layer, and a softmax over the
vocabulary. It is trained four times from the same initialization and the
same batches:

* ``full``: ``jaxsoft.cross_entropy`` on materialized logits;
* ``linear``: ``jaxsoft.linear_cross_entropy`` (chunked, never ``[B, V]``);
* ``sampled``: ``jaxsoft.sampled_softmax_cross_entropy`` (log-uniform
  proposal over frequency-sorted word ids);
* ``adaptive``: ``jaxsoft.adaptive_log_softmax`` (Grave et al., 2017), its own
  output layer: a shortlist of the ``cutoffs[0]`` most frequent words plus one
  logit per tail cluster, each cluster a low-rank softmax.

Validation perplexity is the full softmax's for the first three and the
adaptive softmax's own (also normalized over the whole vocabulary) for the
fourth. ``full`` and ``linear``
compute the same function, so they reach the same perplexity up to float32
rounding. The summary holds deterministic figures (perplexities, XLA's
memory estimate of each training step); wall-clock training times go to
``method_timing.json``.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import functools
import json
import os
import re
import sysconfig
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxsoft
from experiments import _runs

NAME = "vocab_softmax"
HEADLINE = (
  "full.val_perplexity",
  "linear.val_perplexity",
  "sampled.val_perplexity",
  "full_vs_linear_relative_difference",
)
METHODS = ("full", "linear", "sampled", "adaptive")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def _cutoffs(config) -> tuple[int, ...]:
  return tuple(int(c) for c in config.cutoffs.split(","))


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  """seed of the document split, the initialization, the batches and the samples"""
  context: int = 3
  """previous words the model reads"""
  embed: int = 64
  """word embedding size"""
  hidden: int = 128
  """tanh hidden units"""
  batch_size: int = 256
  """examples per training step"""
  steps: int = 600
  """training steps of each method"""
  learning_rate: float = 3e-3
  """Adam's learning rate"""
  num_samples: int = 256
  """classes drawn per step by the sampled softmax"""
  chunk_size: int = 2048
  """vocabulary chunk of linear_cross_entropy"""
  val_fraction: float = 0.1
  """fraction of the documents held out for validation"""
  min_count: int = 2
  """a word enters the vocabulary when seen this often in training"""
  eval_tokens: int = 20_000
  """validation (and training) words the perplexities are measured on"""
  corpus_files: int = 0
  """read only the first this many stdlib files (sorted paths); 0 reads all"""
  cutoffs: str = "512,2048"
  """adaptive softmax: shortlist size, then cluster boundaries (word ranks)"""
  log_every: int = 10
  """steps between two training-loss points of the plot and metrics.jsonl"""

  def __post_init__(self):
    need = functools.partial(_runs.require, NAME)
    _runs.require_positive(
      NAME,
      self,
      "context",
      "embed",
      "hidden",
      "batch_size",
      "steps",
      "num_samples",
      "chunk_size",
      "eval_tokens",
      "min_count",
      "log_every",
    )
    need(self.learning_rate > 0, "learning_rate", "positive", self.learning_rate)
    need(0 < self.val_fraction < 1, "val_fraction", "in (0, 1)", self.val_fraction)
    need(self.corpus_files >= 0, "corpus_files", "0 (every file) or a positive integer", self.corpus_files)
    try:
      cuts = _cutoffs(self)
    except ValueError:
      cuts = ()
    need(
      len(cuts) >= 1 and all(a < b for a, b in zip((0, *cuts), cuts)),
      "cutoffs",
      "comma-separated increasing positive integers",
      self.cutoffs,
    )


# A tiny config for smoke tests and `--smoke` (seconds, not minutes): same code paths.
SMOKE = Config(steps=20, batch_size=64, eval_tokens=2000, num_samples=64, corpus_files=300)

# -- corpus ---------------------------------------------------------------------


def stdlib_documents(max_files: int = 0) -> list[str]:
  """Docstrings of the standard library's modules, classes and functions, and pydoc topics.

  Files are read in sorted order; ``max_files > 0`` stops after that many.
  """
  root = Path(sysconfig.get_paths()["stdlib"])
  top_level_skip = {"site-packages", "test", "idlelib", "lib2to3"}
  paths = []
  for dirpath, dirnames, filenames in os.walk(root):
    top = dirpath == str(root)
    dirnames[:] = [d for d in dirnames if d != "tests" and not (top and d in top_level_skip)]
    paths += [Path(dirpath, f) for f in filenames if f.endswith(".py")]
  paths.sort()
  docs = []
  for path in paths[:max_files] if max_files > 0 else paths:
    try:
      tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
      continue
    for node in ast.walk(tree):
      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node)
        if doc:
          docs.append(doc)
  from pydoc_data import topics

  docs += [topics.topics[k] for k in sorted(topics.topics)]
  return docs


def split_documents(seed, val_fraction, max_files=0):
  """The standard library's documents as word lists, split at random: ``(train, validation)``."""
  docs = [d for d in (_WORD.findall(t.lower()) for t in stdlib_documents(max_files)) if d]
  perm = np.random.default_rng(seed).permutation(len(docs))
  n_val = int(round(val_fraction * len(docs)))
  return [docs[i] for i in perm[n_val:]], [docs[i] for i in perm[:n_val]]


def words_by_frequency(train_docs, min_count):
  """The training words seen at least ``min_count`` times, by decreasing frequency (ties
  alphabetical): the order the log-uniform proposal of the sampled softmax and the
  clusters of the adaptive softmax assume."""
  counts = collections.Counter(w for d in train_docs for w in d)
  return sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))


def build_corpus(seed, val_fraction, min_count, max_files=0):
  """Token ids of the train and validation streams, and the vocabulary (id 0 is ``<unk>``)."""
  train_docs, val_docs = split_documents(seed, val_fraction, max_files)
  vocab = ["<unk>"] + words_by_frequency(train_docs, min_count)
  index = {w: i for i, w in enumerate(vocab)}
  stream = lambda ds: np.array([index.get(w, 0) for d in ds for w in ["<unk>"] + d], np.int32)
  return stream(train_docs), stream(val_docs), vocab


def windows(stream, context):
  """All (previous ``context`` ids, next id) pairs of a token stream."""
  idx = np.arange(context, len(stream))
  ctx = np.stack([stream[idx - context + k] for k in range(context)], axis=1)
  return ctx, stream[idx]


# -- model ------------------------------------------------------------------------


def init_params(key, vocab, config):
  """The shared model; ``"adaptive"`` holds the adaptive softmax's own output
  layer (PyTorch's layout), used by that method in place of ``w_out``/``b_out``."""
  k1, k2, k3 = jax.random.split(key, 3)
  fan_in = config.context * config.embed
  return {
    "embed": jax.random.normal(k1, (vocab, config.embed)) * 0.1,
    "w1": jax.random.normal(k2, (fan_in, config.hidden)) / np.sqrt(fan_in),
    "b1": jnp.zeros((config.hidden,)),
    "w_out": jax.random.normal(k3, (config.hidden, vocab)) / np.sqrt(config.hidden),
    "b_out": jnp.zeros((vocab,)),
    "adaptive": jaxsoft.init_adaptive_softmax(
      jax.random.fold_in(key, 3), config.hidden, vocab, _cutoffs(config)
    ),
  }


def features(params, ctx):
  e = params["embed"][ctx].reshape(ctx.shape[0], -1)
  return jnp.tanh(e @ params["w1"] + params["b1"])


def make_loss(method, config):
  if method == "full":
    return lambda p, ctx, y, key: jaxsoft.cross_entropy(features(p, ctx) @ p["w_out"] + p["b_out"], y)
  if method == "linear":
    return lambda p, ctx, y, key: jaxsoft.linear_cross_entropy(
      features(p, ctx), p["w_out"], y, bias=p["b_out"], chunk_size=config.chunk_size
    )
  if method == "adaptive":
    return lambda p, ctx, y, key: (
      jaxsoft.adaptive_log_softmax(features(p, ctx), p["adaptive"], y, cutoffs=_cutoffs(config)).loss
    )
  return lambda p, ctx, y, key: jaxsoft.sampled_softmax_cross_entropy(
    features(p, ctx), p["w_out"], y, key, num_samples=config.num_samples, bias=p["b_out"]
  )


def train(method, config, params, data, optimizer, ctx_run, bar):
  x_tr, y_tr = data
  loss_fn = make_loss(method, config)
  n = len(y_tr)
  base = jax.random.key(config.seed)

  def step(state, i):
    params, opt_state = state
    # Batches depend on the step only: every method sees the same ones.
    idx = jax.random.randint(jax.random.fold_in(jax.random.fold_in(base, 1), i), (config.batch_size,), 0, n)
    key = jax.random.fold_in(jax.random.fold_in(base, 2), i)
    loss, grads = jax.value_and_grad(loss_fn)(params, x_tr[idx], y_tr[idx], key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  state = (params, optimizer.init(params))
  jitted = jax.jit(step)
  compiled = jitted.lower(state, jnp.int32(0)).compile()
  try:
    memory = int(compiled.memory_analysis().temp_size_in_bytes)
  except Exception:  # memory_analysis is backend dependent
    memory = -1
  t0 = time.perf_counter()
  logged = 0
  for i in range(config.steps):
    state, loss = compiled(state, jnp.int32(i))
    if (i + 1) % config.log_every == 0 or i + 1 == config.steps:
      ctx_run.log(i + 1, **{f"{method}.train_loss": float(loss)})
      bar.update(i + 1 - logged)
      logged = i + 1
  jax.block_until_ready(state)
  return state[0], time.perf_counter() - t0, memory


def perplexity(params, ctx, y, chunk, cutoffs=None):
  """exp of the model's cross-entropy (the full softmax's, or the adaptive
  softmax's when ``cutoffs`` are given: both are normalized over the whole
  vocabulary), in chunks of examples."""
  total = 0.0
  if cutoffs is None:
    nll = lambda p, c, t: jaxsoft.cross_entropy(features(p, c) @ p["w_out"] + p["b_out"], t, reduction="sum")
  else:
    nll = lambda p, c, t: (
      -jnp.sum(jaxsoft.adaptive_log_softmax(features(p, c), p["adaptive"], t, cutoffs=cutoffs).log_prob)
    )
  f = jax.jit(nll)
  for s in range(0, len(y), chunk):
    total += float(f(params, ctx[s : s + chunk], y[s : s + chunk]))
  return float(np.exp(total / len(y)))


def run(config: Config, ctx) -> dict:
  bar = ctx.progress(total=len(METHODS) * config.steps, desc=f"{NAME} corpus")
  train_ids, val_ids, vocab = build_corpus(
    config.seed, config.val_fraction, config.min_count, config.corpus_files
  )
  x_tr, y_tr = windows(train_ids, config.context)
  x_va, y_va = windows(val_ids, config.context)
  # A fixed, seeded subset keeps evaluation cheap and deterministic.
  pick = np.random.default_rng(config.seed + 1).permutation(len(y_va))[: config.eval_tokens]
  x_ev, y_ev = x_va[np.sort(pick)], y_va[np.sort(pick)]
  params0 = init_params(jax.random.key(config.seed), len(vocab), config)
  optimizer = optax.adam(config.learning_rate)
  data = (jnp.asarray(x_tr), jnp.asarray(y_tr))
  summary = {
    "corpus.train_tokens": int(len(train_ids)),
    "corpus.val_tokens": int(len(val_ids)),
    "corpus.vocab": len(vocab),
    "corpus.val_unk_fraction": float(np.mean(val_ids == 0)),
  }
  timing = {}
  for method in METHODS:
    bar.set_description(f"{NAME} {method}")
    params, seconds, memory = train(method, config, params0, data, optimizer, ctx, bar)
    cutoffs = _cutoffs(config) if method == "adaptive" else None
    summary[f"{method}.val_perplexity"] = perplexity(params, x_ev, y_ev, 4096, cutoffs)
    summary[f"{method}.train_perplexity"] = perplexity(
      params, x_tr[: config.eval_tokens], y_tr[: config.eval_tokens], 4096, cutoffs
    )
    summary[f"{method}.step_temp_bytes"] = memory
    timing[f"{method}.train_seconds"] = seconds
    timing[f"{method}.ms_per_step"] = 1e3 * seconds / config.steps
  summary["full_vs_linear_relative_difference"] = abs(
    summary["full.val_perplexity"] / summary["linear.val_perplexity"] - 1
  )
  bar.close()
  summary["unigram_val_perplexity"] = _unigram_perplexity(train_ids, y_ev, len(vocab))
  _write_json(Path(ctx.run_dir) / "method_timing.json", timing)
  _plot(ctx)
  return summary


def _unigram_perplexity(train_ids, y, vocab):
  """A floor to beat: add-one unigram frequencies of the training stream."""
  p = (np.bincount(train_ids, minlength=vocab) + 1.0) / (len(train_ids) + vocab)
  return float(np.exp(-np.mean(np.log(p[y]))))


def _write_json(path, obj):
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(obj, indent=2))
  os.replace(tmp, path)


def _plot(ctx):
  import matplotlib.pyplot as plt

  # full and linear compute the same loss and coincide: a wide pale line under a
  # dashed one with markers keeps both visible.
  styles = {
    "full": dict(lw=4, alpha=0.45, label="full cross_entropy"),
    "linear": dict(ls="--", marker="o", ms=3, lw=1.2, label="linear_cross_entropy (same loss as full)"),
    "sampled": dict(ls="-.", marker="s", ms=3, lw=1.2, label="sampled softmax (its own sampled loss)"),
    "adaptive": dict(ls=":", marker="^", ms=3, lw=1.5, label="adaptive softmax"),
  }
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for m in METHODS:
    rows = [r for r in ctx.metrics if f"{m}.train_loss" in r]
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r[f"{m}.train_loss"] for r in rows], markevery=max(1, len(steps) // 20), **styles[m])
  ax.set(
    xlabel="step",
    ylabel="training loss of the batch (nats)",
    title="next word on the standard library's docs",
  )
  ax.grid(alpha=0.3)
  ax.legend()
  ctx.save_figure(fig, "train_loss")
