"""Monte Carlo integration with error bars, quasi-Monte Carlo, variance reduction.

Every estimator is a pure function of an explicit ``jax.random`` key and
returns a NamedTuple with the estimate, its standard error and the degrees of
freedom of that standard error, so the nominal 95% Student t interval
``estimate +- t_dof(0.975) stderr`` (:func:`confidence_interval`) covers the
true value about 95% of the time.

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

Calibration. The defaults (``replicates``, the rounds of ``"stratified"``)
were chosen from coverage measured by simulation: over 4000 random keys, the
95% interval of every method at its defaults covered the true value in 0.934
to 0.958 of the trials on a smooth integrand, one with a kink and a
Black-Scholes call, at n = 2**12 and 2**16 (``experiments/monte_carlo.py``
measures it; ``benchmarks/RESULTS.md`` has the table).

Several devices. ``devices=`` spreads the work over local devices with
``jax.shard_map`` and merges the partial statistics with ``all_gather``. The
random streams are keyed by global position, not by device: block ``j`` is
drawn from ``fold_in(key, j)`` and randomization ``r`` from ``fold_in(key,
r)`` whichever device runs it, so 1, 2 or 4 devices evaluate ``f`` at the
same points. For the quasi-Monte Carlo methods (whole randomizations per
device) the result equals the single-device result exactly for Sobol' and
lattice points (integer digits) and to an ulp for Halton's (float digit sums
that XLA may contract differently in the sharded program); for the i.i.d.
methods (contiguous ranges of blocks per device) the per-device statistics
are merged in another order, so it equals it to float rounding.
``integrate_to_tolerance`` starts at one step per device and doubles, so
the sizes it tries depend on the device count: with a power-of-two count
``D`` they are the one-device sizes from ``D`` steps on, and it stops at the
one-device size (and result, to float rounding) whenever that size is at
least ``D`` steps; a smaller one-device size is overshot.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.extend.random as jex_random
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec

from jaxsoft import _running_stats as RS
from jaxsoft import _validate as V
from jaxsoft import qmc as _qmc
from jaxsoft._dtypes import compute_dtype
from jaxsoft._interval import Interval, t_quantile
from jaxsoft._sharding import device_mesh

__all__ = [
  "MCResult",
  "ToleranceResult",
  "ISResult",
  "integrate",
  "expectation",
  "gaussian_transform",
  "importance_sampling",
  "integrate_to_tolerance",
  "confidence_interval",
]

_METHODS = ("mc", "antithetic", "stratified", "sobol", "halton", "lattice")
_QMC = ("sobol", "halton", "lattice")
# Numbers (points x dim) per random block: 2 MiB of float32, which stays in
# cache; larger one-shot batches are memory bound on CPU (see the benchmark).
_BLOCK_NUMBERS = 2**19
# Calibrated defaults, chosen from coverage measured by simulation (the
# ``monte_carlo`` experiment; benchmarks/RESULTS.md): the smallest of 16, 32,
# 64, 128 and 256 whose 95% Student t interval covered at least 0.9335 (0.93
# plus one standard deviation of the estimate) of 4000 trials on a smooth
# integrand, one with a kink and the Black-Scholes call, at n = 2**12 and
# 2**16. (Lattice with 128 covered the call 0.9295 and 0.9355 over 2000
# trials at n = 2**12 with two other seeds; with 256, 0.9390 to 0.9580 on all
# three integrands at both sizes and both seeds.) The call's replicate means are skewed (the inverse normal CDF makes
# its payoff unbounded near u = 1), so the interval needs more of them than
# the t quantile alone can make up for; fewer replicates give smaller error
# bars on smooth integrands, and can be asked for.
_DEFAULT_REPLICATES = {"sobol": 32, "halton": 16, "lattice": 256}
# Stratified sampling keeps at least this many independent rounds of one point
# per stratum (with 32, the call's interval covered 0.933 at n = 2**12).
_MIN_ROUNDS = 64
_AXIS = "mc"


class MCResult(NamedTuple):
  """A Monte Carlo estimate.

  Attributes:
    estimate: the estimate, a pytree shaped like ``f``'s output.
    stderr: its standard error, same structure.
    n: the number of function evaluations used (int32 scalar).
    dof: the degrees of freedom of ``stderr`` (int32 scalar): the number of
      independent units it was estimated from, minus one (``n - 1`` for
      ``"mc"``, ``replicates - 1`` for the quasi-Monte Carlo methods).
      :func:`confidence_interval` uses the Student t quantile with them;
      ``None`` (the default, for results built by hand) means the normal one.
  """

  estimate: Any
  stderr: Any
  n: jax.Array
  dof: Any = None


class ToleranceResult(NamedTuple):
  """:func:`integrate_to_tolerance`'s result: :class:`MCResult`'s fields plus ``converged``."""

  estimate: Any
  stderr: Any
  n: jax.Array
  converged: jax.Array
  dof: Any = None


class ISResult(NamedTuple):
  """:func:`importance_sampling`'s result: :class:`MCResult`'s fields plus the effective sample size."""

  estimate: Any
  stderr: Any
  n: jax.Array
  ess: jax.Array
  dof: Any = None


# ----------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------


class _Box(NamedTuple):
  """``f`` on the box ``[lower, lower + width]``, evaluated in the compute dtype."""

  f: Callable
  lower: jax.Array
  width: jax.Array
  dim: int
  dtype: Any  # the output dtype
  cdtype: Any  # the dtype to accumulate in
  struct: Any  # f's output for one point, as ShapeDtypeStructs in cdtype

  @property
  def volume(self):
    return jnp.prod(self.width)

  def at(self, u):
    """``f`` at the points ``lower + width * u`` for ``u`` ``[m, dim]`` in ``[0, 1)``; leaves ``[m, ...]``."""
    return _eval(self.f, self.lower + self.width * u, self.cdtype)


def _box(fn, f, lower, upper) -> _Box:
  V.check_array(fn, "lower", lower)
  V.check_array(fn, "upper", upper)
  V.check_ndim(fn, "lower", lower, 1, " ([dim])")
  V.check_shape(fn, "upper", upper, np.shape(lower), " (the shape of lower)")
  dim = np.shape(lower)[0]
  if dim == 0:
    V.fail(fn, "lower", "have at least one dimension", "shape (0,)")
  dtype = jnp.result_type(lower, upper)
  if not jnp.issubdtype(dtype, jnp.floating):
    dtype = jnp.result_type(float)
  cdtype = compute_dtype(dtype)
  lower = jnp.asarray(lower, cdtype)
  width = jnp.asarray(upper, cdtype) - lower
  return _Box(f, lower, width, dim, dtype, cdtype, _values_struct(fn, f, dim, cdtype))


def _values_struct(fn, f, dim, cdtype):
  """``f``'s output structure (leaves cast to the compute dtype)."""
  try:
    out = jax.eval_shape(f, jax.ShapeDtypeStruct((dim,), cdtype))
  except Exception as e:  # pragma: no cover - the message is what matters
    V.fail(fn, "f", f"map one point of shape ({dim},) to a pytree of arrays", f"error {e!r}", exc=TypeError)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, cdtype), out)


def _eval(f, x, cdtype):
  return jax.tree.map(lambda v: jnp.asarray(v).astype(cdtype), jax.vmap(f)(x))


def _check_batch_size(fn, batch_size):
  return None if batch_size is None else V.check_int(fn, "batch_size", batch_size, minimum=1)


def _check_replicates(fn, method, replicates, size_arg, size):
  if replicates is None:
    replicates = _DEFAULT_REPLICATES[method]
  replicates = V.check_int(fn, "replicates", replicates, minimum=2)
  if size < replicates:
    V.fail(fn, size_arg, f"be >= replicates ({replicates}) for method {method!r}", size)
  return replicates


def _check_count(fn, arg, n) -> int:
  """A number of evaluations: a Python int in [1, 2**31) (results count them in int32)."""
  n = V.check_int(fn, arg, n, minimum=1)
  if n >= 2**31:
    V.fail(fn, arg, "be < 2**31 (the evaluation count is an int32)", n)
  return n


def _check_integrate(fn, method, n, batch_size, replicates, devices, size_arg="n"):
  """``integrate``'s static options, checked: ``(n, batch_size, replicates, mesh)``.

  ``size_arg`` names the size in messages (``integrate_to_tolerance``'s is ``max_n``).
  """
  V.check_option(fn, "method", method, _METHODS)
  n = _check_count(fn, size_arg, n)
  batch_size = _check_batch_size(fn, batch_size)
  mesh = device_mesh(fn, devices, _AXIS)
  if method in _QMC:
    replicates = _check_replicates(fn, method, replicates, size_arg, n)
    if mesh is not None and replicates % mesh.devices.size:
      V.fail(fn, "replicates", f"be a multiple of the number of devices ({mesh.devices.size})", replicates)
  elif method == "antithetic" and n % 2 and size_arg == "n":
    V.fail(fn, "n", "be even for method 'antithetic'", n)
  return n, batch_size, replicates, mesh


def _check_tolerance(fn, method, atol, rtol, max_n, batch_size, replicates, devices):
  """``integrate_to_tolerance``'s static options, checked: ``(max_n, batch_size, replicates, mesh)``."""
  V.check_range(fn, "atol", atol, 0.0, math.inf)
  V.check_range(fn, "rtol", rtol, 0.0, math.inf)
  max_n = V.check_int(fn, "max_n", max_n, minimum=2)
  return _check_integrate(fn, method, max_n, batch_size, replicates, devices, size_arg="max_n")


def _check_strata(fn, method, strata_per_axis, dim: int, n: int, size_arg: str) -> int:
  """Strata per axis of ``"stratified"``: ``strata_per_axis``, or the default for size ``n``."""
  block = _block_size(dim, 2**62)
  if strata_per_axis is None:
    return _strata(dim, n, block) if method == "stratified" else 1
  if method != "stratified":
    V.fail(fn, "strata_per_axis", "be None unless method is 'stratified'", strata_per_axis)
  k = V.check_int(fn, "strata_per_axis", strata_per_axis, minimum=1)
  if k**dim > block:
    V.fail(fn, "strata_per_axis", f"give at most {block} strata (strata_per_axis ** {dim})", k)
  if n < 2 * k**dim:
    V.fail(fn, size_arg, f"hold at least two rounds of the {k**dim} strata", n)
  return k


def _on_devices(mesh, local):
  """``local()`` on every device of ``mesh``, its (replicated) result returned."""
  return jax.shard_map(local, mesh=mesh, in_specs=(), out_specs=PartitionSpec(), check_vma=False)()


# ----------------------------------------------------------------------------
# The engine: a method's units, blocks of units added to running statistics,
# the summary. integrate runs it for a fixed size, integrate_to_tolerance
# doubles the size inside a while loop.
# ----------------------------------------------------------------------------


def _pow2_floor(x: int) -> int:
  return 1 << (max(int(x), 1).bit_length() - 1)


def _block_size(dim: int, n: int) -> int:
  return min(_pow2_floor(max(1, _BLOCK_NUMBERS // dim)), n)


def _default_batch(block: int) -> int:
  # On CPU one cache-sized block per step is fastest; accelerators want
  # bigger steps to fill the device.
  return block if jax.default_backend() == "cpu" else max(block, 2**20)


def _strata(dim: int, n: int, block: int) -> int:
  """Strata per axis: the most with ``_MIN_ROUNDS`` rounds that fit a block."""
  k = 1
  while (k + 1) ** dim * _MIN_ROUNDS <= n and (k + 1) ** dim <= block:
    k += 1
  return k


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


def _unit_fn(method: str, box: _Box, block: int, k_axis: int = 1):
  """``(unit_fn, units_per_block, evals_per_unit)`` of an i.i.d. method.

  ``unit_fn(k)`` draws one block of ``block`` points from the key ``k`` and
  returns the values of its units, leaves ``[units_per_block, ...]``.
  ``"stratified"`` cuts each axis into ``k_axis`` strata.
  """
  dim, cdtype = box.dim, box.cdtype
  if method == "mc":
    return (lambda k: box.at(_uniform(k, (block, dim), cdtype))), block, 1
  if method == "antithetic":
    pairs = max(block // 2, 1)

    def unit_fn(k):
      u = _uniform(k, (pairs, dim), cdtype)
      return jax.tree.map(lambda p, q: (p + q) / 2, box.at(u), box.at(1 - u))

    return unit_fn, pairs, 2
  # "stratified": a unit is a round of one point in each of the k**dim strata.
  strata = k_axis**dim
  rounds = max(block // strata, 1)
  corners = jnp.asarray(
    np.array(list(itertools.product(range(k_axis), repeat=dim)), np.float32).reshape(strata, dim), cdtype
  )

  def unit_fn(k):
    x = box.lower + box.width * ((corners + _uniform(k, (rounds, strata, dim), cdtype)) / k_axis)
    values = _eval(box.f, x.reshape(rounds * strata, dim), cdtype)
    return jax.tree.map(lambda v: jnp.mean(v.reshape((rounds, strata) + v.shape[1:]), axis=1), values)

  return unit_fn, rounds, strata


def _loop(body, carry, first, count):
  """``carry = body(i, carry)`` for ``i`` from ``first`` to ``first + count - 1``.

  A ``scan`` (reverse-mode differentiable) when ``count`` is a Python int, a
  ``fori_loop`` when it is traced.
  """
  if isinstance(count, int):
    return lax.scan(lambda c, i: (body(i, c), None), carry, jnp.arange(count) + first)[0]
  return lax.fori_loop(first, first + count, body, carry)


def _iid_adder(unit_fn, key, *, units_per_block: int, blocks_per_step: int, num_units: int | None = None):
  """``add(stats, first, count)``: ``stats`` plus steps ``first .. first + count - 1``.

  Step ``s`` holds blocks ``s * blocks_per_step`` onwards; block ``j`` is
  ``unit_fn(fold_in(key, j))``. Units from ``num_units`` on are masked out.
  """
  upb, bps = units_per_block, blocks_per_step

  def add(stats, first, count):
    need_mask = num_units is not None and (
      num_units % (upb * bps) != 0 or not (isinstance(first, int) and first == 0)
    )

    def step(s, stats):
      ids = s * bps + jnp.arange(bps)
      values = jax.vmap(unit_fn)(jax.vmap(jax.random.fold_in, (None, 0))(key, ids))
      mask = ids[:, None] * upb + jnp.arange(upb) < num_units if need_mask else None
      # Reduce block by block (lax.map, not vmap): a [k, block] reduction may
      # sum in another order than a [block] one, and the result must not depend
      # on how many blocks a step holds.
      blocks = lax.map(lambda vm: RS.block_stats(*vm), (values, mask))
      return RS.merge_sequential(stats, blocks)

    return _loop(step, stats, first, count)

  return add


def _iid_stats(unit_fn, key, value_struct, *, num_units, units_per_block, blocks_per_step, mesh=None):
  """Statistics of ``num_units`` units; on ``mesh``, contiguous ranges of steps per device."""
  add = _iid_adder(
    unit_fn, key, units_per_block=units_per_block, blocks_per_step=blocks_per_step, num_units=num_units
  )
  num_steps = -(-num_units // (units_per_block * blocks_per_step))
  init = RS.zeros(value_struct)
  if mesh is None:
    return add(init, 0, num_steps)
  per_device = -(-num_steps // mesh.devices.size)

  def local():
    stats = add(init, lax.axis_index(_AXIS) * per_device, per_device)
    gathered = jax.tree.map(lambda x: lax.all_gather(x, _AXIS), stats)
    return RS.merge_sequential(init, gathered)

  return _on_devices(mesh, local)


def _qmc_adder(box: _Box, points, *, chunk: int, points_per_replicate: int | None = None):
  """``add(scrambled, stats, first, count)``: one randomization's ``stats`` plus its chunks ``first ..``.

  ``points(scrambled, c)`` is chunk ``c`` of the randomization
  (:func:`jaxsoft.qmc._randomized_chunks`); points from
  ``points_per_replicate`` on are masked out.
  """
  n_rep = points_per_replicate
  need_mask = n_rep is not None and n_rep % chunk != 0

  def add(scrambled, stats, first, count):
    def step(c, stats):
      # Only the last chunk, c = n_rep // chunk, is cut (written without c * chunk,
      # which could overflow int32).
      mask = (c < n_rep // chunk) | (jnp.arange(chunk) < n_rep % chunk) if need_mask else None
      return RS.merge(stats, RS.block_stats(box.at(points(scrambled, c)), mask))

    return _loop(step, stats, first, count)

  return add


def _map_replicates(replicate, replicates: int, mesh):
  """``[replicates, ...]`` stacked ``replicate(r)``; over devices when ``mesh`` is given.

  Replicates run one after the other (``lax.map``) on every path, so each
  replicate's program, and hence its value, is the same with or without
  devices.
  """
  if mesh is None:
    return lax.map(replicate, jnp.arange(replicates))
  per = replicates // mesh.devices.size

  def local():
    out = lax.map(replicate, lax.axis_index(_AXIS) * per + jnp.arange(per))
    return jax.tree.map(lambda m: lax.all_gather(m, _AXIS, tiled=True), out)

  return _on_devices(mesh, local)


def _qmc_chunks(method, key, dim, chunk, dtype, length):
  r""":func:`jaxsoft.qmc._randomized_chunks`, lattice points periodized by the tent transform.

  The tent (baker's) transform :math:`u \mapsto 1 - |2u - 1|` keeps every
  point uniform and makes the integrand periodic in effect, so a shifted
  lattice rule converges like :math:`O(n^{-2+\epsilon})` on smooth integrands
  instead of :math:`O(n^{-1})` (Hickernell 2002), the lattice analogue of
  what scrambling gives Sobol' points.
  """
  scramble, points = _qmc._randomized_chunks(method, key, dim, chunk, dtype, length)
  if method != "lattice":
    return scramble, points

  def tent(scrambled, c):
    u = points(scrambled, c)
    # 2u and 2 - 2u are exact in floating point (1 - |2u - 1| is not, near 0).
    return jnp.where(u < 0.5, 2 * u, 2 - 2 * u)

  return scramble, tent


def _summary(units, volume):
  """Estimate, standard error and degrees of freedom of ``volume`` times the mean of the units."""
  count, mean, m2 = units
  return (
    jax.tree.map(lambda m: m * volume, mean),
    jax.tree.map(lambda s: RS.stderr(count, s) * jnp.abs(volume), m2),
    count - 1,
  )


def _cast(tree, dtype):
  return jax.tree.map(lambda x: x.astype(dtype), tree)


# ----------------------------------------------------------------------------
# integrate
# ----------------------------------------------------------------------------


def integrate(
  f: Callable,
  key,
  *,
  lower,
  upper,
  n: int,
  method: str = "mc",
  batch_size: int | None = None,
  replicates: int | None = None,
  strata_per_axis: int | None = None,
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
    point in each per *round*; units = round means (proportional allocation;
    ``n`` is rounded down to whole rounds). By default ``k`` is the largest
    that leaves at least 64 rounds and lets a round fit one block, so in high
    dimension it falls back to plain Monte Carlo with ``k = 1``;
    ``strata_per_axis`` sets it.
  * ``"sobol"``, ``"halton"``, ``"lattice"``: ``replicates`` independent
    randomizations of ``n // replicates`` points each
    (:func:`jaxsoft.qmc.sobol`, :func:`~jaxsoft.qmc.halton`,
    :func:`~jaxsoft.qmc.lattice` with key ``fold_in(key, r)``; lattice points
    go through the tent transform :math:`u \mapsto 1 - |2u - 1|`, which
    keeps them uniform and lifts the rule's order on smooth non-periodic
    integrands from :math:`n^{-1}` to nearly :math:`n^{-2}`); units = the
    replicate means, with ``replicates - 1`` degrees of freedom.

  Args:
    f: maps one point ``[dim]`` to a scalar or a pytree of arrays; vectorized
      with ``vmap``.
    key: a ``jax.random`` key; its implementation picks the PRNG (see module
      docs).
    lower, upper: ``[dim]`` corners of the box (their floating dtype is the
      output dtype).
    n: number of evaluations of ``f`` (static).
    method: one of ``"mc"``, ``"antithetic"``, ``"stratified"``, ``"sobol"``,
      ``"halton"``, ``"lattice"``.
    batch_size: points evaluated per step (static); peak memory is
      proportional to it. Default: one block (``2**19 // dim`` points) on CPU,
      at least ``2**20`` points on accelerators. For the i.i.d. methods it is
      rounded down to whole blocks (at least one; the statistics are still
      reduced one block at a time) and does not change the result: bit for bit for
      ``"mc"`` and ``"antithetic"``, to float rounding of the stderr for
      ``"stratified"``. For QMC it is rounded down to a power of two and
      changes the summation order only.
    replicates: randomizations for ``"sobol"``, ``"halton"`` and ``"lattice"``
      (static). Default (``None``): 32, 16 and 256 respectively, the counts
      whose 95% intervals were measured to cover 0.93 to 0.96 of the time on
      smooth, kinked and option-payoff integrands (see the module notes);
      fewer replicates leave more points to each and give smaller error bars
      on smooth integrands, at the risk of a too narrow interval when the
      replicate means are skewed.
    strata_per_axis: ``k`` for ``"stratified"`` (static; ``k ** dim`` strata
      must fit one block of ``2**19 // dim`` points). Default: chosen from
      ``n`` as above.
    devices: ``None`` (default device), an int (the first that many local
      devices) or a sequence of devices to spread the work over with
      ``shard_map``: contiguous ranges of blocks for the i.i.d. methods (the
      same points; the same estimate up to float rounding), whole
      randomizations for QMC (``replicates`` must be a multiple of the
      device count; same result, bit for bit for Sobol' and lattice, to an
      ulp for Halton), for any device count.

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
    0.557746 +- 3.5e-07

  References:
    Owen, "Monte Carlo theory, methods and examples", 2013, chapters 2, 8, 17.
  """
  fn = "integrate"
  n, batch_size, replicates, mesh = _check_integrate(fn, method, n, batch_size, replicates, devices)
  box = _box(fn, f, lower, upper)
  key = V.check_key(fn, "key", key)
  k_axis = _check_strata(fn, method, strata_per_axis, box.dim, n, "n")
  if method in _QMC:
    units, used = _integrate_qmc(box, key, method, n, batch_size, replicates, mesh)
  else:
    units, used = _integrate_iid(box, key, method, n, batch_size, k_axis, mesh)
  estimate, stderr, dof = _summary(units, box.volume)
  return MCResult(_cast(estimate, box.dtype), _cast(stderr, box.dtype), jnp.asarray(used, jnp.int32), dof)


def _integrate_iid(box, key, method, n, batch_size, k_axis, mesh):
  """Statistics of the units of ``"mc"``, ``"antithetic"`` or ``"stratified"``, and the evaluations."""
  block = _block_size(box.dim, n)
  unit_fn, upb, per_unit = _unit_fn(method, box, block, k_axis)
  units = n // per_unit
  bps = max(1, (batch_size or _default_batch(block)) // (upb * per_unit))
  stats = _iid_stats(
    unit_fn, key, box.struct, num_units=units, units_per_block=upb, blocks_per_step=bps, mesh=mesh
  )
  return stats, units * per_unit


def _integrate_qmc(box, key, method, n, batch_size, replicates, mesh):
  """Statistics of the randomization means of ``"sobol"`` or ``"halton"``, and the evaluations."""
  n_rep = n // replicates
  chunk = min(
    _pow2_floor(batch_size or _default_batch(_block_size(box.dim, 2**62))), 1 << (n_rep - 1).bit_length()
  )
  num_chunks = -(-n_rep // chunk)
  scramble, points = _qmc_chunks(method, key, box.dim, chunk, box.cdtype, num_chunks * chunk)
  add = _qmc_adder(box, points, chunk=chunk, points_per_replicate=n_rep)
  init = RS.zeros(box.struct)
  means = _map_replicates(lambda r: add(scramble(r), init, 0, num_chunks)[1], replicates, mesh)
  return RS.block_stats(means), n_rep * replicates


# ----------------------------------------------------------------------------
# expectation, importance sampling
# ----------------------------------------------------------------------------


def expectation(
  f: Callable,
  sample: Callable,
  key,
  *,
  n: int,
  method: str = "mc",
  dim: int | None = None,
  batch_size: int | None = None,
  replicates: int | None = None,
  control_variate: tuple[Callable, Any] | None = None,
) -> MCResult:
  r"""E[f(X)] for ``X = sample(key)``, or ``X = sample(U)`` with ``U`` uniform on the unit cube.

  Two ways to draw ``X``:

  * ``dim=None`` (default): ``sample(key) -> x`` draws i.i.d. samples
    (``method="mc"`` only; a control variate may be given).
  * ``dim`` an int: ``sample(u) -> x`` maps a point ``u`` of
    :math:`[0, 1)^{dim}` to a draw (an inverse-CDF transform such as
    :func:`gaussian_transform`), and
    :math:`E f(X) = \int_{[0,1]^{dim}} f(\mathrm{sample}(u))\,du` is
    computed by :func:`integrate` with any of its methods (``"sobol"``,
    ``"halton"``, ``"lattice"``, ``"antithetic"``, ...), with the same
    calibrated error bars.

  With a control variate :math:`g` of known mean:

  .. math::
    \hat\mu = \frac1N \sum_i \big(f(X_i) - \hat c\,(g(X_i) - \mathbb E g)\big),
    \qquad \hat c = \frac{\widehat{\mathrm{Cov}}(f, g)}{\widehat{\mathrm{Var}}(g)}

  The coefficient is estimated from the same samples (optimal, elementwise
  per leaf); its bias is :math:`O(1/N)`.

  Args:
    f: maps one sample to a scalar or a pytree of arrays.
    sample: ``sample(key) -> x``, one draw of ``X``; with ``dim``,
      ``sample(u) -> x`` for ``u`` of shape ``[dim]``.
    key: a ``jax.random`` key. Without ``dim``, sample ``i`` of block ``j``
      uses ``jax.random.split(fold_in(key, j), block)[i]``; with ``dim``, as
      in :func:`integrate`.
    n: number of samples (static).
    method: with ``dim``, any method of :func:`integrate`; else ``"mc"``.
    dim: the dimension of the unit cube that ``sample`` maps from (static),
      or ``None`` for ``sample(key)``.
    batch_size: samples per step (static); as in :func:`integrate` with
      ``dim``, else rounded to whole blocks and without effect on the result.
    replicates: randomizations of the quasi-Monte Carlo methods (static;
      default as in :func:`integrate`).
    control_variate: optional ``(g, mean_g)``, ``g`` mapping a sample to a
      pytree with ``f``'s structure and ``mean_g`` its known expectation
      (``dim=None`` only).

  Returns:
    ``MCResult(estimate, stderr, n, dof)``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoft.montecarlo import expectation, gaussian_transform
    >>> r = expectation(jnp.exp, jax.random.normal, jax.random.key(0), n=2**16,
    ...                 control_variate=(lambda x: x, 0.0))
    >>> print(f"{r.estimate:.3f} +- {r.stderr:.3f}")  # exact e^0.5 = 1.649
    1.651 +- 0.005

    The Keister integral :math:`\int_{R^5} \cos(|x|) e^{-|x|^2} dx`, i.e.
    :math:`\pi^{5/2} E \cos(|X|)` for :math:`X \sim N(0, I/2)`, with
    lattice points:

    >>> sample = gaussian_transform(jnp.zeros(5), jnp.eye(5) / 2)
    >>> keister = lambda x: jnp.pi ** 2.5 * jnp.cos(jnp.linalg.norm(x))
    >>> r = expectation(keister, sample, jax.random.key(0), n=2**16, dim=5, method="lattice")
    >>> print(f"{r.estimate:.4f} +- {r.stderr:.4f}")  # exact 1.1353
    1.1386 +- 0.0039

  References:
    Glasserman, "Monte Carlo Methods in Financial Engineering", 2003, 4.1.
  """
  fn = "expectation"
  if dim is not None:
    return _expectation_on_unit_cube(
      fn, f, sample, key, n, method, dim, batch_size, replicates, control_variate
    )
  if method != "mc":
    V.fail(fn, "method", "be 'mc' when dim is None (pass dim for sample(u) on the unit cube)", repr(method))
  key, n, batch_size = _check_expectation(fn, key, n, batch_size, control_variate)
  x_struct = jax.eval_shape(sample, key)
  out_struct = jax.eval_shape(f, x_struct)
  out_dtype = jnp.result_type(*[s.dtype for s in jax.tree.leaves(out_struct)], float)
  cdtype = compute_dtype(out_dtype if jnp.issubdtype(out_dtype, jnp.floating) else jnp.result_type(float))
  struct = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, cdtype), out_struct)
  block = _block_size(max(1, sum(math.prod(s.shape) for s in jax.tree.leaves(x_struct))), n)
  sizes = dict(
    num_units=n, units_per_block=block, blocks_per_step=max(1, (batch_size or _default_batch(block)) // block)
  )

  def draw(k):
    xs = jax.vmap(sample)(jax.random.split(k, block))
    return xs, _eval(f, xs, cdtype)

  if control_variate is None:
    stats = _iid_stats(lambda k: draw(k)[1], key, struct, **sizes)
    estimate, stderr, dof = _summary(stats, jnp.asarray(1, cdtype))
    return MCResult(_cast(estimate, out_dtype), _cast(stderr, out_dtype), jnp.asarray(n, jnp.int32), dof)

  g, mean_g = control_variate
  _check_control_variate_structure(fn, g, x_struct, out_struct)

  # Stats of (f, g, f*g-cross) via the same mean/M2 machinery on the pair and
  # on f + g: Cov(f, g) = (Var(f + g) - Var(f) - Var(g)) / 2.
  def unit_fn(k):
    xs, fv = draw(k)
    gv = _eval(g, xs, cdtype)
    return fv, gv, jax.tree.map(jnp.add, fv, gv)

  count, (mf, mg, _), (sff, sgg, sss) = _iid_stats(unit_fn, key, (struct, struct, struct), **sizes)

  def leaf(mf, mg, sff, sgg, sss, mu):
    sfg = (sss - sff - sgg) / 2
    c = jnp.where(sgg > 0, sfg / jnp.where(sgg > 0, sgg, 1), 0)
    est = mf - c * (mg - jnp.asarray(mu, mf.dtype))
    resid = jnp.maximum(sff - 2 * c * sfg + c * c * sgg, 0)
    cnt = count.astype(mf.dtype)
    se = jnp.where(count > 2, jnp.sqrt(resid / jnp.maximum(cnt - 2, 1) / cnt), jnp.inf)
    return est.astype(out_dtype), se.astype(out_dtype)

  mu = jax.tree.map(lambda s, m: jnp.broadcast_to(jnp.asarray(m), s.shape), struct, mean_g)
  estimate, stderr = RS.unzip_map(leaf, mf, mg, sff, sgg, sss, mu)
  # One degree of freedom more is spent on the fitted coefficient.
  return MCResult(estimate, stderr, jnp.asarray(n, jnp.int32), count - 2)


def _expectation_on_unit_cube(fn, f, sample, key, n, method, dim, batch_size, replicates, control_variate):
  dim = V.check_int(fn, "dim", dim, minimum=1)
  if control_variate is not None:
    V.fail(fn, "control_variate", "be None when dim is given", "a control variate")
  unit = jnp.zeros(dim, jnp.result_type(float))
  n, batch_size, replicates, _ = _check_integrate(fn, method, n, batch_size, replicates, None)
  return integrate(
    lambda u: f(sample(u)),
    key,
    lower=unit,
    upper=unit + 1,
    n=n,
    method=method,
    batch_size=batch_size,
    replicates=replicates,
  )


def gaussian_transform(mean, cov) -> Callable:
  r"""The map ``u -> mean + L Phi^{-1}(u)`` from the unit cube to :math:`N(\mathrm{mean}, \mathrm{cov})`.

  .. math:: x = \mu + L\,\Phi^{-1}(u), \qquad L L^\top = \Sigma

  with :math:`L` the Cholesky factor of ``cov`` and :math:`\Phi^{-1}` the
  standard normal quantile applied per coordinate, so that ``u`` uniform on
  :math:`[0, 1)^{dim}` gives ``x ~ N(mean, cov)``. Coordinates of ``u`` are
  clipped into :math:`[\epsilon/2, 1 - \epsilon/2]` (machine epsilon of
  their dtype) first, so that a point set's exact 0 does not become
  :math:`-\infty` (the clipped mass, :math:`2^{-24}` per coordinate in
  float32, is far below any error bar). Use it as the ``sample`` of
  :func:`expectation` with ``dim=mean.shape[0]``.

  Args:
    mean: ``[dim]`` mean.
    cov: ``[dim, dim]`` symmetric positive definite covariance.

  Returns:
    A function ``u [dim] -> x [dim]``, jit-, vmap- and grad-able (also in
    ``mean`` and ``cov``).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoft.montecarlo import gaussian_transform
    >>> to_x = gaussian_transform(jnp.array([1.0, 2.0]), jnp.array([[4.0, 0.0], [0.0, 1.0]]))
    >>> print(to_x(jnp.array([0.5, 0.975])))
    [1.        3.9599643]

  References:
    Glasserman, "Monte Carlo Methods in Financial Engineering", 2003, 2.3.
  """
  fn = "gaussian_transform"
  V.check_array(fn, "mean", mean)
  V.check_array(fn, "cov", cov)
  V.check_ndim(fn, "mean", mean, 1, " ([dim])")
  dim = np.shape(mean)[0]
  V.check_shape(fn, "cov", cov, (dim, dim), " ([dim, dim])")
  chol = jnp.linalg.cholesky(cov)

  def sample(u):
    eps = jnp.finfo(jnp.result_type(u, float)).eps
    return mean + chol @ jax.scipy.special.ndtri(jnp.clip(u, eps / 2, 1 - eps / 2))

  return sample


def _check_expectation(fn, key, n, batch_size, control_variate):
  """``expectation``'s arguments, checked: ``(key, n, batch_size)``."""
  n = _check_count(fn, "n", n)
  batch_size = _check_batch_size(fn, batch_size)
  if control_variate is not None and not (
    isinstance(control_variate, tuple) and len(control_variate) == 2 and callable(control_variate[0])
  ):
    V.fail(
      fn, "control_variate", "be a pair (g, mean_g) with g callable", repr(control_variate), exc=TypeError
    )
  return V.check_key(fn, "key", key), n, batch_size


def _check_control_variate_structure(fn, g, x_struct, out_struct):
  g_struct = jax.eval_shape(g, x_struct)
  if jax.tree.structure(g_struct) != jax.tree.structure(out_struct):
    V.fail(
      fn,
      "control_variate",
      "have g returning f's pytree structure",
      f"{jax.tree.structure(g_struct)} vs {jax.tree.structure(out_struct)}",
      exc=TypeError,
    )


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
  key = V.check_key(fn, "key", key)
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

  estimate, stderr = RS.unzip_map(leaf, fv)
  return ISResult(
    estimate, stderr, jnp.asarray(n, jnp.int32), ess.astype(dtype), jnp.asarray(n - 1, jnp.int32)
  )


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
  batch_size: int | None = None,
  replicates: int | None = None,
  strata_per_axis: int | None = None,
  devices=None,
  level: float = 0.95,
) -> ToleranceResult:
  r"""Integrates, doubling the sample size until the confidence interval is narrow enough.

  Stops at the first :math:`N` whose interval half-width (the one of
  :func:`confidence_interval` at ``level``, Student t with the result's
  degrees of freedom) is within the tolerance,
  :math:`t_{\nu}^{-1}(\tfrac{1 + \text{level}}{2})\,\mathrm{se} \le
  \max(\mathrm{atol}, \mathrm{rtol}\,|\hat I|)`, for every element of every
  leaf, or when doubling again would exceed ``max_n``. Runs
  inside one ``lax.while_loop``; already drawn points are kept and the new
  points continue the same stream, so the result at size :math:`N` equals
  ``integrate(..., n=N)`` with the same key, method and options: bit for bit
  for ``"mc"``, ``"antithetic"`` and ``"stratified"`` on one device, to float
  rounding for the quasi-Monte Carlo methods (the same points, summed in
  chunks of another size) and on several devices (the same blocks, merged in
  another order). The first size is one step (``batch_size`` points; with
  ``devices``, one step per device).

  Differentiation. The size :math:`N` is a constant once found, so the
  derivatives (``jax.grad``, ``jax.jvp``, ``jax.jacfwd``) of ``estimate``
  and ``stderr`` with respect to the arrays that ``f`` closes over and to
  ``lower`` and ``upper`` are those of ``integrate(..., n=N)``: the
  pathwise derivative at the same points. They are computed by a second
  pass over the :math:`N` points in a loop that reverse mode can transpose
  (the doubling ``while_loop`` cannot), recomputed in the backward pass so
  that memory stays flat; under ``vmap`` over keys whose sizes differ,
  that pass evaluates every step up to ``max_n``.

  Args:
    f, key, lower, upper: as in :func:`integrate`.
    atol, rtol: absolute and relative tolerances on the half-width of the
      ``level`` confidence interval.
    max_n: the most evaluations (static).
    method, batch_size, replicates, devices: as in :func:`integrate`. For
      the quasi-Monte Carlo methods ``batch_size`` counts the points of all
      randomizations together (they advance side by side).
    strata_per_axis: ``k`` for ``"stratified"`` (static). Default: the
      largest whose ``k ** dim`` strata leave at least 64 rounds in one block
      of ``2**19 // dim`` points, so that the first step already has an
      honest error bar; pass the same value to :func:`integrate` to
      reproduce a result.
    level: the confidence level of the interval whose half-width is tested
      (a Python float in (0, 1)).

  Returns:
    ``ToleranceResult(estimate, stderr, n, converged, dof)``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoft.montecarlo import integrate_to_tolerance
    >>> r = integrate_to_tolerance(lambda x: 4.0 * (jnp.sum(x ** 2) < 1), jax.random.key(0),
    ...                            lower=jnp.zeros(2), upper=jnp.ones(2), rtol=1e-3)
    >>> print(f"{r.estimate:.4f} +- {r.stderr:.4f}, n={r.n}, {r.converged}")
    3.1408 +- 0.0011, n=2097152, True
  """
  fn = "integrate_to_tolerance"
  max_n, batch_size, replicates, mesh = _check_tolerance(
    fn, method, atol, rtol, max_n, batch_size, replicates, devices
  )
  box = _box(fn, f, lower, upper)
  key = V.check_key(fn, "key", key)
  level = _check_level(fn, level)
  if method in _QMC:
    _check_strata(fn, method, strata_per_axis, box.dim, max_n, "max_n")
    make_plan = lambda box, key: _qmc_doubling(box, key, method, max_n, batch_size, replicates, mesh)
  else:
    block = _block_size(box.dim, max_n)
    # The default strata leave at least 64 rounds in one block (the first step).
    k_axis = _check_strata(fn, method, strata_per_axis, box.dim, block, "max_n")
    make_plan = lambda box, key: _iid_doubling(box, key, method, block, batch_size, k_axis, max_n, mesh)
  atol = jnp.asarray(atol, box.cdtype)
  rtol = jnp.asarray(rtol, box.cdtype)

  def done(estimate, stderr, dof):
    q = t_quantile(level, dof).astype(box.cdtype)
    ok = jax.tree.map(lambda e, s: jnp.all(q * s <= jnp.maximum(atol, rtol * jnp.abs(e))), estimate, stderr)
    return jnp.all(jnp.stack(jax.tree.leaves(ok)))

  # The arrays that f closes over (its parameters) become explicit inputs, so
  # that the derivative rule below can differentiate with respect to them.
  f_open, consts = jax.closure_convert(f, jnp.zeros((box.dim,), box.cdtype))

  def box_of(params):
    lower, upper, consts = params
    return box._replace(f=lambda x: f_open(x, *consts), lower=lower, width=upper - lower)

  @jax.custom_jvp
  def solve(params, key):
    """``(estimate, stderr, dof, n)`` by doubling until ``done``, in the compute dtype."""
    box = box_of(params)
    plan = make_plan(box, key)

    def summary(stats):
      return _summary(plan.units(stats), box.volume)

    def cond(state):
      stats, steps = state
      return (~done(*summary(stats))) & (2 * steps <= plan.max_steps)

    def body(state):
      stats, steps = state
      return plan.add(stats, steps, steps), 2 * steps

    first = jnp.asarray(plan.first_steps, jnp.int32)
    stats, steps = lax.while_loop(cond, body, (plan.add(plan.init, 0, first), first))
    return *summary(stats), (steps * plan.evals_per_step).astype(jnp.int32)

  # The size is a constant once found: derivatives are those of the estimate
  # and stderr at that size, computed by a loop that reverse mode can
  # transpose (the doubling while_loop cannot be).
  @solve.defjvp
  def solve_jvp(primals, tangents):
    params, key = primals
    out = solve(params, key)

    def at_size(params):
      box = box_of(params)
      plan = make_plan(box, key)
      stats = _plan_steps(plan, out[3] // plan.evals_per_step)
      return _summary(plan.units(stats), box.volume)[:2]

    _, (d_estimate, d_stderr) = jax.jvp(at_size, (params,), (tangents[0],))
    no_tangent = [np.zeros(np.shape(x), jax.dtypes.float0) for x in out[2:]]
    return out, (d_estimate, d_stderr, *no_tangent)

  upper = jnp.asarray(upper, box.cdtype)
  estimate, stderr, dof, n = solve((box.lower, upper, consts), key)
  return ToleranceResult(
    _cast(estimate, box.dtype), _cast(stderr, box.dtype), n, done(estimate, stderr, dof), dof
  )


def _plan_steps(plan, steps):
  """``plan``'s statistics after its first ``steps`` steps (traced), in reverse-differentiable form.

  A ``scan`` over every group of ``plan.first_steps`` steps up to
  ``plan.max_steps`` that skips (``cond``) the groups from ``steps`` on: a
  loop of traced length cannot be transposed, this one can. Each group is
  recomputed in the backward pass (``checkpoint``), so memory stays flat.
  """
  group = plan.first_steps

  def body(stats, g):
    first = g * group
    return lax.cond(
      first < steps, lambda stats: plan.add(stats, first, group), lambda stats: stats, stats
    ), None

  return lax.scan(jax.checkpoint(body), plan.init, jnp.arange(plan.max_steps // group))[0]


class _DoublingPlan(NamedTuple):
  """How ``integrate_to_tolerance`` grows: ``add(stats, first, count)`` adds steps ``first ..``."""

  init: Any
  add: Callable
  units: Callable  # stats -> running statistics of the i.i.d. units
  evals_per_step: int
  first_steps: int  # one step per device
  max_steps: int


def _iid_doubling(box, key, method, block, batch_size, k_axis, max_n, mesh) -> _DoublingPlan:
  """Steps of whole blocks (as :func:`integrate` makes them); with ``mesh``, each
  device adds a contiguous range of the new steps and the ranges are merged in order."""
  unit_fn, upb, per_unit = _unit_fn(method, box, block, k_axis)
  bps = max(1, (batch_size or _default_batch(block)) // (upb * per_unit))
  add = _iid_adder(unit_fn, key, units_per_block=upb, blocks_per_step=bps)
  devices = 1 if mesh is None else mesh.devices.size
  if mesh is not None:
    local_add = add

    def add(stats, first, count):
      def local():
        per = count // devices
        mine = local_add(RS.zeros(box.struct), first + lax.axis_index(_AXIS) * per, per)
        return RS.merge_sequential(stats, jax.tree.map(lambda x: lax.all_gather(x, _AXIS), mine))

      return _on_devices(mesh, local)

  evals = bps * upb * per_unit
  return _DoublingPlan(RS.zeros(box.struct), add, lambda s: s, evals, devices, max(max_n // evals, devices))


def _qmc_doubling(box, key, method, max_n, batch_size, replicates, mesh) -> _DoublingPlan:
  """A step is one chunk of every randomization; they advance side by side (on
  ``mesh``, each device advances its own randomizations)."""
  max_rep = max_n // replicates
  per_step = batch_size or _block_size(box.dim, 2**62)
  chunk = min(_pow2_floor(max(per_step // replicates, 1)), _pow2_floor(max_rep))
  scramble, points = _qmc_chunks(method, key, box.dim, chunk, box.cdtype, max_rep)
  add_one = _qmc_adder(box, points, chunk=chunk)
  # Every randomization is drawn once, before the loop.
  scrambled = jax.vmap(scramble)(jnp.arange(replicates))

  def add_all(scrambled, stats, first, count):
    return jax.vmap(lambda sc, s: add_one(sc, s, first, count))(scrambled, stats)

  if mesh is None:
    add = lambda stats, first, count: add_all(scrambled, stats, first, count)
  else:
    per = replicates // mesh.devices.size

    def add(stats, first, count):
      def local():
        mine = lambda x: lax.dynamic_slice_in_dim(x, lax.axis_index(_AXIS) * per, per)
        new = add_all(jax.tree.map(mine, scrambled), jax.tree.map(mine, stats), first, count)
        return jax.tree.map(lambda x: lax.all_gather(x, _AXIS, tiled=True), new)

      return _on_devices(mesh, local)

  return _DoublingPlan(
    init=jax.vmap(lambda _: RS.zeros(box.struct))(jnp.arange(replicates)),
    add=add,
    units=lambda stats: RS.block_stats(stats[1]),
    evals_per_step=chunk * replicates,
    first_steps=1,
    max_steps=max_rep // chunk,
  )


def confidence_interval(result, level: float = 0.95) -> Interval:
  r"""Student t interval ``estimate -+ q * stderr`` with the result's degrees of freedom.

  .. math:: \hat I \pm t_{\nu}^{-1}\big(\tfrac{1 + \text{level}}{2}\big)\, \mathrm{se}

  where :math:`\nu` is ``result.dof`` (``replicates - 1`` for the
  quasi-Monte Carlo methods; 15 degrees of freedom widen a 95% interval by
  7% over the normal one, 63 by 2%); a result without ``dof`` (``None``) gets the normal
  quantile :math:`\Phi^{-1}`, the limit of many degrees of freedom.

  Args:
    result: an :class:`MCResult` (or any result with ``estimate``,
      ``stderr`` and optionally ``dof``).
    level: coverage probability in (0, 1) (a Python float).

  Returns:
    ``Interval(lower, upper)`` (a NamedTuple, so ``lo, hi = ...`` unpacks
    it), each shaped like ``result.estimate``; the same type as
    :func:`jaxsoft.mle.confidence_intervals`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoft.montecarlo import MCResult, confidence_interval
    >>> lo, hi = confidence_interval(MCResult(jnp.float32(1.0), jnp.float32(0.1), 100))
    >>> print(f"{lo:.4f} {hi:.4f}")
    0.8040 1.1960
    >>> lo, hi = confidence_interval(MCResult(jnp.float32(1.0), jnp.float32(0.1), 1024, dof=15))
    >>> print(f"{lo:.4f} {hi:.4f}")
    0.7869 1.2131
  """
  level = _check_level("confidence_interval", level)
  dof = getattr(result, "dof", None)
  q = t_quantile(level, math.inf if dof is None else dof)
  low = jax.tree.map(lambda e, s: e - (q * s).astype(jnp.result_type(e)), result.estimate, result.stderr)
  high = jax.tree.map(lambda e, s: e + (q * s).astype(jnp.result_type(e)), result.estimate, result.stderr)
  return Interval(low, high)


def _check_level(fn, level) -> float:
  value = V.as_number(fn, "level", level)
  if value is None:
    V.fail(fn, "level", "be a concrete number (it picks the quantile at trace time)", "a traced value")
  V.check_range(fn, "level", value, 0.0, 1.0, lo_open=True, hi_open=True)
  return value
