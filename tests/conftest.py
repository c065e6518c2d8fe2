import os

import jax
import pytest

# Hypothesis: deterministic and bounded so the suite stays fast on 2 cores.
from hypothesis import settings

settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True, scope="module")
def _fresh_compilation_cache():
  """Drops compiled programs after each test module: one module's executables
  are never reused by the next, and keeping them all costs the suite ~1 GB."""
  yield
  jax.clear_caches()
