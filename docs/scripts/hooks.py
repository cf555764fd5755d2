"""MkDocs hooks of the stochrnn site (``hooks:`` in mkdocs.yml).

- The API reference: Sphinx builds it from the docstrings into ``build/docs-api/``
  (``make docs`` runs Sphinx, then MkDocs). :func:`on_files` publishes those pages in
  ``site/api/``, as files of this site, so links to them are checked like any other;
  :func:`on_nav` lists its pages in the (empty) ``API reference`` section of the nav; and
  :func:`on_page_markdown` turns ``[text][stochrnn.estimators.Sample]`` into a link to the
  object's entry, found in Sphinx's inventory (``objects.inv``): a name the reference does
  not document is a warning, which fails the strict build.
- Generated content: :func:`on_page_markdown` replaces the marker
  ``<!-- estimator-table -->`` with the bias/variance table that
  ``estimator_table.py`` measures with ``stochrnn.diagnostics`` (a few seconds).
- Math: ``pymdownx.arithmatex`` (generic mode) leaves TeX in
  ``<span class="arithmatex">\\(…\\)</span>`` and ``<div class="arithmatex">\\[…\\]</div>``;
  :func:`on_page_content` turns it into MathML with ``latex2mathml`` (``mathml.py``, as the
  API reference does), so pages show their equations without JavaScript or a CDN (the docs
  also work offline). A TeX command that latex2mathml does not know is a warning, which
  fails the strict build.
"""

from __future__ import annotations

import html
import logging
import posixpath
import re
import sys
import time
import zlib
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files, InclusionLevel
from mkdocs.structure.nav import Link, Navigation, Section

sys.path.insert(0, str(Path(__file__).parent))
from estimator_table import markdown_table
from mathml import tex_to_mathml, unknown_commands
from sphinx_stochrnn import API_DIR, API_SECTION, PACKAGE

log = logging.getLogger("mkdocs.hooks.stochrnn")

ROOT = Path(__file__).resolve().parents[2]
#: Where ``make docs`` has Sphinx build the API reference.
SPHINX_HTML = ROOT / "build" / "docs-api"

ARITHMATEX = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">\s*\\[(\[](?P<tex>.*?)\\[)\]]\s*</(?P=tag)>', re.DOTALL
)
#: ``[text][stochrnn.module.Name]``: a reference to an object of the API reference.
API_REFERENCE = re.compile(r"\[(?P<text>[^\]\n]+)\]\[(?P<name>" + PACKAGE + r"(?:\.\w+)*)\]")
#: One line of a Sphinx inventory: name, domain:role, priority, URI, display name.
INVENTORY_LINE = re.compile(
    r"(?P<name>.+?)\s+(?P<domain>\w+):(?P<role>[\w-]+)\s+-?\d+\s+(?P<uri>\S*)"
)

TABLE_MARKER = "<!-- estimator-table -->"
INCLUDED = InclusionLevel.INCLUDED


def api_inventory(folder: Path = SPHINX_HTML) -> dict[str, tuple[str, str]]:
    """Full name -> (role, URL from the site's root) of the Python objects of the reference."""
    inventory = folder / "objects.inv"
    if not inventory.is_file():
        raise PluginError(
            f"no API reference in {folder}: `make docs` builds it with Sphinx before MkDocs"
        )
    header = b"# Sphinx inventory version 2\n"
    data = inventory.read_bytes()
    if not data.startswith(header):
        raise PluginError(f"{inventory} is not a version 2 Sphinx inventory")
    body = zlib.decompress(data.split(b"\n", 4)[4]).decode()
    found: dict[str, tuple[str, str]] = {}
    for line in body.splitlines():
        match = INVENTORY_LINE.match(line)
        if match and match["domain"] == "py":
            uri = match["uri"]
            if uri.endswith("$"):
                uri = uri[:-1] + match["name"]
            found[match["name"]] = (match["role"], f"{API_DIR}/{uri}")
    return found


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Publish the pages Sphinx built (``build/docs-api/``) in ``site/api/``."""
    api_inventory()  # fails early, with the fix, when Sphinx has not run
    for path in sorted(SPHINX_HTML.rglob("*")):
        relative = path.relative_to(SPHINX_HTML)
        if path.is_file() and not relative.parts[0].startswith((".", "_sources")):
            uri = f"{API_DIR}/{relative.as_posix()}"
            # Included though under api/, which exclude_docs keeps for the Sphinx source.
            page = File.generated(config, uri, abs_src_path=str(path), inclusion=INCLUDED)
            files.append(page)
    return files


def on_nav(nav: Navigation, config: MkDocsConfig, files: Files) -> Navigation:
    """Fill the ``API reference`` section of the nav with the reference's pages."""
    sections = [item for item in nav.items if isinstance(item, Section)]
    section = next((s for s in sections if s.title == API_SECTION), None)
    if section is None:
        raise PluginError(f"mkdocs.yml's nav has no {API_SECTION!r} section to fill")
    modules = sorted(
        (name, url.split("#")[0])
        for name, (role, url) in api_inventory().items()
        if role == "module"
    )
    for title, url in modules:
        link = Link(title, url)
        link.parent = section
        section.children.append(link)
    return nav


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """Link ``[text][stochrnn.…]`` references; put the measured estimator table in."""
    markdown = link_api_references(markdown, page.file.src_uri, api_inventory())
    if TABLE_MARKER not in markdown:
        return markdown
    start = time.perf_counter()
    table = markdown_table()
    log.info("estimator table measured in %.1f s", time.perf_counter() - start)
    return markdown.replace(TABLE_MARKER, table)


def link_api_references(markdown: str, src_uri: str, inventory: dict[str, tuple[str, str]]) -> str:
    """``[text][stochrnn.x.Name]`` as a Markdown link to the entry of ``stochrnn.x.Name`` in
    the API reference (``inventory``: see :func:`api_inventory`), relative to the page
    ``src_uri``; a warning if the reference has no such entry."""
    here = posixpath.dirname(src_uri) or "."

    def link(match: re.Match[str]) -> str:
        entry = inventory.get(match["name"])
        if entry is None:
            log.warning("%s: the API reference documents no %s", src_uri, match["name"])
            return match[0]
        return f"[{match['text']}]({posixpath.relpath(entry[1], here)})"

    return API_REFERENCE.sub(link, markdown)


def on_page_content(html_text: str, page: Any, **kwargs: Any) -> str:
    """Replace the page's arithmatex spans and divs with MathML."""

    def render(match: re.Match[str]) -> str:
        mathml = tex_to_mathml(html.unescape(match["tex"]), display=match["tag"] == "div")
        for command in unknown_commands(mathml):
            log.warning(
                "%s: unknown TeX command %s in %r", page.file.src_uri, command, match["tex"]
            )
        return mathml

    return ARITHMATEX.sub(render, html_text)
