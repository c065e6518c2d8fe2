import contextlib
import ctypes
import gc
import os

# XLA compilation, not execution, is most of this suite's time: nearly every test
# compiles its own small programs. Unless JAXSOFT_TEST_XLA_DEFAULT=1, the tests
# ask XLA:CPU for its quick compile (LLVM at -O0, the elemental emitters), which
# halves the suite's CPU time. The programs compute the same IEEE operations;
# only the machine code is less optimized. `.ci/run` also runs the README and
# docstring examples, whose printed numbers are the documented ones, with XLA's
# defaults. The last flag compiles each program's LLVM module in one piece
# instead of splitting it across threads: for the suite's many small programs
# the split costs more than it saves (measured: test_softmax.py 28 -> 23
# CPU-seconds). Set before jax creates its CPU client, and inherited by the
# subprocesses that the experiment tests start.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1"
if os.environ.get("JAXSOFT_TEST_XLA_DEFAULT") != "1":
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAGS}".strip()

import jax  # noqa: E402
import pytest  # noqa: E402

# Hypothesis: deterministic and bounded so the suite stays fast on 2 cores.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
  """pytest-xdist (``--dist loadgroup``) keeps a test module on one worker, so
  that its shared compiled functions compile once, unless a test names its own
  ``xdist_group`` (a long test that is better run beside its module). The
  experiment runs go first: they are the longest units."""
  for item in items:
    if not item.get_closest_marker("xdist_group"):
      item.add_marker(pytest.mark.xdist_group(item.path.stem))
  items.sort(key=lambda item: item.path.stem != "test_experiments")


def _release_memory():
  """Drops compiled programs and returns freed heap pages to the OS (glibc
  keeps them otherwise, and a worker's RSS only grows)."""
  jax.clear_caches()
  gc.collect()
  with contextlib.suppress(OSError, AttributeError):
    ctypes.CDLL("libc.so.6").malloc_trim(0)


@pytest.fixture(autouse=True, scope="module")
def _fresh_compilation_cache():
  """After each test module: one module's executables are never reused by the
  next, and keeping them all costs the suite ~1 GB."""
  yield
  _release_memory()
