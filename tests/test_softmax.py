"""Tests for jaxsoft.softmax against float64 NumPy references.

Reads top-down: references, closed forms, options (axis, where,
temperature), extreme inputs, dtypes, gradients and transforms, properties,
errors. The docstring examples are run by test_docstrings.py.
"""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _grad_check import check_grads as check_grads_compiled
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

from jaxsoft.softmax import log_softmax, logsumexp, softmax

F32_MAX = float(np.finfo(np.float32).max)


# --- float64 NumPy references ------------------------------------------------


def _axes(axis, ndim):
  axes = (axis,) if isinstance(axis, int) else tuple(axis)
  return tuple(a % ndim for a in axes)


def np_logsumexp(x, axis=-1, where=None, keepdims=False):
  x = np.asarray(x, np.float64)
  if where is not None:
    x = np.where(where, x, -np.inf)
  axes = _axes(axis, x.ndim)
  m = np.max(x, axis=axes, keepdims=True)
  m = np.where(np.isfinite(m), m, 0.0)
  with np.errstate(divide="ignore"):
    out = np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True)) + m
  return out if keepdims else np.squeeze(out, axes)


def np_log_softmax(x, axis=-1, where=None, temperature=1.0):
  x = np.asarray(x, np.float64)
  if where is not None:
    x = np.where(where, x, -np.inf)
  axes = _axes(axis, x.ndim)
  m = np.max(x, axis=axes, keepdims=True)
  m = np.where(np.isfinite(m), m, 0.0)
  z = (x - m) / temperature
  lse = np_logsumexp(z, axes, keepdims=True)
  return z - np.where(np.isfinite(lse), lse, 0.0)


def np_softmax(x, axis=-1, where=None, temperature=1.0):
  return np.exp(np_log_softmax(x, axis, where, temperature))


def rand(shape, seed=0, scale=3.0):
  return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


def assert_close(got, want, rtol=2e-6, atol=1e-6):
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol)


def np_logsumexp_scaled(x, b, axis=-1):
  """``(log |sum b e^x|, sign)`` in float64, straight from the definition (no shift needed: small x)."""
  s = np.sum(np.asarray(b, np.float64) * np.exp(np.asarray(x, np.float64)), axis=axis)
  with np.errstate(divide="ignore"):
    return np.log(np.abs(s)), np.sign(s)


# --- closed forms ------------------------------------------------------------


def test_uniform_and_two_class_closed_forms():
  np.testing.assert_allclose(softmax(jnp.zeros(4)), np.full(4, 0.25), rtol=1e-7)
  np.testing.assert_allclose(logsumexp(jnp.zeros(4)), np.log(4.0), rtol=1e-7)
  # Two classes: softmax is the logistic sigmoid of the difference.
  d = 1.7
  np.testing.assert_allclose(softmax(jnp.array([d, 0.0]))[0], 1 / (1 + np.exp(-d)), rtol=1e-6)


# --- axis, where, temperature against the reference --------------------------

AXES = [-1, 0, 1, (0, 2), (-1, -2), (0, 1, 2)]


@pytest.mark.parametrize("axis", AXES)
def test_matches_reference_axis(axis):
  x = rand((3, 4, 5))
  assert_close(softmax(x, axis), np_softmax(x, axis))
  assert_close(log_softmax(x, axis), np_log_softmax(x, axis), atol=1e-5)
  assert_close(logsumexp(x, axis), np_logsumexp(x, axis), atol=1e-5)
  assert_close(logsumexp(x, axis, keepdims=True), np_logsumexp(x, axis, keepdims=True), atol=1e-5)
  p = np.asarray(softmax(x, axis), np.float64)
  np.testing.assert_allclose(p.sum(_axes(axis, 3)), 1.0, rtol=1e-6)


@pytest.mark.parametrize("mask_shape", [(3, 4, 5), (1, 4, 5), (4, 1), (5,)])
@pytest.mark.parametrize("axis", [-1, (1, 2)])
def test_where_matches_reference(mask_shape, axis):
  x = rand((3, 4, 5), seed=1)
  where = np.random.default_rng(2).random(mask_shape) < 0.6
  p = softmax(x, axis, where=where)
  assert_close(p, np_softmax(x, axis, where))
  assert_close(log_softmax(x, axis, where=where), np_log_softmax(x, axis, where), atol=1e-5)
  assert_close(logsumexp(x, axis, where=where), np_logsumexp(x, axis, where), atol=1e-5)
  # Excluded entries get probability exactly 0 and log-probability -inf.
  full = np.broadcast_to(where, x.shape)
  assert np.all(np.asarray(p)[~full] == 0)
  assert np.all(np.asarray(log_softmax(x, axis, where=where))[~full] == -np.inf)


def test_where_ignores_values_of_excluded_entries():
  x = jnp.array([1.0, 2.0, 3.0])
  where = jnp.array([True, True, False])
  for junk in (1e30, -1e30, jnp.inf, -jnp.inf, F32_MAX):
    y = x.at[2].set(junk)
    np.testing.assert_array_equal(softmax(y, where=where), softmax(x, where=where))
    np.testing.assert_array_equal(logsumexp(y, where=where), logsumexp(x, where=where))


@pytest.mark.parametrize("temperature", [0.05, 0.5, 1.0, 2.0, 10.0])
def test_temperature(temperature):
  x = rand((4, 6), seed=3)
  assert_close(softmax(x, temperature=temperature), np_softmax(x / np.float64(temperature)))
  assert_close(
    log_softmax(x, temperature=temperature), np_log_softmax(x / np.float64(temperature)), rtol=1e-5, atol=1e-4
  )


def test_temperature_with_mask_and_huge_logits():
  # x / T would overflow float32 for T < 1; shifting first keeps it exact.
  x = jnp.array([1e30, 0.5e30, -1e30])
  np.testing.assert_array_equal(softmax(x, temperature=0.01), [1.0, 0.0, 0.0])
  np.testing.assert_array_equal(log_softmax(x, temperature=1e-3)[0], 0.0)
  x = rand((2, 5), seed=4)
  where = np.array([[True, False, True, True, False]] * 2)
  assert_close(softmax(x, where=where, temperature=0.3), np_softmax(x, -1, where, 0.3))


def test_temperature_as_array_and_its_gradient():
  x = jnp.array([0.9, 1.2, -0.4])
  t = 1.5
  g, gs = jax.jit(
    lambda t: (
      jax.grad(lambda t: logsumexp(log_softmax(x, temperature=t) * 0 + x / t))(t),
      jax.grad(lambda t: softmax(x, temperature=t)[0])(t),
    )
  )(t)
  # d/dT logsumexp(x / T) = -sum p_i x_i / T^2 with p = softmax(x / T).
  p = np_softmax(np.asarray(x, np.float64) / t)
  np.testing.assert_allclose(g, -np.sum(p * np.asarray(x, np.float64)) / t**2, rtol=1e-5)
  x64 = np.asarray(x, np.float64)
  expected = p[0] * (-(x64[0] - np.sum(p * x64)) / t**2)
  np.testing.assert_allclose(gs, expected, rtol=1e-5)


# --- extreme inputs ----------------------------------------------------------


def _no_nan(*arrays):
  for a in arrays:
    assert not np.any(np.isnan(np.asarray(a, np.float64)))


@pytest.mark.parametrize("big", [1e30, F32_MAX])
def test_huge_logits_exact(big):
  x = jnp.array([big, big, -big, 0.0])
  np.testing.assert_array_equal(softmax(x), [0.5, 0.5, 0.0, 0.0])
  np.testing.assert_allclose(log_softmax(x)[:2], [-np.log(2)] * 2, rtol=1e-6)
  # logsumexp = big + log 2, which rounds to big in float32 (no overflow).
  np.testing.assert_array_equal(logsumexp(x), np.float32(big))
  np.testing.assert_array_equal(logsumexp(jnp.array([-big, -big])), np.float32(-big))
  np.testing.assert_array_equal(softmax(jnp.array([-big, -big])), [0.5, 0.5])
  g = jax.grad(lambda x: logsumexp(x))(x)
  np.testing.assert_array_equal(g, [0.5, 0.5, 0.0, 0.0])
  _no_nan(softmax(x), log_softmax(x), jax.grad(lambda x: log_softmax(x)[0])(x))


def test_shift_by_huge_constant():
  x = rand((3, 5), seed=5, scale=1.0)
  assert_close(softmax(x + 1e4), np_softmax(x), atol=2e-3)
  np.testing.assert_array_equal(softmax(jnp.array([1e30, 1e30 + 1e24])), [0.0, 1.0])


def test_minus_inf_entries_get_zero_probability():
  x = jnp.array([0.9, -jnp.inf, 1.2, -0.4])
  p = softmax(x)
  np.testing.assert_allclose(p, [0.3813, 0.0, 0.5147, 0.1039], atol=5e-5)
  assert p[1] == 0
  assert log_softmax(x)[1] == -np.inf
  np.testing.assert_allclose(logsumexp(x), 1.8641, atol=5e-5)
  for f in (
    lambda x: jnp.sum(softmax(x) * jnp.arange(4.0)),
    lambda x: jnp.sum(jnp.where(jnp.isfinite(log_softmax(x)), log_softmax(x), 0)),
    lambda x: logsumexp(x),
  ):
    g = jax.grad(f)(x)
    _no_nan(g)
    assert g[1] == 0


def test_plus_inf_and_nan_propagate():
  # The contract allows NaN only when the input holds NaN or +inf.
  assert np.isnan(softmax(jnp.array([1.0, jnp.nan]))).all()
  assert logsumexp(jnp.array([1.0, jnp.inf])) == np.inf


def _all_excluded_cases():
  x = jnp.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]])
  masked = (x, jnp.array([[False, False, False], [True, False, True]]))
  minus_inf = (x.at[0].set(-jnp.inf), None)
  return [masked, minus_inf]


@pytest.mark.parametrize("x,where", _all_excluded_cases(), ids=["where", "-inf"])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_all_excluded_slice(x, where, temperature):
  p = softmax(x, where=where, temperature=temperature)
  lp = log_softmax(x, where=where, temperature=temperature)
  lse = logsumexp(x, where=where)
  np.testing.assert_array_equal(p[0], [0.0, 0.0, 0.0])
  np.testing.assert_array_equal(lp[0], [-np.inf] * 3)
  assert lse[0] == -np.inf
  ref_w = None if where is None else np.asarray(where)
  assert_close(p[1], np_softmax(np.asarray(x)[1], -1, None if ref_w is None else ref_w[1], temperature))
  _no_nan(p, lp, lse)
  c = jnp.array([1.0, -2.0, 3.0])
  fns = [
    lambda x: jnp.sum(softmax(x, where=where, temperature=temperature) * c),
    lambda x: jnp.sum(
      jnp.where(jnp.isfinite(lp), log_softmax(x, where=where, temperature=temperature), 0) * c
    ),
    lambda x: jnp.sum(jnp.where(jnp.isfinite(lse), logsumexp(x, where=where), 0)),
  ]
  grads, hessian = jax.jit(lambda x: ([jax.grad(f)(x) for f in fns], jax.hessian(fns[1])(x)))(x)
  for g in grads:
    _no_nan(g)
    np.testing.assert_array_equal(g[0], [0.0, 0.0, 0.0])
    assert np.all(np.isfinite(g))
  # Second order stays finite too.
  _no_nan(hessian)


def test_all_excluded_jvp_is_zero():
  x = jnp.array([1.0, 2.0])
  where = jnp.array([False, False])
  for f in (softmax, log_softmax):
    y, t = jax.jvp(lambda x: f(x, where=where), (x,), (jnp.ones(2),))
    _no_nan(t)
    np.testing.assert_array_equal(t, [0.0, 0.0])
  y, t = jax.jvp(lambda x: logsumexp(x, where=where), (x,), (jnp.ones(2),))
  assert y == -np.inf and t == 0


# --- dtypes ------------------------------------------------------------------


@pytest.mark.parametrize(
  "fn,ref", [(softmax, np_softmax), (log_softmax, np_log_softmax), (logsumexp, np_logsumexp)]
)
def test_bfloat16_in_bfloat16_out(fn, ref):
  x = jnp.asarray(rand((4, 64), seed=6), jnp.bfloat16)
  y = fn(x)
  assert y.dtype == jnp.bfloat16
  want = ref(np.asarray(x.astype(jnp.float32), np.float64))
  # Computed in float32: within one bfloat16 rounding of the exact value.
  np.testing.assert_allclose(np.asarray(y.astype(jnp.float32)), want, rtol=2**-8, atol=1e-30)
  np.testing.assert_array_equal(
    np.asarray(y), np.asarray(jnp.asarray(want.astype(np.float32)).astype(jnp.bfloat16))
  )


def test_bfloat16_many_classes_accumulates_in_float32():
  # 1024 equal logits: a bfloat16 running sum stalls at 256, float32 does not.
  x = jnp.zeros((1024,), jnp.bfloat16)
  assert logsumexp(x).astype(jnp.float32) == pytest.approx(np.log(1024), rel=2**-8)
  p = softmax(x)
  assert p.dtype == jnp.bfloat16
  assert p.astype(jnp.float32)[0] == pytest.approx(1 / 1024, rel=2**-8)


def test_float16_computed_in_float32():
  x = jnp.asarray(rand((3, 7), seed=7), jnp.float16)
  y = softmax(x)
  assert y.dtype == jnp.float16
  np.testing.assert_allclose(
    np.asarray(y, np.float64), np_softmax(np.asarray(x, np.float64)), rtol=2**-10, atol=1e-6
  )


def test_float64_under_x64():
  with jax.enable_x64(True):
    x = np.random.default_rng(8).normal(size=(3, 5)) * 10
    where = np.random.default_rng(9).random((3, 5)) < 0.7
    for fn, ref in [(softmax, np_softmax), (log_softmax, np_log_softmax), (logsumexp, np_logsumexp)]:
      y = fn(jnp.asarray(x), where=where)
      assert y.dtype == jnp.float64
      np.testing.assert_allclose(np.asarray(y), ref(x, -1, where), rtol=1e-13, atol=1e-13)
    y = softmax(jnp.asarray(x), temperature=0.3)
    np.testing.assert_allclose(np.asarray(y), np_softmax(x / 0.3), rtol=1e-12, atol=1e-15)
    big = np.finfo(np.float64).max
    np.testing.assert_array_equal(softmax(jnp.array([big, big, -big])), [0.5, 0.5, 0.0])


# --- gradients ---------------------------------------------------------------

_WHERE = jnp.array([[True, True, False, True]] * 2)
_C = jnp.asarray(rand((2, 4), seed=11, scale=1.0))


@pytest.mark.parametrize(
  "f",
  [
    # Several functions per check: each check costs a compile.
    lambda x: softmax(x, (0, 1), temperature=0.7) * _C + log_softmax(x) + logsumexp(x, 0, keepdims=True),
    lambda x: (
      softmax(x, where=_WHERE) * _C
      + jnp.where(_WHERE, log_softmax(x, where=_WHERE, temperature=2.0), 0)
      + logsumexp(x, where=_WHERE, keepdims=True)
    ),
  ],
  ids=["unmasked", "masked"],
)
def test_check_grads(f):
  x = jnp.asarray(rand((2, 4), seed=10, scale=1.0))
  check_grads_compiled(f, (x,), order=2, modes=("fwd", "rev"), eps=1e-4, atol=1e-2, rtol=1e-2)


@pytest.mark.slow  # float32 check_grads above covers the default run
def test_check_grads_float64():
  with jax.enable_x64(True):
    x = jnp.asarray(np.random.default_rng(12).normal(size=(2, 5)))
    f = lambda x: softmax(x) * x + log_softmax(x, temperature=0.5) + logsumexp(x, keepdims=True)
    check_grads(f, (x,), order=2, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6, eps=1e-5)


def test_gradients_against_closed_forms():
  x = rand((5,), seed=13)
  p = np_softmax(x)
  g, jac_rev, jac_fwd = jax.jit(
    lambda x: (jax.grad(logsumexp)(x), jax.jacrev(softmax)(x), jax.jacfwd(log_softmax)(x))
  )(x)
  assert_close(g, p)
  assert_close(jac_rev, np.diag(p) - np.outer(p, p), atol=1e-6)
  assert_close(jac_fwd, np.eye(5) - p[None, :], atol=1e-6)


# --- transforms ---------------------------------------------------------------

_jit_softmax = jax.jit(softmax, static_argnums=1, static_argnames="temperature")
_jit_log_softmax = jax.jit(log_softmax, static_argnums=1)
_jit_logsumexp = jax.jit(logsumexp, static_argnums=1, static_argnames="keepdims")


def test_jit_matches_eager_and_reference():
  x = rand((3, 4, 5), seed=14)
  where = np.random.default_rng(15).random((3, 4, 5)) < 0.5
  assert_close(_jit_softmax(x, (1, 2), where=where), np_softmax(x, (1, 2), where))
  assert_close(_jit_log_softmax(x, 0, where=where), np_log_softmax(x, 0, where), atol=1e-5)
  assert_close(
    _jit_logsumexp(x, -1, where=where, keepdims=True), np_logsumexp(x, -1, where, keepdims=True), atol=1e-5
  )
  assert_close(_jit_softmax(x, -1, temperature=0.5), np_softmax(x / 0.5))
  # Traced temperature and mask.
  f = jax.jit(lambda x, t, w: softmax(x, where=w, temperature=t))
  assert_close(f(x, 0.5, where), np_softmax(x, -1, where, 0.5))


def test_vmap():
  x = rand((6, 4, 5), seed=16)
  where = np.random.default_rng(17).random((6, 4, 5)) < 0.6
  where[0, 1] = False
  p, lse, g = jax.jit(
    lambda x, w: (
      jax.vmap(lambda x, w: softmax(x, 0, where=w))(x, w),
      jax.vmap(lambda x, w: logsumexp(x, where=w))(x, w),
      jax.vmap(jax.grad(lambda x: logsumexp(x, (0, 1))))(x),
    )
  )(x, where)
  assert_close(p, np.stack([np_softmax(x[i], 0, where[i]) for i in range(6)]))
  assert_close(lse, np_logsumexp(x, -1, where), atol=1e-5)
  assert_close(g, np_softmax(x, (1, 2)))


def test_jvp():
  x = rand((2, 5), seed=18)
  t = rand((2, 5), seed=19)
  p = np_softmax(x)
  y, dy = jax.jvp(softmax, (jnp.asarray(x),), (jnp.asarray(t),))
  assert_close(y, p)
  assert_close(dy, p * (t - np.sum(p * t, -1, keepdims=True)), atol=1e-5)
  y, dy = jax.jvp(log_softmax, (jnp.asarray(x),), (jnp.asarray(t),))
  assert_close(dy, t - np.sum(p * t, -1, keepdims=True), atol=1e-5)
  y, dy = jax.jvp(logsumexp, (jnp.asarray(x),), (jnp.asarray(t),))
  assert_close(dy, np.sum(p * t, -1), atol=1e-5)


# --- properties ----------------------------------------------------------------

finite_logits = hnp.arrays(
  np.float32, st.sampled_from([(5,), (3, 4)]), elements=st.floats(-1e4, 1e4, width=32)
)


@given(finite_logits, st.floats(0.1, 10.0))
def test_property_sums_to_one_and_nonnegative(x, temperature):
  p = np.asarray(softmax(x, temperature=temperature), np.float64)
  assert np.all(p >= 0) and np.all(p <= 1)
  np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
  assert_close(p, np_softmax(x, temperature=temperature), atol=1e-5)


@given(finite_logits, st.floats(-1e3, 1e3, width=32))
def test_property_shift_invariance(x, c):
  x = np.clip(x, -1e3, 1e3)  # keep x + c exact enough in float32
  c = np.float32(c)
  assert_close(softmax(x + c), np_softmax(x), atol=2e-4)
  assert_close(log_softmax(x + c), np_log_softmax(x), rtol=1e-4, atol=2e-3)
  assert_close(logsumexp(x + c) - c, np_logsumexp(x), rtol=1e-4, atol=2e-3)


@given(finite_logits, hnp.arrays(np.bool_, 5))
def test_property_log_softmax_consistent(x, mask):
  where = np.broadcast_to(mask, x.shape[:-1] + (5,)) if x.shape[-1] == 5 else None
  lp = np.asarray(log_softmax(x, where=where), np.float64)
  p = np.asarray(softmax(x, where=where), np.float64)
  lse = np.asarray(logsumexp(x, where=where), np.float64)
  np.testing.assert_allclose(np.exp(lp), p, rtol=1e-5, atol=1e-7)
  xm = np.where(where, x, -np.inf) if where is not None else x
  assert np.all(lse >= np.max(xm, -1))
  assert not np.isnan(lp).any() and not np.isnan(p).any() and not np.isnan(lse).any()


# --- errors ------------------------------------------------------------------


# --- logsumexp: jax.nn's b, return_sign, and axis=None -------------------------


def test_logsumexp_scale_sign_and_axis_none():
  x = rand((3, 4), seed=70, scale=1.0)
  b = rand((3, 4), seed=71, scale=1.0)
  b[0, 1] = 0.0
  b[2] = 0.0  # all zero: -inf, sign 0
  want, want_sign = np_logsumexp_scaled(x, b)
  out, sign = logsumexp(x, b=b, return_sign=True)
  assert_close(out, want, atol=1e-5)
  np.testing.assert_array_equal(sign, want_sign)
  # Without return_sign a negative sum is NaN (jax.nn's rule).
  np.testing.assert_array_equal(np.isnan(logsumexp(x, b=b)), want_sign < 0)
  # axis=None reduces every axis, with b and without; a broadcast b.
  assert_close(logsumexp(x, axis=None), np_logsumexp(x, (0, 1)), atol=1e-5)
  assert_close(logsumexp(x, axis=None, b=np.abs(b)), np_logsumexp_scaled(x, np.abs(b), (0, 1))[0], atol=1e-5)
  assert_close(logsumexp(x, b=np.float32(2.0)), np_logsumexp(x) + np.log(2.0), atol=1e-5)
  assert_close(softmax(x, axis=None), np_softmax(x, (0, 1)))
  # A huge x under b = 0 does not set the shift (the others would underflow).
  y = np.array([1000.0, 0.0, 1.0], np.float32)
  assert_close(logsumexp(y, b=np.array([0.0, 1.0, 1.0])), np.log(1 + np.e), atol=1e-6)
  # where and b together; keepdims.
  m = np.array([True, True, False, True])
  got = logsumexp(x[:2], b=np.abs(b[:2]), where=m, keepdims=True, return_sign=True)
  want = np_logsumexp_scaled(np.where(m, x[:2], -np.inf), np.abs(b[:2]))[0]
  assert got[0].shape == (2, 1) and got[1].shape == (2, 1)
  assert_close(got[0][:, 0], want, atol=1e-5)


def test_logsumexp_scaled_gradients():
  # d/dx_j = b_j e^{x_j} / s, d/db_j = e^{x_j} / s (also where b_j = 0), in float64.
  x = rand((2, 4), seed=72, scale=1.0)
  b = np.abs(rand((2, 4), seed=73, scale=1.0)) + 0.1
  b[0, 2] = 0.0
  b[1] *= np.array([1, -1, 1, 1], np.float32)
  e = np.exp(x.astype(np.float64))
  s = np.sum(b * e, -1, keepdims=True)
  gx, gb = jax.grad(lambda x, b: jnp.sum(logsumexp(x, b=b, return_sign=True)[0]), (0, 1))(x, b)
  assert_close(gx, b * e / s, atol=1e-5)
  assert_close(gb, e / s, atol=1e-5)
  check_grads_compiled(
    lambda x, b: logsumexp(x, b=b, return_sign=True)[0], (x, b), order=1, eps=1e-3, atol=1e-2, rtol=1e-2
  )
  # All of b zero: -inf with zero gradients, never NaN.
  g = jax.grad(lambda x: jnp.sum(logsumexp(x, b=jnp.zeros(4))))(x)
  np.testing.assert_array_equal(g, 0.0)
  # jit and vmap agree with the eager values.
  f = jax.jit(jax.vmap(lambda x, b: logsumexp(x, b=b, return_sign=True)))
  np.testing.assert_allclose(f(x, b)[0], logsumexp(x, b=b, return_sign=True)[0], rtol=1e-6)


@pytest.mark.parametrize("fn", [softmax, log_softmax, logsumexp])
def test_errors(fn):
  x = jnp.ones((2, 3))
  with pytest.raises(TypeError, match="x"):
    fn(jnp.ones((2, 3), jnp.int32))
  with pytest.raises(TypeError, match="where"):
    fn(x, where=jnp.ones((2, 3)))
  with pytest.raises(TypeError, match="where"):
    fn(x, where=jnp.ones((2, 3), jnp.int32))
  with pytest.raises(ValueError, match="where"):
    fn(x, where=jnp.ones((4,), bool))
  with pytest.raises(ValueError, match="axis"):
    fn(x, 2)
  with pytest.raises(ValueError, match="axis"):
    fn(x, (0, 0))
  with pytest.raises(TypeError, match="axis"):
    fn(x, 1.0)


@pytest.mark.parametrize("fn", [softmax, log_softmax])
@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_non_positive_temperature(fn, temperature):
  with pytest.raises(ValueError, match="temperature"):
    fn(jnp.ones(3), temperature=temperature)


def test_logsumexp_scale_errors():
  with pytest.raises(ValueError, match="logsumexp: b must"):
    logsumexp(jnp.zeros((2, 3)), b=jnp.ones(4))
  with pytest.raises(TypeError, match="logsumexp: b must"):
    logsumexp(jnp.zeros(3), b=jnp.ones(3, bool))
  with pytest.raises(TypeError, match="return_sign"):
    logsumexp(jnp.zeros(3), return_sign=1)


def test_error_message_format():
  with pytest.raises(ValueError, match=r"softmax: temperature must be > 0, got -1"):
    softmax(jnp.ones(3), temperature=-1)
