"""The one interval type returned by every confidence interval in the kit."""

from typing import Any, NamedTuple


class Interval(NamedTuple):
  """Lower and upper bounds, each with the structure of the estimate they bound.

  A ``NamedTuple``, so ``low, high = interval`` unpacks it and it passes
  through ``jit`` and ``vmap`` as a pytree.
  """

  lower: Any
  upper: Any
