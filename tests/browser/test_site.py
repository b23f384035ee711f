"""Every page of the built book, opened from disk in headless Chromium.

For each ``.html`` page of ``_build/html`` (or ``$DDPM_SITE_DIR``) the browser checks: no
JavaScript error in the console, no request leaving the site (the book reads offline: MathJax
and the widget manager are vendored), every equation typeset by MathJax (no raw TeX left, no
MathJax error), every image loaded, every solution collapsed until clicked and shown after a
click, every animation the executed notebook holds present and working, every embedded widget
view rendered, no Python traceback in a cell output, and no code cell whose code overflows its
box horizontally (cut at the right edge), in a desktop window (1280 px) and on a phone
(390 px). A full-page screenshot of each page is saved under ``_build/screenshots/`` for review.

Needs Chromium and its driver (Debian: ``apt-get install chromium chromium-driver``; ``.ci/run``
installs them) and selenium (the ``test`` extra). Without them the browser tests are skipped
with that hint, unless ``DDPM_REQUIRE_BROWSER=1`` (set by ``.ci/run``) makes it a failure. The
static checks (no CDN URL in any page) need no browser. Run: ``make browser`` after ``make book``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITE = Path(os.environ.get("DDPM_SITE_DIR", ROOT / "_build" / "html")).resolve()
EXECUTED = SITE.parent / "jupyter_execute"  # the executed notebooks of the build
SCREENSHOTS = SITE.parent / "screenshots"
REQUIRED = os.environ.get("DDPM_REQUIRE_BROWSER", "") not in ("", "0")
NOT_PAGES = {"_static", "_sources", "_images", "_downloads"}
WIDTH = 1280
PHONE_WIDTH = 390  # a phone in portrait: code lines wrap there (book/_static/ddpm.css)
MAX_HEIGHT = 30000  # px; a longer page is cut in its screenshot (and said so)
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome:", "chrome-extension:", "devtools:")
INSTALL_HINT = (
    "on Debian/Ubuntu: sudo apt-get install chromium chromium-driver (what .ci/run does), or "
    "point CHROME_BINARY and CHROMEDRIVER at a Chrome/Chromium and its matching chromedriver"
)


def site_pages() -> list[Path]:
    """The book's pages: every .html under the site folder except Sphinx's asset folders."""
    if not SITE.is_dir():
        return []
    return sorted(
        p
        for p in SITE.rglob("*.html")
        if not NOT_PAGES.intersection(p.relative_to(SITE).parts)
        and not any(part.startswith(".") for part in p.relative_to(SITE).parts)  # not Sphinx's
    )


PAGES = site_pages()
PAGE_IDS = [p.relative_to(SITE).as_posix() for p in PAGES]


def unavailable(reason: str):
    """Skip with ``reason`` (fail instead when the browser test is required, as in CI)."""
    if REQUIRED:
        pytest.fail(f"{reason} (DDPM_REQUIRE_BROWSER is set)")
    pytest.skip(reason)


def require_site() -> None:
    if not PAGES:
        unavailable(f"no built book in {SITE}: run `make book` first")


# ------------------------------------------------------------------------------------------------
# Static checks: need only the HTML.


class _ResourceCollector(HTMLParser):
    """The URLs a page loads by itself (scripts, stylesheets, images, frames), not its links."""

    LOADED_LINKS = {"stylesheet", "preload", "modulepreload", "prefetch", "icon", "manifest"}

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "img", "iframe", "source", "audio", "video", "embed") and a.get("src"):
            self.urls.append(a["src"])
        elif tag == "link" and self.LOADED_LINKS & set((a.get("rel") or "").lower().split()):
            self.urls.append(a.get("href") or "")


def _is_remote(url: str) -> bool:
    return url.startswith(("http://", "https://", "//"))


@pytest.mark.parametrize("page", PAGES or [None], ids=PAGE_IDS or ["no-site"])
def test_page_references_no_cdn(page):
    """Every script, stylesheet and image of the page is served by the site itself."""
    require_site()
    collector = _ResourceCollector()
    collector.feed(page.read_text(encoding="utf-8"))
    remote = [u for u in collector.urls if _is_remote(u)]
    assert not remote, f"{page.name} loads from the network: {remote} (vendor it: _config.yml)"


def test_vendored_assets_are_in_the_site():
    """MathJax, its fonts, require.js and the widget manager are copied into _static/npm/."""
    require_site()
    static = SITE / "_static" / "npm"
    for relative in (
        "mathjax/es5/tex-mml-chtml.js",
        "mathjax/es5/output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff",
        "mathjax/es5/input/tex/extensions/boldsymbol.js",
        "requirejs/require.js",
        "@jupyter-widgets/html-manager/dist/embed-amd.js",
    ):
        assert (static / relative).is_file(), f"{relative} missing under {static}: `make book`"


# ------------------------------------------------------------------------------------------------
# The browser.


def _find(env: str, names: tuple[str, ...], extra: tuple[str, ...] = ()) -> str | None:
    if os.environ.get(env):  # an explicit choice: used only if it is there
        path = shutil.which(os.environ[env])
        return path if path else None
    for name in names:
        if found := shutil.which(name):
            return found
    return next((p for p in extra if os.path.isfile(p) and os.access(p, os.X_OK)), None)


@pytest.fixture(scope="module")
def browser():
    require_site()
    yield from _start_browser()


@pytest.fixture(scope="module")
def bare_browser():
    """The browser for tests on hand-written pages: needs no built book."""
    yield from _start_browser()


def _start_browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed: pip install -e '.[test]'")
    chromium = _find("CHROME_BINARY", ("chromium", "chromium-browser", "google-chrome"))
    driver_path = _find("CHROMEDRIVER", ("chromedriver",), ("/usr/lib/chromium/chromedriver",))
    if not chromium or not driver_path:
        unavailable(f"Chromium or chromedriver not found for the browser test: {INSTALL_HINT}")
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must never download
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--window-size={WIDTH},1000",
        # a request to any host fails at once (and is reported below), network or not
        "--host-resolver-rules=MAP * ~NOTFOUND",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):  # the folder shows this run's pages only
        old.unlink()
    yield driver
    driver.quit()


def expected_animations(page: Path) -> int | None:
    """How many ``to_jshtml`` animations the page's executed notebook shows (None: not a notebook).

    Counted in the build's executed notebook: display outputs whose HTML holds matplotlib's
    animation widget, in cells not tagged ``remove-output`` / ``remove-cell``.
    """
    relative = page.relative_to(SITE).with_suffix(".ipynb")
    notebook = EXECUTED / relative
    if not notebook.is_file():
        return None if not (SITE / "_sources" / relative).is_file() else -1
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    count = 0
    for cell in cells:
        tags = set(cell.get("metadata", {}).get("tags", []))
        if cell["cell_type"] != "code" or tags & {"remove-output", "remove-cell"}:
            continue
        for output in cell.get("outputs", []):
            html = output.get("data", {}).get("text/html", "")
            html = "".join(html) if isinstance(html, list) else html
            count += html.count('<div class="animation">')
    return count


# JavaScript run in the page. Each returns plain data for the Python side to judge.
JS_WAIT_MATHJAX = """
const done = arguments[arguments.length - 1];
const math = document.querySelectorAll('.math').length;
if (!math) { done('no math'); return; }
if (!window.MathJax || !MathJax.startup || !MathJax.startup.promise) {
  done('MathJax did not load (' + math + ' equations on the page)'); return;
}
MathJax.startup.promise.then(() => done('ok'), (e) => done('MathJax failed: ' + e));
"""

JS_RAW_TEX = """
const untypeset = [...document.querySelectorAll('.math')]
  .filter(m => !m.querySelector('mjx-container'))
  .map(m => m.textContent.trim().slice(0, 80));
const errors = [...document.querySelectorAll('mjx-merror')]
  .map(e => (e.getAttribute('data-mjx-error') || e.textContent).slice(0, 80));
const skip = 'PRE,CODE,SCRIPT,STYLE,TEXTAREA,MJX-CONTAINER';
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {
  acceptNode: n => n.parentElement.closest(skip.toLowerCase()) ?
    NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT});
const raw = [];
for (let n = walker.nextNode(); n; n = walker.nextNode()) {
  const t = n.textContent;
  if (/\\$\\$|\\\\\\(|\\\\\\[|\\\\begin\\{/.test(t)) raw.push(t.trim().slice(0, 80));
}
return {untypeset, errors, raw};
"""

JS_BROKEN_IMAGES = """
return [...document.images].filter(i => !i.complete || i.naturalWidth === 0)
  .map(i => (i.currentSrc || i.src || i.id || '?').slice(0, 100));
"""

JS_TRACEBACKS = """
const outputs = [...document.querySelectorAll('.cell_output, .output')];
const marked = document.querySelectorAll('.cell_output .traceback, .output.traceback, '
  + '.output.error').length;
const text = outputs.filter(o => o.textContent.includes('Traceback (most recent call last)'))
  .map(o => o.textContent.trim().slice(0, 120));
return {marked, text};
"""

# A code cell's box is its highlight div and the <pre> in it (the theme scrolls the <pre>):
# content wider than the box is cut at the right edge, the scroll bar hidden or far below.
JS_CODE_OVERFLOW = """
const boxes = [...document.querySelectorAll(
  'div.cell_input div.highlight, div.cell_input div.highlight pre')];
return boxes.filter(b => b.scrollWidth > b.clientWidth + 1).map(b => {
  const lines = b.textContent.split('\\n');
  const longest = lines.reduce((a, l) => (l.length > a.length ? l : a), '');
  return {box: b.clientWidth, content: b.scrollWidth, chars: longest.length,
          line: longest.trim().slice(0, 50)};
});
"""

JS_SOLUTION_STATE = """
const s = arguments[0];
const body = [...s.children].filter(c => !c.classList.contains('admonition-title'));
const shown = body.some(c => c.getClientRects().length > 0 && c.offsetHeight > 0);
const button = s.querySelector('.toggle-button');
return {shown, dropdown: s.classList.contains('dropdown'), button: !!button,
        expanded: button ? button.getAttribute('aria-expanded') : null,
        title: (s.querySelector('.admonition-title') || s).textContent.trim().slice(0, 60)};
"""

JS_WIDGETS = """
const views = [...document.querySelectorAll(
  'script[type="application/vnd.jupyter.widget-view+json"]')];
const rendered = views.filter(v => {
  const area = v.previousElementSibling;
  return area && area.classList.contains('widget-subarea')
    && area.querySelector('.jupyter-widgets, .widget-inline-hbox, .lm-Widget');
}).length;
const state = !!document.querySelector(
  'script[type="application/vnd.jupyter.widget-state+json"]');
return {views: views.length, rendered, state, requirejs: typeof window.requirejs === 'function'};
"""


def _wait(driver, condition, timeout: float, interval: float = 0.2):
    """Poll ``condition(driver)`` until it is truthy or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition(driver)
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def _check_solutions(driver, problems: list[str]) -> None:
    """Each solution is collapsed and opens on a click; the first stays open (screenshot)."""
    from selenium.webdriver.common.by import By

    solutions = driver.find_elements(By.CSS_SELECTOR, "div.solution")
    for index, solution in enumerate(solutions):
        before = driver.execute_script(JS_SOLUTION_STATE, solution)
        name = f"solution {index + 1} ({before['title']!r})"
        if before["shown"] or not before["button"]:
            problems.append(f"{name} is shown before any click: give it `:class: dropdown`")
            continue
        # the toggle button (the chevron and "Click to show"): a click on the title's text may
        # land on its link or its math, which sphinx-togglebutton does not handle
        button = solution.find_element(By.CSS_SELECTOR, ".toggle-button")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
        button.click()
        opened = _wait(
            driver, lambda d, s=solution: d.execute_script(JS_SOLUTION_STATE, s)["shown"], 3
        )
        if not opened:
            problems.append(f"{name} stays hidden after a click on its toggle button")
        elif index > 0:  # close it again: the screenshot shows the first solution open
            button.click()


def _check_animations(driver, expected: int | None, problems: list[str]) -> None:
    """The page shows as many animations as its executed notebook, each with frames that play."""
    from selenium.webdriver.common.by import By

    animations = driver.find_elements(By.CSS_SELECTOR, "div.animation")
    if expected == -1:
        problems.append("no executed notebook in the build's jupyter_execute/ for this page")
    elif expected is not None and len(animations) != expected:
        problems.append(
            f"{len(animations)} animation widget(s) on the page, but the executed notebook"
            f" shows {expected}"
        )
    for index, animation in enumerate(animations):
        name = f"animation {index + 1}"
        image = animation.find_element(By.TAG_NAME, "img")
        slider = animation.find_element(By.CSS_SELECTOR, "input.anim-slider")

        def button(title, a=animation):
            return a.find_element(By.CSS_SELECTOR, f'button[title="{title}"]')

        if int(slider.get_attribute("max") or 0) < 1:
            problems.append(f"{name} has a single frame")
            continue
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", animation)
        button("Pause").click()
        button("First frame").click()
        first = image.get_attribute("src") or ""
        button("Last frame").click()
        last = image.get_attribute("src") or ""
        loaded = driver.execute_script("return arguments[0].naturalWidth", image)
        if not first.startswith("data:image") or not loaded:
            problems.append(f"{name} shows no frame")
        elif first == last:
            problems.append(f"{name}: its first and last frames are the same image")
        button("First frame").click()


def code_overflow(driver, width: int) -> list[dict]:
    """The code-cell boxes whose content overflows horizontally, in a window ``width`` wide."""
    driver.set_window_size(width, 1000)
    time.sleep(0.3)  # let the layout settle at the new size
    return driver.execute_script(JS_CODE_OVERFLOW)


def _check_code_overflow(driver, problems: list[str]) -> None:
    """No code cell is cut at the right edge, on a desktop or on a phone."""
    for width in (WIDTH, PHONE_WIDTH):
        over = code_overflow(driver, width)
        if over:
            shown = [f"{o['chars']} chars, {o['content']} px in {o['box']} px: {o['line']!r}"
                     for o in over[:3]]  # fmt: skip
            problems.append(
                f"{len(over)} code box(es) overflow at {width} px (at most 78 characters a"
                f" line: tools/reflow_notebooks.py): {shown}"
            )
    driver.set_window_size(WIDTH, 1000)


def _screenshot(driver, page: Path) -> str:
    """Full-page screenshot (the window as tall as the document); returns a note if cut."""
    height = driver.execute_script(
        "return Math.max(document.documentElement.scrollHeight, document.body.scrollHeight)"
    )
    driver.set_window_size(WIDTH, min(height, MAX_HEIGHT))
    time.sleep(0.3)  # let the layout settle at the new size
    name = page.relative_to(SITE).with_suffix(".png").as_posix().replace("/", "__")
    driver.save_screenshot(str(SCREENSHOTS / name))
    return f" (screenshot cut at {MAX_HEIGHT}px of {height})" if height > MAX_HEIGHT else ""


@pytest.mark.parametrize("page", PAGES or [None], ids=PAGE_IDS or ["no-site"])
def test_page_in_browser(browser, page):
    """One page: the checks of the module docstring; all problems are reported together."""
    from selenium.common.exceptions import WebDriverException

    driver = browser
    driver.get_log("browser")  # drop what earlier pages left
    driver.get_log("performance")
    driver.set_window_size(WIDTH, 1000)
    driver.get(page.as_uri())
    problems: list[str] = []

    _wait(driver, lambda d: d.execute_script("return document.readyState") == "complete", 30)
    mathjax = driver.execute_async_script(JS_WAIT_MATHJAX)
    if mathjax not in ("ok", "no math"):
        problems.append(mathjax)

    widgets = driver.execute_script(JS_WIDGETS)
    if widgets["views"]:
        widgets = _wait(
            driver,
            lambda d: (w := d.execute_script(JS_WIDGETS))["rendered"] == w["views"] and w,
            20,
        ) or driver.execute_script(JS_WIDGETS)
        if widgets["rendered"] < widgets["views"]:
            problems.append(
                f"{widgets['views'] - widgets['rendered']} of {widgets['views']} widget views"
                " not rendered (is the widget state embedded? is the embed manager vendored?)"
            )
    if widgets["state"] and not widgets["requirejs"]:
        problems.append("widget state embedded but require.js did not load")

    # the whole page in the viewport: every image is fetched, the screenshot shows everything
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(WIDTH, min(height, MAX_HEIGHT))
    broken = _wait(driver, lambda d: not d.execute_script(JS_BROKEN_IMAGES), 10)
    if not broken:
        problems.append(f"images not loaded: {driver.execute_script(JS_BROKEN_IMAGES)}")

    tex = driver.execute_script(JS_RAW_TEX)
    if tex["untypeset"]:
        problems.append(f"{len(tex['untypeset'])} equations not typeset: {tex['untypeset'][:3]}")
    if tex["errors"]:
        problems.append(f"MathJax errors: {tex['errors'][:3]}")
    if tex["raw"]:
        problems.append(f"raw TeX left in the text: {tex['raw'][:3]}")

    tracebacks = driver.execute_script(JS_TRACEBACKS)
    if tracebacks["marked"] or tracebacks["text"]:
        problems.append(f"Python traceback in the outputs: {tracebacks['text'][:2]}")

    try:
        _check_solutions(driver, problems)
        _check_animations(driver, expected_animations(page), problems)
    except WebDriverException as error:
        problems.append(f"interaction failed: {error.msg}")

    try:
        _check_code_overflow(driver, problems)
    except WebDriverException as error:
        problems.append(f"code overflow check failed: {error.msg}")

    cut = _screenshot(driver, page)

    errors = [
        entry["message"][:300] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"
    ]
    if errors:
        problems.append(f"JavaScript console errors: {errors}")
    remote = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if not url.startswith(LOCAL_SCHEMES):
                remote.append(url[:120])
    if remote:
        problems.append(f"requests leaving the site: {sorted(set(remote))}")

    assert not problems, f"{page.relative_to(SITE)}{cut}:\n  " + "\n  ".join(problems)


# ------------------------------------------------------------------------------------------------
# The overflow check itself, on a hand-written page (no built book needed).

SMALL_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  /* the theme's layout, reduced: a centred content column, a scrolling <pre> */
  body { margin: 0; }
  main { max-width: 700px; margin: 0 auto; padding: 0 16px; }
  div.highlight pre { overflow: auto; font: 14px monospace; padding: 16px; }
</style>
<link rel="stylesheet" href="CSS">
</head><body><main>
<div class="cell_input"><div class="highlight"><pre>LONG</pre></div></div>
<div class="cell_input"><div class="highlight"><pre>SHORT</pre></div></div>
<div class="cell_output"><pre>OUTPUT</pre></div>
</main></body></html>
"""


def test_code_overflow_check_on_a_small_page(bare_browser, tmp_path):
    """The check flags a code line too long for its box and nothing else (not a short line,
    not an output); on a phone the book's stylesheet wraps the long line, so nothing is cut."""
    css = ROOT / "book" / "_static" / "ddpm.css"
    long_line = "x = " + " + ".join(f"value_{i}" for i in range(30))  # 300 characters
    page = tmp_path / "page.html"
    page.write_text(
        SMALL_PAGE.replace("CSS", css.as_uri())
        .replace("LONG", long_line)
        .replace("SHORT", "y = 1")
        .replace("OUTPUT", "z" * 300),
        encoding="utf-8",
    )
    bare_browser.get(page.as_uri())
    desktop = code_overflow(bare_browser, WIDTH)
    assert desktop and {o["chars"] for o in desktop} == {len(long_line)}, desktop
    assert code_overflow(bare_browser, PHONE_WIDTH) == []
