"""The chunked attention kernel one (batch row, key head) lane at a time, even on the tiny blocks of the tests.

The kernel loops over lanes only for query blocks of at least
``_LANE_MIN_ROWS`` rows; the tests' blocks are smaller, so a test that wants
the lane loop traces its function inside :func:`by_lane`.
"""

import contextlib

from jaxsoft import _chunked_attention as chunked


@contextlib.contextmanager
def by_lane(on: bool = True):
  saved = chunked._LANE_MIN_ROWS
  chunked._LANE_MIN_ROWS = 1 if on else saved
  try:
    yield
  finally:
    chunked._LANE_MIN_ROWS = saved
