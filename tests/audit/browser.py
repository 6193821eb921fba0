"""Open a report in headless Chromium (Debian's chromium + chromedriver) and check it renders.

Reusable outside the tests: ``check_report_renders(path)`` on any ``report.html``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

_IMAGES_JS = """
const imgs = Array.from(document.images);
return {
  n: imgs.length,
  broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt || i.src.slice(0, 40)),
};
"""


def check_report_renders(path: str | Path, *, timeout_s: float = 15.0) -> dict[str, Any]:
    """Load ``path`` in headless Chromium and report what rendered.

    Selenium talks to ``/usr/bin/chromedriver`` directly (an explicit ``Service`` path),
    so Selenium Manager never tries to download a driver.

    Returns:
        ``{"title": page title, "n_images": number of <img>, "broken_images": [alt of
        each image not loaded], "console_errors": [SEVERE browser-console messages]}``.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    url = Path(path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="dlsec-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-extensions",
            f"--user-data-dir={profile}",
        ):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            driver.set_page_load_timeout(timeout_s)
            driver.get(url)
            images = driver.execute_script(_IMAGES_JS)
            logs = driver.get_log("browser")
            return {
                "title": driver.title,
                "n_images": int(images["n"]),
                "broken_images": list(images["broken"]),
                "console_errors": [e["message"] for e in logs if e.get("level") == "SEVERE"],
            }
        finally:
            driver.quit()
