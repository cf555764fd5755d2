"""Griffe extension: render the reST markup of the package's docstrings as Markdown.

Loaded by mkdocstrings (``extensions:`` in mkdocs.yml). Once the package is loaded, every
docstring goes through :func:`rst_markdown.rest_to_markdown`, with cross-references
resolved in the docstring's own scope: a name becomes a link when it is an object of the
documented package, and inline code otherwise (``torch.nn.Module``: no inventory of other
projects is fetched at build time). The docstrings stay reST for ``help()`` and Sphinx.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import Any

import griffe

sys.path.insert(0, str(Path(__file__).parent))
from rst_markdown import rest_to_markdown


class RestToMarkdown(griffe.Extension):
    """Rewrite the docstrings of a loaded package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None:
                resolve = partial(_resolve, obj, loader=loader)
                obj.docstring.value = rest_to_markdown(obj.docstring.value, resolve)


def _resolve(obj: griffe.Object, name: str, loader: griffe.GriffeLoader) -> str | None:
    """The canonical path of ``name`` seen from ``obj``, if it is an object of its package."""
    head, _, rest = name.partition(".")
    try:
        path = obj.resolve(head)
    except griffe.NameResolutionError:
        path = head
    if rest:
        path = f"{path}.{rest}"
    if path.split(".", 1)[0] != obj.package.name:
        return None
    try:
        return str(loader.modules_collection.get_member(path).canonical_path)
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _walk(obj: griffe.Object) -> list[griffe.Object]:
    """``obj`` and all its members, recursively, skipping aliases (imports)."""
    found = [obj]
    for member in obj.members.values():
        if isinstance(member, griffe.Object):
            found.extend(_walk(member))
    return found
