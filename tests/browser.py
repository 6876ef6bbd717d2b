"""Open an HTML page in Debian's headless Chromium (through chromedriver) and read back what rendered."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
WINDOW = (1400, 900)
# Flags for a closed network: without the background-networking ones Chromium keeps dialling out.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--window-size={WINDOW[0]},{WINDOW[1]}")

IMAGES_JS = """
return Array.from(document.images).map(function (img) {
  var r = img.getBoundingClientRect();
  return {alt: img.alt, complete: img.complete, natural_width: img.naturalWidth,
          width: r.width, height: r.height};
});
"""


def require_browser() -> None:
    """The browser test is a core test: without Chromium it fails with how to install it."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.fail("the report is checked in headless Chromium: install Debian's chromium and chromium-driver "
                    "(`make test` does it as root: apt-get install chromium chromium-driver)")


def render(page: Path) -> dict:
    """Load `page` at 1400x900; return its title, visible text, images and console errors."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    require_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory() as profile:
        options.add_argument(f"--user-data-dir={profile}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        try:
            driver.set_window_size(*WINDOW)
            driver.get(Path(page).resolve().as_uri())
            inner = driver.execute_script("return [window.innerWidth, window.innerHeight];")
            out = {
                "title": driver.title,
                "text": driver.find_element("tag name", "body").text,
                "images": driver.execute_script(IMAGES_JS),
                "viewport": tuple(inner),
                "console_errors": [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")],
            }
            if out["images"]:  # the page's own way to see a figure whole: a click shows it at full size
                first = driver.find_element("css selector", "figure img")
                first.click()
                out["zoomed_class"] = first.get_attribute("class")
            return out
        finally:
            driver.quit()
