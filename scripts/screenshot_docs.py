"""Build the documentation site, serve it locally and screenshot pages with headless Chromium.

A check that the built pages render in a real browser, without a network (the site needs
no CDN): the MkDocs pages and the Sphinx API reference published in ``site/api/``, their
shared navigation, the equations (MathML). Needs ``chromium`` on the PATH (Debian:
``apt-get install chromium``)::

    python scripts/screenshot_docs.py --out /tmp/docs-shots
    python scripts/screenshot_docs.py --no-build --page api/stochrnn.hmrnn.html --height 3000

The build is ``make docs`` (Sphinx, then MkDocs). Writes one PNG per page (``index.png``,
``api_stochrnn.estimators.png``, ...) and prints their paths.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PAGES = ("", "api/stochrnn.estimators.html", "api/stochrnn.hmrnn.html")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


@contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on a free localhost port; yields the base URL."""
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def screenshot(browser: str, url: str, path: Path, width: int, height: int) -> None:
    """One headless-Chromium screenshot of ``url`` into ``path``."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--screenshot={path}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    if not path.is_file():
        raise RuntimeError(f"{browser} wrote no screenshot for {url}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", type=Path, default=Path(tempfile.gettempdir()) / "stochrnn-docs-screenshots"
    )
    parser.add_argument(
        "--site", type=Path, default=ROOT / "site", help="built site folder (with --no-build)"
    )
    parser.add_argument("--no-build", action="store_true", help="use the site as it is")
    parser.add_argument(
        "--page", action="append", help="page path under the site, e.g. api/hmrnn/ (repeat)"
    )
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args(argv)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("error: no chromium on the PATH (Debian: apt-get install chromium)", file=sys.stderr)
        return 1
    if not args.no_build:
        subprocess.run(["make", "docs", f"PY={sys.executable}"], cwd=ROOT, check=True)
        args.site = ROOT / "site"
    args.out.mkdir(parents=True, exist_ok=True)
    with serve(args.site) as base:
        for page in args.page or DEFAULT_PAGES:
            name = page.strip("/").removesuffix(".html").replace("/", "_") or "index"
            path = (args.out / f"{name}.png").resolve()
            screenshot(browser, base + page, path, args.width, args.height)
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
