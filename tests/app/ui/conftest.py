"""Fixtures of the Studio's browser tests: a real headless Chromium (Debian's chromium +
chromium-driver) driven by Selenium, and full-page screenshots."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from studio_helpers import CHROMEDRIVER, CHROMIUM, SHOTS_DIR


def _browser_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return (f"{path} is missing: install Debian's chromium and chromium-driver "
                    "(`make test` does: apt-get install chromium chromium-driver)")
    return None


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium. Missing: a failure under CI (the Makefile installs it), a skip on a
    developer's machine without it."""
    missing = _browser_missing()
    if missing:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(missing)
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1360,1000", "--lang=en-US"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


@pytest.fixture
def shoot(tmp_path):
    """shoot(driver, name): a full-page screenshot into the test's folder (and SHOTS_DIR)."""
    def take(driver, name: str) -> Path:
        height = driver.execute_script(
            "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)")
        driver.set_window_size(1360, min(max(int(height) + 40, 700), 3000))
        path = tmp_path / f"{name}.png"
        driver.save_screenshot(str(path))
        driver.set_window_size(1360, 1000)
        if SHOTS_DIR:
            Path(SHOTS_DIR).mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, Path(SHOTS_DIR) / f"{name}.png")
        assert path.stat().st_size > 5000  # a page, not a blank
        return path
    return take
