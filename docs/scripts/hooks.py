"""MkDocs hooks of the stochrnn site (``hooks:`` in mkdocs.yml).

- Generated content: :func:`on_page_markdown` replaces the marker
  ``<!-- estimator-table -->`` with the bias/variance table that
  ``estimator_table.py`` measures with ``stochrnn.diagnostics`` (a few seconds).
- Math: ``pymdownx.arithmatex`` (generic mode) leaves TeX in
  ``<span class="arithmatex">\\(…\\)</span>`` and ``<div class="arithmatex">\\[…\\]</div>``;
  :func:`on_page_content` turns it into MathML with ``latex2mathml``, so pages show
  their equations without JavaScript or a CDN (the docs also work offline). A TeX
  command that latex2mathml does not know is a warning, which fails the strict build.
"""

from __future__ import annotations

import html
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

from latex2mathml.converter import convert

sys.path.insert(0, str(Path(__file__).parent))
from estimator_table import markdown_table

log = logging.getLogger("mkdocs.hooks.stochrnn")

ARITHMATEX = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">\s*\\[(\[](?P<tex>.*?)\\[)\]]\s*</(?P=tag)>', re.DOTALL
)
UNKNOWN_COMMAND = re.compile(r"<m[io]>(\\[A-Za-z]+)</m[io]>")
#: Standard TeX operators that latex2mathml does not know, spelled with ones it does.
OPERATORS = {"arg": r"\operatorname{arg}"}
OPERATOR = re.compile(r"\\(" + "|".join(OPERATORS) + r")(?![A-Za-z])")

TABLE_MARKER = "<!-- estimator-table -->"


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """Put the measured estimator table where the page has the marker."""
    if TABLE_MARKER not in markdown:
        return markdown
    start = time.perf_counter()
    table = markdown_table()
    log.info("estimator table measured in %.1f s", time.perf_counter() - start)
    return markdown.replace(TABLE_MARKER, table)


def tex_to_mathml(tex: str, display: bool) -> str:
    """MathML for ``tex`` (HTML-escaped TeX, as arithmatex writes it)."""
    tex = OPERATOR.sub(lambda m: OPERATORS[m[1]], html.unescape(tex).strip())
    return convert(tex, display="block" if display else "inline")


def on_page_content(html_text: str, page: Any, **kwargs: Any) -> str:
    """Replace the page's arithmatex spans and divs with MathML."""

    def render(match: re.Match[str]) -> str:
        mathml = tex_to_mathml(match["tex"], display=match["tag"] == "div")
        for command in UNKNOWN_COMMAND.findall(mathml):
            log.warning(
                "%s: unknown TeX command %s in %r", page.file.src_uri, command, match["tex"]
            )
        return mathml

    return ARITHMATEX.sub(render, html_text)
