"""Rewrite the reST markup of numpydoc docstrings as the Markdown that mkdocstrings renders.

stochrnn's docstrings follow numpydoc, which borrows Sphinx's reST markup; mkdocstrings
renders docstrings as Markdown. :func:`rest_to_markdown` rewrites:

- ``:class:`Name``` (and ``:meth:``, ``:func:``, ``:attr:``, ``:mod:``, ``:data:``,
  ``:exc:``, ``:obj:``; ``~`` shortens the label) into an optional cross-reference when
  ``resolve(name)`` gives a path, into inline code otherwise;
- ``:math:`x``` into inline math ``\\(x\\)`` and the ``.. math::`` directive into a
  ``$$`` block (``pymdownx.arithmatex`` syntax);
- reST simple tables (rules of ``=``) into Markdown tables;
- reST definition lists (a term, then its indented definition) in the description before
  the first numpydoc section into Markdown definition lists (the ``def_list`` extension);
- a paragraph ending in ``::`` (reST's literal-block marker) into one ending in ``:``.

Pure text functions with no dependency, so that tests/test_docs.py can check them.
"""

from __future__ import annotations

import re
from collections.abc import Callable

ROLE = re.compile(r":(?:class|meth|func|attr|mod|data|exc|obj):`(~?)([\w.]+)(?:\(\))?`")
INLINE_MATH = re.compile(r":math:`([^`]+)`")
MATH_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<inline>.*)$")
LITERAL_MARKER = re.compile(r"(?<=\S)::$", re.MULTILINE)
TABLE_RULE = re.compile(r"^[ \t]*=+(?: +=+)+[ \t]*$")
SECTION_RULE = re.compile(r"^-{3,}[ \t]*$")
LIST_ITEM = re.compile(r"^(?:[-*+]|\d+[.)]|#\.)\s")

#: Gives the full path of a name seen from the docstring, or None if it is not documented.
Resolver = Callable[[str], "str | None"]


def rest_to_markdown(text: str, resolve: Resolver) -> str:
    """All the rewrites of the module docstring, in an order that keeps them apart."""
    text = convert_definition_lists(convert_simple_tables(convert_math_directives(text)))
    text = INLINE_MATH.sub(lambda m: rf"\({m[1]}\)", text)
    text = ROLE.sub(lambda m: reference(m[2], short=bool(m[1]), resolve=resolve), text)
    return LITERAL_MARKER.sub(":", text)


def reference(name: str, *, short: bool, resolve: Resolver) -> str:
    """An optional autoref to ``name`` if it resolves, else inline code.

    Optional: an object that exists but is documented on no page (a private base class,
    an undocumented constant) renders as plain code instead of failing the build.
    """
    label = name.rsplit(".", 1)[-1] if short else name
    path = resolve(name)
    if path is None:
        return f"`{label}`"
    return f'<autoref identifier="{path}" optional><code>{label}</code></autoref>'


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def convert_math_directives(text: str) -> str:
    """Replace every ``.. math::`` directive (inline or indented body) by a ``$$`` block.

    A body with alignment (``&``) or line breaks (``\\\\``) becomes a ``split``
    environment, as in Sphinx; any other body is joined into one line.
    """
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = MATH_DIRECTIVE.match(lines[i])
        if match is None:
            out.append(lines[i])
            i += 1
            continue
        indent = match["indent"]
        body = [match["inline"].strip()]
        i += 1
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > len(indent)):
            body.append(lines[i].strip())
            i += 1
        lines_of_tex = [part for part in body if part]
        if any("&" in part or part.endswith("\\\\") for part in lines_of_tex):
            # Aligned rows, as Sphinx renders them: one split environment.
            lines_of_tex = ["\\begin{split}", *lines_of_tex, "\\end{split}"]
        else:
            lines_of_tex = [" ".join(lines_of_tex)]
        out.extend(["", f"{indent}$$", *(indent + tex for tex in lines_of_tex), f"{indent}$$", ""])
    return "\n".join(out)


def convert_definition_lists(text: str) -> str:
    """Rewrite the reST definition lists of the description (the text before the first
    numpydoc section, whose parameter lists look alike) as Markdown definition lists.

    A term is an unindented line that follows a blank line or another definition and is
    followed at once by indented lines, its definition.
    """
    lines = text.splitlines()
    end = next(
        (i - 1 for i in range(1, len(lines)) if SECTION_RULE.match(lines[i]) and lines[i - 1]),
        len(lines),
    )
    out: list[str] = []
    i = 0
    after_break = True  # at the start, after a blank line, or after a definition
    while i < end:
        line = lines[i]
        is_term = (
            after_break
            and line.strip() != ""
            and _indent(line) == 0
            and not LIST_ITEM.match(line)
            and i + 1 < end
            and lines[i + 1].strip() != ""
            and _indent(lines[i + 1]) > 0
        )
        if not is_term:
            out.append(line)
            after_break = not line.strip()
            i += 1
            continue
        body = []
        i += 1
        while i < end and lines[i].strip() and _indent(lines[i]) > 0:
            body.append(lines[i].strip())
            i += 1
        out.extend([line, ":   " + body[0], *("    " + part for part in body[1:]), ""])
        after_break = True
    return "\n".join(out + lines[end:])


def _table_rows(lines: list[str], starts: list[int]) -> list[list[str]]:
    """Cells of a simple table's lines; a line with an empty first cell continues the last row."""
    rows: list[list[str]] = []
    for line in lines:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        if rows and not cells[0]:
            rows[-1] = [f"{old} {new}".strip() for old, new in zip(rows[-1], cells, strict=True)]
        elif any(cells):
            rows.append(cells)
    return rows


def convert_simple_tables(text: str) -> str:
    """Replace every reST simple table (a header between two rules of ``=``, then the body
    and a closing rule) by a Markdown table; columns empty in every row are dropped."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        rules = [j for j in range(i, len(lines)) if TABLE_RULE.match(lines[j])][:3]
        if len(rules) < 3 or rules[0] != i:
            out.append(lines[i])
            i += 1
            continue
        first, middle, last = rules
        indent = lines[first][: _indent(lines[first])]
        starts = [m.start() for m in re.finditer(r"=+", lines[first])]
        header = _table_rows(lines[first + 1 : middle], starts)
        body = _table_rows(lines[middle + 1 : last], starts)
        used = [c for c in range(len(starts)) if any(row[c] for row in header + body)]
        table = [[row[c] for c in used] for row in header[:1] + body]
        out.append("")
        out.append(indent + "| " + " | ".join(table[0]) + " |")
        out.append(indent + "|" + " --- |" * len(used))
        out.extend(indent + "| " + " | ".join(row) + " |" for row in table[1:])
        out.append("")
        i = last + 1
    return "\n".join(out)
