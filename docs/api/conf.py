"""Sphinx configuration of the API reference (built by ``make docs`` into site/api/).

The reference is generated from the numpydoc docstrings of the package: one page per
public module (``docs/scripts/sphinx_stochrnn.py`` writes them), autodoc with napoleon,
type hints in the signatures, equations as MathML, and the theme and navigation of the
MkDocs site that it is published in (sphinx-immaterial, the palette of mkdocs.yml).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs" / "scripts"))  # the extension, sphinx_stochrnn.py
try:
    import stochrnn
except ImportError:  # not installed: the checkout's
    sys.path.insert(0, str(ROOT))
    import stochrnn

MKDOCS_THEME = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["theme"]

project = "stochrnn"
release = version = stochrnn.__version__
html_title = "stochrnn"  # the header of the MkDocs pages
root_doc = "index"
exclude_patterns = ["_build"]

extensions = [
    "sphinx.ext.autodoc",
    "sphinx_immaterial",
    "sphinx_stochrnn",
]

# autodoc: signatures with their type hints (short names, full cross-reference targets)
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_member_order = "bysource"
autodoc_class_signature = "mixed"
autodoc_preserve_defaults = True
autoclass_content = "class"
autodoc_inherit_docstrings = False
python_use_unqualified_type_names = True
add_module_names = False

# napoleon: the numpydoc sections
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_ivar = False
napoleon_use_rtype = False
napoleon_preprocess_types = False

# Equations: MathML written at build time by latex2mathml (sphinx_stochrnn.py), which the
# browser draws itself. Not MathJax, though sphinx-immaterial bundles a copy that would
# work offline too: MathML is what the MkDocs pages use (one look for both halves), it
# needs no JavaScript (8 MB less in the site), and a TeX command it cannot translate
# is a build warning, so an error, instead of red text in a reader's browser.
html_math_renderer = "mathml"

# No network at build time: no intersphinx inventories (names of torch and other projects
# render as code, see sphinx_stochrnn.resolve_in_scope), no web fonts ("font": False).

html_theme = "sphinx_immaterial"
# The MkDocs pages' stylesheet (display equations, aligned rows), for one look.
html_static_path = ["../stylesheets"]
html_css_files = ["extra.css"]
html_theme_options = {
    "font": False,
    "palette": MKDOCS_THEME["palette"],
    "features": [
        "navigation.sections",
        "navigation.top",
        "navigation.footer",
        "content.code.copy",
        "search.highlight",
        "toc.follow",
    ],
    "toc_title_is_page_title": True,
    "globaltoc_collapse": False,
}
# The table of contents lists the objects, not their parameters or fields (types).
object_description_options = [
    ("py:.*", {"include_fields_in_toc": False}),
    ("py:parameter", {"include_in_toc": False}),
]
html_show_sourcelink = False
html_copy_source = False
html_domain_indices = False
