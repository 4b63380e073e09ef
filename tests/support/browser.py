"""A real browser for the dashboard tests: Debian's Chromium, headless, driven by
selenium through Debian's chromedriver (never a downloaded one).

``.ci/run`` installs ``chromium`` and ``chromium-driver``; without them the
browser tests are skipped with that hint. Each browser gets a fresh profile
directory, no network beyond the page's own origin, and keeps the page's
console messages (``console_errors``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--lang=en-US",
    "--window-size=1280,1400",
)


def missing() -> str | None:
    """Why no browser can run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing: apt-get install chromium chromium-driver (.ci/run does)"
    return None


def chromium(profile: Path):
    """A headless Chromium with a fresh profile in ``profile``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: selenium's own driver manager never runs.
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def console_errors(driver, ignore: Callable[[str], bool] = lambda message: False) -> list[str]:
    """The page's console errors since the last call (SEVERE log entries)."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and not ignore(entry["message"])
    ]


def wait_until(driver, script: str, timeout: float = 20, *args: Any) -> Any:
    """Run ``script`` (a JS function body returning a value) until the value is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script, *args)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for: {script}")
        time.sleep(0.1)
