"""Running statistics ``(count, mean, M2)`` of i.i.d. units, merged in a fixed order.

``M2`` is the sum of squared deviations from the mean. Statistics of disjoint
blocks merge exactly (Chan, Golub and LeVeque's pairwise update), so a long
stream can be reduced block by block in a loop with memory independent of its
length; merging in a fixed order makes the result independent of how the
blocks were grouped into steps. ``mean`` and ``M2`` are pytrees (one leaf per
output of the integrand); ``count`` is an int32 scalar.

References:
  Chan, Golub and LeVeque, "Algorithms for computing the sample variance:
  analysis and recommendations", The American Statistician 37, 1983.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def unzip_map(fn, tree, *rest):
  """Maps ``fn`` (returning a tuple) over the leaves of ``tree`` (and ``rest``); one tree per output."""
  leaves, treedef = jax.tree.flatten(tree)
  others = [treedef.flatten_up_to(r) for r in rest]
  outs = [fn(*args) for args in zip(leaves, *others)]
  width = len(outs[0]) if outs else 0
  return tuple(treedef.unflatten([o[i] for o in outs]) for i in range(width))


def zeros(value_struct):
  """Statistics of no unit; ``value_struct`` is a pytree of ``ShapeDtypeStruct``."""
  z = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), value_struct)
  return jnp.zeros((), jnp.int32), z, z


def block_stats(values, mask=None):
  """Statistics of the units stacked along axis 0 of every leaf of ``values``.

  ``mask`` (bool ``[units]``) keeps only the units where it is True.
  """
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

  return (count,) + unzip_map(leaf, values)


def merge(a, b):
  """Statistics of the union of two disjoint sets of units (Chan et al.'s pairwise update)."""
  na, mean_a, m2_a = a
  nb, mean_b, m2_b = b
  n = na + nb

  def leaf(ma, mb, sa, sb):
    fa, fb = na.astype(ma.dtype), nb.astype(ma.dtype)
    frac = fb / jnp.maximum(fa + fb, 1)
    delta = mb - ma
    return ma + delta * frac, sa + sb + jnp.square(delta) * fa * frac

  return (n,) + unzip_map(leaf, mean_a, mean_b, m2_a, m2_b)


def merge_sequential(stats, stacked):
  """Merges the statistics stacked along axis 0 of ``stacked`` into ``stats``, in order."""

  def body(carry, item):
    return merge(carry, item), None

  return lax.scan(body, stats, stacked)[0]


def stderr(count, m2):
  """Standard error of the mean, ``sqrt(M2 / (count - 1) / count)``; inf below two units."""
  c = count.astype(m2.dtype)
  var = m2 / jnp.maximum(c - 1, 1)
  return jnp.where(count > 1, jnp.sqrt(var / jnp.maximum(c, 1)), jnp.inf)
