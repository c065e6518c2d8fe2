"""Tests for jaxsoft.qmc: SciPy parity, randomization, errors, transforms."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import qmc as sqmc

from jaxsoft.qmc import HALTON_MAX_DIM, SOBOL_MAX_DIM, halton, sobol


def scipy_sobol(n, d, skip=0):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return sqmc.Sobol(d, scramble=False).random(skip + n)[skip:]


def scipy_halton(n, d, skip=0):
  return sqmc.Halton(d, scramble=False).random(skip + n)[skip:]


# ---------------------------------------------------------------- values


@pytest.mark.parametrize("d", [1, 2, 8, 100, 1000, 21201])
def test_sobol_equals_scipy(d):
  n = 64 if d < 21201 else 4
  with jax.enable_x64(True):
    got = np.asarray(sobol(n, d))
  assert got.dtype == np.float64
  np.testing.assert_array_equal(got, scipy_sobol(n, d))


@pytest.mark.parametrize("n,skip", [(256, 0), (256, 256), (100, 37)])
def test_sobol_skip_equals_scipy(n, skip):
  with jax.enable_x64(True), warnings.catch_warnings():
    warnings.simplefilter("ignore")
    got = np.asarray(sobol(n, 5, skip=skip))
  np.testing.assert_array_equal(got, scipy_sobol(n, 5, skip))


def test_sobol_float32_is_scipy_truncated_to_24_bits():
  got = np.asarray(sobol(1024, 6))
  assert got.dtype == np.float32
  want = np.floor(scipy_sobol(1024, 6) * 2**24) / 2**24
  np.testing.assert_array_equal(got.astype(np.float64), want)


@pytest.mark.parametrize("d", [1, 3, 8, 50])
@pytest.mark.parametrize("skip", [0, 11])
def test_halton_equals_scipy(d, skip):
  with jax.enable_x64(True):
    got = np.asarray(halton(500, d, skip=skip))
  np.testing.assert_array_equal(got, scipy_halton(500, d, skip))


def test_halton_float32_close_to_scipy_and_below_one():
  got = np.asarray(halton(2**12, 4))
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, scipy_halton(2**12, 4), atol=1e-6)
  assert got.max() < 1.0


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("fn,max_dim", [(sobol, SOBOL_MAX_DIM), (halton, HALTON_MAX_DIM)])
def test_errors(fn, max_dim):
  with pytest.raises(ValueError, match="dim"):
    fn(8, max_dim + 1)
  with pytest.raises(ValueError, match="n must be >= 1"):
    fn(0, 2)
  with pytest.raises(TypeError, match="n must be a Python int"):
    fn(8.0, 2)
  with pytest.raises(ValueError, match="skip"):
    fn(8, 2, skip=-1)
  with pytest.raises(TypeError, match="dtype"):
    fn(8, 2, dtype=jnp.int32)


def test_sobol_warns_for_non_power_of_two_and_checks_capacity():
  with pytest.warns(UserWarning, match="power of 2"):
    sobol(10, 2)
  with pytest.raises(ValueError, match="skip \\+ n"):
    sobol(2, 2, skip=2**30)


# ---------------------------------------------------------------- randomized


@pytest.mark.parametrize("fn", [sobol, halton])
def test_randomized_points_uniform_and_key_determined(fn):
  keys = jax.random.split(jax.random.key(0), 400)
  pts = jax.jit(jax.vmap(lambda k: fn(64, 3, key=k)))(keys)
  pts = np.asarray(pts, np.float64)
  assert pts.min() >= 0 and pts.max() < 1
  # Each single point (index 0 is the origin unscrambled) is uniform over keys.
  first = pts[:, 0, :].ravel()
  assert abs(first.mean() - 0.5) < 0.03 and abs(first.var() - 1 / 12) < 0.01
  from scipy.stats import kstest

  assert kstest(first, "uniform").pvalue > 1e-3
  # jit + vmap may fuse the Halton digit sum differently: equal to rounding.
  np.testing.assert_allclose(fn(64, 3, key=keys[0]), pts[0].astype(np.float32), rtol=1e-6)
  assert not np.array_equal(pts[0], pts[1])


def test_scrambled_sobol_keeps_net_property():
  # A (0, m, 1)-net in every coordinate: one point per interval of width 1/n.
  n = 2**10
  pts = np.asarray(sobol(n, 16, key=jax.random.key(3)))
  cells = np.floor(pts * n).astype(int)
  for d in range(16):
    assert np.array_equal(np.sort(cells[:, d]), np.arange(n))


@pytest.mark.parametrize("fn", [sobol, halton])
def test_scrambled_discrepancy_below_random(fn):
  n, d = 256, 4
  rng = np.random.default_rng(0)
  random_disc = np.median([sqmc.discrepancy(rng.random((n, d))) for _ in range(10)])
  qmc_disc = np.median(
    [sqmc.discrepancy(np.asarray(fn(n, d, key=jax.random.key(i)), np.float64)) for i in range(10)]
  )
  assert qmc_disc < 0.2 * random_disc


def _assert_points_in_unit_cube(cases):
  """Plain and randomized Sobol' and Halton points for every ``(d, skip, n)``, from one program."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    run = jax.jit(
      lambda: [
        fn(n, d, key=key, skip=skip)
        for d, skip, n in cases
        for fn in (sobol, halton)
        for key in (None, jax.random.key(skip))
      ]
    )
    points = iter(run())
  for d, skip, n in cases:
    for _ in range(4):
      p = np.asarray(next(points))
      assert p.shape == (n, d) and p.min() >= 0 and p.max() < 1, (d, skip, n)


def test_points_in_unit_cube():
  # One point; a skip that is not a multiple of n (Sobol' unaligned path); the largest d.
  _assert_points_in_unit_cube([(1, 0, 1), (3, 37, 40), (6, 11, 17)])


@pytest.mark.slow
@settings(max_examples=8)  # each example compiles new shapes
@given(st.integers(1, 6), st.integers(0, 40), st.integers(1, 40))
def test_property_points_in_unit_cube(d, skip, n):
  _assert_points_in_unit_cube([(d, skip, n)])


def test_jit_static_sizes():
  f = jax.jit(sobol, static_argnames=("n", "dim"))
  np.testing.assert_array_equal(f(n=16, dim=3), sobol(16, 3))
  g = jax.jit(lambda k: halton(16, 3, key=k))
  np.testing.assert_allclose(g(jax.random.key(1)), halton(16, 3, key=jax.random.key(1)), rtol=1e-6)
