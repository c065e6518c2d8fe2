"""Every docstring example in jaxsoft runs and prints what it says.

The examples are the first code a user copies, so their printed numbers are
checked like any other reference value.
"""

import doctest
import importlib

import pytest

MODULES = [
  "softmax",
  "losses",
  "_vocab",
  "attention",
  "montecarlo",
  "qmc",
  "mle",
  "_constraints",
  "distributions",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
  module = importlib.import_module(f"jaxsoft.{name}")
  result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, report=False)
  assert result.failed == 0, f"{result.failed} of {result.attempted} examples in jaxsoft.{name} fail"
  # distributions documents its families in prose; every other module has examples.
  assert result.attempted > 0 or name == "distributions"
