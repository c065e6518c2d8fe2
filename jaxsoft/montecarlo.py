"""Monte Carlo integration with error bars, quasi-Monte Carlo, variance reduction.

Every estimator is a pure function of an explicit ``jax.random`` key and
returns a NamedTuple with the estimate and its standard error, so the nominal
95% interval ``estimate +- 1.96 stderr`` (:func:`confidence_interval`) covers
the true value about 95% of the time.

Memory and reproducibility. Points are generated and evaluated inside
``lax.scan``, ``batch_size`` points per step, so peak memory depends on
``batch_size`` and not on ``n``. The random stream is cut into fixed *blocks*
(``2**19 // dim`` points, a power of two, e.g. 65536 in 8 dimensions): block
``j`` uses the key ``jax.random.fold_in(key, j)`` and the per-block means and
sums of squares are merged in block order (Chan et al.'s pairwise update), so
the same key gives the same result, to the bit, whatever ``batch_size`` is.

Choosing the PRNG. The points come from ``jax.random.uniform`` with the key
you pass, so the key's implementation decides the generator. The default
``jax.random.key(seed)`` is threefry2x32 (counter-based, cryptographic-grade
mixing, identical on every backend). On CPU, threefry in cache-sized blocks
is the fastest option measured (``benchmarks/bench_montecarlo.py``: about
50 million 8-dimensional points per second on one CPU core, 1.3x NumPy's
``default_rng``): ``jax.random.key(seed, impl="rbg")`` and ``"unsafe_rbg"``
(XLA's RngBitGenerator) are about 5x slower on CPU but can be faster on
GPU/TPU;
``unsafe_rbg`` also derives block keys with a non-cryptographic ``fold_in``,
so streams of nearby block indices are not guaranteed independent. Pick one
with ``integrate(f, jax.random.key(0, impl="rbg"), ...)``.

Several devices. ``devices=`` spreads the work over local devices with
``jax.shard_map`` and merges the partial statistics with ``all_gather``; for
the quasi-Monte Carlo methods the randomizations are split across devices and
the result equals the single-device result exactly.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.extend.random as jex_random
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec

from jaxsoft import _validate as V
from jaxsoft import qmc as _qmc
from jaxsoft._dtypes import compute_dtype

__all__ = [
  "MCResult",
  "ToleranceResult",
  "ISResult",
  "integrate",
  "expectation",
  "importance_sampling",
  "integrate_to_tolerance",
  "confidence_interval",
]

_METHODS = ("mc", "antithetic", "stratified", "sobol", "halton")
# Numbers (points x dim) per random block: 2 MiB of float32, which stays in
# cache; larger one-shot batches are memory bound on CPU (see the benchmark).
_BLOCK_NUMBERS = 2**19
# Stratified sampling keeps at least this many independent rounds of one point
# per stratum, so its standard error has enough degrees of freedom.
_MIN_ROUNDS = 32
_AXIS = "mc"


class MCResult(NamedTuple):
  """A Monte Carlo estimate.

  Attributes:
    estimate: the estimate, a pytree shaped like ``f``'s output.
    stderr: its standard error, same structure.
    n: the number of function evaluations used (int32 scalar).
  """

  estimate: Any
  stderr: Any
  n: jax.Array


class ToleranceResult(NamedTuple):
  """:func:`integrate_to_tolerance`'s result: :class:`MCResult` plus ``converged``."""

  estimate: Any
  stderr: Any
  n: jax.Array
  converged: jax.Array


class ISResult(NamedTuple):
  """:func:`importance_sampling`'s result: :class:`MCResult` plus the effective sample size."""

  estimate: Any
  stderr: Any
  n: jax.Array
  ess: jax.Array


# ----------------------------------------------------------------------------
# Running statistics: (count, mean, M2) merged in a fixed order.
# ----------------------------------------------------------------------------


def _unzip_map(fn, tree, *rest):
  """Maps ``fn`` (returning a tuple) over the leaves of ``tree`` (and ``rest``); one tree per output."""
  leaves, treedef = jax.tree.flatten(tree)
  others = [treedef.flatten_up_to(r) for r in rest]
  outs = [fn(*args) for args in zip(leaves, *others)]
  width = len(outs[0]) if outs else 0
  return tuple(treedef.unflatten([o[i] for o in outs]) for i in range(width))


def _block_stats(values, mask):
  """Count, mean and sum of squared deviations over the leading axis."""
  if mask is None:
    count = jnp.asarray(jax.tree.leaves(values)[0].shape[0], jnp.int32)

    def leaf(v):
      mean = jnp.mean(v, axis=0)
      return mean, jnp.sum(jnp.square(v - mean), axis=0)
  else:
    count = jnp.sum(mask, dtype=jnp.int32)

    def leaf(v):
      m = mask.reshape(mask.shape + (1,) * (v.ndim - 1))
      mean = jnp.sum(jnp.where(m, v, 0), axis=0) / jnp.maximum(count, 1).astype(v.dtype)
      return mean, jnp.sum(jnp.where(m, jnp.square(v - mean), 0), axis=0)

  return (count,) + _unzip_map(leaf, values)


def _merge(a, b):
  """Chan, Golub and LeVeque's pairwise update of (count, mean, M2)."""
  na, mean_a, m2_a = a
  nb, mean_b, m2_b = b
  n = na + nb

  def leaf(ma, mb, sa, sb):
    fa, fb = na.astype(ma.dtype), nb.astype(ma.dtype)
    frac = fb / jnp.maximum(fa + fb, 1)
    delta = mb - ma
    return ma + delta * frac, sa + sb + jnp.square(delta) * fa * frac

  return (n,) + _unzip_map(leaf, mean_a, mean_b, m2_a, m2_b)


def _merge_sequential(stats, stacked):
  """Merges the stats stacked along axis 0 into ``stats``, in order."""

  def body(carry, item):
    return _merge(carry, item), None

  return lax.scan(body, stats, stacked)[0]


def _zero_stats(value_struct):
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), value_struct)
  return jnp.zeros((), jnp.int32), zeros, zeros


def _stderr(count, m2):
  c = count.astype(m2.dtype)
  var = m2 / jnp.maximum(c - 1, 1)
  return jnp.where(count > 1, jnp.sqrt(var / jnp.maximum(c, 1)), jnp.inf)


# ----------------------------------------------------------------------------
# Blocked evaluation of i.i.d. units (points, antithetic pairs, strata rounds).
# ----------------------------------------------------------------------------


def _pow2_floor(x: int) -> int:
  return 1 << (max(int(x), 1).bit_length() - 1)


def _default_batch(block: int) -> int:
  # On CPU one cache-sized block per step is fastest; accelerators want
  # bigger steps to fill the device.
  return block if jax.default_backend() == "cpu" else max(block, 2**20)


def _as_typed_key(fn, key):
  """Typed keys pass through; legacy ``uint32[2]`` keys become threefry keys."""
  dtype = getattr(key, "dtype", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    if np.shape(key) != ():
      V.fail(fn, "key", "be a single key (shape ())", f"shape {np.shape(key)}")
    return key
  if dtype == jnp.uint32 and np.shape(key) == (2,):
    return jax.random.wrap_key_data(key)
  V.fail(
    fn,
    "key",
    "be a jax.random key",
    f"{type(key).__name__} {getattr(key, 'dtype', '')}".strip(),
    exc=TypeError,
  )


def _uniform(key, shape, dtype):
  """Uniform floats on [0, 1) from one block key.

  For float32 and threefry keys both 32-bit words of each threefry2x32
  evaluation become a float (as ``jax_threefry_partitionable=False`` does):
  ``jax.random.uniform`` in the default partitionable mode hashes twice per
  word, and hashing is the bottleneck on CPU. Other dtypes and key
  implementations use ``jax.random.uniform`` as is.
  """
  dtype = jnp.dtype(dtype)
  if dtype != jnp.float32 or str(jax.random.key_impl(key)) != "threefry2x32":
    return jax.random.uniform(key, shape, dtype)
  size = math.prod(shape)
  half = -(-size // 2)
  counts = lax.iota(jnp.uint32, half)
  k0, k1 = jax.random.key_data(key)
  a, b = jex_random.threefry2x32_p.bind(k0, k1, counts, counts + jnp.uint32(half))
  words = jnp.concatenate([a, b])[:size].reshape(shape)
  # 23 random mantissa bits under the exponent of 1.0 give [1, 2); minus 1.
  return lax.bitcast_convert_type((words >> 9) | jnp.uint32(0x3F800000), jnp.float32) - 1


def _iid_stats(
  unit_fn,
  key,
  *,
  num_units: int,
  units_per_block: int,
  blocks_per_step: int,
  value_struct,
  first_step=0,
  num_steps: int | None = None,
):
  """Stats of ``num_units`` units; block ``j`` is ``unit_fn(fold_in(key, j))``.

  Runs ``num_steps`` steps of ``blocks_per_step`` blocks from ``first_step``
  (defaults: all of them); units past ``num_units`` are masked out.
  """
  num_blocks = -(-num_units // units_per_block)
  if num_steps is None:
    num_steps = -(-num_blocks // blocks_per_step)
  need_mask = (
    num_units % units_per_block != 0
    or num_blocks % blocks_per_step != 0
    or not (isinstance(first_step, int) and first_step == 0)
  )

  def step(stats, s):
    ids = s * blocks_per_step + jnp.arange(blocks_per_step)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, ids)
    values = jax.vmap(unit_fn)(keys)
    mask = ids[:, None] * units_per_block + jnp.arange(units_per_block) < num_units
    # Reduce block by block (lax.map, not vmap): a [k, block] reduction may
    # sum in another order than a [block] one, and the result must not depend
    # on how many blocks a step holds.
    block = lax.map(lambda vm: _block_stats(vm[0], vm[1] if need_mask else None), (values, mask))
    return _merge_sequential(stats, block), None

  steps = jnp.arange(num_steps) + first_step
  return lax.scan(step, _zero_stats(value_struct), steps)[0]


def _sharded_iid_stats(mesh, unit_fn, key, *, num_units, units_per_block, blocks_per_step, value_struct):
  """Each device runs a contiguous range of steps; stats merged in device order."""
  ndev = mesh.devices.size
  num_blocks = -(-num_units // units_per_block)
  steps_per_device = -(-num_blocks // (blocks_per_step * ndev))

  def local(key):
    first = lax.axis_index(_AXIS) * steps_per_device
    stats = _iid_stats(
      unit_fn,
      key,
      num_units=num_units,
      units_per_block=units_per_block,
      blocks_per_step=blocks_per_step,
      value_struct=value_struct,
      first_step=first,
      num_steps=steps_per_device,
    )
    gathered = jax.tree.map(lambda x: lax.all_gather(x, _AXIS), stats)
    return _merge_sequential(_zero_stats(value_struct), gathered)

  return jax.shard_map(
    local, mesh=mesh, in_specs=PartitionSpec(), out_specs=PartitionSpec(), check_vma=False
  )(key)


def _mesh(fn: str, devices):
  if devices is None:
    return None
  if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
    available = jax.local_devices()
    if not 1 <= devices <= len(available):
      V.fail(fn, "devices", f"be between 1 and {len(available)} (the local device count)", devices)
    devices = available[:devices]
  if not isinstance(devices, Sequence) or not all(isinstance(d, jax.Device) for d in devices) or not devices:
    V.fail(
      fn, "devices", "be None, an int or a non-empty sequence of jax devices", repr(devices), exc=TypeError
    )
  return Mesh(np.asarray(list(devices)), (_AXIS,))


# ----------------------------------------------------------------------------
# integrate
# ----------------------------------------------------------------------------


def _box(fn, lower, upper):
  V.check_array(fn, "lower", lower)
  V.check_array(fn, "upper", upper)
  V.check_ndim(fn, "lower", lower, 1, " ([dim])")
  V.check_shape(fn, "upper", upper, np.shape(lower), " (the shape of lower)")
  dtype = jnp.result_type(lower, upper)
  if not jnp.issubdtype(dtype, jnp.floating):
    dtype = jnp.result_type(float)
  cdtype = compute_dtype(dtype)
  lower = jnp.asarray(lower, cdtype)
  upper = jnp.asarray(upper, cdtype)
  return lower, upper, np.shape(lower)[0], dtype, cdtype


def _values_struct(fn, f, dim, cdtype):
  """``f``'s output structure (leaves cast to the compute dtype)."""
  try:
    out = jax.eval_shape(f, jax.ShapeDtypeStruct((dim,), cdtype))
  except Exception as e:  # pragma: no cover - the message is what matters
    V.fail(fn, "f", f"map one point of shape ({dim},) to a pytree of arrays", f"error {e!r}", exc=TypeError)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, cdtype), out)


def _eval(f, x, cdtype):
  return jax.tree.map(lambda v: jnp.asarray(v).astype(cdtype), jax.vmap(f)(x))


def _block_size(dim: int, n: int) -> int:
  return min(_pow2_floor(max(1, _BLOCK_NUMBERS // dim)), n)


def _strata(dim: int, n: int, block: int) -> int:
  """Strata per axis: the most with ``_MIN_ROUNDS`` rounds that fit a block."""
  k = 1
  while (k + 1) ** dim * _MIN_ROUNDS <= n and (k + 1) ** dim <= block:
    k += 1
  return k


def _finish(stats, scale, dtype, n):
  count, mean, m2 = stats
  estimate = jax.tree.map(lambda m: (m * scale).astype(dtype), mean)
  stderr = jax.tree.map(lambda s: (_stderr(count, s) * jnp.abs(scale)).astype(dtype), m2)
  return MCResult(estimate, stderr, jnp.asarray(n, jnp.int32))


def integrate(
  f: Callable,
  key,
  *,
  lower,
  upper,
  n: int,
  method: str = "mc",
  batch_size: int | None = None,
  replicates: int = 16,
  devices=None,
) -> MCResult:
  r"""Integral of ``f`` over the box ``[lower, upper]`` with a standard error.

  .. math::
    I = \int_{[a,b]} f(x)\,dx \approx \frac{|b-a|}{N} \sum_{i=1}^N f(x_i),
    \qquad \mathrm{se} = |b-a| \frac{s}{\sqrt{N}}

  where :math:`s` is the sample standard deviation of the i.i.d. units:

  * ``"mc"``: uniform points (units = points).
  * ``"antithetic"``: pairs :math:`(u, 1-u)` (units = pair means; ``n`` even).
  * ``"stratified"``: a grid of :math:`k^{dim}` equal strata with one uniform
    point in each per *round*; units = round means (proportional allocation,
    at least 32 rounds; ``n`` is rounded down to whole rounds and ``k`` is
    capped so a round fits one block, so in high dimension it falls back to
    plain Monte Carlo with ``k = 1``).
  * ``"sobol"``, ``"halton"``: ``replicates`` independent randomizations of
    ``n // replicates`` points each (:func:`jaxsoft.qmc.sobol` /
    :func:`~jaxsoft.qmc.halton` with key ``fold_in(key, r)``); units = the
    replicate means. With few replicates the normal interval of
    :func:`confidence_interval` is a bit narrow (Student t with
    ``replicates - 1`` degrees of freedom); use 32 or more for calibrated
    intervals.

  Args:
    f: maps one point ``[dim]`` to a scalar or a pytree of arrays; vectorized
      with ``vmap``.
    key: a ``jax.random`` key; its implementation picks the PRNG (see module
      docs).
    lower, upper: ``[dim]`` corners of the box (their floating dtype is the
      output dtype).
    n: number of evaluations of ``f`` (static).
    method: one of ``"mc"``, ``"antithetic"``, ``"stratified"``, ``"sobol"``,
      ``"halton"``.
    batch_size: points evaluated per step (static); peak memory is
      proportional to it. Default: one block (``2**19 // dim`` points) on CPU,
      at least ``2**20`` points on accelerators. For the i.i.d. methods it is
      rounded down to whole blocks (at least one; ``f`` is still evaluated
      one block at a time) and does not change the result: bit for bit for
      ``"mc"`` and ``"antithetic"``, to float rounding of the stderr for
      ``"stratified"``. For QMC it is rounded down to a power of two and
      changes the summation order only.
    replicates: randomizations for ``"sobol"`` and ``"halton"`` (static).
    devices: ``None`` (default device), an int (the first that many local
      devices) or a sequence of devices to spread the work over with
      ``shard_map``: contiguous ranges of blocks for the i.i.d. methods (same
      estimate up to float rounding), whole randomizations for QMC
      (``replicates`` must be a multiple of the device count; same result
      bit for bit).

  Returns:
    ``MCResult(estimate, stderr, n)``, estimate and stderr shaped like
    ``f``'s output, ``n`` the evaluations actually used.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoft.montecarlo import integrate
    >>> f = lambda x: jnp.exp(-jnp.sum(x ** 2))
    >>> r = integrate(f, jax.random.key(0), lower=jnp.zeros(2), upper=jnp.ones(2),
    ...               n=2**16, method="sobol")
    >>> print(f"{r.estimate:.6f} +- {r.stderr:.1e}")  # exact 0.557746
    0.557746 +- 2.3e-08

  References:
    Owen, "Monte Carlo theory, methods and examples", 2013, chapters 2, 8, 17.
  """
  fn = "integrate"
  V.check_option(fn, "method", method, _METHODS)
  n = V.check_int(fn, "n", n, minimum=1)
  lower, upper, dim, dtype, cdtype = _box(fn, lower, upper)
  if batch_size is not None:
    batch_size = V.check_int(fn, "batch_size", batch_size, minimum=1)
  mesh = _mesh(fn, devices)
  key = _as_typed_key(fn, key)
  struct = _values_struct(fn, f, dim, cdtype)
  width = upper - lower
  volume = jnp.prod(width)

  if method in ("sobol", "halton"):
    replicates = V.check_int(fn, "replicates", replicates, minimum=2)
    if n < replicates:
      V.fail(fn, "n", f"be >= replicates ({replicates}) for method {method!r}", n)
    n_rep = n // replicates
    if method == "sobol" and n_rep > 2**30:
      V.fail(fn, "n", "give at most 2**30 points per replicate for method 'sobol'", n)
    chunk = min(
      _pow2_floor(batch_size or _default_batch(_block_size(dim, 2**62))), 1 << (n_rep - 1).bit_length()
    )
    point_fn = lambda u: _eval(f, lower + width * u, cdtype)
    replicate = _qmc_replicate_fn(method, point_fn, key, dim, n_rep, chunk, cdtype, struct)
    means = _map_replicates(replicate, replicates, mesh)
    stats = _block_stats(means, None)
    return _finish(stats, volume, dtype, n_rep * replicates)

  block = _block_size(dim, n)
  if method == "mc":
    units, upb, per_unit = n, block, 1

    def unit_fn(k):
      u = _uniform(k, (upb, dim), cdtype)
      return _eval(f, lower + width * u, cdtype)
  elif method == "antithetic":
    if n % 2:
      V.fail(fn, "n", "be even for method 'antithetic'", n)
    units, upb, per_unit = n // 2, max(block // 2, 1), 2

    def unit_fn(k):
      u = _uniform(k, (upb, dim), cdtype)
      a = _eval(f, lower + width * u, cdtype)
      b = _eval(f, lower + width * (1 - u), cdtype)
      return jax.tree.map(lambda p, q: (p + q) / 2, a, b)
  else:  # stratified
    k_axis = _strata(dim, n, _block_size(dim, 2**62))
    strata = k_axis**dim
    units, upb, per_unit = n // strata, max(block // strata, 1), strata
    corners = jnp.asarray(
      np.array(list(itertools.product(range(k_axis), repeat=dim)), np.float32).reshape(strata, dim), cdtype
    )

    def unit_fn(k):
      u = _uniform(k, (upb, strata, dim), cdtype)
      x = lower + width * ((corners + u) / k_axis)
      values = _eval(f, x.reshape(upb * strata, dim), cdtype)
      return jax.tree.map(lambda v: jnp.mean(v.reshape((upb, strata) + v.shape[1:]), axis=1), values)

  bps = max(1, (batch_size or _default_batch(block)) // (upb * per_unit))
  kw = dict(num_units=units, units_per_block=upb, blocks_per_step=bps, value_struct=struct)
  if mesh is None:
    stats = _iid_stats(unit_fn, key, **kw)
  else:
    stats = _sharded_iid_stats(mesh, unit_fn, key, **kw)
  return _finish(stats, volume, dtype, units * per_unit)


def _qmc_replicate_fn(method, point_fn, key, dim, n_rep, chunk, cdtype, struct):
  """``replicate(r)``: mean of ``f`` over randomization ``r``'s ``n_rep`` points."""
  num_chunks = -(-n_rep // chunk)
  need_mask = n_rep % chunk != 0
  log2_chunk = chunk.bit_length() - 1
  v = jnp.asarray(_qmc._direction_numbers(dim)) if method == "sobol" else None

  def replicate(r):
    key_r = jax.random.fold_in(key, r)
    if method == "sobol":
      v_r, shift = _qmc._sobol_randomization(key_r, v)
      table = _qmc._sobol_table(v_r, log2_chunk) ^ shift

      def points(c):
        start = (c * chunk).astype(jnp.uint32)
        return _qmc._to_unit(table ^ _qmc._sobol_point(start, v_r), cdtype)
    else:
      digits = _qmc._halton_random_digits(cdtype)
      scramble = _qmc._halton_randomization(key_r, dim, digits)

      def points(c):
        return _qmc._halton_points(c * chunk + jnp.arange(chunk), dim, digits, cdtype, scramble)

    def step(stats, c):
      values = point_fn(points(c))
      mask = (c * chunk + jnp.arange(chunk) < n_rep) if need_mask else None
      return _merge(stats, _block_stats(values, mask)), None

    return lax.scan(step, _zero_stats(struct), jnp.arange(num_chunks))[0][1]

  return replicate


def _map_replicates(replicate, replicates: int, mesh):
  """``[replicates, ...]`` replicate means; over devices when ``mesh`` is given.

  Replicates run one after the other (``lax.map``) on every path, so each
  replicate's program, and hence its value, is the same with or without
  devices.
  """
  if mesh is None:
    return lax.map(replicate, jnp.arange(replicates))
  ndev = mesh.devices.size
  if replicates % ndev:
    V.fail("integrate", "replicates", f"be a multiple of the number of devices ({ndev})", replicates)
  per = replicates // ndev

  def local():
    ids = lax.axis_index(_AXIS) * per + jnp.arange(per)
    means = lax.map(replicate, ids)
    return jax.tree.map(lambda m: lax.all_gather(m, _AXIS, tiled=True), means)

  return jax.shard_map(local, mesh=mesh, in_specs=(), out_specs=PartitionSpec(), check_vma=False)()


# ----------------------------------------------------------------------------
# expectation, importance sampling
# ----------------------------------------------------------------------------


def expectation(
  f: Callable,
  sample: Callable,
  key,
  *,
  n: int,
  batch_size: int | None = None,
  control_variate: tuple[Callable, Any] | None = None,
) -> MCResult:
  r"""E[f(X)] for ``X = sample(key)``, optionally with a control variate.

  .. math::
    \hat\mu = \frac1N \sum_i \big(f(X_i) - \hat c\,(g(X_i) - \mathbb E g)\big),
    \qquad \hat c = \frac{\widehat{\mathrm{Cov}}(f, g)}{\widehat{\mathrm{Var}}(g)}

  The coefficient is estimated from the same samples (optimal, elementwise
  per leaf); its bias is :math:`O(1/N)`.

  Args:
    f: maps one sample to a scalar or a pytree of arrays.
    sample: ``sample(key) -> x``, one draw of ``X``.
    key: a ``jax.random`` key. Sample ``i`` of block ``j`` uses
      ``jax.random.split(fold_in(key, j), block)[i]``.
    n: number of samples (static).
    batch_size: samples per step (static), rounded to whole blocks; does not
      change the result.
    control_variate: optional ``(g, mean_g)``, ``g`` mapping a sample to a
      pytree with ``f``'s structure and ``mean_g`` its known expectation.

  Returns:
    ``MCResult(estimate, stderr, n)``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoft.montecarlo import expectation
    >>> r = expectation(jnp.exp, jax.random.normal, jax.random.key(0), n=2**16,
    ...                 control_variate=(lambda x: x, 0.0))
    >>> print(f"{r.estimate:.3f} +- {r.stderr:.3f}")  # exact e^0.5 = 1.649
    1.651 +- 0.005

  References:
    Glasserman, "Monte Carlo Methods in Financial Engineering", 2003, 4.1.
  """
  fn = "expectation"
  n = V.check_int(fn, "n", n, minimum=1)
  if batch_size is not None:
    batch_size = V.check_int(fn, "batch_size", batch_size, minimum=1)
  if control_variate is not None:
    if not (
      isinstance(control_variate, tuple) and len(control_variate) == 2 and callable(control_variate[0])
    ):
      V.fail(
        fn, "control_variate", "be a pair (g, mean_g) with g callable", repr(control_variate), exc=TypeError
      )
  x_struct = jax.eval_shape(sample, key)
  out_struct = jax.eval_shape(f, x_struct)
  out_dtype = jnp.result_type(*[s.dtype for s in jax.tree.leaves(out_struct)], float)
  cdtype = compute_dtype(out_dtype if jnp.issubdtype(out_dtype, jnp.floating) else jnp.result_type(float))
  numbers = max(1, sum(math.prod(s.shape) for s in jax.tree.leaves(x_struct)))
  block = _block_size(numbers, n)
  bps = max(1, (batch_size or _default_batch(block)) // block)
  struct = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, cdtype), out_struct)

  def draw(k):
    xs = jax.vmap(sample)(jax.random.split(k, block))
    return xs, _eval(f, xs, cdtype)

  if control_variate is None:
    stats = _iid_stats(
      lambda k: draw(k)[1], key, num_units=n, units_per_block=block, blocks_per_step=bps, value_struct=struct
    )
    return _finish(stats, jnp.asarray(1, cdtype), out_dtype, n)

  g, mean_g = control_variate
  g_struct = jax.eval_shape(g, x_struct)
  if jax.tree.structure(g_struct) != jax.tree.structure(out_struct):
    V.fail(
      fn,
      "control_variate",
      "have g returning f's pytree structure",
      f"{jax.tree.structure(g_struct)} vs {jax.tree.structure(out_struct)}",
      exc=TypeError,
    )

  # Stats of (f, g, f*g-cross) via the same mean/M2 machinery on the pair and
  # on f + g: Cov(f, g) = (Var(f + g) - Var(f) - Var(g)) / 2.
  def unit_fn(k):
    xs, fv = draw(k)
    gv = _eval(g, xs, cdtype)
    return fv, gv, jax.tree.map(jnp.add, fv, gv)

  stats = _iid_stats(
    unit_fn,
    key,
    num_units=n,
    units_per_block=block,
    blocks_per_step=bps,
    value_struct=(struct, struct, struct),
  )
  count, (mf, mg, _), (sff, sgg, sss) = stats

  def leaf(mf, mg, sff, sgg, sss, mu):
    sfg = (sss - sff - sgg) / 2
    c = jnp.where(sgg > 0, sfg / jnp.where(sgg > 0, sgg, 1), 0)
    est = mf - c * (mg - jnp.asarray(mu, mf.dtype))
    resid = jnp.maximum(sff - 2 * c * sfg + c * c * sgg, 0)
    cnt = count.astype(mf.dtype)
    se = jnp.where(count > 2, jnp.sqrt(resid / jnp.maximum(cnt - 2, 1) / cnt), jnp.inf)
    return est.astype(out_dtype), se.astype(out_dtype)

  mu = jax.tree.map(lambda s, m: jnp.broadcast_to(jnp.asarray(m), s.shape), struct, mean_g)
  estimate, stderr = _unzip_map(leaf, mf, mg, sff, sgg, sss, mu)
  return MCResult(estimate, stderr, jnp.asarray(n, jnp.int32))


def importance_sampling(
  f: Callable,
  log_p: Callable,
  sample_q: Callable,
  log_q: Callable,
  key,
  *,
  n: int,
  self_normalized: bool = False,
) -> ISResult:
  r"""E_p[f(X)] from draws of a proposal ``q``, with stderr and effective sample size.

  With weights :math:`w_i = p(X_i)/q(X_i)`, :math:`X_i \sim q`:

  .. math::
    \hat\mu = \frac1N \sum_i w_i f(X_i) \quad\text{or, self-normalized,}\quad
    \hat\mu = \frac{\sum_i w_i f(X_i)}{\sum_i w_i},
    \qquad \mathrm{ESS} = \frac{(\sum_i w_i)^2}{\sum_i w_i^2}

  The self-normalized form needs ``log_p`` only up to a constant; its stderr
  is the delta-method one, :math:`\sqrt{\sum_i w_i^2 (f_i - \hat\mu)^2} / \sum_i w_i`.
  Weights are formed in log space, shifted by their maximum.

  Args:
    f: maps one sample to a scalar or pytree of arrays.
    log_p: target log-density of one sample (normalized unless
      ``self_normalized``).
    sample_q: ``sample_q(key) -> x``, one draw from the proposal.
    log_q: proposal log-density of one sample.
    key: a ``jax.random`` key; sample ``i`` uses ``jax.random.split(key, n)[i]``.
    n: number of samples (static; all held in memory).
    self_normalized: use the ratio estimator.

  Returns:
    ``ISResult(estimate, stderr, n, ess)``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jax.scipy.stats import norm
    >>> from jaxsoft.montecarlo import importance_sampling
    >>> r = importance_sampling(lambda x: (x > 3.0).astype(jnp.float32), norm.logpdf,
    ...                         lambda k: 3.0 + jax.random.normal(k),
    ...                         lambda x: norm.logpdf(x, 3.0), jax.random.key(0), n=2**14)
    >>> print(f"{r.estimate:.2e} +- {r.stderr:.0e}")  # exact P(X > 3) = 1.35e-03
    1.35e-03 +- 2e-05

  References:
    Owen, "Monte Carlo theory, methods and examples", 2013, chapter 9.
  """
  fn = "importance_sampling"
  n = V.check_int(fn, "n", n, minimum=1)
  if not isinstance(self_normalized, bool):
    V.fail(fn, "self_normalized", "be a bool", repr(self_normalized), exc=TypeError)
  xs = jax.vmap(sample_q)(jax.random.split(key, n))
  log_w = jax.vmap(log_p)(xs) - jax.vmap(log_q)(xs)
  fv = jax.vmap(f)(xs)
  dtype = jnp.result_type(log_w, *jax.tree.leaves(fv), float)
  cdtype = compute_dtype(dtype)
  log_w = log_w.astype(cdtype)
  if log_w.shape != (n,):
    V.fail(fn, "log_p", "return a scalar log-density per sample", f"shape {log_w.shape[1:]}")
  shift = lax.stop_gradient(jnp.max(log_w))
  w = jnp.exp(log_w - shift)
  sum_w = jnp.sum(w)
  ess = jnp.square(sum_w) / jnp.sum(jnp.square(w))
  cnt = jnp.asarray(n, cdtype)

  def leaf(v):
    v = v.astype(cdtype)
    wb = w.reshape((n,) + (1,) * (v.ndim - 1))
    if self_normalized:
      est = jnp.sum(wb * v, axis=0) / sum_w
      se = jnp.sqrt(jnp.sum(jnp.square(wb * (v - est)), axis=0)) / sum_w
    else:
      scale = jnp.exp(shift)
      wv = wb * v
      mean = jnp.mean(wv, axis=0)
      var = jnp.sum(jnp.square(wv - mean), axis=0) / jnp.maximum(cnt - 1, 1)
      est = scale * mean
      se = scale * jnp.sqrt(var / cnt)
    return est.astype(dtype), se.astype(dtype)

  estimate, stderr = _unzip_map(leaf, fv)
  return ISResult(estimate, stderr, jnp.asarray(n, jnp.int32), ess.astype(dtype))


# ----------------------------------------------------------------------------
# Adaptive stopping
# ----------------------------------------------------------------------------


def integrate_to_tolerance(
  f: Callable,
  key,
  *,
  lower,
  upper,
  atol=0.0,
  rtol=1e-3,
  max_n: int = 2**26,
  method: str = "mc",
  replicates: int = 16,
) -> ToleranceResult:
  r"""Integrates, doubling the sample size until the error bar is small enough.

  Stops at the first :math:`N` with
  :math:`\mathrm{se} \le \max(\mathrm{atol}, \mathrm{rtol}\,|\hat I|)` for every
  element of every leaf, or when doubling again would exceed ``max_n``. Runs
  inside one ``lax.while_loop``; already drawn points are kept and the new
  points continue the same stream, so the result at size :math:`N` equals
  ``integrate(..., n=N)`` for ``"mc"``/``"antithetic"`` (for ``N`` of at least
  one block) and for ``"sobol"``/``"halton"`` (to rounding).

  Args:
    f, key, lower, upper: as in :func:`integrate`.
    atol, rtol: absolute and relative tolerances on the standard error.
    max_n: the most evaluations (static).
    method: ``"mc"``, ``"antithetic"``, ``"sobol"`` or ``"halton"``.
    replicates: randomizations for the quasi-Monte Carlo methods (static).

  Returns:
    ``ToleranceResult(estimate, stderr, n, converged)``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoft.montecarlo import integrate_to_tolerance
    >>> r = integrate_to_tolerance(lambda x: 4.0 * (jnp.sum(x ** 2) < 1), jax.random.key(0),
    ...                            lower=jnp.zeros(2), upper=jnp.ones(2), rtol=1e-3)
    >>> print(f"{r.estimate:.4f} +- {r.stderr:.4f}, n={r.n}, {r.converged}")
    3.1364 +- 0.0023, n=524288, True
  """
  fn = "integrate_to_tolerance"
  V.check_option(fn, "method", method, ("mc", "antithetic", "sobol", "halton"))
  max_n = V.check_int(fn, "max_n", max_n, minimum=2)
  V.check_range(fn, "atol", atol, 0.0, math.inf)
  V.check_range(fn, "rtol", rtol, 0.0, math.inf)
  lower, upper, dim, dtype, cdtype = _box(fn, lower, upper)
  struct = _values_struct(fn, f, dim, cdtype)
  key = _as_typed_key(fn, key)
  width = upper - lower
  volume = jnp.prod(width)
  atol = jnp.asarray(atol, cdtype)
  rtol = jnp.asarray(rtol, cdtype)

  def done(estimate, stderr):
    ok = jax.tree.map(lambda e, s: jnp.all(s <= jnp.maximum(atol, rtol * jnp.abs(e))), estimate, stderr)
    return jnp.all(jnp.stack(jax.tree.leaves(ok)))

  if method in ("sobol", "halton"):
    replicates = V.check_int(fn, "replicates", replicates, minimum=2)
    max_rep = max_n // replicates
    if max_rep < 1:
      V.fail(fn, "max_n", f"be >= replicates ({replicates})", max_n)
    chunk = min(_pow2_floor(_block_size(dim, 2**62) // replicates), _pow2_floor(max_rep))
    point_fn = lambda u: _eval(f, lower + width * u, cdtype)
    # One replicate function per round size would recompile; instead run the
    # chunks of each round in a dynamic fori_loop over chunk indices.
    replicate_chunk = _qmc_chunk_fn(method, point_fn, key, dim, chunk, cdtype)

    def add_chunks(stats, lo_chunk, hi_chunk):
      def rep(r, st):
        def body(c, s):
          return _merge(s, _block_stats(replicate_chunk(r, c), None))

        return lax.fori_loop(lo_chunk, hi_chunk, body, st)

      return jax.vmap(rep)(jnp.arange(replicates), stats)

    def summary(stats):
      means = stats[1]
      count, mean, m2 = _block_stats(means, None)
      return (
        jax.tree.map(lambda m: m * volume, mean),
        jax.tree.map(lambda s: _stderr(count, s) * jnp.abs(volume), m2),
      )

    init = jax.vmap(lambda _: _zero_stats(struct))(jnp.arange(replicates))
    stats0 = add_chunks(init, 0, 1)
    max_chunks = max_rep // chunk

    def cond(state):
      stats, chunks = state
      return (~done(*summary(stats))) & (2 * chunks <= max_chunks)

    def body(state):
      stats, chunks = state
      return add_chunks(stats, chunks, 2 * chunks), 2 * chunks

    stats, chunks = lax.while_loop(cond, body, (stats0, jnp.asarray(1, jnp.int32)))
    estimate, stderr = summary(stats)
    total = chunks * chunk * replicates
  else:
    block = _block_size(dim, max_n)
    if method == "mc":
      upb, per_unit = block, 1

      def unit_fn(k):
        return _eval(f, lower + width * _uniform(k, (upb, dim), cdtype), cdtype)
    else:
      upb, per_unit = max(block // 2, 1), 2

      def unit_fn(k):
        u = _uniform(k, (upb, dim), cdtype)
        a = _eval(f, lower + width * u, cdtype)
        b = _eval(f, lower + width * (1 - u), cdtype)
        return jax.tree.map(lambda p, q: (p + q) / 2, a, b)

    def add_blocks(stats, lo, hi):
      def body(j, s):
        return _merge(s, _block_stats(unit_fn(jax.random.fold_in(key, j)), None))

      return lax.fori_loop(lo, hi, body, stats)

    def summary(stats):
      count, mean, m2 = stats
      return (
        jax.tree.map(lambda m: m * volume, mean),
        jax.tree.map(lambda s: _stderr(count, s) * jnp.abs(volume), m2),
      )

    max_blocks = max(max_n // (upb * per_unit), 1)

    def cond(state):
      stats, blocks = state
      return (~done(*summary(stats))) & (2 * blocks <= max_blocks)

    def body(state):
      stats, blocks = state
      return add_blocks(stats, blocks, 2 * blocks), 2 * blocks

    stats0 = add_blocks(_zero_stats(struct), 0, 1)
    stats, blocks = lax.while_loop(cond, body, (stats0, jnp.asarray(1, jnp.int32)))
    estimate, stderr = summary(stats)
    total = blocks * upb * per_unit
  return ToleranceResult(
    jax.tree.map(lambda e: e.astype(dtype), estimate),
    jax.tree.map(lambda s: s.astype(dtype), stderr),
    total.astype(jnp.int32),
    done(estimate, stderr),
  )


def _qmc_chunk_fn(method, point_fn, key, dim, chunk, cdtype):
  """``chunk_values(r, c)``: ``f`` at chunk ``c`` of randomization ``r``."""
  log2_chunk = chunk.bit_length() - 1
  v = jnp.asarray(_qmc._direction_numbers(dim)) if method == "sobol" else None

  def chunk_values(r, c):
    key_r = jax.random.fold_in(key, r)
    if method == "sobol":
      v_r, shift = _qmc._sobol_randomization(key_r, v)
      table = _qmc._sobol_table(v_r, log2_chunk) ^ shift
      u = _qmc._to_unit(table ^ _qmc._sobol_point((c * chunk).astype(jnp.uint32), v_r), cdtype)
    else:
      digits = _qmc._halton_random_digits(cdtype)
      scramble = _qmc._halton_randomization(key_r, dim, digits)
      u = _qmc._halton_points(c * chunk + jnp.arange(chunk), dim, digits, cdtype, scramble)
    return point_fn(u)

  return chunk_values


def confidence_interval(result, level: float = 0.95):
  r"""Normal-approximation interval ``estimate -+ z * stderr``.

  .. math:: \hat I \pm \Phi^{-1}\big(\tfrac{1 + \text{level}}{2}\big)\, \mathrm{se}

  Args:
    result: an :class:`MCResult` (or any result with ``estimate`` and
      ``stderr``).
    level: coverage probability in (0, 1).

  Returns:
    ``(low, high)``, each shaped like ``result.estimate``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoft.montecarlo import MCResult, confidence_interval
    >>> lo, hi = confidence_interval(MCResult(jnp.float32(1.0), jnp.float32(0.1), 100))
    >>> print(f"{lo:.4f} {hi:.4f}")
    0.8040 1.1960
  """
  V.check_range("confidence_interval", "level", level, 0.0, 1.0, lo_open=True, hi_open=True)
  z = jax.scipy.special.ndtri((1.0 + jnp.asarray(level, jnp.float32)) / 2)
  low = jax.tree.map(lambda e, s: e - (z * s).astype(jnp.result_type(e)), result.estimate, result.stderr)
  high = jax.tree.map(lambda e, s: e + (z * s).astype(jnp.result_type(e)), result.estimate, result.stderr)
  return low, high
