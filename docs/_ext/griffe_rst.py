"""A griffe extension that turns the reStructuredText bits of our docstrings into Markdown.

The package's docstrings are numpydoc, which mkdocstrings parses, but their prose uses
a few reStructuredText constructs that Markdown would show verbatim:

* roles such as ``:math:`x^2``` or ``:func:`~ciss_autoimpute.tuning.autotune``` become inline code
  (`autotune`; a leading ``~`` keeps only the last dotted component, as in Sphinx);
* a ``.. math::`` directive becomes a fenced text block (no MathJax: the site must
  render offline);
* a paragraph ending in ``::`` loses one colon (the indented block after it is already
  a Markdown code block), and a line holding only ``::`` is dropped;
* simple tables (``=====  =====`` borders) become Markdown tables.

Only the docstring text given to the renderer changes; the package is untouched.
Loaded from ``mkdocs.yml`` (``extensions: [docs/_ext/griffe_rst.py]``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|data|mod|obj|exc|const|ref|term|math):`([^`]+)`")
_BORDER = re.compile(r"^(\s*)(=+)(\s+=+)+\s*$")


def _role_text(match: re.Match[str]) -> str:
    target = match.group(1).strip()
    titled = re.match(r"(.*?)\s*<([^>]+)>$", target)
    if titled:
        return f"`{titled.group(1)}`"
    if target.startswith("~"):
        target = target[1:].rsplit(".", 1)[-1]
    return f"`{target.lstrip('.')}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _math_blocks(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == ".. math::":
            base = _indent(line)
            body: list[str] = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
                body.append(lines[i])
                i += 1
            while body and not body[-1].strip():
                body.pop()
            while body and not body[0].strip():
                body.pop(0)
            cut = min((_indent(b) for b in body if b.strip()), default=0)
            pad = " " * base
            out.append(f"{pad}```text")
            out.extend(pad + b[cut:] if b.strip() else "" for b in body)
            out.append(f"{pad}```")
            out.append("")
            continue
        out.append(line)
        i += 1
    return out


def _split_row(line: str, starts: list[int]) -> list[str]:
    # A cell may overflow its border (a long name); then the next cell starts at the
    # first blank after the border position instead.
    cuts = []
    for start in starts[1:]:
        pos = max(start, cuts[-1] + 1 if cuts else 0)
        while pos < len(line) and not line[pos - 1].isspace():
            pos += 1
        cuts.append(pos)
    bounds = [starts[0], *cuts, len(line)]
    return [line[a:b].strip() for a, b in zip(bounds, bounds[1:])]


def _simple_tables(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        border = _BORDER.match(lines[i])
        if not border:
            out.append(lines[i])
            i += 1
            continue
        starts = [m.start() for m in re.finditer(r"=+", lines[i])]
        rows: list[list[str]] = []
        borders = 1
        j = i + 1
        header_rows = 0
        while j < len(lines) and borders < 3:
            if _BORDER.match(lines[j]):
                borders += 1
                if borders == 2:
                    header_rows = len(rows)
            elif lines[j].strip():
                rows.append(_split_row(lines[j], starts))
            j += 1
        if borders < 3 or not header_rows:
            out.append(lines[i])
            i += 1
            continue
        pad = border.group(1)
        header = rows[0]
        out.append(pad + "| " + " | ".join(header) + " |")
        out.append(pad + "|" + "|".join(" --- " for _ in header) + "|")
        for row in rows[header_rows:]:
            out.append(pad + "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
        out.append("")
        i = j
    return out


def _literal_markers(lines: list[str]) -> list[str]:
    out = []
    fenced = False
    for line in lines:
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and line.strip() == "::":
            continue
        if not fenced and line.rstrip().endswith("::") and not line.lstrip().startswith(">>>"):
            line = line.rstrip()[:-1]
        out.append(line)
    return out


def rst_to_markdown(text: str) -> str:
    """The docstring ``text`` with the reStructuredText constructs above rewritten."""
    # Tables first: their columns are found by position, before roles shorten the text.
    lines = _simple_tables(text.split("\n"))
    lines = _ROLE.sub(_role_text, "\n".join(lines)).split("\n")
    lines = _math_blocks(lines)
    lines = _literal_markers(lines)
    return "\n".join(lines)


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring of the loaded package once it is fully loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()
        stack: list[Any] = [pkg]
        while stack:
            obj = stack.pop()
            if id(obj) in seen or getattr(obj, "is_alias", False):
                continue
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = rst_to_markdown(obj.docstring.value)
            stack.extend(m for m in obj.members.values() if not getattr(m, "is_alias", False))
