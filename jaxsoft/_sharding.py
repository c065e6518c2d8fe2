r"""Several devices through JAX's own SPMD: the ``devices=`` option and batches of independent problems.

* :func:`device_mesh` turns the kit's ``devices=`` option (``None``, an int,
  or a sequence of devices) into a one-axis :class:`jax.sharding.Mesh`.
* :func:`sharded_vmap` is ``jax.vmap`` with the mapped axis split over
  devices by ``jax.shard_map``: a batch of fits, simulations or evaluations
  that do not talk to each other.

Public through :mod:`jaxsoft`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from jaxsoft import _validate as V

__all__ = ["sharded_vmap"]

_BATCH_AXIS = "batch"


def device_mesh(fn: str, devices, axis_name: str) -> Mesh | None:
  """``devices=`` as a one-axis mesh named ``axis_name``; None for None (the default device)."""
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
  return Mesh(np.asarray(list(devices)), (axis_name,))


def _batch_size(fn: str, args) -> int:
  leaves = jax.tree.leaves(args)
  if not leaves:
    V.fail(fn, "args", "hold at least one array to map over", "no arrays", exc=TypeError)
  sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
  if None in sizes or len(sizes) != 1:
    shapes = [tuple(np.shape(x)) for x in leaves]
    V.fail(fn, "args", "share one leading (batch) axis", f"shapes {shapes}")
  (size,) = sizes
  if size < 1:
    V.fail(fn, "args", "have a batch of at least one", "an empty batch")
  return size


def sharded_vmap(fun: Callable, *, devices=None) -> Callable:
  r"""``jax.vmap(fun)`` with the batch split over devices: each device maps its own slice.

  ``sharded_vmap(fun)(*args)`` equals ``jax.vmap(fun)(*args)``: every leaf of
  ``args`` is mapped over its leading axis, of one size ``B`` for all. The
  batch is cut into ``D`` contiguous slices, one per device, by
  ``jax.shard_map`` over a one-axis mesh; each device runs ``jax.vmap(fun)``
  on its slice and nothing is communicated. When ``D`` does not divide ``B``
  the last element is repeated to fill the last slice and the copies are
  dropped from the result. The outputs are global arrays whose leading axis
  is sharded over the devices.

  An element's result depends only on its own inputs, not on ``D``: the
  fits of a batch of datasets (:func:`jaxsoft.fit`,
  :func:`jaxsoft.fit_distribution`) give the same estimates on 1, 2 or 4
  devices, to float rounding (XLA may vectorize a batch of 3 and one of 12
  differently). Randomness stays independent of ``D`` when each element's
  key is one of the mapped arguments, e.g. ``jax.random.split(key, B)``: the
  key of element ``i`` is then fixed by ``i``, not by the device that runs it.

  Args:
    fun: a function of arrays or pytrees of arrays (one element of the batch
      each), returning a pytree of arrays; close over the arguments that are
      the same for every element.
    devices: ``None`` (every local device), an int (the first that many local
      devices) or a sequence of devices.

  Returns:
    A function of the batched arguments, with ``fun``'s outputs stacked on a
    new leading axis of size ``B``. It can be wrapped in ``jax.jit``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoft import sharded_vmap
    >>> xs = jnp.arange(12.0).reshape(6, 2)
    >>> print(sharded_vmap(lambda x: jnp.sum(x**2))(xs))
    [  1.  13.  41.  85. 145. 221.]

    A batch of fits: ``sharded_vmap(lambda x: fit_distribution("normal",
    x))(xs)`` for ``xs`` of shape ``[B, n]``.

  References:
    JAX documentation, "Manual parallelism with shard_map".
  """
  fn = "sharded_vmap"
  if not callable(fun):
    V.fail(fn, "fun", "be callable", type(fun).__name__, exc=TypeError)
  mesh = device_mesh(fn, len(jax.local_devices()) if devices is None else devices, _BATCH_AXIS)

  def mapped(*args):
    size = _batch_size(fn, args)
    pad = -size % mesh.devices.size
    if pad:
      args = jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]), args)
    spec = PartitionSpec(_BATCH_AXIS)
    # No collective runs inside, so there is nothing for the varying/invariant
    # type check to verify; skipping it lets fun's loops start from constants.
    out = jax.shard_map(jax.vmap(fun), mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)(*args)
    return jax.tree.map(lambda x: x[:size], out) if pad else out

  return mapped
