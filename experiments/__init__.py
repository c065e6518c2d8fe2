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
  "tiny_lm",
)


def load(name: str):
  """Imports ``experiments.<name>``; a KeyError (with a suggestion) for an unknown name."""
  if name not in REGISTRY:
    import difflib

    close = difflib.get_close_matches(name, REGISTRY, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise KeyError(f"unknown experiment {name!r}{hint} (available: {', '.join(REGISTRY)})")
  return importlib.import_module(f"experiments.{name}")
