r"""Vocabulary parallelism: per-token softmax statistics of a weight split by columns over a mesh axis.

Device :math:`k` of the axis holds the columns :math:`[kV_\ell, (k+1)V_\ell)`
of ``weight`` (:math:`V_\ell = V / D`) and computes, with the chunked engine of
:mod:`jaxsoft._vocab` on its own columns only, each token's local
logsumexp :math:`\mathrm{lse}_k`, its label logit when it owns the label, the
class-weighted sum :math:`u_k = \sum_{c \in k} w_c z_c` and the mean logit
:math:`\bar z_k = \sum_{c \in k} p^{(k)}_c z_c` under its local softmax. The
global statistics follow from one all-reduce of the max and one of the sums
(Megatron-LM's vocabulary-parallel cross-entropy, Shoeybi et al. 2019):

.. math::
  M = \max_k \mathrm{lse}_k, \quad
  S = \sum_k e^{\mathrm{lse}_k - M}, \quad
  \mathrm{lse} = M + \log S, \quad
  H = \mathrm{lse} - \frac{1}{S} \sum_k e^{\mathrm{lse}_k - M} \bar z_k,

and :math:`z_y`, :math:`u` are plain sums over the devices. Everything here
is plain JAX on the engine's differentiable outputs, so autodiff gives each
device the gradient of its own columns (sharded like the weight) and the sum
of the hidden-state gradients (the transpose of the all-reduce).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from jaxsoft import _online_logsumexp as online
from jaxsoft import _validate as V


def vocab_sizes(fn: str, mesh, axis_name, width: int) -> tuple[int, int]:
  """``(classes per device, all classes)`` for a ``weight`` of ``width`` columns, the options checked.

  ``width`` is the global vocabulary with ``mesh`` (or on one device), the
  local shard without it (inside the caller's ``shard_map``).
  """
  if axis_name is None:
    if mesh is not None:
      V.fail(fn, "axis_name", "be given with mesh (the axis that splits the vocabulary)", None, exc=TypeError)
    return width, width
  if mesh is None:
    try:
      return width, width * lax.axis_size(axis_name)
    except NameError:
      V.fail(
        fn,
        "axis_name",
        "name an axis of the enclosing shard_map (or pass mesh= to shard the global arrays)",
        repr(axis_name),
        exc=NameError,
      )
  if not isinstance(mesh, jax.sharding.Mesh):
    V.fail(fn, "mesh", "be a jax.sharding.Mesh", type(mesh).__name__, exc=TypeError)
  if axis_name not in mesh.axis_names:
    V.fail(fn, "axis_name", f"be an axis of mesh {tuple(mesh.axis_names)}", repr(axis_name))
  size = mesh.shape[axis_name]
  if width % size:
    V.fail(fn, "weight", f"have V divisible by the {size} devices of axis {axis_name!r}", f"V = {width}")
  return width // size, width


def _varying_axes(x) -> frozenset:
  aval = jax.typeof(x)
  mat = getattr(aval, "manual_axis_type", None)
  return frozenset(mat.varying if mat is not None else getattr(aval, "vma", ()))


def vary_like(x, *like):
  """``x`` typed as varying over every ``shard_map`` axis that one of ``like`` varies over.

  Inside ``shard_map`` (with its default ``check_vma=True``) a scan's initial
  carry must have the type of the body's output, and a custom VJP's
  cotangent that of its input: the engine's zero carries, and a hidden state
  that is the same on every device, are marked as varying like the weight
  shard they meet. The transpose of the mark sums the cotangent over the
  axis. Outside ``shard_map`` it returns ``x``.
  """
  want = frozenset().union(*(_varying_axes(a) for a in jax.tree.leaves(like)))

  def mark(leaf):
    axes = want - _varying_axes(leaf)
    return lax.pcast(leaf, tuple(sorted(axes)), to="varying") if axes else leaf

  return jax.tree.map(mark, x)


def merged_stats(local_stats, hidden, weight, bias, labels, class_weight, cap, *, axis_name):
  """Global per-token ``(lse, z_y, u, entropy)`` from this device's columns; call inside ``shard_map``.

  ``local_stats(hidden, weight, bias, labels, class_weight, cap)`` is the
  single-device engine on this device's columns (labels local and safe to
  gather); ``labels`` here are global class ids (safe: in ``[0, V)``).
  """
  v_local = weight.shape[1]
  local = labels - lax.axis_index(axis_name) * v_local
  owns = (local >= 0) & (local < v_local)
  floats = (hidden, weight, bias, class_weight, cap)
  hidden, weight, bias, class_weight, cap = vary_like(floats, floats)
  lse_k, zy_k, u_k, ent_k = local_stats(hidden, weight, bias, jnp.where(owns, local, 0), class_weight, cap)
  # The max is a constant for differentiation (lse is shift invariant); floored
  # so that a token whose every class is -inf keeps e = 0 instead of NaN.
  lowest = jnp.finfo(lse_k.dtype).min
  m = lax.pmax(jnp.maximum(lax.stop_gradient(lse_k), lowest), axis_name)
  e = jnp.exp(lse_k - m)
  # lse_k - ent_k is the mean logit under the local softmax; for an empty
  # shard (e = 0) it is -inf - -inf, and its term is 0.
  zbar = jnp.where(e > 0, e * (lse_k - ent_k), 0)
  s, z_y, u, t = lax.psum((e, jnp.where(owns, zy_k, 0), u_k, zbar), axis_name)
  lse = m + jnp.log(s)
  return lse, z_y, u, lse - t / online.safe(s)


def sharded_stats(local_stats, hidden, weight, bias, labels, class_weight, cap, *, mesh, axis_name):
  """:func:`merged_stats` on global arrays: ``weight``, ``bias`` and ``class_weight`` split over ``axis_name``.

  The tokens are replicated over the mesh; the statistics come back
  replicated too.
  """
  cols, vec = P(None, axis_name), P(axis_name)
  args, specs = (hidden, weight, bias, labels, class_weight), (P(), cols, vec, P(), vec)
  if cap is not None:
    args, specs = args + (cap,), specs + (P(),)

  def body(h, w, b, y, cw, c=None):
    return merged_stats(local_stats, h, w, b, y, cw, c, axis_name=axis_name)

  return jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=P())(*args)


def gather_columns(x, axis_name):
  """The whole ``[V]`` vector from this device's ``[V / D]`` shard (inside ``shard_map``)."""
  return lax.all_gather(x, axis_name, tiled=True, to="invarying")
