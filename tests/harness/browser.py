"""Headless Chromium (Debian's `chromium` + `chromium-driver`) driven by Selenium.

    with headless_chromium(tmp_path / "browser") as driver:
        driver.get(url)

The flags keep Chromium off the network (this machine reaches nothing but package
registries; background services would only produce refused connections) and let it
run as root in a container. Each browser gets a fresh profile directory. The browser's
console log (including CSP violations) is kept for failure messages.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "CHROMEDRIVER",
    "CHROMIUM",
    "browser_missing",
    "console_messages",
    "headless_chromium",
]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-default-apps",
    "--disable-extensions",
    "--window-size=1400,1000",
)


def browser_missing() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists() and shutil.which(Path(path).name) is None:
            return f"{path} not installed (scripts/setup.sh installs chromium, chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed (pip install -e '.[test]')"
    return None


@contextlib.contextmanager
def headless_chromium(profile_dir: Path, *, page_load_timeout: float = 60.0) -> Iterator[Any]:
    """A Selenium WebDriver on a headless Chromium with a fresh profile; quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile_dir.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(
        executable_path=shutil.which("chromedriver") or CHROMEDRIVER,
        log_output=str(profile_dir.parent / f"{profile_dir.name}-chromedriver.log"),
    )
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(page_load_timeout)
        yield driver
    finally:
        with contextlib.suppress(Exception):
            driver.quit()


def console_messages(driver: Any) -> list[str]:
    """The browser console messages since the last call (errors, CSP violations, logs)."""
    try:
        entries = driver.get_log("browser")
    except Exception:
        return []
    return [f"{e.get('level')}: {e.get('message')}" for e in entries]
