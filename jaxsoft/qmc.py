"""Quasi-Monte Carlo point sets: Sobol', Halton and rank-1 lattice sequences, optionally randomized.

Both functions are pure and jit-able (``n`` and ``dim`` are static Python
ints). Without a key they return the classical sequences, identical to
``scipy.stats.qmc.Sobol(dim, scramble=False).random(n)`` and
``scipy.stats.qmc.Halton(dim, scramble=False).random(n)`` in float64 (Sobol'
points beyond ``2**30``, up to ``2**64``, as SciPy's ``bits=64``). With a
key the sequence is randomized so that every point is uniform on
``[0, 1)^dim`` while the low-discrepancy structure is kept; averages over
independent randomizations then give unbiased estimates with an honest error
bar (this is what :func:`jaxsoft.integrate` does for ``method="sobol"`` and
``"halton"``).

Sobol' direction numbers are Joe and Kuo's ``new-joe-kuo-6.21201`` table,
shipped as ``jaxsoft/data/sobol_direction_numbers.npz`` (21201 dimensions;
copied from SciPy's ``scipy/stats/_sobol_direction_numbers.npz``, which is the
same table: https://web.maths.unsw.edu.au/~fkuo/sobol/).

The lattice generating vector is F. Y. Kuo's ``lattice-33002-1024-1048576.9125``
(https://web.maths.unsw.edu.au/~fkuo/lattice/): an embedded rank-1 lattice
sequence in base 2 for 2**10 to 2**20 points in up to 9125 dimensions, built
by the component-by-component construction of Cools, Kuo and Nuyens (2006).
It is shipped as ``jaxsoft/data/lattice_generating_vector.npz``, copied from
qmcpy 2.4 (Apache-2.0), where it is
``qmcpy/discrete_distribution/lattice/generating_vectors/kuo.lattice-33002-1024-1048576.9125.npy``
and the default of ``qmcpy.Lattice``.
"""

from __future__ import annotations

import functools
import importlib.resources
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsoft import _validate as V

__all__ = ["sobol", "halton", "lattice", "SOBOL_MAX_DIM", "HALTON_MAX_DIM", "LATTICE_MAX_DIM"]

# Bits of the randomized points: the linear matrix scramble is a 30 x 30 binary
# matrix per dimension (SciPy's default resolution). Plain points are exact to
# 64 bits, truncated to the output dtype.
_SCRAMBLE_BITS = 30
# Bits of the point index (two uint32 words): at most 2**64 points per
# sequence, as SciPy's ``bits=64``.
_INDEX_BITS = 64
SOBOL_MAX_DIM = 21201
# Halton in high dimension is poor anyway; the cap keeps the prime table small.
HALTON_MAX_DIM = 10000
# Randomized Halton draws a permutation table of about sum_d b_d log_b_d(2**24)
# entries (8 million in 1000 dimensions, growing like dim**2 log dim).
_HALTON_RANDOM_MAX_DIM = 1000
# Dimensions of the shipped lattice generating vector.
LATTICE_MAX_DIM = 9125
# Lattice points are exact 32-bit fractions: radical inverses times integers, modulo 2**32.
_LATTICE_BITS = 32


# ----------------------------------------------------------------------------
# Sobol'
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _joe_kuo_table():
  path = importlib.resources.files("jaxsoft") / "data" / "sobol_direction_numbers.npz"
  with path.open("rb") as fh, np.load(fh) as data:
    return data["poly"].astype(np.int64), data["vinit"].astype(np.int64)


@functools.lru_cache(maxsize=32)
def _direction_numbers(dim: int, columns: int) -> tuple[np.ndarray, np.ndarray]:
  """Direction numbers ``v[d, k]`` for index bits ``k < columns``, as 64-bit
  fractions split into (high, low) uint32 words ``[dim, columns]``.

  ``v[d, k] = m[d, k] * 2**(63 - k)`` with the odd integers ``m[d, k] <
  2**(k + 1)`` of Bratley and Fox's (1988) Algorithm 659 recurrence, as
  SciPy's ``_initialize_v`` with ``bits=64``; vectorized over dimensions.
  Below ``2**30`` the high words are SciPy's default 30-bit numbers times 4.
  """
  poly, vinit = _joe_kuo_table()
  poly, vinit = poly[:dim], vinit[:dim]
  degree = np.floor(np.log2(np.maximum(poly, 1))).astype(np.int64)
  m = np.zeros((dim, columns), np.uint64)
  m[0] = 1
  rows = np.arange(1, dim)
  p, deg = poly[1:], degree[1:]
  for j in range(columns):
    from_table = j < deg
    new = m[rows, np.clip(j - deg, 0, None)]
    for k in range(int(deg.max(initial=0))):
      use = (k < deg) & (((p >> np.clip(deg - 1 - k, 0, None)) & 1) == 1)
      new = np.where(use, new ^ (np.uint64(2 << k) * m[rows, max(j - k - 1, 0)]), new)
    init = vinit[1:, j] if j < vinit.shape[1] else 0
    m[1:, j] = np.where(from_table, np.asarray(init).astype(np.uint64), new)
  v = m << (np.uint64(63) - np.arange(columns, dtype=np.uint64))
  return (v >> np.uint64(32)).astype(np.uint32), (v & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def _xor(a, b):
  return jax.tree.map(jnp.bitwise_xor, a, b)


def _index_words(low, high):
  return jnp.asarray(low).astype(jnp.uint32), jnp.asarray(high).astype(jnp.uint32)


def _static_index(i: int):
  """The (low, high) uint32 words of a Python int index."""
  return _index_words(np.uint32(i & 0xFFFFFFFF), np.uint32(i >> 32))


def _sobol_point(index, v):
  """Integer Sobol' point of one index, by its Gray code.

  ``index`` is the (low, high) uint32 words of the index (traced is fine),
  ``v`` a tuple of direction-number words ``[dim, columns]``; returns the
  point's words ``[dim]``.
  """
  low, high = index
  gray = (low ^ (low >> 1) ^ (high << 31), high ^ (high >> 1))
  columns = v[0].shape[1]
  bits = [(gray[0] >> jnp.arange(min(columns, 32), dtype=jnp.uint32)) & 1]
  if columns > 32:
    bits.append((gray[1] >> jnp.arange(columns - 32, dtype=jnp.uint32)) & 1)
  bits = jnp.concatenate(bits)
  return tuple(
    jax.lax.reduce(jnp.where(bits[None, :] == 1, w, jnp.uint32(0)), jnp.uint32(0), jax.lax.bitwise_xor, (1,))
    for w in v
  )


def _sobol_doubling(v, first: int, levels: int):
  """Integer points of indices ``i << first`` for ``i < 2**levels``.

  With Gray-code order, ``gray(2**m + i) = gray(i) ^ 2**m ^ 2**(m-1)`` for
  ``i < 2**m``, so each doubling appends the table XOR one constant.
  """
  table = tuple(jnp.zeros((1, w.shape[0]), jnp.uint32) for w in v)
  for k in range(first, first + levels):
    c = tuple(w[:, k] if k == 0 else w[:, k] ^ w[:, k - 1] for w in v)
    table = tuple(jnp.concatenate([t, t ^ ck], axis=0) for t, ck in zip(table, c))
  return table


def _sobol_table(v, log2_size: int):
  """Integer points of indices ``0 .. 2**log2_size - 1`` (words ``[2**log2_size, dim]``).

  Index ``i = hi * 2**L + lo`` gives ``x(i) = x(hi * 2**L) ^ x(lo)``, so two
  small doubling tables and one broadcast XOR make the whole table in a
  single pass over the output (SciPy's recursion is sequential per point).
  """
  low = log2_size // 2
  lo = _sobol_doubling(v, 0, low)
  hi = _sobol_doubling(v, low, log2_size - low)
  return tuple((h[:, None, :] ^ l[None, :, :]).reshape(1 << log2_size, h.shape[1]) for h, l in zip(hi, lo))


def _sobol_randomization(key, v):
  """Linear matrix scrambling plus digital shift (Matousek 1998; Owen 2003).

  Each dimension's direction numbers ``v`` (high words ``[dim, columns]``),
  read as 30-digit binary fractions, are multiplied by a random
  lower-triangular binary matrix with unit diagonal (which keeps the
  (t, m, s)-net property) and every point is XORed with a random shift
  (which makes each point uniform). The draws do not depend on ``columns``;
  the scrambled numbers and the shift are 30-bit fractions in the high
  words' top bits.
  """
  dim = v.shape[0]
  k_ltm, k_shift = jax.random.split(key)
  low_bits = 32 - _SCRAMBLE_BITS
  shift = (jax.random.bits(k_shift, (dim,), jnp.uint32) >> low_bits) << low_bits
  eye = jnp.eye(_SCRAMBLE_BITS, dtype=jnp.int32)
  # Drawn flat and reshaped: the same bits as a [dim, 30, 30] draw, and
  # XLA:CPU compiles a flat draw several times faster.
  coins = jax.random.bernoulli(k_ltm, 0.5, (dim * _SCRAMBLE_BITS**2,)).reshape(
    dim, _SCRAMBLE_BITS, _SCRAMBLE_BITS
  )
  ltm = jnp.tril(coins.astype(jnp.int32), -1) + eye
  # digits[d, k, c]: digit c (c = 0 is the most significant) of v[d, k].
  places = jnp.arange(31, low_bits - 1, -1, dtype=jnp.uint32)
  digits = ((v[:, :, None] >> places) & 1).astype(jnp.int32)
  scrambled = jnp.einsum("drc,dkc->dkr", ltm, digits) & 1
  v_new = jnp.sum(scrambled.astype(jnp.uint32) << places, axis=-1, dtype=jnp.uint32)
  return v_new, shift


def _to_unit(high, dtype, low=None):
  """32-bit fractions ``high * 2**-32`` (plus ``low * 2**-64``) to floats in [0, 1), truncated."""
  dtype = jnp.dtype(dtype)
  mantissa = jnp.finfo(dtype).nmant + 1
  if mantissa < 32:
    # Keep the top bits only: rounding 32-bit integers to a 24-bit float could
    # give exactly 1.0.
    return (high >> (32 - mantissa)).astype(dtype) * dtype.type(2.0**-mantissa)
  x = high.astype(dtype) * dtype.type(2.0**-32)
  if low is not None:
    # The next mantissa - 32 bits: the sum is exact.
    x = x + (low >> (64 - mantissa)).astype(dtype) * dtype.type(2.0**-mantissa)
  return x


def _sobol_ints(skip: int, n: int, v, shift):
  """Integer points (words like ``v``) of indices ``skip .. skip + n - 1``.

  ``gray(a + i) = gray(a) ^ gray(i)`` when ``a`` is a multiple of ``2**K > i``,
  so the points are a table of size ``2**K`` XORed with one point per aligned
  block (at most two blocks).
  """
  log2_size = max(int(n - 1).bit_length(), 0)
  size = 1 << log2_size
  table = _sobol_table(v, log2_size)
  base = skip - skip % size
  out = _xor(table, _sobol_point(_static_index(base), v))
  if skip != base or n != size:
    second = _xor(table, _sobol_point(_static_index(base + size), v))
    out = tuple(jnp.concatenate([a, b], axis=0)[skip - base : skip - base + n] for a, b in zip(out, second))
  return out if shift is None else _xor(out, shift)


def _check_common(fn, n, dim, skip, max_dim):
  n = V.check_int(fn, "n", n, minimum=0)
  dim = V.check_int(fn, "dim", dim, minimum=0)
  if dim > max_dim:
    V.fail(fn, "dim", f"be <= {max_dim} (the supported maximum)", dim)
  skip = V.check_int(fn, "skip", skip, minimum=0)
  return n, dim, skip


def _float_dtype(fn, dtype):
  if dtype is None:
    dtype = float
  dtype = jax.dtypes.canonicalize_dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    V.fail(fn, "dtype", "be a floating dtype", dtype, exc=TypeError)
  return dtype


def sobol(n: int, dim: int, *, key=None, skip: int = 0, dtype=None) -> jax.Array:
  r"""Sobol' low-discrepancy points, plain or randomized.

  Point :math:`i` has coordinates
  :math:`x_{i,d} = 2^{-64} \bigoplus_k g_k(i)\, v_{d,k}`, the XOR of the
  64-bit direction numbers :math:`v_{d,k}` selected by the bits of the Gray
  code :math:`g(i) = i \oplus \lfloor i/2 \rfloor` (SciPy's ``bits=64``; the
  coordinates of the first :math:`2^m` points are multiples of :math:`2^{-m}`,
  so below :math:`2^{30}` points they equal SciPy's default ``bits=30``). The
  index is held in two uint32 words, so every size works without
  ``jax_enable_x64``. With ``key`` the direction numbers, read as 30-digit
  binary fractions, get a random linear matrix scramble and the points a
  random digital shift, so each point is uniform on the grid of
  :math:`2^{-30}` in :math:`[0,1)^{dim}`; beyond :math:`2^{30}` points the
  randomized points keep this 30-bit resolution (each cell of the grid then
  holds several points, each coordinate still balanced).

  Balance properties hold for ``n`` a power of two (and ``skip`` a multiple of
  it); other ``n`` emit a ``UserWarning``, as SciPy does.

  Args:
    n: number of points (static, ``skip + n <= 2**64``).
    dim: dimension (static), at most 21201.
    key: optional ``jax.random`` key; ``None`` gives the unscrambled sequence.
    skip: index of the first point (static).
    dtype: floating output dtype; default float32 (float64 with x64 on). The
      exact coordinates are truncated to the dtype's mantissa (24 bits in
      float32, 53 in float64: exact below ``2**53`` points).

  Returns:
    ``[n, dim]`` array of points in ``[0, 1)``.

  Examples:
    >>> import jax
    >>> from jaxsoft import sobol
    >>> with jax.enable_x64(True):
    ...   print(sobol(4, 2))
    [[0.   0.  ]
     [0.5  0.5 ]
     [0.75 0.25]
     [0.25 0.75]]

  References:
    Joe and Kuo, "Constructing Sobol sequences with better two-dimensional
    projections", SIAM J. Sci. Comput. 30, 2008.
    Owen, "Variance with alternative scramblings of digital nets", ACM TOMACS
    13, 2003.
  """
  n, dim, skip = _check_common("sobol", n, dim, skip, SOBOL_MAX_DIM)
  dtype = _float_dtype("sobol", dtype)
  if n == 0 or dim == 0:
    return jnp.zeros((n, dim), dtype)
  if skip + n > 2**_INDEX_BITS:
    V.fail("sobol", "skip + n", f"be <= 2**{_INDEX_BITS}", skip + n)
  if n & (n - 1):
    warnings.warn(
      f"sobol: the balance properties of Sobol' points require n to be a power of 2, got n={n}",
      UserWarning,
      stacklevel=2,
    )
  high, low = _direction_numbers(dim, _sobol_columns(skip + n))
  if key is not None:
    v, shift = _sobol_randomization(key, jnp.asarray(high))
    return _to_unit(_sobol_ints(skip, n, (v,), (shift,))[0], dtype)
  # The low words hold bits 33 to 64, which only float64 can show.
  wide = jnp.finfo(dtype).nmant + 1 > 32 and high.shape[1] > 32
  v = (jnp.asarray(high), jnp.asarray(low)) if wide else (jnp.asarray(high),)
  words = _sobol_ints(skip, n, v, None)
  return _to_unit(words[0], dtype, words[1] if wide else None)


def _sobol_columns(length: int) -> int:
  """Direction-number columns for indices below ``length``: at least 30, so
  that the programs (and their results) below ``2**30`` points stay as they were."""
  return max(_SCRAMBLE_BITS, (length - 1).bit_length())


# ----------------------------------------------------------------------------
# Halton
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _primes(count: int) -> np.ndarray:
  limit = max(16, int(count * (np.log(count + 2) + np.log(np.log(count + 2)))) + 10)
  sieve = np.ones(limit + 1, bool)
  sieve[:2] = False
  for p in range(2, int(limit**0.5) + 1):
    if sieve[p]:
      sieve[p * p :: p] = False
  return np.flatnonzero(sieve)[:count]


def _halton_digits_needed(max_index: int, base: int) -> int:
  digits = 0
  while max_index > 0:
    max_index //= base
    digits += 1
  return digits


@functools.lru_cache(maxsize=8)
def _halton_permutation_layout(dim: int, digits: int):
  """Where each (digit place, dimension) permutation lives in one flat table.

  Place ``t`` of dimension ``d`` (base ``b_d``) gets a permutation of
  ``0 .. b_d - 1`` when ``t < places_d``, the digit places that the output's
  ``digits`` bits of resolution can see (``b_d ** places_d >= 2 ** digits``);
  deeper places fall below the resolution and keep their digit. Returns
  ``(offset [digits, dim], places [dim], segment [total], first [total])``:
  the table's start for each pair, and for each table entry its pair's index
  and the table position where that pair's permutation starts.
  """
  bases = _primes(dim).astype(np.int64)
  places = np.ceil(digits / np.log2(bases)).astype(np.int64)
  sizes = np.where(np.arange(digits)[:, None] < places[None, :], bases[None, :], 0)  # [digits, dim]
  offset = np.concatenate([[0], np.cumsum(sizes.ravel())[:-1]]).reshape(digits, dim)
  segment = np.repeat(np.arange(digits * dim), sizes.ravel())
  first = offset.ravel()[segment]
  return offset.astype(np.int32), places, segment.astype(np.int32), first.astype(np.int32)


def _check_halton_random_dim(fn, dim: int) -> None:
  if dim > _HALTON_RANDOM_MAX_DIM:
    V.fail(
      fn,
      "dim",
      f"be <= {_HALTON_RANDOM_MAX_DIM} for randomized Halton points (the digit permutations of more "
      "dimensions take too much memory; use method 'sobol' or 'lattice')",
      dim,
    )


def _halton_randomization(key, dim: int, digits: int):
  r"""Per dimension and digit place: a uniformly random permutation of the digits.

  Digit :math:`a` of place :math:`t` in dimension :math:`d` becomes
  :math:`\pi_{t,d}(a)`, with every :math:`\pi_{t,d}` an independent uniform
  permutation of :math:`0, \dots, b_d - 1` (SciPy's scrambling; Owen 2017,
  "random digit permutations"). Each digit of a point, hence the point, is
  uniform, and, unlike a linear permutation :math:`a \mapsto (m a + c)
  \bmod b`, the leading digits of the high dimensions are spread evenly.
  The permutations are drawn at once, as one sort of random keys within
  their segments of a flat table (``sum_d places_d * b_d`` entries: 20
  thousand in 50 dimensions, 7 million in 1000).
  """
  offset, _, segment, first = _halton_permutation_layout(dim, digits)
  u = jax.random.bits(key, segment.shape, jnp.uint32)
  # Sorting (segment, random bits) orders each segment at random: the sorted
  # position of entry j of a segment minus the segment start is pi(j).
  _, _, order = lax.sort((jnp.asarray(segment), u, lax.iota(jnp.int32, segment.size)), num_keys=2)
  table = order - jnp.asarray(first)
  return jnp.asarray(offset), table


def _halton_points(indices, dim: int, digits: int, dtype, scramble=None):
  """Halton points of integer ``indices`` ``[m]`` (traced is fine) as ``[m, dim]``.

  The accumulation order is SciPy's (``x += digit * b2r; b2r /= base``), so
  float64 results match it bit for bit.
  """
  dtype = jnp.dtype(dtype)
  bases = _primes(dim)
  int_dtype = jnp.int64 if jax.config.jax_enable_x64 else jnp.int32
  base_i = jnp.asarray(bases, int_dtype)
  q = jnp.broadcast_to(jnp.asarray(indices, int_dtype)[:, None], (indices.shape[0], dim))
  b2r = (
    jnp.asarray(1.0 / bases.astype(np.float64), dtype)
    if dtype == jnp.float64
    else (dtype.type(1.0) / jnp.asarray(bases, dtype))
  )
  base_f = jnp.asarray(bases, dtype)
  x = jnp.zeros(q.shape, dtype)
  base_b = jnp.broadcast_to(base_i, q.shape)
  places = _halton_permutation_layout(dim, digits)[1] if scramble is not None else None

  # Indices are non-negative, so truncating lax.div/rem are floor division
  # (jnp.divmod adds sign fix-ups that cost compile and run time). The loop
  # stays unrolled: as a lax.fori_loop, 2% of the float64 points came out one
  # ulp away from SciPy (XLA contracting x + digit * b2r, we believe).
  for t in range(digits):
    digit = lax.rem(q, base_b)
    q = lax.div(q, base_b)
    if scramble is not None and t < places.max():
      offset, table = scramble
      permuted = table[offset[t] + digit.astype(jnp.int32)]
      digit = jnp.where(t < jnp.asarray(places), permuted.astype(int_dtype), digit)
    x = x + digit.astype(dtype) * b2r
    b2r = b2r / base_f
  # Rounding can reach 1.0 when many digits are b - 1; keep the interval open.
  return jnp.minimum(x, jnp.asarray(1.0 - jnp.finfo(dtype).epsneg, dtype))


def halton(n: int, dim: int, *, key=None, skip: int = 0, dtype=None) -> jax.Array:
  r"""Halton low-discrepancy points, plain or randomized.

  Coordinate :math:`d` of point :math:`i` is the radical inverse of :math:`i`
  in the :math:`d`-th prime base :math:`b_d`: with
  :math:`i = \sum_t a_t b_d^t`, :math:`x_{i,d} = \sum_t a_t b_d^{-t-1}`.
  With ``key``, each digit place of each dimension gets an independent,
  uniformly random permutation of :math:`0, \dots, b_d - 1` (SciPy's
  scrambling), applied to enough digits for the output precision, so each
  point is uniform on :math:`[0,1)^{dim}` (up to that precision).

  Args:
    n: number of points (static).
    dim: dimension (static), at most 10000; at most 1000 with a key (the
      permutation table grows like the square of the dimension).
    key: optional ``jax.random`` key; ``None`` gives the unscrambled sequence.
    skip: index of the first point (static).
    dtype: floating output dtype; default float32 (float64 with x64 on).

  Returns:
    ``[n, dim]`` array of points in ``[0, 1)``.

  Examples:
    >>> import jax
    >>> from jaxsoft import halton
    >>> with jax.enable_x64(True):
    ...   print(halton(4, 2))
    [[0.         0.        ]
     [0.5        0.33333333]
     [0.25       0.66666667]
     [0.75       0.11111111]]

  References:
    Halton, "On the efficiency of certain quasi-random sequences of points in
    evaluating multi-dimensional integrals", Numer. Math. 2, 1960.
    Owen, "A randomized Halton algorithm in R", arXiv:1706.02808, 2017.
  """
  n, dim, skip = _check_common("halton", n, dim, skip, HALTON_MAX_DIM)
  dtype = _float_dtype("halton", dtype)
  if n == 0 or dim == 0:
    return jnp.zeros((n, dim), dtype)
  max_index = skip + n - 1
  if max_index >= np.iinfo(np.int64 if jax.config.jax_enable_x64 else np.int32).max:
    V.fail("halton", "skip + n", "fit the integer dtype", skip + n)
  indices = jnp.arange(n) + skip
  return _halton_generate(indices, dim, max_index, dtype, key)


def _halton_generate(indices, dim: int, max_index: int, dtype, key):
  if key is None:
    return _halton_points(indices, dim, _halton_digits_needed(max_index, 2), dtype)
  _check_halton_random_dim("halton", dim)
  digits = _halton_random_digits(dtype)
  return _halton_points(indices, dim, digits, dtype, _halton_randomization(key, dim, digits))


def _halton_random_digits(dtype) -> int:
  # Base-2 digits needed for the float's resolution; larger bases need fewer
  # but share the loop (their extra terms underflow harmlessly).
  return jnp.finfo(dtype).nmant + 1


# ----------------------------------------------------------------------------
# Rank-1 lattices
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _kuo_vector() -> np.ndarray:
  path = importlib.resources.files("jaxsoft") / "data" / "lattice_generating_vector.npz"
  with path.open("rb") as fh, np.load(fh) as data:
    return data["z"].astype(np.uint32)


def _bit_reverse(x):
  """The 32 bits of uint32 ``x`` in reverse order: the base-2 radical inverse times 2**32."""
  for shift, mask in ((1, 0x55555555), (2, 0x33333333), (4, 0x0F0F0F0F), (8, 0x00FF00FF)):
    m = jnp.uint32(mask)
    x = ((x >> shift) & m) | ((x & m) << shift)
  return (x >> 16) | (x << 16)


def _lattice_ints(indices, z, shift):
  """``2**32 frac(phi_2(i) z + shift)`` for uint32 ``indices`` ``[m]``: ``[m, dim]`` uint32.

  ``phi_2(i) = rev_32(i) / 2**32`` exactly, and uint32 products and sums wrap
  modulo ``2**32``, which takes the fractional part.
  """
  return _bit_reverse(indices)[:, None] * z[None, :] + shift


def _generating_vector(fn, dim, generating_vector):
  if generating_vector is None:
    if dim > LATTICE_MAX_DIM:
      V.fail(fn, "dim", f"be <= {LATTICE_MAX_DIM} (the shipped generating vector)", dim)
    return jnp.asarray(_kuo_vector()[:dim])
  z = np.asarray(generating_vector)
  if z.ndim != 1 or z.shape[0] < dim or not np.issubdtype(z.dtype, np.integer):
    V.fail(fn, "generating_vector", f"be a 1-d integer array of length >= dim ({dim})", f"{z.dtype}{z.shape}")
  if np.any(z[:dim] < 0) or np.any(z[:dim] >= 2**_LATTICE_BITS):
    V.fail(fn, "generating_vector", f"have entries in [0, 2**{_LATTICE_BITS})", z[:dim])
  return jnp.asarray(z[:dim].astype(np.uint32))


def _lattice_shift(key, dim):
  return jax.random.bits(key, (dim,), jnp.uint32)


def lattice(n: int, dim: int, *, key=None, skip: int = 0, generating_vector=None, dtype=None) -> jax.Array:
  r"""Rank-1 lattice points in radical-inverse (extensible) order, plain or randomly shifted.

  Point :math:`i` is :math:`x_i = \{\phi_2(i)\, z + \Delta\}` (fractional
  part, per coordinate), where :math:`\phi_2(i)` is the base-2 radical
  inverse of :math:`i` (its binary digits mirrored about the point), ``z``
  the integer generating vector and :math:`\Delta` the shift. For
  :math:`n = 2^m` the first :math:`n` points are the lattice
  :math:`\{ i z / n \}`, :math:`i < n`, point :math:`\mathrm{rev}_m(i)`
  being :math:`\{ i z / n \}`; the first :math:`2n` points contain them, so
  the rule extends by doubling. With ``key`` the shift :math:`\Delta` is
  uniform on :math:`[0, 1)^{dim}` (on the grid of :math:`2^{-32}`), which
  makes each point uniform and keeps the lattice structure.

  Points are exact 32-bit fractions before the conversion to ``dtype``.

  Args:
    n: number of points (static, ``skip + n <= 2**32``).
    dim: dimension (static); at most 9125 with the shipped vector.
    key: optional ``jax.random`` key; ``None`` gives the unshifted lattice.
    skip: index of the first point (static).
    generating_vector: integer array ``[>= dim]`` with entries in
      ``[0, 2**32)``; default: Kuo's embedded lattice sequence (Cools, Kuo and
      Nuyens), constructed for ``n`` from 2**10 to 2**20 (larger ``n`` work,
      but the vector was not optimized for them).
    dtype: floating output dtype; default float32 (float64 with x64 on). In
      float32 the 32-bit coordinates are truncated to 24 bits.

  Returns:
    ``[n, dim]`` array of points in ``[0, 1)``.

  Examples:
    >>> import jax
    >>> from jaxsoft import lattice
    >>> with jax.enable_x64(True):
    ...   print(lattice(4, 2, generating_vector=[1, 3]))
    [[0.   0.  ]
     [0.5  0.5 ]
     [0.25 0.75]
     [0.75 0.25]]

  References:
    Cools, Kuo and Nuyens, "Constructing embedded lattice rules for
    multivariate integration", SIAM J. Sci. Comput. 28, 2006.
    Hickernell, Hong, L'Ecuyer and Lemieux, "Extensible lattice sequences for
    quasi-Monte Carlo quadrature", SIAM J. Sci. Comput. 22, 2000.
  """
  n, dim, skip = _check_common("lattice", n, dim, skip, math.inf)
  dtype = _float_dtype("lattice", dtype)
  if n == 0 or dim == 0:
    return jnp.zeros((n, dim), dtype)
  if skip + n > 2**_LATTICE_BITS:
    V.fail("lattice", "skip + n", f"be <= 2**{_LATTICE_BITS}", skip + n)
  z = _generating_vector("lattice", dim, generating_vector)
  shift = jnp.zeros((dim,), jnp.uint32) if key is None else _lattice_shift(key, dim)
  return _lattice_points(jnp.uint32(skip), z, shift, n, dtype)


@functools.partial(jax.jit, static_argnames=("n", "dtype"))
def _lattice_points(first, z, shift, n: int, dtype):
  # One small program per (n, dim, dtype), also when called eagerly.
  indices = first + lax.iota(jnp.uint32, n)
  return _to_unit(_lattice_ints(indices, z, shift), dtype)


# ----------------------------------------------------------------------------
# Chunks of randomized sequences (for integrators that stream the points)
# ----------------------------------------------------------------------------


def _randomized_chunks(method: str, key, dim: int, chunk: int, dtype, length: int):
  """Chunk ``c`` of randomization ``r`` of the ``"sobol"``, ``"halton"`` or ``"lattice"`` sequence.

  Returns ``(scramble, points)``. ``scramble(r)`` draws randomization ``r``
  (key ``fold_in(key, r)``) as a pytree of arrays, so it can be drawn once
  per randomization, outside the loops, under ``vmap`` or ``lax.map``.
  ``points(scramble(r), c)`` is the ``[chunk, dim]`` block of indices
  ``c * chunk`` to ``(c + 1) * chunk - 1``, equal to
  ``sobol(chunk, dim, key=fold_in(key, r), skip=c * chunk, dtype=dtype)`` (or
  ``halton``, ``lattice``). ``r`` and ``c`` may be traced (``c`` an int32,
  the index ``c * chunk`` is formed without overflow); ``chunk`` is a static
  power of two and ``length`` (static) bounds the indices that will be read,
  ``(c + 1) * chunk <= length`` (at most ``2**64`` for Sobol', ``2**32`` for
  lattice points and ``2**31`` for Halton's without x64).
  """
  if method == "sobol":
    v = jnp.asarray(_direction_numbers(dim, _sobol_columns(length))[0])
    log2_chunk = chunk.bit_length() - 1

    def scramble(r):
      v_r, shift = _sobol_randomization(jax.random.fold_in(key, r), v)
      return v_r, _sobol_table((v_r,), log2_chunk)[0] ^ shift

    def points(scrambled, c):
      v_r, table = scrambled
      c = jnp.asarray(c).astype(jnp.uint32)
      # The words of c * chunk.
      high = c >> (32 - log2_chunk) if log2_chunk else jnp.uint32(0)
      return _to_unit(table ^ _sobol_point(_index_words(c << log2_chunk, high), (v_r,))[0], dtype)
  elif method == "lattice":
    z = _generating_vector("integrate", dim, None)

    def scramble(r):
      return _lattice_shift(jax.random.fold_in(key, r), dim)

    def points(shift, c):
      return _lattice_points(jnp.asarray(c).astype(jnp.uint32) * jnp.uint32(chunk), z, shift, chunk, dtype)
  else:
    _check_halton_random_dim("integrate", dim)
    digits = _halton_random_digits(dtype)

    def scramble(r):
      return _halton_randomization(jax.random.fold_in(key, r), dim, digits)

    def points(scrambled, c):
      return _halton_points(c * chunk + jnp.arange(chunk), dim, digits, dtype, scrambled)

  return scramble, points
