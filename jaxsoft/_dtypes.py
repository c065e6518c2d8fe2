"""Dtype policy: half precision is computed in float32 and returned as given."""

import jax.numpy as jnp


def compute_dtype(dtype):
  """The dtype to accumulate in: float32 for bfloat16/float16, else ``dtype``."""
  dtype = jnp.dtype(dtype)
  if dtype.itemsize < 4:
    return jnp.dtype(jnp.float32)
  return dtype
