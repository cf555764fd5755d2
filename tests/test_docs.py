"""The documentation stays true: its code runs, its commands exist, its build parts work.

Each page's ```python blocks run in order in one namespace (a page reads as one
session), from a temporary directory, with torch's global seed fixed: a page that
shows a renamed or removed API fails here before it misleads a reader. Every option
that a page's ```bash blocks pass to a ``python -m examples.…`` command must be in that
command's ``--help``. The parts of the build in docs/scripts are checked without building
(``make docs`` builds the site, in CI): where the API reference documents each public
name, the MathML of equations, the links from the MkDocs pages into the Sphinx reference.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import re
import sys
import zlib
from pathlib import Path
from types import ModuleType

import pytest
import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
PAGES = sorted(page for page in DOCS.rglob("*.md") if PYTHON_BLOCK.search(page.read_text()))
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```$", re.MULTILINE | re.DOTALL)
MODULE_COMMAND = re.compile(r"-m (examples\.[\w.]+)(.*)")


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(page, module, options) of every ``-m examples.…`` command in the pages' bash blocks."""
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        for block in BASH_BLOCK.findall(page.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                match = MODULE_COMMAND.search(line)
                if match:
                    options = re.findall(r"(?<!\S)(--[a-z][\w-]*)", match[2])
                    found.append((str(page.relative_to(DOCS)), match[1], options))
    return found


COMMANDS = documented_commands()


def test_pages_with_code_are_found() -> None:
    assert DOCS / "index.md" in PAGES


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(DOCS)))
def test_page_code_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    text = page.read_text()
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for block in PYTHON_BLOCK.finditer(text):
        line = text.count("\n", 0, block.start(1))  # so a traceback names the page's line
        code = compile("\n" * line + block[1], str(page), "exec")
        exec(code, namespace)


def test_documented_commands_are_found() -> None:
    assert any(module.endswith(".train") for _, module, _ in COMMANDS)


@pytest.mark.parametrize(
    ("page", "module", "options"), COMMANDS, ids=[f"{p}:{m}" for p, m, _ in COMMANDS]
)
def test_documented_options_exist(page: str, module: str, options: list[str]) -> None:
    help_text = io.StringIO()
    with contextlib.redirect_stdout(help_text), pytest.raises(SystemExit):
        importlib.import_module(module).main(["--help"])
    known = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", help_text.getvalue()))
    unknown = [option for option in options if option not in known]
    assert not unknown, f"{page}: {module} has no option {unknown}"


def build_script(name: str) -> ModuleType:
    """A module of docs/scripts, imported as the builds import it (skipped without the
    ``docs`` extra)."""
    pytest.importorskip("sphinx")
    pytest.importorskip("mkdocs")
    scripts = str(DOCS / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    return importlib.import_module(name)


def test_every_public_name_is_documented_once_at_its_home() -> None:
    ext = build_script("sphinx_stochrnn")
    lay = ext.layout()
    assert "stochrnn" in lay.modules and "stochrnn.estimators" in lay.modules
    assert not any("._" in module for module in lay.modules)
    listed = {(m, n) for m in lay.modules for n in importlib.import_module(m).__all__}
    assert set(lay.home) == listed
    # One place documents each object: the full name of its home is listed exactly once.
    for full in set(lay.home.values()):
        module, name = full.rsplit(".", 1)
        assert (module, name) in listed
    # The package re-exports names; they are documented in their modules, linked from it.
    assert lay.home[("stochrnn", "Sample")] == "stochrnn.estimators.Sample"
    assert lay.home[("stochrnn", "__version__")] == "stochrnn.__version__"


def test_module_page_documents_its_names_and_links_the_others() -> None:
    ext = build_script("sphinx_stochrnn")
    lay = ext.layout()
    page = ext.module_page("stochrnn.estimators", lay)
    assert page.startswith("stochrnn.estimators\n===")
    assert ".. automodule:: stochrnn.estimators" in page
    assert ".. autoclass:: Sample\n   :members:" in page
    assert ".. autofunction:: as_temperature" in page
    package = ext.module_page("stochrnn", lay)
    assert "- from :py:mod:`stochrnn.estimators`: " in package
    assert ":py:obj:`~stochrnn.estimators.Sample`" in package
    assert ".. autoclass:: Sample" not in package


def test_display_equation_with_rows_is_aligned_mathml() -> None:
    mathml = build_script("mathml")
    out = mathml.tex_to_mathml("c &= a \\\\\n h &= b", display=True)
    assert out.startswith("<math") and 'display="block"' in out and "<mtable" in out
    assert mathml.unknown_commands(out) == []


def test_unknown_tex_command_is_reported() -> None:
    mathml = build_script("mathml")
    out = mathml.tex_to_mathml("\\frobnicate x + \\tau", display=False)
    assert mathml.unknown_commands(out) == ["\\frobnicate"]


def test_api_references_become_links_relative_to_the_page(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hooks = build_script("hooks")
    inventory = {
        "stochrnn.estimators.Sample": ("class", "api/stochrnn.estimators.html#Sample"),
        "stochrnn": ("module", "api/index.html#module-stochrnn"),
    }
    text = "A [`Sample`][stochrnn.estimators.Sample], the [reference][stochrnn], [x][y]."
    assert hooks.link_api_references(text, "guides/estimators.md", inventory) == (
        "A [`Sample`](../api/stochrnn.estimators.html#Sample), "
        "the [reference](../api/index.html#module-stochrnn), [x][y]."
    )
    with caplog.at_level(logging.WARNING):
        out = hooks.link_api_references("[S][stochrnn.Smaple]", "index.md", inventory)
    assert out == "[S][stochrnn.Smaple]"
    assert "documents no stochrnn.Smaple" in caplog.text


def test_sphinx_inventory_is_read(tmp_path: Path) -> None:
    hooks = build_script("hooks")
    body = (
        "stochrnn py:module 0 index.html#module-stochrnn -\n"
        "stochrnn.estimators.Sample py:class 1 stochrnn.estimators.html#$ -\n"
        "genindex std:label -1 genindex.html Index\n"
    )
    header = b"# Sphinx inventory version 2\n# Project: p\n# Version: 1\n# zlib\n"
    (tmp_path / "objects.inv").write_bytes(header + zlib.compress(body.encode()))
    assert hooks.api_inventory(tmp_path) == {
        "stochrnn": ("module", "api/index.html#module-stochrnn"),
        "stochrnn.estimators.Sample": (
            "class",
            "api/stochrnn.estimators.html#stochrnn.estimators.Sample",
        ),
    }


def test_reference_navigation_is_the_sites() -> None:
    ext = build_script("sphinx_stochrnn")
    assert [ext.site_url(p) for p in ("index.md", "guides/hmrnn.md", "a/index.md")] == [
        "",
        "guides/hmrnn/",
        "a/",
    ]
    assert {ext.API_SECTION: []} in ext.site_nav()
