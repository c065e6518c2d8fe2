import atexit
import contextlib
import ctypes
import gc
import os
import shutil
import tempfile

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

import pytest  # noqa: E402

# A compilation cache on disk, fresh for each run and shared by its xdist
# workers: the compiled programs that memory release (below, after each
# module) drops, or that the other worker already compiled, are read back
# instead of compiled again (eager calls compile one program per operation and
# shape, and many recur across modules). The process that loads this file first
# (the xdist controller, or the only process) makes the folder and removes it at
# exit; the workers inherit its name.
if "JAXSOFT_TEST_XLA_CACHE" not in os.environ:
  os.environ["JAXSOFT_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="jaxsoft-tests-xla-cache-")
  atexit.register(shutil.rmtree, os.environ["JAXSOFT_TEST_XLA_CACHE"], ignore_errors=True)


def _configure_jax():
  import jax

  # MLIR locations: the file and line of each operation's call, not its whole
  # Python traceback. Only the debug metadata of the compiled programs changes
  # (measured: test_softmax.py with test_distributions.py, 4% less CPU).
  jax.config.update("jax_include_full_tracebacks_in_locations", False)
  jax.config.update("jax_compilation_cache_dir", os.environ["JAXSOFT_TEST_XLA_CACHE"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


# Hypothesis: deterministic and bounded so the suite stays fast on 2 cores.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# CPU-seconds of each module's quick tests (one process, 2026-12-01), for the
# order in which the xdist workers take them: longest first, so that the last
# module to start is a short one and neither worker waits long for the other
# at the end. A module missing here goes last; only the order depends on it.
MODULE_CPU_SECONDS = {
  "test_montecarlo": 51,
  "test_losses": 42,
  "test_mle": 40,
  "test_qmc": 32,
  "test_attention": 31,
  "test_vocab_losses": 27,
  "test_mle_inference": 25,
  "test_softmax": 20,
  "test_distributions": 18,
  "test_attention_structure": 13,
  "test_attention_jvp": 9,
  "test_experiments": 7,
  "test_losses_adaptive": 6,
  "test_tiny_lm": 6,
  "test_attention_blocks": 4,
}


def pytest_configure(config):
  # pytest-xdist >= 3.6 hands the modules out by their number of tests, not in
  # the order below; from 3.8 on, this option (--no-loadscope-reorder) keeps it.
  config.option.loadscopereorder = False
  # The xdist controller runs no test: without jax it holds ~130 MB less.
  if not getattr(config.option, "numprocesses", None) or hasattr(config, "workerinput"):
    _configure_jax()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
  """pytest-xdist (``--dist loadgroup``) keeps a test module on one worker, so
  that its shared compiled functions compile once, unless a test names its own
  ``xdist_group`` (a long test that is better run beside its module). The
  modules go out longest first (see ``pytest_configure``)."""
  for item in items:
    if not item.get_closest_marker("xdist_group"):
      item.add_marker(pytest.mark.xdist_group(item.path.stem))
  items.sort(key=lambda item: -MODULE_CPU_SECONDS.get(item.path.stem, 0))


def _release_memory():
  """Drops compiled programs and returns freed heap pages to the OS (glibc
  keeps them otherwise, and a worker's RSS only grows)."""
  import jax

  jax.clear_caches()
  gc.collect()
  with contextlib.suppress(OSError, AttributeError):
    ctypes.CDLL("libc.so.6").malloc_trim(0)


@pytest.fixture(autouse=True, scope="module")
def _fresh_compilation_cache():
  """After each test module: keeping every module's executables in memory costs
  the suite ~1 GB (those that the next modules compile again come back from the
  disk cache above)."""
  yield
  _release_memory()
