"""Build hooks of the documentation site (mkdocs.yml names this file twice).

* ``on_files``: the home page and the tour pages are cut from README.md at build
  time, one page per ``###`` section of its tour (the README stays the one
  source, and it is executed by the tests); one page per experiment of
  ``experiments.REGISTRY``, with its PNGs from ``docs/img/<experiment>/``.
* ``on_page_content``: math written as LaTeX (``$...$``, ``$$...$$`` in pages,
  ``.. math::`` and ``:math:`` in docstrings) becomes MathML at build time, so
  that the pages render it without a script or network access.
* ``RstDocstrings``: a griffe extension that rewrites the reStructuredText bits
  of the docstrings (``.. math::``, ``:math:``, ``:func:`` ...) as Markdown.
"""

from __future__ import annotations

import ast
import html
import re
import sys
import textwrap
from pathlib import Path

import griffe
import latex2mathml.converter
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # experiments/ is run from the checkout, not installed

from experiments import REGISTRY  # noqa: E402

_TOUR = "## Tour"

# -- pages cut from the README ---------------------------------------------------------


def _slug(title: str) -> str:
  return re.sub(r"[^a-z0-9]+", "-", re.split(r"[(:]", title.lower())[0]).strip("-")


def _readme_pages() -> dict[str, str]:
  """{"index.md": intro, "tour/<slug>.md": section, ...} from README.md."""
  text = (ROOT / "README.md").read_text()
  # Links to files of the repository are not pages of the site: plain code instead.
  text = re.sub(r"\[([^\]]+)\]\((?!https?://|#)([^)]+)\)", r"`\2` in the repository", text)
  intro, rest = text.split(f"\n{_TOUR}\n", 1)
  tour, after = re.split(r"\n(?=## )", rest, maxsplit=1) if "\n## " in rest else (rest, "")
  pages = {"index.md": intro + "\n" + after}
  for section in re.split(r"\n(?=### )", tour)[1:]:
    title = section.splitlines()[0][4:]
    pages[f"tour/{_slug(title)}.md"] = "# " + section[4:]
  return pages


def _experiment_page(name: str) -> str:
  source = (ROOT / "experiments" / f"{name}.py").read_text()
  doc = ast.get_docstring(ast.parse(source)) or ""
  first, _, body = doc.partition("\n")
  lines = [
    f"# `{name}`",
    "",
    first,
    "",
    body.strip(),
    "",
    "```bash",
    f"python -m experiments run {name} --help",
    "```",
  ]
  lines += ["", "## Options", "", f"::: experiments.{name}.Config", ""]
  images = sorted((ROOT / "docs" / "img" / name).glob("*.png"))
  if images:
    lines += ["## Plots", "", "From a run on the defaults (`python -m experiments all`).", ""]
    lines += [f"![{p.stem}](../img/{name}/{p.name})\n" for p in images]
  return "\n".join(lines)


def on_files(files, config):
  pages = _readme_pages()
  pages.update({f"experiments/{name}.md": _experiment_page(name) for name in REGISTRY})
  for path, content in pages.items():
    files.append(File.generated(config, path, content=content))
  return files


def on_config(config):
  """The generated pages go in the navigation before the API reference (mkdocs.yml's nav)."""
  pages = _readme_pages()
  tour = [{_title(content): path} for path, content in pages.items() if path.startswith("tour/")]
  experiments = [{name: f"experiments/{name}.md"} for name in REGISTRY]
  config["nav"] = [{"Home": "index.md"}, {"Tour": tour}, {"Experiments": experiments}, *config["nav"]]
  return config


def _title(page: str) -> str:
  return page.splitlines()[0].lstrip("# ").split(" (")[0]


# -- math as MathML ------------------------------------------------------------------------

_BLOCK = re.compile(r'<div class="arithmatex">\s*\\\[(.*?)\\\]\s*</div>', re.S)
_INLINE = re.compile(r'<span class="arithmatex">\\\((.*?)\\\)</span>', re.S)


def _mathml(tex: str, display: str) -> str:
  return latex2mathml.converter.convert(html.unescape(tex).strip(), display=display)


def on_page_content(content, page, config, files):
  content = _BLOCK.sub(lambda m: _mathml(m.group(1), "block"), content)
  return _INLINE.sub(lambda m: _mathml(m.group(1), "inline"), content)


# -- docstrings: reStructuredText bits as Markdown ---------------------------------------

_MATH_BLOCK = re.compile(r"^( *)\.\. math::\n((?:\1 +\S.*\n|[ \t]*\n)+)", re.M)
_MATH_LINE = re.compile(r"^( *)\.\. math:: (\S.*)$", re.M)
_ROLE = re.compile(r":(?:math):`([^`]+)`")
_REF = re.compile(r":(?:func|class|meth|attr|mod|data|obj|exc):`~?([^`]+)`")


def rst_to_markdown(text: str) -> str:
  def block(m):
    indent, body = m.group(1), textwrap.dedent(m.group(2)).strip()
    return f"{indent}$$\n{textwrap.indent(body, indent)}\n{indent}$$\n\n"

  text = _MATH_BLOCK.sub(block, text + "\n")
  text = _MATH_LINE.sub(lambda m: f"{m.group(1)}$$\n{m.group(1)}{m.group(2)}\n{m.group(1)}$$\n", text)
  text = _ROLE.sub(lambda m: f"${m.group(1)}$", text)
  return _REF.sub(lambda m: f"`{m.group(1)}`", text).rstrip("\n")


class RstDocstrings(griffe.Extension):
  """Rewrites every docstring with ``rst_to_markdown`` before it is parsed."""

  def on_instance(self, *, obj, **kwargs):
    if obj.docstring is not None:
      obj.docstring.value = rst_to_markdown(obj.docstring.value)
