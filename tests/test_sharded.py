"""Several devices: the vocabulary-parallel loss, sharded batches of fits, Monte Carlo on 1, 2, 4 devices.

Simulated CPU devices need ``XLA_FLAGS=--xla_force_host_platform_device_count``
before jax starts, so every check runs in ONE subprocess with 4 devices
(started once per module); each test below reads its own check's verdict.
References are float64 (a dense cross-entropy written here, closed-form
maximum-likelihood estimates) or the single-device result the sharded path
must reproduce.
"""

import functools
import os
import subprocess
import sys
import textwrap

import pytest

# Simulated devices run in a subprocess that compiles every sharded program: an
# end-to-end check, run by `pytest -m slow` (and in CI), not by the quick default run.
pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(r'''
  import resource
  import time
  import traceback

  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

  jax.config.update("jax_enable_x64", True)
  from jaxsoft import fit_distribution, integrate, linear_cross_entropy, sharded_vmap

  assert jax.device_count() == 4, jax.devices()
  MESH = Mesh(np.array(jax.devices()), ("v",))
  CHECKS = []


  def check(fn):
    CHECKS.append(fn)
    return fn


  def close(got, want, rtol=2e-5, atol=2e-6):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(w, np.float64), rtol=rtol, atol=atol)


  # ------------------------------------------------------------ the loss
  N, D, V = 7, 5, 12  # 4 shards of 3 classes
  ks = jax.random.split(jax.random.key(0), 5)
  H = jax.random.normal(ks[0], (N, D), jnp.float32)
  W = jax.random.normal(ks[1], (D, V), jnp.float32)
  B = 0.5 * jax.random.normal(ks[2], (V,), jnp.float32)
  CW = jax.random.uniform(ks[3], (V,), jnp.float32, 0.5, 1.5)
  Y = jnp.array([0, 3, 11, -100, 7, 5, 9])  # labels on every shard, one ignored
  MASK = jnp.array([True, True, True, True, False, True, True])


  def dense(h, w, b, y, *, cw=None, eps=None, zl=0.0, cap=None, where=None, reduction="mean"):
    """Float64 cross-entropy of the full logits, PyTorch's weighted smoothing, mean over counted weight."""
    h, w, b = (jnp.asarray(x, jnp.float64) for x in (h, w, b))
    h = h.reshape(-1, h.shape[-1])
    y = y.reshape(-1)
    z = h @ w + b
    if cap is not None:
      z = cap * jnp.tanh(z / cap)
    cw = jnp.ones(w.shape[1]) if cw is None else jnp.asarray(cw, jnp.float64)
    lse = jax.scipy.special.logsumexp(z, axis=-1)
    keep = (y != -100) & (True if where is None else where.reshape(-1))
    ys = jnp.where(keep, y, 0)
    zy = jnp.take_along_axis(z, ys[:, None], 1)[:, 0]
    wy = jnp.where(keep, cw[ys], 0)
    main = wy * (lse - zy)
    if eps is not None:  # (the term is 0 * inf = NaN with a -inf logit)
      main = (1 - eps) * main + eps / w.shape[1] * jnp.sum(cw * (lse[:, None] - z), -1)
    per = jnp.where(keep, main + zl * lse**2, 0)
    if reduction == "none":
      loss = per
    elif reduction == "sum":
      loss = jnp.sum(per)
    else:
      loss = jnp.sum(jnp.where(keep, main, 0)) / jnp.sum(wy) + zl * jnp.sum(jnp.where(keep, lse**2, 0)) / jnp.sum(keep)
    p = jax.nn.softmax(z, -1)
    ent = lse - jnp.sum(jnp.where(p > 0, p * z, 0), -1)
    aux = {"lse": lse, "log_prob": zy - lse, "entropy": ent}
    return loss, {k: jnp.where(keep, a, 0) for k, a in aux.items()}


  def objective(loss_fn, num_args=4):
    """A scalar through the loss and every aux output, and its gradient in every argument."""
    def f(*args):
      loss, aux = loss_fn(*args)
      return jnp.sum(loss) + 0.3 * jnp.sum(aux["entropy"]) - 0.2 * jnp.sum(aux["log_prob"]) + 0.1 * jnp.sum(aux["lse"])
    return jax.jit(jax.value_and_grad(f, argnums=tuple(range(num_args))))


  # Differentiated too: label_smoothing, z_loss, logit_soft_cap.
  OPTIONS = (0.1, 1e-2, 4.0)


  def lce(*, mesh=None, axis_name=None):
    return lambda h, w, b, cw, eps, zl, cap: linear_cross_entropy(
      h, w, Y, bias=b, class_weight=cw, chunk_size=(3, 2), ignore_index=-100, where=MASK, label_smoothing=eps,
      z_loss=zl, logit_soft_cap=cap, return_aux=True, mesh=mesh, axis_name=axis_name)


  @check
  def vocab_parallel_every_option():
    sharded = objective(lce(mesh=MESH, axis_name="v"), 7)
    ref = objective(lambda h, w, b, cw, eps, zl, cap: dense(h, w, b, Y, cw=cw, eps=eps, zl=zl, cap=cap, where=MASK), 7)
    w_sharded = jax.device_put(W, NamedSharding(MESH, P(None, "v")))
    got = sharded(H, w_sharded, B, CW, *OPTIONS)
    close(got, objective(lce(), 7)(H, W, B, CW, *OPTIONS))  # the single-device loss, to float32 rounding
    close(got, ref(*(x.astype(jnp.float64) for x in (H, W, B, CW)), *OPTIONS), rtol=1e-4, atol=1e-5)
    # The weight's gradient stays split like the weight.
    assert got[1][1].sharding.spec == P(None, "v"), got[1][1].sharding


  @check
  def vocab_parallel_batch_axes_and_a_masked_shard():
    # The last shard's classes are all -inf: that shard's logsumexp is -inf.
    b = B.at[9:].set(-jnp.inf)
    y = jnp.where(Y >= 9, 1, Y).at[3].set(2)
    h, y = H[:6].reshape(2, 3, D), y[:6].reshape(2, 3)
    u = jnp.linspace(0.5, 1.5, 6).reshape(2, 3)
    f = lambda loss_fn: jax.jit(jax.value_and_grad(lambda h, w: jnp.sum(u * loss_fn(h, w)), argnums=(0, 1)))
    got = f(lambda h, w: linear_cross_entropy(h, w, y, bias=b, reduction="none", mesh=MESH, axis_name="v"))(h, W)
    want = f(lambda h, w: dense(h, w, b, y, reduction="none")[0].reshape(2, 3))(h.astype(jnp.float64), W.astype(jnp.float64))
    close(got, want, rtol=1e-4, atol=1e-5)


  @check
  def vocab_parallel_inside_shard_map():
    # The caller's own shard_map (default check_vma=True) on a 2 x 2 mesh:
    # tokens split over "data", the vocabulary over "v"; weight, bias and
    # class_weight arrive as this device's shard.
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "v"))

    def local(h, w, b, cw, y):
      loss, aux = linear_cross_entropy(h, w, y, bias=b, class_weight=cw, ignore_index=-100, label_smoothing=0.2,
                                       reduction="sum", return_aux=True, axis_name="v")
      return jax.lax.psum(loss, "data"), aux

    specs = (P("data"), P(None, "v"), P("v"), P("v"), P("data"))
    body = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=(P(), P("data")))
    got = objective(lambda h, w, b, cw: body(h, w, b, cw, Y[:6]))(H[:6], W, B, CW)
    ref = objective(lambda h, w, b, cw: dense(h, w, b, Y[:6], cw=cw, eps=0.2, reduction="sum"))
    close(got, ref(*(x.astype(jnp.float64) for x in (H[:6], W, B, CW))), rtol=1e-4, atol=1e-5)


  @check
  def vocab_parallel_errors():
    cases = [
      (dict(mesh=MESH, axis_name="v"), W[:, :10], ValueError, "weight must have V divisible by the 4 devices"),
      (dict(mesh=MESH, axis_name="x"), W, ValueError, "axis_name must be an axis of mesh"),
      (dict(mesh=MESH), W, TypeError, "axis_name must be given with mesh"),
      (dict(axis_name="v"), W, NameError, "axis_name must name an axis of the enclosing shard_map"),
      (dict(mesh="v", axis_name="v"), W, TypeError, "mesh must be a jax.sharding.Mesh"),
    ]
    for kw, w, exc, msg in cases:
      try:
        linear_cross_entropy(H, w, Y, ignore_index=-100, **kw)
      except exc as e:
        assert msg in str(e), e
      else:
        raise AssertionError(f"no error for {kw}")


  # ------------------------------------------------------------ batched fits
  XS = 3.0 + 2.0 * jax.random.normal(jax.random.key(1), (6, 40), jnp.float32)  # 6 datasets: padded to 8 on 4 devices


  @check
  def sharded_fits_four_devices_equal_one():
    # Per-element keys (a random start, a simulation) go with their element:
    # element i draws from keys[i] whatever device runs it.
    keys = jax.random.split(jax.random.key(2), 6)
    # Adam compiles in a third of L-BFGS's time; the sharding is what is tested.
    per_dataset = lambda x, k: (fit_distribution("normal", x, optimizer=optax.adam(0.1)), jax.random.normal(k, (3,)))
    one, four = (jax.jit(sharded_vmap(per_dataset, devices=d))(XS, keys) for d in (1, 4))
    x = np.asarray(XS, np.float64)
    for fits, draws in (one, four):
      close(fits.params, {"loc": x.mean(1), "scale": x.std(1)}, rtol=1e-4, atol=1e-4)  # the normal MLE
      assert np.all(np.asarray(fits.converged))
      np.testing.assert_array_equal(np.asarray(draws), jax.vmap(lambda k: jax.random.normal(k, (3,)))(keys))
    close(four, one, rtol=1e-6, atol=1e-6)


  @check
  def sharded_vmap_errors():
    cases = [
      (lambda: sharded_vmap(3), TypeError, "sharded_vmap: fun must be callable"),
      (lambda: sharded_vmap(jnp.sum, devices=5), ValueError, "devices must be between 1 and 4"),
      (lambda: sharded_vmap(jnp.add)(jnp.ones((3, 2)), jnp.ones(4)), ValueError, "args must share one leading"),
      (lambda: sharded_vmap(jnp.sum)(jnp.ones(())), ValueError, "args must share one leading"),
    ]
    for call, exc, msg in cases:
      try:
        call()
      except exc as e:
        assert msg in str(e), e
      else:
        raise AssertionError(f"no error: {msg}")


  # ------------------------------------------------------------ Monte Carlo
  @check
  def integrate_same_for_1_2_4_devices():
    f = lambda x: {"g": jnp.exp(-jnp.sum(x**2)), "x": x}  # the mean of x: the points themselves
    box = dict(lower=jnp.zeros(3, jnp.float32), upper=jnp.ones(3, jnp.float32))
    # One program per device count (a program runs on one set of devices).
    run = lambda d: jax.jit(lambda k: [
      integrate(f, k, n=2**13 + 10, method=m, batch_size=2**10, devices=d, **box) for m in ("mc", "sobol")
    ])(jax.random.key(3))
    for method, one, two, four in zip(("mc", "sobol"), *(run(d) for d in (None, 2, 4))):
      assert int(one.n) == int(two.n) == int(four.n), method
      for other in (two, four):
        close(other, one, rtol=1e-5, atol=1e-7)
    exact = (np.sqrt(np.pi) / 2 * 0.8427007929497149) ** 3
    assert abs(float(one.estimate["g"]) - exact) < 4 * float(one.stderr["g"]) + 1e-4


  for fn in CHECKS:
    try:
      t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_utime
      fn()
      cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime - c0
      print(f"CHECK {fn.__name__} OK ({time.perf_counter() - t0:.1f} s, cpu {cpu:.1f} s)", flush=True)
    except Exception:
      print(f"CHECK {fn.__name__} FAIL", flush=True)
      traceback.print_exc()
''')

CHECK_NAMES = [
  "vocab_parallel_every_option",
  "vocab_parallel_batch_axes_and_a_masked_shard",
  "vocab_parallel_inside_shard_map",
  "vocab_parallel_errors",
  "sharded_fits_four_devices_equal_one",
  "sharded_vmap_errors",
  "integrate_same_for_1_2_4_devices",
]


@functools.cache
def _four_device_run():
  """Runs every check in one subprocess with 4 simulated devices: ``(stdout, stderr)``."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip()
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", PYTHONPATH=root)
  proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
  return proc.stdout, proc.stderr


@pytest.mark.parametrize("name", CHECK_NAMES)
def test_on_four_devices(name):
  stdout, stderr = _four_device_run()
  assert f"CHECK {name} OK " in stdout, f"{stdout[-2000:]}\n{stderr[-6000:]}"
