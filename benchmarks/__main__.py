"""Runs every benchmark: ``python -m benchmarks [--quick] [--only NAME,...]``.

Each module ``benchmarks/bench_<name>.py`` defines ``run(quick: bool) -> str``
returning Markdown (a heading and tables). The report is printed and written
to ``benchmarks/out/latest.md``.
"""

import argparse
import datetime
import importlib
import os
import pathlib
import platform
import sys
import time

import jax
import numpy as np

NAMES = [
  "softmax",
  "attention",
  "attention_torch",
  "attention_jvp",
  "attention_structure",
  "context_parallel",
  "montecarlo",
  "mle",
  "vocab",
  "vocab_parallel",
]


def header() -> str:
  import optax
  import scipy

  return (
    f"Measured {datetime.date.today().isoformat()} on {platform.platform()}, "
    f"{os.cpu_count()} CPU cores, Python {platform.python_version()}, jax {jax.__version__}, "
    f"optax {optax.__version__}, numpy {np.__version__}, scipy {scipy.__version__}, "
    f"devices {[d.device_kind for d in jax.devices()]}."
  )


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
  p.add_argument("--quick", action="store_true", help="small shapes, for a smoke run")
  p.add_argument("--only", default=",".join(NAMES), help=f"comma-separated subset of {NAMES}")
  args = p.parse_args(argv)
  out = [f"# Benchmarks\n\n{header()}\n"]
  print(out[0], flush=True)
  for name in args.only.split(","):
    if not pathlib.Path(__file__).with_name(f"bench_{name}.py").exists():
      print(f"(no benchmark module for {name} yet)", file=sys.stderr)
      continue
    t0 = time.perf_counter()
    section = importlib.import_module(f"benchmarks.bench_{name}").run(quick=args.quick)
    section += f"\n\n(section took {time.perf_counter() - t0:.0f} s)\n"
    print(section, flush=True)
    out.append(section)
  path = pathlib.Path(__file__).with_name("out")
  path.mkdir(exist_ok=True)
  (path / "latest.md").write_text("\n".join(out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
