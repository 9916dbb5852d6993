"""What the browser tests share: Chromium through Playwright, screenshots, widget look-ups.

Chromium is the system one (Debian's ``chromium``, or $CHROMIUM): Playwright's own browser
download needs a network CI machines may not have, and ``scripts/test.sh`` installs the
Debian package when it is missing. Without any Chromium the browser tests fail and say so.

Every test takes screenshots of its steps into ``test-artifacts/browser/<test>/`` (git
ignores it; ``AGENTS_WORKBENCH_ARTIFACTS`` moves it). With ``AGENTS_WORKBENCH_SCREENSHOTS=1``
the shots the README shows are also written to ``docs/screenshots/``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.servers import REPO, wait_until

DOCS_SHOTS = REPO / "docs" / "screenshots"
VIEWPORT = {"width": 1300, "height": 900}
# Hover tooltips and key reveals need time in a page sharing 2 cores with a kernel and a server.
STEP_MS = 60_000
# A Connect, from click to Deployed (tests/servers.py allows as long through the API).
DEPLOY_MS = 180_000


def chromium() -> str:
    """The Chromium (or Chrome) binary to drive; fails the test when there is none."""
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser",
                      "google-chrome"):
        if candidate and (found := shutil.which(candidate)):
            return found
    pytest.fail("No Chromium found for the browser tests: run scripts/test.sh (it installs "
                "Debian's chromium), or `apt-get install chromium`, or set CHROMIUM to a "
                "Chromium/Chrome binary; `pytest -m 'not browser'` leaves them out.")


class Shots:
    """Numbered full-page screenshots of one test's steps."""

    def __init__(self, test_name: str) -> None:
        base = Path(os.environ.get("AGENTS_WORKBENCH_ARTIFACTS") or REPO / "test-artifacts")
        self.folder = base / "browser" / re.sub(r"[^\w.-]+", "_", test_name)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        self.count = 0
        self.docs = os.environ.get("AGENTS_WORKBENCH_SCREENSHOTS") == "1"

    def take(self, page: Any, name: str, docs: str | None = None,
             target: Any = None) -> Path:
        """Save the page as ``NN-name.png``.

        With ``docs`` (and AGENTS_WORKBENCH_SCREENSHOTS=1), also ``docs/screenshots/<docs>.png``:
        just ``target`` (a locator), or the panel, without the notebook around it.
        """
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        if docs and self.docs:
            DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
            element = target if target is not None else page.locator(".awb-panel")
            element.screenshot(path=str(DOCS_SHOTS / f"{docs}.png"))
        return path


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Shots:
    """Screenshots for this test, in a folder named after it."""
    return Shots(request.node.name)


def in_browser(origin: str, steps: Callable[[Any], None], shots: Shots | None = None,
               timeout: float = 300.0) -> None:
    """Run ``steps(page)`` in a fresh Chromium with clipboard access to ``origin``.

    Playwright's sync API runs an event loop on its thread; on pytest's main thread that
    loop would collide with the Jupyter test plugin's loop handling at teardown, so it gets
    a thread of its own. When a step fails, the page as it was is saved as ``failed.png``.
    """
    from playwright.sync_api import sync_playwright

    executable = chromium()

    def run() -> None:
        with sync_playwright() as playwright:
            # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
            browser = playwright.chromium.launch(executable_path=executable,
                                                 args=["--no-sandbox"])
            try:
                context = browser.new_context(viewport=VIEWPORT)
                context.grant_permissions(["clipboard-read", "clipboard-write"],
                                          origin=origin.rstrip("/"))
                context.set_default_timeout(STEP_MS)
                page = context.new_page()
                console: list[str] = []
                page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
                page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
                try:
                    steps(page)
                except BaseException:
                    if shots is not None:
                        shots.take(page, "failed")
                        # What the page's scripts said (widget and comm errors show here,
                        # nowhere else).
                        (shots.folder / "console.txt").write_text("\n".join(console) + "\n")
                    raise
            finally:
                browser.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(run).result(timeout=timeout)


# -- ipywidgets in the page -----------------------------------------------------------------


def button(page: Any, name: str, within: Any = None) -> Any:
    """The visible button whose text is exactly ``name`` (in ``within``, else the page).

    By text, not by role name: Font Awesome icons put a glyph into the accessible name.
    """
    text = re.compile(rf"^\s*{re.escape(name)}\s*$")
    return (within or page).locator("button", has_text=text).filter(visible=True)


def row(page: Any, agent: str) -> Any:
    """The table row (``.awb-row`` grid) of an agent."""
    return page.locator(".awb-row").filter(
        has=page.locator(".awb-td b", has_text=re.compile(f"^{re.escape(agent)}$")))


def agent_block(page: Any, agent: str) -> Any:
    """All of an agent's part of the table: its row, the Failed line under it, its details."""
    return page.locator(".awb-agent").filter(has=row(page, agent))


def broken_images(page: Any) -> int:
    """How many visible images in the panel show the browser's broken-image icon."""
    return int(page.evaluate(
        "() => Array.from(document.querySelectorAll('.awb-panel img'))"
        ".filter(i => i.offsetParent && i.complete && i.naturalWidth === 0).length"))


def pill(page: Any, agent: str, status: str) -> Any:
    """The status pill ``status`` in an agent's row."""
    return row(page, agent).locator(f".awb-pill-{status}")


def wait_deployed(page: Any, agent: str, api: Api) -> None:
    """Wait for the row's Deployed pill as long as a Connect may take (a first Connect loads
    torch and AgileRL in a fresh worker, which a loaded CI machine takes minutes over); on
    timeout, fail with what the server says of the agent."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        pill(page, agent, "Deployed").wait_for(timeout=DEPLOY_MS)
    except PlaywrightTimeout:
        state = api.agent(agent)
        raise AssertionError(f"{agent} never showed Deployed in the page; the server says "
                             f"{state['status']}: {state['error']}") from None


def open_app(page: Any, url: str) -> None:
    """Load a Voila app or notebook page and wait until the panel has read the server."""
    page.goto(url)
    panel_loaded(page)


def panel_loaded(page: Any) -> None:
    """Wait for the panel's tables (it renders before its first read, so wait for that too)."""
    page.locator(".awb-panel").wait_for(timeout=120_000)
    page.wait_for_function(
        "() => !Array.from(document.querySelectorAll('.awb-panel button'))"
        ".some(b => b.title && b.title.startsWith('Loading experiments'))",
        timeout=60_000)


def clipboard(page: Any) -> str:
    """What the page's clipboard holds."""
    return str(page.evaluate("navigator.clipboard.readText()"))


def wait_clipboard(page: Any, expected: str) -> None:
    """Wait until the clipboard holds ``expected``."""
    wait_until(lambda: clipboard(page) == expected, timeout=15,
               what=f"{expected[:40]!r}… in the clipboard")


# -- the server, from outside the browser -----------------------------------------------------


class Api:
    """The management API with the app's or server's Jupyter token."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {token}"

    def __call__(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, f"{self.url}agents/api/{path}", timeout=30,
                                    **kwargs)

    def agent(self, name: str) -> dict[str, Any]:
        answer = self("GET", f"agents/{name}")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def create(self, name: str, experiment: str, checkpoint: str | int = "best") -> None:
        answer = self("POST", "agents", json={"name": name, "experiment": experiment,
                                              "checkpoint": checkpoint})
        assert answer.status_code == 201, answer.text

    def wait_status(self, name: str, status: str, timeout: float = 90.0) -> dict[str, Any]:
        return dict(wait_until(lambda: (a := self.agent(name))["status"] == status and a,
                               timeout=timeout, what=f"{name} {status}"))

    def deploy(self, name: str, experiment: str) -> dict[str, Any]:
        self.create(name, experiment)
        assert self("POST", f"agents/{name}/connect").status_code == 200
        return self.wait_status(name, "Deployed")


def details_part(page: Any, text: str) -> Any:
    """The part of the open details (a direct child) that shows ``text``: a playground."""
    return page.locator(".awb-details > *").filter(has=page.get_by_text(text, exact=True))


def shown(locator: Any) -> None:
    """Wait until ``locator`` is visible.

    Widget changes reach the page as separate comm messages, so a state seen a moment after
    another (the status pill, then the buttons) has to be waited for, not read at once.
    """
    from playwright.sync_api import expect

    expect(locator).to_be_visible(timeout=STEP_MS)


def gone(locator: Any) -> None:
    """Wait until ``locator`` is hidden or absent (see ``shown``)."""
    from playwright.sync_api import expect

    expect(locator).to_be_hidden(timeout=STEP_MS)



# -- layout checks: clipped text and blank pages ------------------------------------------------

# Text that does not fit its box: a button, table cell, header, label, dropdown or tab whose
# content is wider (or, where text wraps, taller) than the box shows; plus anything, text
# fields and lists included, sticking out past the right edge of the panel or of a box that
# clips it (a playground's frame). Scrollable boxes (code, the chat log) are meant to scroll,
# so their own overflow is left out.
CLIPPED_JS = r"""
() => {
  const panel = document.querySelector('.awb-panel');
  if (!panel) return [{what: 'no .awb-panel on the page'}];
  const edge = panel.getBoundingClientRect().right;
  const seen = new Set();
  const out = [];
  const selector = ['button', '.awb-td', '.awb-th', '.widget-label', 'label',
    '.widget-html-content', '.lm-TabBar-tabLabel', 'select', '.widget-toggle-button',
    'textarea', 'input'].join(',');
  // The right edge of what shows ``el``: the panel, or a box between that clips its overflow.
  const clipRight = el => {
    let right = edge;
    for (let up = el.parentElement; up && up !== panel; up = up.parentElement) {
      if (getComputedStyle(up).overflowX !== 'visible')
        right = Math.min(right, up.getBoundingClientRect().right);
    }
    return right;
  };
  for (const el of panel.querySelectorAll(selector)) {
    if (seen.has(el) || !el.offsetParent) continue;
    seen.add(el);
    const box = el.getBoundingClientRect();
    if (box.width === 0 || box.height === 0) continue;
    const style = getComputedStyle(el);
    const scrolls = v => ['auto', 'scroll'].includes(v);
    const limit = clipRight(el);
    const sticksOut = box.right > limit + 1;
    const field = ['TEXTAREA', 'INPUT', 'SELECT'].includes(el.tagName);
    if (!sticksOut && (field || scrolls(style.overflowX) || scrolls(style.overflowY))) continue;
    const text = (el.innerText || el.value || el.placeholder || '').trim().slice(0, 60);
    const wide = !field && el.scrollWidth > el.clientWidth + 1;
    const tall = !field && el.scrollHeight > el.clientHeight + 2
      && style.overflowY !== 'visible';
    if ((wide || tall || sticksOut) && (text || field)) {
      out.push({what: el.tagName.toLowerCase() + '.' + String(el.className).split(' ')
                  .filter(c => c).slice(0, 3).join('.'),
                text, scrollWidth: el.scrollWidth, clientWidth: el.clientWidth,
                scrollHeight: el.scrollHeight, clientHeight: el.clientHeight,
                right: Math.round(box.right), shownTo: Math.round(limit)});
    }
  }
  // A dropdown with a default must show it; a required choice (label ending in "*") starts
  // empty on purpose. A list box (size > 1: the Import dialog's folder browser) shows its
  // entries with none picked.
  for (const select of panel.querySelectorAll('select:not([multiple])')) {
    if (select.size > 1) continue;
    const label = (select.closest('.widget-dropdown')?.querySelector('label')?.innerText
                   || '').trim();
    if (select.offsetParent && select.selectedIndex < 0 && select.options.length
        && !label.endsWith('*'))
      out.push({what: 'select shows blank', text: label});
  }
  return out;
}
"""


def clipped(page: Any) -> list[dict[str, Any]]:
    """What in the panel has its text cut off (see ``CLIPPED_JS``); [] when all fits."""
    return list(page.evaluate(CLIPPED_JS))


def assert_fits(page: Any, where: str) -> None:
    """Fail, naming each element, when any text in the panel is clipped."""
    found = clipped(page)
    assert not found, f"clipped text at {where}: {found}"


def assert_not_blank(page: Any, where: str) -> None:
    """The panel is on screen with something in it: never a blank area after an action.

    Part of the panel must lie inside the viewport (in the notebook's scrolled area too) and
    show text there.
    """
    state = page.evaluate(
        "() => { const p = document.querySelector('.awb-panel'); if (!p) return 'no panel';"
        " const r = p.getBoundingClientRect();"
        " if (r.bottom < 40 || r.top > window.innerHeight - 40) return 'panel off screen: '"
        " + Math.round(r.top) + '..' + Math.round(r.bottom);"
        " return p.innerText.trim() ? '' : 'panel empty'; }")
    assert not state, f"blank page after {where}: {state}"


def at_widths(page: Any, where: str, widths: tuple[int, ...] = (1280, 1440)) -> None:
    """``assert_fits`` at each window width (the height stays)."""
    before = page.viewport_size or VIEWPORT
    for width in widths:
        page.set_viewport_size({"width": width, "height": before["height"]})
        page.wait_for_timeout(300)  # a relayout, and Lumino's resize handlers
        assert_fits(page, f"{where}, {width} px")
    page.set_viewport_size(before)  # the steps (and screenshots) after go on as before
