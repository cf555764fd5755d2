"""Sphinx extension of the stochrnn API reference (loaded by docs/api/conf.py).

- **One page per public module**, written before Sphinx reads its sources: every module
  of the package whose dotted name has no ``_``-prefixed part gets
  ``docs/api/<module>.rst`` (generated, not committed), with its docstring and the names
  of its ``__all__``. A name listed by several modules (the package re-exports its
  modules' names) is documented once, at its *home*: the shortest public module path
  listing it, the top-level package only for names no other module lists. Other modules
  list it, linked. New modules and names appear without editing anything here.
- **Cross-references in the scope of the docstring**: ``:class:`Sample``` in a module
  that imports ``Sample`` links to where ``Sample`` is documented, as Python would resolve
  the name there. A name of another project (``torch.Tensor``) renders as code: no
  inventory is fetched, the build needs no network. A name that resolves to nothing fails
  the build (``-n -W``); an object of the package that is documented nowhere (private)
  renders as code.
- **Equations as MathML** at build time (``mathml.py``, also used by the MkDocs half):
  no JavaScript, no CDN. A TeX command latex2mathml does not know is a warning.
- **One navigation with the MkDocs site**: the Sphinx pages are published in ``site/api/``
  (see hooks.py); the navigation of each page is the MkDocs navigation of mkdocs.yml, read
  at build time, with this reference's pages in place of its ``API reference`` section,
  and the header links to the site's home page.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from docutils import nodes
from mathml import tex_to_mathml, unknown_commands
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.errors import ExtensionError
from sphinx.ext import napoleon
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging
from sphinx.writers.html5 import HTML5Translator

PACKAGE = "stochrnn"
#: Folder of the built site where the Sphinx pages are published (read by hooks.py too).
API_DIR = "api"
#: Title of the (empty) section of mkdocs.yml's nav that these pages fill.
API_SECTION = "API reference"
ROOT = Path(__file__).resolve().parents[2]
MKDOCS_YML = ROOT / "mkdocs.yml"

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------ pages, one per module


@dataclass
class Layout:
    """Where each public name is documented."""

    modules: list[str]
    #: module -> names of its ``__all__``, in the order of the page
    names: dict[str, list[str]] = field(default_factory=dict)
    #: (module, name) -> full name of the documented object
    home: dict[tuple[str, str], str] = field(default_factory=dict)
    #: identity of an object (see :func:`identity`) -> full name of its documentation
    documented: dict[str, str] = field(default_factory=dict)


def public_modules(package: str = PACKAGE) -> list[str]:
    """The package and its modules whose names have no ``_``-prefixed part, sorted."""
    root = importlib.import_module(package)
    found = [package]
    for info in pkgutil.walk_packages(root.__path__, prefix=package + "."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            found.append(info.name)
    return sorted(found)


def identity(module: str, name: str, obj: object) -> str:
    """One key per object: where a class or function is defined, else where it is listed."""
    qualname = getattr(obj, "__qualname__", None)
    defined_in = getattr(obj, "__module__", None)
    if isinstance(qualname, str) and isinstance(defined_in, str):
        if inspect.isclass(obj) or inspect.isroutine(obj):
            return f"{defined_in}.{qualname}"
    return f"{module}.{name}"


def source_order(module: str, names: list[str]) -> list[str]:
    """``names`` in the order of the module's source, names it imports last (``__all__`` order)."""
    try:
        analyzer = ModuleAnalyzer.for_module(module)
        analyzer.analyze()
        order = analyzer.tagorder
    except Exception:  # no source (a compiled module): keep __all__'s order
        order = {}
    ranked = {name: (order.get(name, len(order)), i) for i, name in enumerate(names)}
    return sorted(names, key=ranked.__getitem__)


def layout(package: str = PACKAGE) -> Layout:
    """Pages and homes of every public name of ``package`` (see the module docstring)."""
    result = Layout(modules=public_modules(package))
    places: dict[str, list[tuple[str, str]]] = {}  # identity -> (module, name) listing it
    for module in result.modules:
        mod = importlib.import_module(module)
        names = list(getattr(mod, "__all__", []))
        missing = [name for name in names if not hasattr(mod, name)]
        if missing:
            raise ExtensionError(f"{module}.__all__ names {missing}, which it does not define")
        result.names[module] = source_order(module, names)
        for name in names:
            key = identity(module, name, getattr(mod, name))
            places.setdefault(key, []).append((module, name))

    def rank(place: tuple[str, str]) -> tuple[bool, int, str]:
        module = place[0]
        return (module == package, module.count("."), module)

    for key, listed in places.items():
        module, name = min(listed, key=rank)
        result.documented[key] = f"{module}.{name}"
        for place in listed:
            result.home[place] = f"{module}.{name}"
    return result


def directive(obj: object) -> str:
    """The autodoc directive that documents ``obj``."""
    if inspect.isclass(obj):
        return "autoexception" if issubclass(obj, BaseException) else "autoclass"
    if inspect.isroutine(obj):
        return "autofunction"
    return "autodata"


def module_page(module: str, lay: Layout) -> str:
    """The reST source of ``module``'s page."""
    mod = importlib.import_module(module)
    lines = [module, "=" * len(module), "", f".. automodule:: {module}", ""]
    here = [name for name in lay.names[module] if lay.home[(module, name)] == f"{module}.{name}"]
    elsewhere = [name for name in lay.names[module] if name not in here]
    for name in here:
        lines += [f".. {directive(getattr(mod, name))}:: {name}"]
        if inspect.isclass(getattr(mod, name)):
            lines += ["   :members:", "   :show-inheritance:"]
        lines.append("")
    if elsewhere:
        lines += [".. rubric:: Re-exported here", ""]
        by_home: dict[str, list[str]] = {}
        for name in elsewhere:
            home = lay.home[(module, name)]
            by_home.setdefault(home.rsplit(".", 1)[0], []).append(home)
        for home_module, fulls in by_home.items():
            links = ", ".join(f":py:obj:`~{full}`" for full in fulls)
            lines.append(f"- from :py:mod:`{home_module}`: {links}")
        lines.append("")
    return "\n".join(lines)


def write_pages(app: Sphinx) -> None:
    """Write one page per public module into the source folder, drop pages of old modules."""
    lay = layout()
    app.env.stochrnn_layout = lay  # type: ignore[attr-defined]
    srcdir = Path(app.srcdir)
    wanted = {
        srcdir / f"{module}.rst": module_page(module, lay)
        for module in lay.modules
        if module != PACKAGE
    }
    for old in srcdir.glob(f"{PACKAGE}.*rst"):
        if old not in wanted:
            old.unlink()
    for path, text in wanted.items():
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)


def package_page(app: Sphinx, docname: str, source: list[str]) -> None:
    """``source-read``: the ``.. stochrnn-package::`` line of the index becomes the package's
    docstring, its own names, the names it re-exports (linked) and the module pages."""
    marker = ".. stochrnn-package::"
    if marker not in source[0]:
        return
    lay: Layout = app.env.stochrnn_layout  # type: ignore[attr-defined]
    body = module_page(PACKAGE, lay).split("\n", 3)[3]  # without the title
    toctree = [".. rubric:: Modules", "", ".. toctree::", "   :maxdepth: 1", ""]
    toctree += [f"   {module}" for module in lay.modules if module != PACKAGE]
    source[0] = source[0].replace(marker, body + "\n" + "\n".join(toctree) + "\n")


def numpy_sections(
    app: Sphinx, what: str, name: str, obj: object, options: Any, lines: list[str]
) -> None:
    """``autodoc-process-docstring``: napoleon's numpydoc sections, with one change: the
    docstring of a property or a module attribute is read as any other. Napoleon would take
    the start of its first line up to a colon for a type (``"Trace of the covariance:
    sum(variance)."``); in numpydoc it starts with a sentence, and its type is its
    annotation."""
    if what in ("data", "attribute") and lines and _is_type_docstring(obj, lines):
        lines.clear()  # a constant without a doc comment: not the docstring of its type
    what = "method" if what in ("property", "data", "attribute") else what
    napoleon._process_docstring(app, what, name, obj, options, lines)  # type: ignore[arg-type]


def _is_type_docstring(obj: object, lines: list[str]) -> bool:
    doc = inspect.getdoc(type(obj))
    return bool(doc) and [line.strip() for line in lines if line.strip()] == [
        line.strip() for line in str(doc).splitlines() if line.strip()
    ]


def inherited_signature(
    app: Sphinx,
    what: str,
    name: str,
    obj: object,
    options: Any,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str | None, str | None] | None:
    """``autodoc-process-signature``: a class of ours that takes its constructor from another
    project's Python class (an abstract base inheriting ``nn.Module.__init__(*args,
    **kwargs)``) takes no arguments, and is shown without any."""
    if what != "class" or not inspect.isclass(obj):
        return None
    owners = {
        method: next(c for c in obj.__mro__ if method in vars(c))
        for method in ("__init__", "__new__")
    }
    init = vars(owners["__init__"])["__init__"]
    foreign = all(not c.__module__.startswith(PACKAGE) for c in owners.values())
    if not (foreign and inspect.isfunction(init)):
        return None
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    parameters = list(inspect.signature(init).parameters.values())[1:]  # after self
    if parameters and all(p.kind in variadic for p in parameters):
        return "()", return_annotation
    return None


def skip_namedtuple_fields(
    app: Sphinx, what: str, name: str, obj: object, skip: bool, options: Any
) -> bool | None:
    """NamedTuple fields ("Alias for field number 0"): the docstring's Attributes say more."""
    if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
        return True
    return None


# ------------------------------------------------------------------ cross-references


def _follow(obj: object, parts: list[str]) -> object | None:
    for part in parts:
        if not hasattr(obj, part):
            return None
        obj = getattr(obj, part)
    return obj


def lookup(module: str, target: str, cls: str | None) -> object | None:
    """The object ``target`` names, as Python resolves it in ``module``: in the class
    ``cls`` (a name in a class's docstring), the module, or absolutely (``torch.Tensor``).

    A package documents names that its submodules define, whose annotations name what
    those submodules import: a name the package lacks is looked up in its submodules,
    and found if they all agree on one object.
    """
    parts = target.split(".")
    mod = importlib.import_module(module)
    scopes: list[object] = [mod]
    if cls:
        owner = _follow(mod, cls.split("."))
        if owner is not None:
            scopes.insert(0, owner)
    for scope in scopes:
        found = _follow(scope, parts)
        if found is not None:
            return found
    for split in range(len(parts) - 1, 0, -1):  # absolute: pkg.mod.Name.attr
        try:
            root = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        found = _follow(root, parts[split:])
        if found is not None:
            return found
    if hasattr(mod, "__path__"):
        below = [m for m in public_modules(module) if m != module]
        candidates = [_follow(importlib.import_module(m), parts) for m in below]
        distinct = {id(c): c for c in candidates if c is not None}
        if len(distinct) == 1:
            return next(iter(distinct.values()))
    return None


def is_instance_attribute(module: str, cls: str | None, target: str) -> bool:
    """Whether ``target`` (``name`` or ``Class.name``) is an attribute that instances of one
    of the package's classes get in ``__init__`` (``self.name = ...``, a registered buffer,
    parameter or submodule) or declare as an annotation: no class attribute to look up."""
    *owner_path, name = target.split(".")
    owner = lookup(module, ".".join(owner_path), None) if owner_path else None
    if owner is None and cls:
        owner = lookup(module, cls, None)
    if not inspect.isclass(owner):
        return False
    assignment = re.compile(
        rf"self\.{name}\s*(:[^=\n]+)?=[^=]|register_(buffer|parameter|module)\(\s*['\"]{name}['\"]"
    )
    for base in owner.__mro__:
        if not getattr(base, "__module__", "").startswith(PACKAGE):
            continue
        if name in getattr(base, "__annotations__", {}):
            return True
        try:
            if assignment.search(inspect.getsource(base)):
                return True
        except (OSError, TypeError):
            continue
    return False


def resolve_in_scope(
    app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: nodes.TextElement
) -> nodes.Element | None:
    """``missing-reference``: resolve a Python name in the scope of its docstring."""
    if node.get("refdomain") != "py":
        return None
    target = str(node["reftarget"]).lstrip("~.")
    module = str(node.get("py:module") or PACKAGE)
    cls = node.get("py:class")
    obj = lookup(module, target, str(cls) if cls else None)
    if obj is None:
        if node["reftype"] == "attr" and is_instance_attribute(
            module, str(cls) if cls else None, target
        ):
            return contnode
        return None  # nothing by that name: Sphinx warns, the strict build fails
    lay: Layout = env.stochrnn_layout  # type: ignore[attr-defined]
    if isinstance(obj, types.ModuleType):
        full: str | None = obj.__name__
    else:
        full = lay.documented.get(identity(module, target.rsplit(".", 1)[-1], obj))
    if full is not None and full.split(".")[0] == PACKAGE:
        domain = env.get_domain("py")
        fromdoc = node.get("refdoc", env.docname)
        for role in (str(node["reftype"]), "obj", "mod"):
            found = domain.resolve_xref(env, fromdoc, app.builder, role, full, node, contnode)
            if found is not None:
                return found
    # Another project's name, or one of ours documented nowhere: code, not a link.
    return contnode


# ------------------------------------------------------------------ equations


def visit_math(self: HTML5Translator, node: nodes.math) -> None:
    self.body.append(_mathml(self, node, node.astext(), display=False))
    raise nodes.SkipNode


def visit_displaymath(self: HTML5Translator, node: nodes.math_block) -> None:
    self.body.append(self.starttag(node, "div", CLASS="math"))
    if node.get("number"):
        self.body.append(f'<span class="eqno">({node["number"]})</span>')
    # Equations separated by a blank line are shown one under the other.
    for part in (p for p in node.astext().split("\n\n") if p.strip()):
        self.body.append(_mathml(self, node, part, display=True))
    self.body.append("</div>\n")
    raise nodes.SkipNode


def _mathml(self: HTML5Translator, node: nodes.Element, tex: str, display: bool) -> str:
    mathml = tex_to_mathml(tex, display=display)
    for command in unknown_commands(mathml):
        logger.warning("unknown TeX command %s in %r", command, tex, location=node)
    return mathml


# ------------------------------------------------------------------ one navigation


def site_url(path: str) -> str:
    """The URL of a MkDocs page from the site's root (directory URLs, as MkDocs builds)."""
    if "://" in path:
        return path
    stem = path.removesuffix(".md")
    if stem == "index" or stem.endswith("/index"):
        stem = stem.removesuffix("index")
        return stem
    return stem + "/"


def site_nav(mkdocs_yml: Path = MKDOCS_YML) -> list[Any]:
    """The ``nav`` of mkdocs.yml."""
    config = yaml.safe_load(mkdocs_yml.read_text())
    nav = config.get("nav")
    if not isinstance(nav, list):
        raise ExtensionError(f"{mkdocs_yml} has no nav list")
    return nav


def nav_entries(
    items: list[Any], to_root: str, api: list[Any], api_url: str, in_api: bool
) -> Iterator[Any]:
    """The MkDocs nav as sphinx-immaterial nav entries; ``api`` fills the API section."""
    from sphinx_immaterial.nav_adapt import MkdocsNavEntry

    for item in items:
        (title, value), *_ = item.items() if isinstance(item, dict) else [(None, item)]
        if title == API_SECTION:
            yield MkdocsNavEntry(
                API_SECTION,
                url=api_url,
                children=api,
                active=in_api,
                current=False,
                caption_only=False,
            )
        elif isinstance(value, list):
            children = list(nav_entries(value, to_root, api, api_url, in_api))
            yield MkdocsNavEntry(
                str(title),
                url=children[0].url if children else None,
                children=children,
                active=False,
                current=False,
                caption_only=True,
            )
        else:
            url = site_url(str(value))
            yield MkdocsNavEntry(
                str(title or url),
                url=url if "://" in url else to_root + url,
                children=[],
                active=False,
                current=False,
                caption_only=False,
            )


def join_navigation(
    app: Sphinx, pagename: str, templatename: str, context: dict[str, Any], doctree: Any
) -> None:
    """``html-page-context``, after the theme's: the site's nav around this reference's."""
    nav = context.get("nav")
    if nav is None:
        return
    from sphinx_immaterial.nav_adapt import MkdocsNavEntry

    to_root = "../" * (pagename.count("/") + 1)
    pathto = context["pathto"]
    root = app.config.root_doc
    here = pagename == root
    package = MkdocsNavEntry(
        PACKAGE, url=pathto(root), children=[], active=here, current=here, caption_only=False
    )
    api = [package, *nav]  # as the MkDocs nav lists it: the package, then its modules
    entries = list(nav_entries(site_nav(), to_root, api, pathto(app.config.root_doc), in_api=True))
    nav[:] = entries
    nav.homepage = {"url": to_root}


# ------------------------------------------------------------------ setup


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("builder-inited", write_pages)
    app.connect("source-read", package_page)
    app.setup_extension("sphinx.ext.napoleon")
    for listener in list(app.events.listeners["autodoc-process-docstring"]):
        if listener.handler is napoleon._process_docstring:
            app.disconnect(listener.id)
    app.connect("autodoc-process-docstring", numpy_sections)
    app.connect("autodoc-skip-member", skip_namedtuple_fields)
    app.connect("autodoc-process-signature", inherited_signature)
    app.connect("missing-reference", resolve_in_scope, priority=600)
    app.connect("html-page-context", join_navigation, priority=900)
    app.add_html_math_renderer(
        "mathml", inline_renderers=(visit_math, None), block_renderers=(visit_displaymath, None)
    )
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
