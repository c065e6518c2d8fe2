"""Associative recall with a small attention model built on jaxsoft.multi_head_attention.

A sequence holds ``n_pairs`` key-value token pairs followed by a query key; the
target is the value paired with that key. The model: token embeddings + learned
positions, ``layers`` pre-norm blocks (jaxsoft.multi_head_attention, then an
MLP), logits over the value tokens read at the query position, trained with
jaxsoft.cross_entropy and Adam on fresh random sequences each step; accuracy is
measured on held-out sequences drawn with a different key.
``--compare_implementations`` trains the same model with dense and chunked
attention and reports the largest difference between the two training curves.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxsoft
from experiments import _runs

NAME = "attention_toy"
HEADLINE = ("test_accuracy", "test_nll", "train_loss", "implementations_max_abs_diff")
TARGET = 0.99
Implementation = Literal["dense", "chunked"]


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  """seed of the initialization, the training batches and the test sequences"""
  n_pairs: int = 6
  """key-value pairs per sequence (at most n_keys)"""
  n_keys: int = 16
  """distinct key tokens"""
  n_values: int = 16
  """distinct value tokens (the classes)"""
  d_model: int = 64
  """model width (a multiple of num_heads)"""
  num_heads: int = 4
  """attention heads per layer"""
  layers: int = 2
  """attention + MLP blocks"""
  causal: bool = True
  """causal attention (makes the previous-token step of recall easy to learn)"""
  steps: int = 1000
  """training steps (a multiple of log_every)"""
  batch_size: int = 128
  """fresh random sequences per training step"""
  learning_rate: float = 3e-3
  """AdamW's peak learning rate (linear warmup, then cosine decay)"""
  warmup_steps: int = 100
  """steps of linear learning-rate warmup (fewer than steps)"""
  test_size: int = 2000
  """held-out sequences for the test accuracy"""
  log_every: int = 50
  """steps between two lines of metrics.jsonl (one compiled chunk of steps)"""
  checkpoint_every: int = 250
  """steps between two checkpoints (a multiple of log_every)"""
  implementation: Implementation = "dense"
  """jaxsoft attention path used for training"""
  compare_implementations: bool = False
  """also train with the other implementation and report the max training-curve difference"""

  def __post_init__(self):
    need = functools.partial(_runs.require, NAME)
    _runs.require_positive(
      NAME, self, "n_pairs", "n_keys", "n_values", "d_model", "num_heads", "layers", "batch_size", "test_size"
    )
    _runs.require_schedule(NAME, self)
    need(self.n_pairs <= self.n_keys, "n_pairs", f"at most n_keys ({self.n_keys})", self.n_pairs)
    need(
      self.d_model % self.num_heads == 0,
      "d_model",
      f"a multiple of num_heads ({self.num_heads})",
      self.d_model,
    )
    need(
      0 <= self.warmup_steps < self.steps, "warmup_steps", f"in [0, steps={self.steps})", self.warmup_steps
    )
    need(self.learning_rate > 0, "learning_rate", "positive", self.learning_rate)
    need(
      self.implementation in typing.get_args(Implementation),
      "implementation",
      " or ".join(map(repr, typing.get_args(Implementation))),
      self.implementation,
    )


# A tiny config for smoke tests and `--smoke` (seconds, not minutes): same code paths.
SMOKE = Config(
  n_pairs=3,
  layers=1,
  steps=20,
  log_every=10,
  checkpoint_every=10,
  d_model=16,
  num_heads=2,
  test_size=64,
  batch_size=32,
  warmup_steps=5,
  compare_implementations=True,
)

# -- data ---------------------------------------------------------------------


def make_batch(key, config, batch_size):
  """Tokens [batch, 2 * n_pairs + 1] and targets [batch] (value ids).

  Key tokens are 0..n_keys-1, value tokens n_keys..n_keys+n_values-1; keys are
  distinct within a sequence so the answer is unique.
  """
  kk, kv, kq = jax.random.split(key, 3)
  keys = jax.vmap(lambda k: jax.random.permutation(k, config.n_keys)[: config.n_pairs])(
    jax.random.split(kk, batch_size)
  )
  values = jax.random.randint(kv, (batch_size, config.n_pairs), 0, config.n_values)
  which = jax.random.randint(kq, (batch_size,), 0, config.n_pairs)
  query = jnp.take_along_axis(keys, which[:, None], 1)
  pairs = jnp.stack([keys, values + config.n_keys], -1).reshape(batch_size, -1)
  tokens = jnp.concatenate([pairs, query], 1)
  targets = jnp.take_along_axis(values, which[:, None], 1)[:, 0]
  return tokens, targets


# -- model: pure init / apply ---------------------------------------------------


def _dense_init(key, n_in, n_out):
  return {"w": jax.random.normal(key, (n_in, n_out)) / jnp.sqrt(n_in), "b": jnp.zeros((n_out,))}


def _layer_norm(p, x):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["bias"]


def _ln_init(d):
  return {"scale": jnp.ones((d,)), "bias": jnp.zeros((d,))}


def init_model(key, config):
  d = config.d_model
  seq_len = 2 * config.n_pairs + 1
  keys = jax.random.split(key, 3 + 3 * config.layers)
  params = {
    "embed": jax.random.normal(keys[0], (config.n_keys + config.n_values, d)) * 0.5,
    "pos": jax.random.normal(keys[1], (seq_len, d)) * 0.5,
    "head": _dense_init(keys[2], d, config.n_values),
    "ln_f": _ln_init(d),
    "blocks": [],
  }
  for i in range(config.layers):
    k_attn, k_up, k_down = keys[3 + 3 * i : 6 + 3 * i]
    params["blocks"].append(
      {
        "ln1": _ln_init(d),
        "attn": jaxsoft.init_multi_head_attention(k_attn, d_model=d, num_heads=config.num_heads),
        "ln2": _ln_init(d),
        "up": _dense_init(k_up, d, 4 * d),
        "down": _dense_init(k_down, 4 * d, d),
      }
    )
  return params


def apply_model(params, tokens, *, implementation, causal, return_weights=False):
  """Logits [batch, n_values] at the query (last) position; optionally the
  attention weights of every layer ([batch, heads, T, T] each)."""
  x = params["embed"][tokens] + params["pos"]
  weights = []
  for blk in params["blocks"]:
    h = _layer_norm(blk["ln1"], x)
    if return_weights:
      h, w, _ = jaxsoft.multi_head_attention(
        blk["attn"], h, implementation=implementation, is_causal=causal, return_weights=True
      )
      weights.append(w)
    else:
      h = jaxsoft.multi_head_attention(blk["attn"], h, implementation=implementation, is_causal=causal)
    x = x + h
    h = _layer_norm(blk["ln2"], x)
    h = jax.nn.gelu(h @ blk["up"]["w"] + blk["up"]["b"])
    x = x + h @ blk["down"]["w"] + blk["down"]["b"]
  x = _layer_norm(params["ln_f"], x[:, -1])
  logits = x @ params["head"]["w"] + params["head"]["b"]
  return (logits, weights) if return_weights else logits


# -- training -------------------------------------------------------------------


def _train(config, ctx, implementation, *, log_prefix="", checkpoint=True):
  key = jax.random.key(config.seed)
  params = init_model(jax.random.fold_in(key, 0), config)
  schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps, config.steps)
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
  state = (params, optimizer.init(params))
  start = 0
  if checkpoint:
    start, state = ctx.load_checkpoint(state)
  data_key = jax.random.fold_in(key, 1)

  def loss_fn(p, tokens, targets):
    logits = apply_model(p, tokens, implementation=implementation, causal=config.causal)
    return jaxsoft.cross_entropy(logits, targets), jnp.mean(jnp.argmax(logits, -1) == targets)

  def one_step(state, step):
    p, opt_state = state
    # The batch depends on the step alone, so a resumed run sees the same data.
    tokens, targets = make_batch(jax.random.fold_in(data_key, step), config, config.batch_size)
    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, tokens, targets)
    updates, opt_state = optimizer.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), (loss, acc)

  @jax.jit
  def chunk(state, start):
    state, (loss, acc) = jax.lax.scan(one_step, state, start + jnp.arange(config.log_every))
    return state, loss.mean(), acc.mean()

  curve = []
  bar = ctx.progress(total=config.steps, initial=start, desc=f"{NAME} {implementation}")
  for s in range(start, config.steps, config.log_every):
    state, loss, acc = chunk(state, jnp.asarray(s, jnp.int32))
    step = s + config.log_every
    curve.append(float(loss))
    ctx.log(step, **{f"{log_prefix}train_loss": float(loss), f"{log_prefix}train_accuracy": float(acc)})
    bar.update(config.log_every)
    if checkpoint and step % config.checkpoint_every == 0 and step < config.steps:
      ctx.save_checkpoint(step, state)
  bar.close()
  return state[0]


def run(config: Config, ctx) -> dict:
  params = _train(config, ctx, config.implementation)
  # Held-out sequences come from a key never used for training batches.
  test_tokens, test_targets = make_batch(
    jax.random.fold_in(jax.random.key(config.seed), 2), config, config.test_size
  )
  logits = jax.jit(
    lambda p, t: apply_model(p, t, implementation=config.implementation, causal=config.causal)
  )(params, test_tokens)
  summary = {
    "test_accuracy": float(jnp.mean(jnp.argmax(logits, -1) == test_targets)),
    "test_nll": float(jaxsoft.cross_entropy(logits, test_targets)),
    "train_loss": ctx.metrics[-1]["train_loss"],
    "train_accuracy": ctx.metrics[-1]["train_accuracy"],
    "chance_accuracy": 1.0 / config.n_values,
    "target_test_accuracy": TARGET,
  }
  summary["target_met"] = summary["test_accuracy"] >= TARGET

  if config.compare_implementations:
    other = "chunked" if config.implementation == "dense" else "dense"
    _train(config, ctx, other, log_prefix=f"{other}.", checkpoint=False)
    a = np.array([m["train_loss"] for m in ctx.metrics if "train_loss" in m])
    b = np.array([m[f"{other}.train_loss"] for m in ctx.metrics if f"{other}.train_loss" in m])
    summary["implementations_max_abs_diff"] = float(np.max(np.abs(a - b)))
    summary["implementations_max_rel_diff"] = float(np.max(np.abs(a - b) / np.abs(a)))
  _plots(ctx, config, params, test_tokens, test_targets)
  return summary


def _plots(ctx, config, params, tokens, targets):
  import matplotlib.pyplot as plt

  rows = [m for m in ctx.metrics if "train_loss" in m]
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot([m["step"] for m in rows], [m["train_loss"] for m in rows], label=f"{config.implementation}")
  other = [k for k in ctx.metrics[-1] if k.endswith(".train_loss")]
  for k in other:
    ax.plot(
      [m["step"] for m in ctx.metrics if k in m],
      [m[k] for m in ctx.metrics if k in m],
      "--",
      label=k.split(".")[0],
    )
  ax.set(
    xlabel="step", ylabel="train cross-entropy (nats, log scale)", title="associative recall: training loss"
  )
  _runs.log_scale(ax)
  ax.grid(alpha=0.3, which="both")
  ax.legend(title="attention implementation")
  ctx.save_figure(fig, "training_curve")

  # One held-out example: the weights need the dense path (chunked never forms them).
  _, weights = apply_model(
    params, tokens[:1], implementation="dense", causal=config.causal, return_weights=True
  )
  w = np.asarray(weights[-1][0]).mean(0)  # last layer, averaged over heads: [T, T]
  toks = np.asarray(tokens[0])
  labels = [f"k{t}" if t < config.n_keys else f"v{t - config.n_keys}" for t in toks[:-1]]
  labels.append(f"q{toks[-1]}")
  fig, axes = plt.subplots(1, 2, figsize=(12, 5), width_ratios=[1.15, 1], layout="constrained")
  image = axes[0].imshow(w, cmap="viridis", vmin=0, vmax=1)
  fig.colorbar(image, ax=axes[0], label="attention weight (each row sums to 1)", shrink=0.9)
  axes[0].set(
    xticks=range(len(labels)),
    yticks=range(len(labels)),
    xlabel="key position (token attended to)",
    ylabel="query position (token attending)",
    title=f"last layer, mean over {config.num_heads} heads" + (" (causal)" if config.causal else ""),
  )
  axes[0].set_xticklabels(labels, rotation=90)
  axes[0].set_yticklabels(labels)
  # With causal attention the recall circuit is an induction head: layer 1 copies
  # each key into the value token after it, and the query then attends to the
  # value position that follows its matching key, not to the key itself.
  match = int(np.flatnonzero(toks[:-1:2] == toks[-1])[0]) * 2
  colors = ["C3" if i == match else "C2" if i == match + 1 else "C0" for i in range(len(labels))]
  axes[1].bar(range(len(labels)), w[-1], color=colors)
  axes[1].set_xticks(range(len(labels)))
  axes[1].set_xticklabels(labels, rotation=90)
  axes[1].set(
    xlabel="key position (token attended to)",
    ylabel="attention weight of the query",
    ylim=(0, 1),
    title=f"query {labels[-1]} (last row): {w[-1, match + 1]:.2f} on {labels[match + 1]}, the value after\n"
    f"its key (green); {w[-1, match]:.2f} on the key {labels[match]} itself (red); "
    f"target v{int(targets[0])}",
  )
  ctx.save_figure(fig, "attention_heatmap")
