"""Every docstring example in jaxsoft runs, once, and prints what it says.

The examples are the first code a user copies, so their printed numbers are
checked like any other reference value. Modules are discovered, not listed, and
each module's examples are counted against the ``>>>`` prompts in its source:
an example that doctest does not collect (a module left off, a function that
only re-exports) fails here instead of going unchecked. doctest collects a
function only in the module that defines it, so a re-export runs nothing twice.
"""

import doctest
import importlib
import inspect
import pkgutil
import re

import pytest

import jaxsoft

# Run by `pytest -m docs` (`.ci/run` runs it with XLA's default compile settings).
pytestmark = pytest.mark.docs

MODULES = sorted(m.name for m in pkgutil.iter_modules(jaxsoft.__path__))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
  module = importlib.import_module(f"jaxsoft.{name}")
  prompts = len(re.findall(r"^\s*>>>", inspect.getsource(module), re.MULTILINE))
  result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, report=False)
  assert result.failed == 0, f"{result.failed} of {result.attempted} examples in jaxsoft.{name} fail"
  assert result.attempted == prompts, f"jaxsoft.{name}: {prompts} examples, {result.attempted} collected"
