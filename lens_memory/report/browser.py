"""Check a rendered HTML report in a real browser: headless Debian Chromium driven by Selenium.

:func:`check_in_browser` opens the file through a ``file://`` URL, counts the ``<img>`` elements
and how many actually decoded (``complete`` and ``naturalWidth > 0``), collects console errors
(e.g. a Content-Security-Policy violation, which would mean the page tried to load something
external), and takes a viewport screenshot and a full-page screenshot whose pixel statistics tell
a blank page from a rendered one.

Chromium and chromedriver come from the Debian packages ``chromium`` and ``chromium-driver``
(``bash .ci/setup`` installs them). The driver path is given explicitly, so Selenium Manager is
never run and nothing is downloaded. Selenium and Pillow are imported only when a check runs.
"""

from __future__ import annotations

import base64
import io
import logging
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["BrowserUnavailableError", "check_in_browser", "screenshot_stats", "CHROMIUM", "CHROMEDRIVER"]

logger = logging.getLogger(__name__)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900")
_SETUP_HINT = "run `bash .ci/setup` to install them (Debian packages chromium + chromium-driver, and selenium)"

_IMAGES_JS = """
return Array.from(document.images).map(img => ({
  alt: img.alt, src: img.getAttribute('src').slice(0, 40),
  complete: img.complete, width: img.naturalWidth, height: img.naturalHeight}));
"""


class BrowserUnavailableError(RuntimeError):
    """Chromium, chromedriver or selenium is missing."""


def screenshot_stats(png: bytes) -> dict[str, Any]:
    """Size, grey-level standard deviation and number of distinct colours of a PNG screenshot."""
    from PIL import Image, ImageStat

    img = Image.open(io.BytesIO(png)).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 24) or []
    return {"width": img.width, "height": img.height,
            "std": float(ImageStat.Stat(img.convert("L")).stddev[0]), "n_colours": len(colours)}


def _require(chromium: str, chromedriver: str) -> None:
    missing = [p for p in (chromium, chromedriver) if not Path(p).is_file()]
    if missing:
        raise BrowserUnavailableError(f"not installed: {', '.join(missing)}; {_SETUP_HINT}")
    try:
        import selenium  # noqa: F401
    except ImportError as exc:
        raise BrowserUnavailableError(f"the selenium package is not installed; {_SETUP_HINT}") from exc


def _inspect(driver: Any, html_path: Path, timeout: float, max_full_page_height: int
             ) -> tuple[dict[str, Any], tuple[bytes, bytes]]:
    """Load the page, wait for every image, and return what is on it plus the two screenshots (PNG)."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.set_page_load_timeout(timeout)
    driver.get(html_path.as_uri())
    WebDriverWait(driver, timeout).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
        and d.execute_script("return Array.from(document.images).every(i => i.complete)"))
    images = driver.execute_script(_IMAGES_JS)
    result: dict[str, Any] = {
        "title": driver.title,
        "n_images": len(images),
        "n_loaded": sum(bool(i["complete"]) and i["width"] > 0 for i in images),
        "images": images,
        "console_errors": [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"],
    }
    viewport = driver.get_screenshot_as_png()
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], max_full_page_height), "scale": 1}
    full = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip})
    return result, (viewport, base64.b64decode(full["data"]))


def check_in_browser(html_path: str | Path, screenshot_path: str | Path | None = None, *,
                     full_page_path: str | Path | None = None, chromium: str | None = None,
                     chromedriver: str | None = None, timeout: float = 60.0, min_std: float = 8.0,
                     min_colours: int = 32, max_full_page_height: int = 16000) -> dict[str, Any]:
    """Open ``html_path`` in headless Chromium and report what a reader would see.

    Returns a dict with ``title``, ``n_images``, ``n_loaded``, ``images`` (per image: alt, src
    prefix, complete, natural size), ``console_errors``, ``screenshot`` and ``full_page``
    (:func:`screenshot_stats` of each, plus the path written if asked) and ``blank``: True if
    either screenshot has a grey-level std below ``min_std`` or fewer than ``min_colours`` colours.
    ``chromium``/``chromedriver`` default to :data:`CHROMIUM`/:data:`CHROMEDRIVER`. Raises
    :class:`BrowserUnavailableError` (saying how to install them) without Chromium/selenium.
    """
    chromium, chromedriver = chromium or CHROMIUM, chromedriver or CHROMEDRIVER
    _require(chromium, chromedriver)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    html_path = Path(html_path).resolve()
    if not html_path.is_file():
        raise FileNotFoundError(f"HTML report not found: {html_path}")
    with tempfile.TemporaryDirectory(prefix="lens-memory-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for arg in (*CHROMIUM_ARGS, f"--user-data-dir={profile}"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
        try:
            result, shots = _inspect(driver, html_path, timeout, max_full_page_height)
            shots = {"screenshot": (shots[0], screenshot_path), "full_page": (shots[1], full_page_path)}
        finally:
            driver.quit()
    for key, (png, out) in shots.items():
        result[key] = screenshot_stats(png)
        if out is not None:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_bytes(png)
            result[key]["path"] = str(out)
    result["blank"] = any(result[k]["std"] < min_std or result[k]["n_colours"] < min_colours for k in shots)
    logger.info("browser check of %s: %d/%d images loaded, blank=%s, %d console errors", html_path,
                result["n_loaded"], result["n_images"], result["blank"], len(result["console_errors"]))
    return result
