"""Debian's Chromium, headless, driven by Playwright (pip): never a downloaded browser.

Use the fixture in a test module (import it there)::

    from tests.support.browser import chromium_page, needs_chromium  # noqa: F401  (fixture)

    @needs_chromium
    def test_x(chromium_page):
        page = chromium_page            # a Playwright Page in a fresh context (an empty profile)
        page.goto(url)
        page.screenshot(path=...)

``screenshot(page, name, folder)`` saves a step's screenshot under ``folder`` and a copy
under ``reports/screenshots/`` (git-ignored) for people to look at.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "reports" / "screenshots"


def _playwright_missing() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (requirements-tests.txt: run `bash setup.sh --tests`)"
    if not os.access(CHROMIUM, os.X_OK):
        return "Chromium is not installed (Debian package chromium: run `bash setup.sh --tests` as root)"
    return ""


needs_chromium = pytest.mark.skipif(bool(_playwright_missing()), reason=_playwright_missing() or "ready")


@pytest.fixture(scope="session")
def chromium_browser():
    """One headless Debian Chromium for the session (registered in tests/conftest.py); each test
    gets a fresh context of its own (:func:`chromium_page`): no cookie, storage or cache is shared."""
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    try:
        yield browser
    finally:
        browser.close()
        playwright.stop()


@pytest.fixture
def chromium_page(chromium_browser):
    """A Playwright page in a fresh browser context (an empty profile), 1280x900."""
    context = chromium_browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


def screenshot(page, name: str, folder: Path) -> Path:
    """Save ``name``.png under ``folder`` and copy it to reports/screenshots/."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENSHOTS / path.name)
    return path
