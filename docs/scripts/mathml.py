"""TeX to MathML at build time, for both halves of the site.

The guides (MkDocs, through ``hooks.py``) and the API reference (Sphinx, through
``sphinx_stochrnn.py``) render their equations with :func:`tex_to_mathml`, so the two
halves show equations alike, with no JavaScript and no CDN: the browser draws MathML
itself. :func:`unknown_commands` finds the TeX commands that latex2mathml passed through
untranslated, which the builds report as warnings (and so fail when strict).
"""

from __future__ import annotations

import re

from latex2mathml.converter import convert

#: Standard TeX operators that latex2mathml does not know, spelled with ones it does.
OPERATORS = {"arg": r"\operatorname{arg}"}
OPERATOR = re.compile(r"\\(" + "|".join(OPERATORS) + r")(?![A-Za-z])")
UNKNOWN_COMMAND = re.compile(r"<m[io]>(\\[A-Za-z]+)</m[io]>")


def tex_to_mathml(tex: str, display: bool) -> str:
    """The ``<math>`` element for ``tex`` (plain TeX, not HTML-escaped).

    A display equation whose rows are separated by ``\\\\`` becomes a ``split``
    environment (rows aligned at ``&``), as Sphinx's own math renderers do.
    """
    tex = OPERATOR.sub(lambda m: OPERATORS[m[1]], tex.strip())
    if display and "\\\\" in tex and "\\begin" not in tex:
        tex = "\\begin{split}" + tex + "\\end{split}"
    return convert(tex, display="block" if display else "inline")


def unknown_commands(mathml: str) -> list[str]:
    """The TeX commands that latex2mathml left as text in ``mathml``."""
    return UNKNOWN_COMMAND.findall(mathml)
