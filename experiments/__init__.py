"""jaxsoft experiments: rerunnable scripts that use jaxsoft's public API.

Run from the repository root: ``python -m experiments list | run NAME | all |
rerun RUN_DIR [--resume]``. Adding an experiment is one line in ``REGISTRY``.
"""
from __future__ import annotations

import importlib

# Module names under experiments/, in the order `all` runs them.
REGISTRY = (
    "lecture",
    "classifier",
    "attention_toy",
    "monte_carlo",
    "mle_heights",
    "vocab_softmax",
)


class Unavailable(Exception):
  """An experiment whose jaxsoft dependency is not there (yet)."""


def load(name: str):
  """Imports ``experiments.<name>``; raises Unavailable if jaxsoft lacks what it needs."""
  if name not in REGISTRY:
    import difflib
    close = difflib.get_close_matches(name, REGISTRY, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise KeyError(f"unknown experiment {name!r}{hint} (available: {', '.join(REGISTRY)})")
  import jaxsoft
  try:
    module = importlib.import_module(f"experiments.{name}")
  except (ImportError, AttributeError) as e:
    raise Unavailable(f"{name}: cannot be imported ({e})") from e
  missing = [r for r in getattr(module, "REQUIRES", ()) if not hasattr(jaxsoft, r)]
  if missing:
    raise Unavailable(f"{name}: needs jaxsoft.{', jaxsoft.'.join(missing)}, "
                      f"which this jaxsoft does not have")
  return module


def available():
  """[(name, module or None, reason or None)] for every registered experiment."""
  out = []
  for name in REGISTRY:
    try:
      out.append((name, load(name), None))
    except Unavailable as e:
      out.append((name, None, str(e)))
  return out
