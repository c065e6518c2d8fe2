"""The README's Python snippets run and print what their comments say.

A snippet states its expected output either in a comment after each ``print``
(``print(x)  # 0.6641 = why``: the text before " = " or ": " must start the
printed line), or as a block of ``#`` lines at its end, one per printed line.
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

import pytest

# Run by `pytest -m docs` (`.ci/run` runs it with XLA's default compile settings).
pytestmark = pytest.mark.docs

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def _expected(block: str) -> list[str]:
  lines = block.rstrip().splitlines()
  trailing = []
  while lines and lines[-1].startswith("#"):
    trailing.insert(0, lines.pop()[1:].strip())
  if trailing:
    return trailing
  out = []
  for line in lines:
    if line.lstrip().startswith("print(") and "  # " in line:
      out.append(re.split(r" = |: ", line.split("  # ", 1)[1].strip())[0])
  return out


def _norm(s: str) -> str:
  return " ".join(s.split())


def test_readme_has_snippets():
  assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_snippet(index):
  block = BLOCKS[index]
  expected = _expected(block)
  assert expected, "every README snippet states what it prints"
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    exec(compile(block, f"README.md snippet {index}", "exec"), {})
  printed = [line for line in buf.getvalue().splitlines() if line.strip()]
  assert len(printed) == len(expected), (printed, expected)
  for got, want in zip(printed, expected):
    assert _norm(got).startswith(_norm(want)), (got, want)
