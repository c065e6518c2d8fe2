"""The ``reduction`` option shared by every loss: ``"mean"``, ``"sum"``, ``"none"``."""

import jax.numpy as jnp

REDUCTIONS = ("mean", "sum", "none")


def reduce_loss(per_example, denominator, reduction):
  """Per-example losses, their sum, or a (weighted) mean that is 0 over nothing.

  ``denominator`` holds each example's weight in the mean (0 for an example
  that does not count). PyTorch returns NaN for a mean over zero weight; a
  training loop with an all-padding batch should see 0 and zero gradients.
  """
  if reduction == "none":
    return per_example
  total = jnp.sum(per_example)
  if reduction == "sum":
    return total
  den = jnp.sum(denominator)
  return jnp.where(den == 0, 0, total / jnp.where(den == 0, 1, den))
