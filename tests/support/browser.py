"""A real browser for the console tests: Debian's chromium driven by its chromedriver through Selenium.

    from support.browser import browser  # noqa: F401  (the module-scoped fixture)

    def test_page(browser: Browser, ...):
        browser.load(url + "/ui/", ready="#fleet")      # fails on any console error the page logged
        browser.screenshot("fleet")                      # a PNG in a temporary directory, checked non-blank

The binaries are named explicitly (/usr/bin/chromium, /usr/bin/chromedriver) so Selenium Manager never
looks for, let alone downloads, a browser or a driver. Headless, and --no-sandbox when running as root.
A machine without them skips the test, but under CI=true it fails (support.kernel.unavailable's rule).

`window.alert`, `confirm` and `prompt` are replaced before any page script runs (a DevTools script, which the
page's CSP does not govern) by functions that record their calls: `alerts()` says whether anything tried to
raise a dialog, such as an XSS probe's `onerror=alert(1)`.
"""
from __future__ import annotations

import os
import struct
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.kernel import unavailable

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
_DIALOG_HOOK = """
window.__palisadeDialogs = [];
['alert', 'confirm', 'prompt'].forEach(function (name) {
  window[name] = function (m) { window.__palisadeDialogs.push(name + ':' + String(m)); };
});
"""


def problem() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for p, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not p.exists():
            return f"{p} is missing (Debian {pkg}; run scripts/kernel-tools.sh)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


class Browser:
    """One headless chromium (a WebDriver session) and the screenshots it wrote."""

    def __init__(self, shots: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager, were it ever asked, stays offline
        opts = webdriver.ChromeOptions()
        opts.binary_location = str(CHROMIUM)
        for arg in ("--headless=new", "--disable-gpu", "--window-size=1400,1000", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-extensions", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--lang=en-US"):
            opts.add_argument(arg)
        if os.geteuid() == 0:
            opts.add_argument("--no-sandbox")
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.shots = shots
        self.driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
        self.driver.set_page_load_timeout(30)
        self.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _DIALOG_HOOK})

    def close(self) -> None:
        self.driver.quit()

    # --- pages ---------------------------------------------------------------------------

    def load(self, url: str, ready: str | None = None, timeout: float = 15) -> None:
        """Open `url`, wait for the element `ready` (a CSS selector) if given, and fail on any error the
        page logged (a CSP violation, a failed request, a script error)."""
        self.logs()  # drop what earlier pages logged
        self.driver.get(url)
        if ready is not None:
            self.wait(lambda: self.driver.find_elements("css selector", ready), timeout, f"{ready} on {url}")
        self.assert_no_errors(url)

    def logs(self) -> list[dict[str, Any]]:
        """What the page logged since the last call (chromium's browser log)."""
        return list(self.driver.get_log("browser"))

    def assert_no_errors(self, what: str = "") -> None:
        errors = [e for e in self.logs() if e.get("level") == "SEVERE"]
        assert not errors, f"console errors on {what}: {errors}"

    def alerts(self) -> list[str]:
        """Dialogs the page tried to open (alert, confirm, prompt) since it loaded."""
        from selenium.common.exceptions import NoAlertPresentException

        try:
            real = self.driver.switch_to.alert
        except NoAlertPresentException:
            pass
        else:  # the hook did not catch it: still a dialog
            text = real.text
            real.dismiss()
            return [f"alert:{text}"]
        return list(self.driver.execute_script("return window.__palisadeDialogs || []"))

    def text(self, css: str = "body") -> str:
        """The rendered text of the first element `css` selects (read in one script: a live page may swap
        its content between two WebDriver calls)."""
        got = self.driver.execute_script(
            "var e = document.querySelector(arguments[0]); return e ? e.innerText.trim() : null;", css)
        assert got is not None, f"no {css} on the page"
        return str(got)

    def texts(self, css: str) -> list[str]:
        """The rendered text of every element `css` selects, in one read."""
        return list(self.driver.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0])).map(function (e) "
            "{ return e.innerText.trim(); });", css))

    def attrs(self, css: str, name: str) -> list[str | None]:
        """Attribute `name` of every element `css` selects, in one read."""
        return list(self.driver.execute_script(
            "var name = arguments[1]; return Array.from(document.querySelectorAll(arguments[0])).map("
            "function (e) { return e.getAttribute(name); });", css, name))

    def count(self, css: str) -> int:
        return int(self.driver.execute_script("return document.querySelectorAll(arguments[0]).length;", css))

    def wait(self, cond: Callable[[], object], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            last = cond()
            if last:
                return last
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")

    def mark(self) -> None:
        """Tag the current document, so `reloaded()` tells a navigation from a live swap of <main>."""
        self.driver.execute_script("document.documentElement.setAttribute('data-test-mark', '1')")

    def reloaded(self) -> bool:
        """Whether the document was replaced since `mark()` (a live update must not do that)."""
        return self.driver.execute_script("return document.documentElement.getAttribute('data-test-mark')") != "1"

    # --- screenshots ---------------------------------------------------------------------

    def screenshot(self, name: str) -> Path:
        """The page as a PNG in the screenshot directory; fails if it is blank (one colour)."""
        path = self.shots / f"{name}.png"
        data = self.driver.get_screenshot_as_png()
        path.write_bytes(data)
        colours = png_colours(data)
        assert colours > 1, f"screenshot {path} is blank (one colour)"
        return path


def png_colours(data: bytes, most: int = 64) -> int:
    """How many distinct pixel values an 8-bit RGB/RGBA PNG holds (counting stops at `most`)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    height = depth = kind = 0
    while pos < len(data):
        length, tag = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if tag == b"IHDR":
            width, height, depth, kind = struct.unpack(">IIBB", chunk[:10])
        elif tag == b"IDAT":
            idat += chunk
        pos += 12 + length
    assert depth == 8 and kind in (2, 6), f"PNG of depth {depth}, colour type {kind}: not RGB(A)"
    bpp = 3 if kind == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    seen: set[bytes] = set()
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        _unfilter(f, line, prev, bpp)
        for x in range(0, stride, bpp * 7):  # a sample of each row is plenty to tell blank from not
            seen.add(bytes(line[x:x + bpp]))
        if len(seen) >= most:
            break
        prev = line
    return len(seen)


def _unfilter(f: int, line: bytearray, prev: bytearray, bpp: int) -> None:
    for i in range(len(line)):
        a = line[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        if f == 1:
            line[i] = (line[i] + a) & 0xFF
        elif f == 2:
            line[i] = (line[i] + b) & 0xFF
        elif f == 3:
            line[i] = (line[i] + (a + b) // 2) & 0xFF
        elif f == 4:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless chromium for the test module; screenshots go to a temporary directory
    (PALISADE_SCREENSHOTS names a directory to keep them in instead)."""
    why = problem()
    if why is not None:
        unavailable(why)
    keep = os.environ.get("PALISADE_SCREENSHOTS")
    with tempfile.TemporaryDirectory(prefix="palisade-shots-") as tmp:
        shots = Path(keep) if keep else Path(tmp)
        shots.mkdir(parents=True, exist_ok=True)
        b = Browser(shots)
        try:
            yield b
        finally:
            b.close()
