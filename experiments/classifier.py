"""Softmax regression and a one-hidden-layer MLP on scikit-learn's digits, trained with jaxsoft.cross_entropy.

Minimizing the mean cross-entropy of the true labels is maximizing the
categorical log-likelihood: ``log_likelihood = -n * cross_entropy``. The summary
reports both, with accuracy and expected calibration error on a held-out test
split. ``--devices N`` trains data-parallel: each batch is split over N devices
with ``jax.sharding`` (gradients all-reduced by XLA), parameters replicated.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxsoft
from experiments import _runs

NAME = "classifier"
HEADLINE = (
  "mlp.test_accuracy",
  "softmax_regression.test_accuracy",
  "mlp.test_nll",
  "mlp.test_ece",
  "softmax_regression.test_nll",
)
MODELS = ("mlp", "softmax_regression")
TARGETS = {"mlp": 0.97, "softmax_regression": 0.95}


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  """seed of the data split, the initialization and the batch order"""
  steps: int = 2000
  """training steps (a multiple of log_every)"""
  batch_size: int = 128
  """examples per training step"""
  hidden: int = 256
  """hidden units of the MLP"""
  learning_rate: float = 3e-3
  """AdamW's peak learning rate (cosine decay to 0)"""
  weight_decay: float = 0.1
  """AdamW's decoupled weight decay"""
  val_fraction: float = 0.2
  """fraction of the digits held out for validation"""
  test_fraction: float = 0.2
  """fraction of the digits held out for the test figures"""
  log_every: int = 50
  """steps between two lines of metrics.jsonl (one compiled chunk of steps)"""
  checkpoint_every: int = 500
  """steps between two checkpoints (a multiple of log_every)"""
  ece_bins: int = 15
  """confidence bins of the expected calibration error"""
  devices: int = 1
  """data-parallel over this many devices (0: all)"""

  def __post_init__(self):
    need = functools.partial(_runs.require, NAME)
    _runs.require_positive(NAME, self, "batch_size", "hidden", "ece_bins")
    _runs.require_schedule(NAME, self)
    need(self.learning_rate > 0, "learning_rate", "positive", self.learning_rate)
    need(self.weight_decay >= 0, "weight_decay", "non-negative", self.weight_decay)
    for f in ("val_fraction", "test_fraction"):
      need(0 < getattr(self, f) < 1, f, "in (0, 1)", getattr(self, f))
    need(
      self.val_fraction + self.test_fraction < 1,
      "val_fraction",
      f"below 1 - test_fraction ({1 - self.test_fraction:g})",
      self.val_fraction,
    )
    need(self.devices >= 0, "devices", "0 (all) or a positive integer", self.devices)
    if self.devices != 1:  # the device count initializes jax: only asked when it matters
      n = jax.device_count() if self.devices == 0 else self.devices
      need(n <= jax.device_count(), "devices", f"at most jax.device_count() = {jax.device_count()}", n)
      need(self.batch_size % n == 0, "batch_size", f"a multiple of the device count {n}", self.batch_size)


# A tiny config for smoke tests and `--smoke` (seconds, not minutes): same code paths.
SMOKE = Config(steps=60, log_every=20, checkpoint_every=40, hidden=16, batch_size=64)

# -- data ---------------------------------------------------------------------


def load_data(seed, val_fraction, test_fraction):
  """Seeded stratified train/val/test split of ``load_digits``, standardized on train."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  x, y = load_digits(return_X_y=True)
  x = x.astype(np.float32)
  y = y.astype(np.int32)
  x_rest, x_test, y_rest, y_test = train_test_split(
    x, y, test_size=test_fraction, stratify=y, random_state=seed
  )
  x_train, x_val, y_train, y_val = train_test_split(
    x_rest, y_rest, test_size=val_fraction / (1 - test_fraction), stratify=y_rest, random_state=seed
  )
  mean, std = x_train.mean(0), x_train.std(0) + 1.0  # +1: constant border pixels
  norm = lambda a: ((a - mean) / std).astype(np.float32)
  return (norm(x_train), y_train), (norm(x_val), y_val), (norm(x_test), y_test)


# -- models: pure init / apply -------------------------------------------------


def init_softmax_regression(key, n_in, n_classes):
  del key  # the problem is convex: zeros are a fine, deterministic start
  return {"w": jnp.zeros((n_in, n_classes)), "b": jnp.zeros((n_classes,))}


def apply_softmax_regression(params, x):
  return x @ params["w"] + params["b"]


def init_mlp(key, n_in, hidden, n_classes):
  k1, k2 = jax.random.split(key)
  # He initialization for the ReLU layer, LeCun for the logits.
  return {
    "w1": jax.random.normal(k1, (n_in, hidden)) * jnp.sqrt(2.0 / n_in),
    "b1": jnp.zeros((hidden,)),
    "w2": jax.random.normal(k2, (hidden, n_classes)) * jnp.sqrt(1.0 / hidden),
    "b2": jnp.zeros((n_classes,)),
  }


def apply_mlp(params, x):
  h = jax.nn.relu(x @ params["w1"] + params["b1"])
  return h @ params["w2"] + params["b2"]


APPLY = {"mlp": apply_mlp, "softmax_regression": apply_softmax_regression}


# -- metrics --------------------------------------------------------------------


def expected_calibration_error(probs, labels, n_bins):
  """ECE: sum over confidence bins of |accuracy - confidence| weighted by bin size."""
  probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
  conf = probs.max(-1)
  correct = (probs.argmax(-1) == labels).astype(np.float64)
  edges = np.linspace(0.0, 1.0, n_bins + 1)
  idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
  ece, bins = 0.0, []
  for b in range(n_bins):
    sel = idx == b
    if sel.any():
      acc, c = correct[sel].mean(), conf[sel].mean()
      ece += sel.mean() * abs(acc - c)
      bins.append((edges[b], edges[b + 1], c, acc, int(sel.sum())))
  return float(ece), bins


def evaluate(params, x, y, n_bins):
  out = {}
  for m in MODELS:
    logits = APPLY[m](params[m], x)
    nll = float(jaxsoft.cross_entropy(logits, y))
    probs = np.asarray(jaxsoft.softmax(logits))
    pred = probs.argmax(-1)
    ece, bins = expected_calibration_error(probs, y, n_bins)
    out[m] = {
      "accuracy": float((pred == np.asarray(y)).mean()),
      "nll": nll,
      "log_likelihood": float(
        np.sum(np.asarray(jaxsoft.log_softmax(logits))[np.arange(len(y)), np.asarray(y)])
      ),
      "ece": ece,
      "bins": bins,
      "pred": pred,
    }
  return out


# -- training -------------------------------------------------------------------


def _mesh(devices):
  n = jax.device_count() if devices == 0 else devices  # Config checked n <= jax.device_count()
  return jax.sharding.Mesh(np.array(jax.devices()[:n]), ("data",)), n


def make_train_chunk(config, x_train, y_train, optimizer, mesh):
  """A jitted function running ``log_every`` steps from a given step with lax.scan."""
  n_train = x_train.shape[0]
  per_epoch = n_train // config.batch_size  # drop the remainder: fixed batch shapes
  data_key = jax.random.fold_in(jax.random.key(config.seed), 1)
  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def loss_fn(params, xb, yb):
    losses = {m: jaxsoft.cross_entropy(APPLY[m](params[m], xb), yb) for m in MODELS}
    # The models share no parameters, so the gradient of the sum is each
    # model's own gradient (and Adam is per-parameter): two independent fits.
    return sum(losses.values()), losses

  def one_step(state, step):
    params, opt_state = state
    # The batch is a function of the step alone (not of carried RNG state), so
    # a run resumed from a checkpoint sees exactly the same batches.
    perm = jax.random.permutation(jax.random.fold_in(data_key, step // per_epoch), n_train)
    idx = jax.lax.dynamic_slice_in_dim(perm, (step % per_epoch) * config.batch_size, config.batch_size)
    xb = jax.lax.with_sharding_constraint(x_train[idx], batch_sharding)
    yb = jax.lax.with_sharding_constraint(y_train[idx], batch_sharding)
    grads, losses = jax.grad(loss_fn, has_aux=True)(params, xb, yb)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, opt_state), losses

  @jax.jit
  def chunk(state, start):
    steps = start + jnp.arange(config.log_every)
    state, losses = jax.lax.scan(one_step, state, steps)
    return state, jax.tree.map(jnp.mean, losses)

  def run_chunk(state, start):
    state = jax.device_put(state, replicated)
    return chunk(state, jnp.asarray(start, jnp.int32))

  return run_chunk


def run(config: Config, ctx) -> dict:
  mesh, n_dev = _mesh(config.devices)
  (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = load_data(config.seed, config.val_fraction, config.test_fraction)
  n_in, n_classes = x_tr.shape[1], 10
  key = jax.random.key(config.seed)
  params = {
    "mlp": init_mlp(jax.random.fold_in(key, 0), n_in, config.hidden, n_classes),
    "softmax_regression": init_softmax_regression(None, n_in, n_classes),
  }
  schedule = optax.cosine_decay_schedule(config.learning_rate, config.steps)
  optimizer = optax.adamw(schedule, weight_decay=config.weight_decay)
  state = (params, optimizer.init(params))
  start, state = ctx.load_checkpoint(state)

  train_chunk = make_train_chunk(config, jnp.asarray(x_tr), jnp.asarray(y_tr), optimizer, mesh)
  eval_val = jax.jit(
    lambda p: {
      m: (
        jaxsoft.cross_entropy(APPLY[m](p[m], x_va), y_va),
        jnp.mean(jnp.argmax(APPLY[m](p[m], x_va), -1) == y_va),
      )
      for m in MODELS
    }
  )
  bar = ctx.progress(total=config.steps, initial=start, desc=NAME)
  for s in range(start, config.steps, config.log_every):
    state, losses = train_chunk(state, s)
    val = eval_val(state[0])
    step = s + config.log_every
    ctx.log(
      step,
      **{f"{m}.train_loss": float(losses[m]) for m in MODELS},
      **{f"{m}.val_loss": float(val[m][0]) for m in MODELS},
      **{f"{m}.val_accuracy": float(val[m][1]) for m in MODELS},
    )
    bar.update(config.log_every)
    if step % config.checkpoint_every == 0 and step < config.steps:
      ctx.save_checkpoint(step, state)
  bar.close()

  params = jax.device_get(state[0])
  train, val, test = (
    evaluate(params, x, y, config.ece_bins) for x, y in ((x_tr, y_tr), (x_va, y_va), (x_te, y_te))
  )
  summary = {
    "note": "minimizing the mean cross-entropy is maximizing the categorical "
    "log-likelihood: test_log_likelihood = -n_test * test_nll",
    "n_train": len(y_tr),
    "n_val": len(y_va),
    "n_test": len(y_te),
    "devices": n_dev,
  }
  for m in MODELS:
    summary.update(
      {
        f"{m}.test_accuracy": test[m]["accuracy"],
        f"{m}.test_nll": test[m]["nll"],
        f"{m}.test_log_likelihood": test[m]["log_likelihood"],
        f"{m}.test_ece": test[m]["ece"],
        f"{m}.val_accuracy": val[m]["accuracy"],
        f"{m}.val_nll": val[m]["nll"],
        f"{m}.train_accuracy": train[m]["accuracy"],
        f"{m}.train_nll": train[m]["nll"],
        f"{m}.target_test_accuracy": TARGETS[m],
        f"{m}.target_met": test[m]["accuracy"] >= TARGETS[m],
      }
    )
  _plots(ctx, test, y_te)
  return summary


def _plots(ctx, test, y_test):
  import matplotlib.pyplot as plt

  metrics = ctx.metrics
  steps = [r["step"] for r in metrics]
  fig, ax = plt.subplots(figsize=(6, 4))
  for m, c in zip(MODELS, ("C0", "C1")):
    ax.plot(steps, [r[f"{m}.train_loss"] for r in metrics], c, label=f"{m} train")
    ax.plot(steps, [r[f"{m}.val_loss"] for r in metrics], c + "--", label=f"{m} val")
  ax.set(xlabel="step", ylabel="cross-entropy (nats, log scale)", title="digits: mean loss per logged chunk")
  _runs.log_scale(ax)
  ax.grid(alpha=0.3, which="both")
  ax.legend()
  ctx.save_figure(fig, "loss_curves")

  fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
  for ax, m in zip(axes, MODELS):
    cm = np.zeros((10, 10), int)
    np.add.at(cm, (np.asarray(y_test), test[m]["pred"]), 1)
    ax.imshow(cm, cmap="Blues")
    for i in range(10):
      for j in range(10):
        if cm[i, j]:
          ax.text(
            j,
            i,
            cm[i, j],
            ha="center",
            va="center",
            fontsize=7,
            color="white" if cm[i, j] > cm.max() / 2 else "black",
          )
    ax.set(
      xlabel="predicted",
      ylabel="true",
      xticks=range(10),
      yticks=range(10),
      title=f"{m}: test accuracy {test[m]['accuracy']:.3f}",
    )
  ctx.save_figure(fig, "confusion_matrix")

  fig, ax = plt.subplots(figsize=(5, 5))
  ax.plot([0, 1], [0, 1], "k:", label="perfect calibration")
  for m, c in zip(MODELS, ("C0", "C1")):
    bins = test[m]["bins"]
    ax.plot([b[2] for b in bins], [b[3] for b in bins], c + "o-", label=f"{m} (ECE {test[m]['ece']:.3f})")
  ax.set(xlabel="confidence (mean of the bin)", ylabel="accuracy", title="reliability diagram (test)")
  # Below the axes: points fill every corner of the square.
  ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=9)
  ctx.save_figure(fig, "reliability")
