"""The one interval type returned by every confidence interval in the kit, and the t quantile."""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class Interval(NamedTuple):
  """Lower and upper bounds, each with the structure of the estimate they bound.

  A ``NamedTuple``, so ``low, high = interval`` unpacks it and it passes
  through ``jit`` and ``vmap`` as a pytree.
  """

  lower: Any
  upper: Any


def t_quantile(level: float, dof) -> jax.Array:
  r"""The two-sided Student t quantile :math:`t_{\nu}^{-1}((1 + \text{level}) / 2)`.

  ``level`` is a Python float in (0, 1); ``dof`` (:math:`\nu`) an array (may
  be traced); an infinite ``dof`` gives the normal quantile, ``dof < 1`` NaN.
  Hill's algorithm 396 (exact for 1 and 2 degrees of freedom), in the default
  float dtype: relative error below 1e-5 for every ``dof`` and level (checked
  against SciPy for levels 0.5 to 0.99999 and ``dof`` 1 to infinity), jit-able.

  References:
    Hill, "Algorithm 396: Student's t-quantiles", Comm. ACM 13, 1970.
  """
  # 1 - level is formed in Python (float64): in float32, 1 - 0.999 would lose
  # 4 of its digits before the algorithm starts.
  alpha = 1.0 - level
  dtype = jnp.result_type(float)
  nu = jnp.asarray(dof, dtype)
  n = jnp.where(nu >= 1, nu, 1.0)
  a = 1 / (n - 0.5)
  b = 48 / a**2
  c = ((20700 * a / b - 98) * a - 16) * a + 96.36
  d = ((94.5 / (b + c) - 3) / b + 1) * jnp.sqrt(a * math.pi / 2) * n
  y = (d * alpha) ** (2 / n)
  # The tail branch: a Cornish-Fisher correction of the normal quantile.
  x = jax.scipy.special.ndtri(jnp.asarray(alpha / 2, dtype))
  xx = x * x
  c_tail = jnp.where(n < 5, c + 0.3 * (n - 4.5) * (x + 0.6), c)
  c_tail = (((0.05 * d * x - 5) * x - 7) * x - 2) * x + b + c_tail
  y_tail = jnp.expm1(
    a * jnp.square((((((0.4 * xx + 6.3) * xx + 36) * xx + 94.5) / c_tail - xx - 3) / b + 1) * x)
  )
  y_body = ((1 / (((n + 6) / (n * y) - 0.089 * d - 0.822) * (n + 2) * 3) + 0.5 / (n + 4)) * y - 1) * (
    n + 1
  ) / (n + 2) + 1 / y
  t = jnp.sqrt(n * jnp.where(y > 0.05 + a, y_tail, y_body))
  t = jnp.where(n == 1, math.tan(math.pi * level / 2), t)
  t = jnp.where(n == 2, math.sqrt(2 / (alpha * (2 - alpha)) - 2), t)
  t = jnp.where(jnp.isinf(nu), -x, t)
  return jnp.where(nu >= 1, t, jnp.nan)
