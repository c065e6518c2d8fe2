"""Argument checks shared by every public function.

All error messages are built here, in one format:

    "<function>: <argument> must <expectation>, got <what was given>"

Checks run at trace time on static information (shapes, dtypes, Python
options), so they cost nothing inside a compiled function.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def fail(fn: str, arg: str, expected: str, got: Any, *, exc: type[Exception] = ValueError):
  """Raises ``exc`` with the house message format."""
  raise exc(f"{fn}: {arg} must {expected}, got {got}")


def _dtype_of(x) -> np.dtype:
  return jnp.result_type(x) if not hasattr(x, "dtype") else np.dtype(x.dtype)


def check_array(fn: str, arg: str, x) -> None:
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    if not isinstance(x, (int, float, bool, list, tuple, np.number)):
      fail(fn, arg, "be an array", type(x).__name__, exc=TypeError)


def check_floating(fn: str, arg: str, x) -> None:
  """``x`` must have a floating dtype."""
  dtype = _dtype_of(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    fail(fn, arg, "have a floating dtype", dtype, exc=TypeError)


def check_integer(fn: str, arg: str, x) -> None:
  dtype = _dtype_of(x)
  if not jnp.issubdtype(dtype, jnp.integer):
    fail(fn, arg, "have an integer dtype", dtype, exc=TypeError)


def check_bool(fn: str, arg: str, x) -> None:
  dtype = _dtype_of(x)
  if dtype != np.bool_:
    fail(fn, arg, "be a boolean array (True where allowed)", f"dtype {dtype}", exc=TypeError)


def check_ndim(fn: str, arg: str, x, ndim: int | Sequence[int], what: str = "") -> None:
  allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
  if np.ndim(x) not in allowed:
    want = " or ".join(str(a) for a in allowed)
    fail(fn, arg, f"have rank {want}{what}", f"shape {tuple(np.shape(x))}")


def check_min_ndim(fn: str, arg: str, x, ndim: int, what: str = "") -> None:
  if np.ndim(x) < ndim:
    fail(fn, arg, f"have rank >= {ndim}{what}", f"shape {tuple(np.shape(x))}")


def check_shape(fn: str, arg: str, x, shape: Sequence[int], what: str = "") -> None:
  """``x.shape`` must equal ``shape``; ``what`` explains where it comes from."""
  got = tuple(np.shape(x))
  if got != tuple(shape):
    fail(fn, arg, f"have shape {tuple(shape)}{what}", got)


def check_broadcastable(
  fn: str, arg: str, shape: Sequence[int], target: Sequence[int], what: str = ""
) -> None:
  """``shape`` must broadcast to ``target`` (without changing ``target``)."""
  try:
    out = np.broadcast_shapes(tuple(shape), tuple(target))
  except ValueError:
    out = None
  if out != tuple(target):
    fail(fn, arg, f"be broadcastable to {tuple(target)}{what}", f"shape {tuple(shape)}")


def check_option(fn: str, arg: str, value, allowed: Iterable) -> None:
  allowed = tuple(allowed)
  if value not in allowed:
    fail(fn, arg, f"be one of {allowed}", repr(value))


def as_number(fn: str, arg: str, value) -> float | None:
  """Concrete Python/NumPy scalars become floats; traced values return None."""
  if isinstance(value, (bool, np.bool_)):
    fail(fn, arg, "be a number", repr(value), exc=TypeError)
  if isinstance(value, (int, float, np.number)):
    return float(value)
  try:
    return float(np.asarray(value))  # concrete 0-d array
  except Exception:  # a tracer: cannot be checked at trace time
    return None


def check_nonnegative(fn: str, arg: str, value) -> None:
  v = as_number(fn, arg, value)
  if v is not None and not v >= 0:
    fail(fn, arg, "be >= 0", v)


def check_positive(fn: str, arg: str, value) -> None:
  v = as_number(fn, arg, value)
  if v is not None and not v > 0:
    fail(fn, arg, "be > 0", v)


def check_range(fn: str, arg: str, value, lo: float, hi: float, *, lo_open=False, hi_open=False) -> None:
  v = as_number(fn, arg, value)
  if v is None:
    return
  ok_lo = v > lo if lo_open else v >= lo
  ok_hi = v < hi if hi_open else v <= hi
  if not (ok_lo and ok_hi and not math.isnan(v)):
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    fail(fn, arg, f"be in {left}{lo}, {hi}{right}", v)


def check_int(fn: str, arg: str, value, *, minimum: int | None = None) -> int:
  """A static Python integer (sizes, counts), optionally bounded below."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    fail(fn, arg, "be a Python int", repr(value), exc=TypeError)
  if minimum is not None and value < minimum:
    fail(fn, arg, f"be >= {minimum}", value)
  return int(value)


def normalize_axes(fn: str, arg: str, axis, ndim: int) -> tuple[int, ...]:
  """An int or tuple of ints, checked against ``ndim``, made non-negative and sorted."""
  axes = (axis,) if isinstance(axis, (int, np.integer)) else axis
  if not isinstance(axes, (tuple, list)) or not all(isinstance(a, (int, np.integer)) for a in axes):
    fail(fn, arg, "be an int or a tuple of ints", repr(axis), exc=TypeError)
  out = []
  for a in axes:
    if not -ndim <= a < ndim:
      fail(fn, arg, f"be in [-{ndim}, {ndim}) for an input of rank {ndim}", a)
    out.append(int(a) % ndim)
  if len(set(out)) != len(out):
    fail(fn, arg, "not repeat an axis", repr(axis))
  return tuple(sorted(out))


def concrete(x):
  """``x`` as a NumPy array when it is concrete, None when it is a tracer."""
  if isinstance(x, jax.core.Tracer):
    return None
  try:
    return np.asarray(x)
  except Exception:  # jax.errors.TracerArrayConversionError and friends
    return None


def check_key(fn: str, arg: str, key):
  """A single ``jax.random`` key, returned typed.

  Typed keys pass through; legacy ``uint32[2]`` keys (``jax.random.PRNGKey``)
  are wrapped as threefry keys. Anything else (an int seed, a batch of keys)
  is an error that names the argument.
  """
  dtype = getattr(key, "dtype", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    if np.shape(key) != ():
      fail(fn, arg, "be a single key (shape ())", f"shape {np.shape(key)}")
    return key
  if dtype == jnp.uint32 and np.shape(key) == (2,):
    return jax.random.wrap_key_data(key)
  got = f"{type(key).__name__} {getattr(key, 'dtype', '')}".strip()
  fail(fn, arg, "be a jax.random key (jax.random.key(seed))", got, exc=TypeError)
