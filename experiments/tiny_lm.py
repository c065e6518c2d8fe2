"""A tiny causal transformer language model on Python's own docs: softmax as attention and as likelihood.

The corpus is ``vocab_softmax``'s: the docstrings of the standard library and
the ``pydoc_data`` topics, as lower-cased words; documents are split
train/validation by a seeded permutation and every word seen ``min_count``
times in training is in the vocabulary (ranked by frequency, the rest are
``<unk>``). Each document starts with a ``<doc>`` token; the documents are laid
end to end and cut into rows of ``seq_len`` tokens, so one row packs several
documents without padding. ``segment_ids`` (the document of each token) keep
attention inside a document and the loss counts only next-word targets of the
same document, so a packed row trains as its documents would one by one.

The model: word and position embeddings (the position within the document's
part of the row), ``layers`` pre-norm blocks of causal
``jaxsoft.multi_head_attention`` and a GELU MLP, and a final layer norm that
gives the hidden state ``h`` of each position. The even layers (0, 2, ...) see
only the ``local_window_size`` words before each word (a sliding window, as in
Mistral and Gemma 2); the odd layers see the whole document. Softmax appears
twice, as in the lecture's last slide:

* in the middle layers it is attention: each word's weights over the earlier
  words of its document are a softmax of ``q.k / sqrt(head_dim)``
  (``attention_map.png``);
* at the end it is the likelihood: ``p(next word | context) = softmax(h W +
  b)``, and training minimizes the mean negative log-likelihood of the next
  words.

The same model (same initialization, same batches, one compiled program) is
trained three times, with three ways of computing that last softmax:

* ``linear``: ``jaxsoft.linear_cross_entropy``, the exact softmax without
  materializing the ``[tokens, vocab]`` logits, plus the z-loss ``z_loss *
  log(Z)**2`` (PaLM), a pull of the normalizer ``Z`` towards 1;
* ``sampled``: ``jaxsoft.sampled_softmax_cross_entropy``, the normalizer
  estimated from ``num_samples`` words drawn from a log-uniform proposal;
* ``adaptive``: ``jaxsoft.adaptive_log_softmax``, its own output layer: a
  shortlist of the ``cutoffs[0]`` most frequent words plus low-rank clusters.

Validation perplexity is ``exp`` of the mean next-word negative
log-likelihood on held-out documents under each model's normalized
distribution (the exact softmax for ``linear`` and ``sampled``). The summary
holds deterministic figures: perplexities, the mean ``log Z`` of the exact
softmax, and XLA's peak memory of the compiled training step and of each
method's output layer (forward and backward on one batch). Tokens per second
and wall times go to ``method_timing.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxsoft
from experiments import _runs
from experiments.vocab_softmax import _cutoffs, split_documents, words_by_frequency

NAME = "tiny_lm"
HEADLINE = (
  "linear.val_perplexity",
  "sampled.val_perplexity",
  "adaptive.val_perplexity",
  "unigram_val_perplexity",
  "linear.val_mean_log_normalizer",
)
METHODS = ("linear", "sampled", "adaptive")
UNK, DOC = 0, 1  # ids of "<unk>" and "<doc>"; the words follow by decreasing frequency


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  """Seed of the document split, the initialization, the batches and the sampled words."""
  corpus_files: int = 0
  """Read only the first this many standard-library files (sorted paths); 0 reads all."""
  val_fraction: float = 0.1
  """Fraction of the documents held out for validation."""
  min_count: int = 5
  """A word is in the vocabulary when it occurs at least this often in training (else <unk>)."""
  seq_len: int = 128
  """Tokens per packed row (several documents each)."""
  d_model: int = 64
  """Width of the residual stream."""
  num_heads: int = 4
  """Attention heads per layer."""
  layers: int = 2
  """Transformer blocks; the even ones (0, 2, ...) attend through the sliding window."""
  local_window_size: int = 16
  """Sliding window of the even layers: each word sees itself and this many words before it (0: no window)."""
  batch_size: int = 4
  """Packed rows per training step."""
  steps: int = 200
  """Training steps of each method."""
  eval_every: int = 25
  """Steps between two logged points (mean training loss, validation loss)."""
  learning_rate: float = 1e-2
  """Peak AdamW learning rate (linear warmup, then cosine decay to 0)."""
  warmup_steps: int = 20
  """Steps of linear learning-rate warmup."""
  weight_decay: float = 0.01
  """AdamW weight decay."""
  z_loss: float = 1e-4
  """Weight of log(Z)**2 in the linear method's loss (PaLM uses 1e-4)."""
  num_samples: int = 256
  """Sampled softmax: words drawn per step for the normalizer's estimate."""
  cutoffs: str = "500,2000"
  """Adaptive softmax: shortlist size, then cluster boundaries (word ranks), comma-separated."""
  eval_rows: int = 32
  """Validation rows evaluated (the first ones of the packed held-out documents)."""
  devices: int = 1
  """Context parallelism: each row's sequence split over this many devices (ring attention; 0: all)."""

  def __post_init__(self):
    need = functools.partial(_runs.require, NAME)
    _runs.require_positive(
      NAME,
      self,
      "min_count",
      "seq_len",
      "d_model",
      "num_heads",
      "layers",
      "batch_size",
      "steps",
      "eval_every",
      "num_samples",
      "eval_rows",
    )
    need(self.corpus_files >= 0, "corpus_files", "0 (every file) or a positive integer", self.corpus_files)
    need(0 < self.val_fraction < 1, "val_fraction", "in (0, 1)", self.val_fraction)
    need(
      self.d_model % self.num_heads == 0,
      "d_model",
      f"a multiple of num_heads ({self.num_heads})",
      self.d_model,
    )
    need(
      self.local_window_size >= 0, "local_window_size", "0 (no window) or positive", self.local_window_size
    )
    need(
      self.steps % self.eval_every == 0, "steps", f"a multiple of eval_every ({self.eval_every})", self.steps
    )
    need(
      0 <= self.warmup_steps < self.steps, "warmup_steps", f"in [0, steps={self.steps})", self.warmup_steps
    )
    need(self.devices >= 0, "devices", "0 (all) or a positive integer", self.devices)
    if self.devices != 1:  # the device count initializes jax: only asked when it matters
      n = _device_count(self.devices)
      need(n <= jax.device_count(), "devices", f"at most jax.device_count() = {jax.device_count()}", n)
      # The ring's causal (zigzag) layout gives each device two chunks of every row.
      need(self.seq_len % (2 * n) == 0, "seq_len", f"a multiple of 2 * devices ({2 * n})", self.seq_len)
    need(self.learning_rate > 0, "learning_rate", "positive", self.learning_rate)
    need(self.weight_decay >= 0, "weight_decay", "non-negative", self.weight_decay)
    need(self.z_loss >= 0, "z_loss", "non-negative", self.z_loss)
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
SMOKE = Config(
  corpus_files=40,
  min_count=2,
  seq_len=32,
  d_model=16,
  num_heads=2,
  local_window_size=4,
  batch_size=4,
  steps=10,
  eval_every=5,
  warmup_steps=2,
  num_samples=32,
  cutoffs="50,200",
  eval_rows=8,
)

# -- corpus: documents -> vocabulary -> packed rows -----------------------------------


@functools.lru_cache(maxsize=2)
def documents(seed, val_fraction, min_count, corpus_files):
  """Train and validation documents as id arrays (each starting with ``<doc>``), and the vocabulary.

  Cached: a rerun in the same process (the tests) reads the standard library once.
  """
  train, val = split_documents(seed, val_fraction, corpus_files)
  vocab = ["<unk>", "<doc>"] + words_by_frequency(train, min_count)
  index = {w: i for i, w in enumerate(vocab)}
  ids = lambda ds: [np.array([DOC] + [index.get(w, UNK) for w in d], np.int32) for d in ds]
  return ids(train), ids(val), tuple(vocab)


def pack(docs, seq_len):
  """Rows of ``seq_len`` inputs cut from the documents laid end to end.

  Returns a dict of ``[rows, seq_len]`` arrays: ``tokens``, ``targets`` (the
  next token of the stream), ``segment_ids`` (the document of each input),
  ``positions`` (the index within the document's part of the row) and
  ``valid`` (the target belongs to the same document: the loss counts it).
  """
  stream = np.concatenate(docs)
  doc = np.repeat(np.arange(len(docs), dtype=np.int32), [len(d) for d in docs])
  rows = (len(stream) - 1) // seq_len
  cut = lambda a, shift: a[shift : shift + rows * seq_len].reshape(rows, seq_len)
  segment_ids = cut(doc, 0)
  t = np.arange(seq_len)
  starts = np.where(np.diff(segment_ids, axis=1, prepend=-1) != 0, t, 0)
  return {
    "tokens": cut(stream, 0),
    "targets": cut(stream, 1),
    "segment_ids": segment_ids,
    "positions": (t - np.maximum.accumulate(starts, axis=1)).astype(np.int32),
    "valid": cut(doc, 1) == segment_ids,
  }


# -- model: pure init / apply ---------------------------------------------------------


def _layer_norm(p, x):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["bias"]


@functools.partial(jax.jit, static_argnames=("vocab", "config"))
def init_params(key, *, vocab, config):
  """The transformer and both output layers: ``"softmax"`` (``w`` ``[d, V]``, ``b``), read by
  ``linear`` and ``sampled``, and ``"adaptive"``. Every method starts from these numbers.

  Jitted: run eagerly, every random draw would compile a program of its own.
  """
  d = config.d_model
  normal = lambda k, shape, std: jax.random.normal(k, shape) * std
  ln = lambda: {"scale": jnp.ones((d,)), "bias": jnp.zeros((d,))}
  k_embed, k_pos, k_out, k_adaptive, *k_blocks = jax.random.split(key, 4 + config.layers)
  params = {
    "embed": normal(k_embed, (vocab, d), 0.1),
    "pos": normal(k_pos, (config.seq_len, d), 0.1),
    "blocks": [],
    "ln_f": ln(),
    "softmax": {"w": normal(k_out, (d, vocab), d**-0.5), "b": jnp.zeros((vocab,))},
    "adaptive": jaxsoft.init_adaptive_softmax(k_adaptive, d, vocab, _cutoffs(config)),
  }
  for k in k_blocks:
    k_attn, k_up, k_down = jax.random.split(k, 3)
    params["blocks"].append(
      {
        "ln1": ln(),
        "attn": jaxsoft.init_multi_head_attention(k_attn, d_model=d, num_heads=config.num_heads),
        "ln2": ln(),
        "up": {"w": normal(k_up, (d, 4 * d), d**-0.5), "b": jnp.zeros((4 * d,))},
        "down": {"w": normal(k_down, (4 * d, d), (4 * d) ** -0.5), "b": jnp.zeros((d,))},
      }
    )
  return params


def window(config, layer):
  """``local_window_size`` of ``layer``: ``(left, 0)`` on the even layers, None (global) on the odd ones."""
  return (config.local_window_size, 0) if config.local_window_size and layer % 2 == 0 else None


def _device_count(devices: int) -> int:
  return jax.device_count() if devices == 0 else devices


@functools.cache
def _sequence_mesh(n: int):
  """The mesh whose one axis splits each row's sequence (``--devices``)."""
  return jax.sharding.Mesh(np.array(jax.devices()[:n]), ("seq",))


def apply_model(params, rows, config, *, return_weights=False):
  """Hidden states ``[rows, seq_len, d_model]`` (and each layer's attention weights ``[rows, heads, T, T]``).

  With ``config.devices > 1`` the attention runs as a ring over that many
  devices (each holds a slice of every row's queries, keys and values); the
  attention map (``return_weights``) is drawn on one device.
  """
  n = _device_count(config.devices)
  ring = {} if n == 1 or return_weights else {"mesh": _sequence_mesh(n)}
  x = params["embed"][rows["tokens"]] + params["pos"][rows["positions"]]
  weights = []
  for i, blk in enumerate(params["blocks"]):
    out = jaxsoft.multi_head_attention(
      blk["attn"],
      _layer_norm(blk["ln1"], x),
      is_causal=True,
      segment_ids=rows["segment_ids"],  # packed documents never see each other
      local_window_size=window(config, i),
      return_weights=return_weights,
      **ring,
    )
    if return_weights:
      out, w, _ = out
      weights.append(w)
    x = x + out
    h = jax.nn.gelu(_layer_norm(blk["ln2"], x) @ blk["up"]["w"] + blk["up"]["b"])
    x = x + h @ blk["down"]["w"] + blk["down"]["b"]
  x = _layer_norm(params["ln_f"], x)
  return (x, weights) if return_weights else x


@functools.partial(jax.jit, static_argnames=("config",))
def attention_weights(params, rows, *, config):
  """Every layer's attention weights ``[rows, heads, T, T]``."""
  return apply_model(params, rows, config, return_weights=True)[1]


# -- the last softmax: three training losses, one likelihood -----------------------------


def head(params, method):
  """The output layer that ``method`` reads: ``"adaptive"`` or ``"softmax"``."""
  return params["adaptive" if method == "adaptive" else "softmax"]


def output_loss(out, h, y, valid, key, config, method):
  """``method``'s training loss from the hidden states ``h [tokens, d_model]`` and its output layer
  ``out``: a mean over the counted targets (``valid``)."""
  if method == "linear":
    return jaxsoft.linear_cross_entropy(h, out["w"], y, bias=out["b"], where=valid, z_loss=config.z_loss)
  if method == "sampled":
    return jaxsoft.sampled_softmax_cross_entropy(
      h, out["w"], y, key, num_samples=config.num_samples, bias=out["b"], where=valid
    )
  return jaxsoft.adaptive_log_softmax(h, out, y, cutoffs=_cutoffs(config), where=valid).loss


def _flat(h, rows, config):
  return h.reshape(-1, config.d_model), rows["targets"].reshape(-1), rows["valid"].reshape(-1)


def loss(params, rows, key, config, method_index):
  """The training loss of ``METHODS[method_index]`` on packed rows."""
  h, y, valid = _flat(apply_model(params, rows, config), rows, config)
  # The methods share the transformer and differ only in the last softmax, so one
  # compiled program serves the three: lax.switch runs the method's branch alone.
  # The output layer a method does not read gets zero gradients.
  branches = [lambda p, m=m: output_loss(head(p, m), h, y, valid, key, config, m) for m in METHODS]
  return jax.lax.switch(method_index, branches, params)


@functools.partial(jax.jit, static_argnames=("config",))
def log_likelihood(params, rows, adaptive, *, config):
  """Sum of the log-probabilities of the counted targets under the model's normalized
  distribution (the adaptive softmax's when ``adaptive``, else the exact softmax's), their
  number, and the sum of the exact softmax's log-normalizers ``log Z``."""
  h, y, valid = _flat(apply_model(params, rows, config), rows, config)
  nll, aux = jaxsoft.linear_cross_entropy(
    h, params["softmax"]["w"], y, bias=params["softmax"]["b"], where=valid, reduction="sum", return_aux=True
  )
  log_p = jax.lax.cond(
    adaptive,
    lambda: jnp.sum(
      jaxsoft.adaptive_log_softmax(h, params["adaptive"], y, cutoffs=_cutoffs(config), where=valid).log_prob
    ),
    lambda: -nll,
  )
  return log_p, jnp.sum(valid), jnp.sum(aux["lse"])


def optimizer(config):
  schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps, config.steps)
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=config.weight_decay))


@functools.partial(jax.jit, static_argnames=("config",))
def train_steps(state, train_rows, start, method_index, *, config):
  """``eval_every`` AdamW steps from step ``start``; returns the state and the mean training loss.

  Module-level and jitted on the (hashable) config, so a rerun in the same
  process reuses the compiled program.
  """
  base = jax.random.key(config.seed)
  n_rows = train_rows["tokens"].shape[0]

  def step(state, i):
    params, opt_state = state
    # The batch and the sampled words depend on (seed, step) only: every method sees the same rows.
    idx = jax.random.randint(
      jax.random.fold_in(jax.random.fold_in(base, 1), i), (config.batch_size,), 0, n_rows
    )
    batch = jax.tree.map(lambda a: a[idx], train_rows)
    key = jax.random.fold_in(jax.random.fold_in(base, 2), i)
    value, grads = jax.value_and_grad(loss)(params, batch, key, config, method_index)
    updates, opt_state = optimizer(config).update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), value

  state, values = jax.lax.scan(step, state, start + jnp.arange(config.eval_every))
  return state, values.mean()


_output_grad = jax.jit(jax.value_and_grad(output_loss, argnums=(0, 1)), static_argnames=("config", "method"))


def output_layer_peak_bytes(params, config, method):
  """XLA's peak memory of ``method``'s last softmax, forward and backward, on one training batch:
  where the three methods differ (the rest of the training step is shared)."""
  n = config.batch_size * config.seq_len
  h = jax.ShapeDtypeStruct((n, config.d_model), jnp.float32)
  y, valid = jax.ShapeDtypeStruct((n,), jnp.int32), jax.ShapeDtypeStruct((n,), jnp.bool_)
  compiled = _output_grad.lower(head(params, method), h, y, valid, jax.random.key(0), config, method)
  return int(compiled.compile().memory_analysis().peak_memory_in_bytes)


def train(method, config, params, train_rows, val_rows, ctx):
  """Trains ``method`` from the shared initialization, logging the training and validation loss."""
  index, adaptive = jnp.int32(METHODS.index(method)), jnp.bool_(method == "adaptive")
  state = (params, optimizer(config).init(params))
  bar = ctx.progress(total=config.steps, desc=f"{NAME} {method}")
  seconds = 0.0
  for start in range(0, config.steps, config.eval_every):
    t0 = time.perf_counter()
    state, train_loss = train_steps(state, train_rows, jnp.int32(start), index, config=config)
    train_loss = float(train_loss)  # waits for the steps
    seconds += time.perf_counter() - t0
    log_p, count, _ = log_likelihood(state[0], val_rows, adaptive, config=config)
    ctx.log(
      start + config.eval_every,
      **{f"{method}.train_loss": train_loss, f"{method}.val_nll": -float(log_p) / float(count)},
    )
    bar.update(config.eval_every)
  bar.close()
  tokens = config.steps * config.batch_size * config.seq_len
  timing = {
    "train_seconds": seconds,
    "ms_per_step": 1e3 * seconds / config.steps,
    "tokens_per_second": tokens / seconds,
  }
  return state[0], timing


def run(config: Config, ctx) -> dict:
  train_docs, val_docs, vocab = documents(
    config.seed, config.val_fraction, config.min_count, config.corpus_files
  )
  # Two checks that need the vocabulary's size, so they come after reading the corpus.
  _runs.require(
    NAME,
    _cutoffs(config)[-1] < len(vocab),
    "cutoffs",
    f"below the vocabulary size {len(vocab)}",
    config.cutoffs,
  )
  _runs.require(
    NAME,
    config.num_samples <= len(vocab),
    "num_samples",
    f"at most the vocabulary size {len(vocab)}",
    config.num_samples,
  )
  train_np, val_np = pack(train_docs, config.seq_len), pack(val_docs, config.seq_len)
  train_rows = jax.tree.map(jnp.asarray, train_np)
  val_rows = jax.tree.map(lambda a: jnp.asarray(a[: config.eval_rows]), val_np)
  counted = val_np["targets"][: config.eval_rows][val_np["valid"][: config.eval_rows]]
  # A floor to beat: add-one unigram frequencies of the training words.
  freq = np.bincount(train_np["targets"][train_np["valid"]], minlength=len(vocab)) + 1.0
  summary = {
    "corpus.train_documents": len(train_docs),
    "corpus.train_tokens": int(train_np["tokens"].size),
    "corpus.train_rows": int(train_np["tokens"].shape[0]),
    "corpus.documents_per_row": float(len(train_docs) / train_np["tokens"].shape[0]),
    "corpus.vocab": len(vocab),
    "corpus.val_targets": int(counted.size),
    "corpus.val_unk_fraction": float(np.mean(counted == UNK)),
    "unigram_val_perplexity": float(np.exp(-np.mean(np.log(freq[counted] / freq.sum())))),
  }
  params = init_params(jax.random.key(config.seed), vocab=len(vocab), config=config)
  # One training program for the three methods (see loss); compiled here to read its memory.
  t0 = time.perf_counter()
  state = (params, optimizer(config).init(params))
  step_program = train_steps.lower(state, train_rows, jnp.int32(0), jnp.int32(0), config=config).compile()
  timing = {"compile_seconds": time.perf_counter() - t0}
  summary["train_step_peak_bytes"] = int(step_program.memory_analysis().peak_memory_in_bytes)
  trained = {}
  for method in METHODS:
    trained[method], timing[method] = train(method, config, params, train_rows, val_rows, ctx)
    log_p, count, sum_lse = log_likelihood(
      trained[method], val_rows, jnp.bool_(method == "adaptive"), config=config
    )
    summary[f"{method}.val_perplexity"] = float(np.exp(-float(log_p) / float(count)))
    summary[f"{method}.train_loss"] = ctx.metrics[-1][f"{method}.train_loss"]
    if method != "adaptive":
      summary[f"{method}.val_mean_log_normalizer"] = float(sum_lse) / float(count)
    summary[f"{method}.output_layer_peak_bytes"] = output_layer_peak_bytes(params, config, method)
  timing["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  _runs.write_json(ctx.run_dir / "method_timing.json", timing)
  _print_report(summary, timing)
  _plot_losses(ctx, summary["unigram_val_perplexity"])
  _plot_attention(ctx, config, trained["linear"], val_np, vocab)
  return summary


def _print_report(summary, timing):
  rows = [
    (
      m,
      f"{summary[f'{m}.val_perplexity']:.2f}",
      f"{timing[m]['tokens_per_second']:,.0f}",
      f"{summary[f'{m}.output_layer_peak_bytes'] / 2**20:.1f}",
    )
    for m in METHODS
  ]
  header = ("method", "val perplexity", "train tokens/s", "output layer peak MiB (XLA)")
  print(_runs.format_table(header, rows), flush=True)


# -- plots ------------------------------------------------------------------------------

_STYLE = {"linear": "o-", "sampled": "s--", "adaptive": "^:"}


def _plot_losses(ctx, unigram_perplexity):
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for m in METHODS:
    rows = [r for r in ctx.metrics if f"{m}.train_loss" in r]
    steps = [r["step"] for r in rows]
    axes[0].plot(steps, [r[f"{m}.train_loss"] for r in rows], _STYLE[m], label=m, alpha=0.85)
    axes[1].plot(steps, [r[f"{m}.val_nll"] for r in rows], _STYLE[m], label=m, alpha=0.85)
  axes[1].axhline(np.log(unigram_perplexity), color="gray", lw=1, ls="-.", label="unigram baseline")
  axes[0].set(
    xlabel="training step",
    ylabel="training loss (nats per word)",
    title="what each method minimizes\n(linear: exact CE + z-loss; sampled: its estimate)",
  )
  axes[1].set(
    xlabel="training step",
    ylabel="validation NLL (nats per word)",
    title="held-out likelihood (normalized over the vocabulary)",
  )
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend()
  ctx.save_figure(fig, "loss_curves")


def _plot_attention(ctx, config, params, val_np, vocab, n_show=40):
  """The first validation row's attention weights, mean over heads, in the first and the last layer."""
  import matplotlib.pyplot as plt

  n = min(n_show, config.seq_len)
  # The validation row whose first n words hold the most documents.
  r = int(np.argmax([len(np.unique(s[:n])) for s in val_np["segment_ids"]]))
  weights = attention_weights(
    params, jax.tree.map(lambda a: jnp.asarray(a[r : r + 1]), val_np), config=config
  )
  words = [vocab[int(t)][:10] for t in val_np["tokens"][r, :n]]
  seg = val_np["segment_ids"][r, :n]
  boundaries = np.flatnonzero(np.diff(seg)) + 0.5
  layers = sorted({0, len(weights) - 1})
  fig, axes = plt.subplots(1, len(layers), figsize=(6.5 * len(layers) + 1, 6), squeeze=False)
  for ax, layer in zip(axes[0], layers):
    w = np.asarray(weights[layer][0]).mean(0)[:n, :n]  # mean over heads
    im = ax.imshow(w, cmap="viridis", vmin=0.0, vmax=1.0)
    for b in boundaries:
      ax.axhline(b, color="white", lw=0.8)
      ax.axvline(b, color="white", lw=0.8)
    win = window(config, layer)
    kind = f"sliding window of {win[0]} earlier words" if win else "whole document"
    ax.set(
      title=f"layer {layer}: {kind}",
      xlabel="key (the word attended to)",
      ylabel="query (the word attending)",
      xticks=range(n),
      yticks=range(n),
    )
    ax.set_xticklabels(words, rotation=90, fontsize=6)
    ax.set_yticklabels(words, fontsize=6)
  fig.colorbar(
    im, ax=axes[0].tolist(), shrink=0.8, label="attention weight (softmax over keys, mean of heads)"
  )
  fig.suptitle("softmax in the middle: attention (white lines: document boundaries of the packed row)")
  ctx.save_figure(fig, "attention_map")
