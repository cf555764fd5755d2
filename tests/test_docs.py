"""The documentation stays true: its code runs, its commands exist, its rewriting is right.

Each page's ```python blocks run in order in one namespace (a page reads as one
session), from a temporary directory, with torch's global seed fixed: a page that
shows a renamed or removed API fails here before it misleads a reader. Every option
that a page's ```bash blocks pass to a ``python -m examples.…`` command must be in that
command's ``--help``. The reST-to-Markdown rewriting of docs/scripts/rst_markdown.py
(used by the API reference) is checked on the constructs the docstrings use.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
from pathlib import Path

import pytest
import torch

from docs.scripts.rst_markdown import (
    convert_definition_lists,
    convert_math_directives,
    convert_simple_tables,
    rest_to_markdown,
)

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


def no_resolve(name: str) -> str | None:
    return None


def test_math_directive_with_indented_body_becomes_one_block() -> None:
    text = "Intro.\n\n.. math::\n    y = a,\\qquad\n    z = b\n\nAfter."
    assert convert_math_directives(text) == "Intro.\n\n\n$$\ny = a,\\qquad z = b\n$$\n\nAfter."


def test_math_directive_with_aligned_rows_becomes_a_split_environment() -> None:
    text = ".. math::\n    c &= a \\\\\n    h &= b"
    expected = "\n$$\n\\begin{split}\nc &= a \\\\\nh &= b\n\\end{split}\n$$\n"
    assert convert_math_directives(text) == expected


def test_inline_math_directive_keeps_its_indent() -> None:
    assert convert_math_directives("  .. math:: a = b") == "\n  $$\n  a = b\n  $$\n"


def test_simple_table_becomes_markdown_and_drops_empty_columns() -> None:
    table = "\n".join(
        [
            "=====  =====  ===",
            "name   shape",
            "=====  =====  ===",
            "x      (B,)",
            "y      (B, T)",
            "=====  =====  ===",
        ]
    )
    expected = "\n| name | shape |\n| --- | --- |\n| x | (B,) |\n| y | (B, T) |\n"
    assert convert_simple_tables(table) == expected


def test_definition_list_becomes_markdown_but_numpydoc_sections_stay() -> None:
    text = (
        "Checks:\n\n``shapes``\n    kept,\n    all\n``values``\n    0/1\n\n"
        "Parameters\n---\nx:\n    a\n"
    )
    expected = (
        "Checks:\n\n``shapes``\n:   kept,\n    all\n\n``values``\n:   0/1\n\n\n"
        "Parameters\n---\nx:\n    a"
    )
    assert convert_definition_lists(text) == expected


def test_roles_become_optional_references_or_code() -> None:
    def resolve(name: str) -> str | None:
        return "pkg.mod.Sample" if name == "Sample" else None

    text = "A :class:`Sample`, a :class:`~torch.nn.Module` and :meth:`step`."
    assert rest_to_markdown(text, resolve) == (
        'A <autoref identifier="pkg.mod.Sample" optional><code>Sample</code></autoref>, '
        "a `Module` and `step`."
    )


def test_inline_math_role_and_literal_marker() -> None:
    text = "Clamped at :math:`\\tau_{min}`, called so::\n\n    est(x)"
    assert (
        rest_to_markdown(text, no_resolve)
        == "Clamped at \\(\\tau_{min}\\), called so:\n\n    est(x)"
    )
