"""Timing, memory and table helpers shared by the benchmark modules.

* ``median_time(fn, *args)`` times a callable whose result is a JAX (or NumPy)
  value, after warm-up calls that absorb compilation.
* ``interleaved_times(fns, rounds)`` times several callables in turn, each
  round, and returns the median wall and CPU time of each.
* ``peak_rss(target, **kwargs)`` runs ``module:function(**kwargs)`` in a fresh
  Python subprocess and returns its peak resident set size in bytes (or a
  string such as ``"OOM"`` / ``"timeout"`` when the case cannot finish).
* ``table(headers, rows)`` renders a Markdown table.

Benchmarks print; they never assert.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import jax


def block(x):
  return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, x)


def median_time(fn, *args, repeats: int = 5, warmup: int = 1, min_time: float = 0.0) -> float:
  """Median wall time of ``fn(*args)`` in seconds (blocking on the result)."""
  for _ in range(warmup):
    block(fn(*args))
  times = []
  start = time.perf_counter()
  while len(times) < repeats or (time.perf_counter() - start) < min_time:
    t0 = time.perf_counter()
    block(fn(*args))
    times.append(time.perf_counter() - t0)
    if len(times) >= 10 * max(repeats, 1):
      break
  return statistics.median(times)


def interleaved_times(fns: dict, rounds: int) -> dict:
  """``{name: (median wall s, median CPU s)}`` of the argument-free callables ``fns``, after one warm-up call each.

  Each round times every function in turn, so that load from other jobs hits
  them alike; CPU time (``time.process_time``, all threads) is the steadier
  figure on a shared machine.
  """
  for fn in fns.values():
    block(fn())
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      w, c = time.perf_counter(), time.process_time()
      block(fn())
      times[name].append((time.perf_counter() - w, time.process_time() - c))
  return {name: tuple(statistics.median(t[i] for t in ts) for i in (0, 1)) for name, ts in times.items()}


def compile_time(jitted, *args) -> float:
  """Seconds to lower and compile ``jitted`` for ``args`` (no execution)."""
  t0 = time.perf_counter()
  jitted.lower(*args).compile()
  return time.perf_counter() - t0


def peak_rss(target: str, timeout: float = 600.0, env: dict | None = None, **kwargs):
  """Peak RSS (bytes) of a fresh subprocess running ``module:function(**kwargs)``."""
  cmd = [sys.executable, "-m", "benchmarks._harness", target, json.dumps(kwargs)]
  full_env = dict(os.environ, **(env or {}))
  try:
    proc = subprocess.run(
      cmd,
      capture_output=True,
      text=True,
      timeout=timeout,
      env=full_env,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
  except subprocess.TimeoutExpired:
    return "timeout"
  if proc.returncode != 0:
    tail = (proc.stderr or "").strip().splitlines()[-1:] or [""]
    if proc.returncode in (-9, 137) or "RESOURCE_EXHAUSTED" in proc.stderr or "MemoryError" in proc.stderr:
      return "OOM"
    return f"failed ({tail[0][:60]})"
  for line in proc.stdout.splitlines()[::-1]:
    if line.startswith("PEAK_RSS_BYTES="):
      return int(line.split("=", 1)[1])
  return "failed (no report)"


def fmt_bytes(b) -> str:
  if not isinstance(b, (int, float)):
    return str(b)
  return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"


def fmt_time(t) -> str:
  if not isinstance(t, (int, float)):
    return str(t)
  if t >= 1:
    return f"{t:.2f} s"
  if t >= 1e-3:
    return f"{t * 1e3:.2f} ms"
  return f"{t * 1e6:.1f} us"


def table(headers, rows) -> str:
  lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def _memcase(target: str, kwargs_json: str) -> None:
  module, func = target.split(":")
  fn = getattr(importlib.import_module(module), func)
  block(fn(**json.loads(kwargs_json)))
  print(f"PEAK_RSS_BYTES={_own_peak_rss()}")


def _own_peak_rss() -> int:
  """This process's peak RSS in bytes.

  On Linux ``ru_maxrss`` survives fork + exec, so a child reports at least the
  parent's RSS at fork time; ``VmHWM`` belongs to the address space that exec
  creates, so it counts only this process.
  """
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  # ru_maxrss is in KiB on Linux.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


if __name__ == "__main__":
  _memcase(sys.argv[1], sys.argv[2])
