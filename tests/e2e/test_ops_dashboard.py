"""The operators' dashboard in headless Chromium against a running ``cityingest dev``.

Debian's ``chromium`` and ``chromium-driver`` share one version, so Selenium drives the installed
browser with the installed driver and nothing is downloaded. The test enters a wrong key, then the dev
key, and watches lag, throughput and dead letters move as the simulator's traffic flows; it saves a
screenshot under the test's temporary directory and copies it to ``.cityingest/artifacts/`` (or to
``$CITYINGEST_ARTIFACTS_DIR``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, cast

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from tests.e2e.test_dev_stack import DevRun, _processes_mentioning

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(240)]

REPO: Final = Path(__file__).resolve().parents[2]
INSTALL: Final = "apt-get install -y chromium chromium-driver (or run scripts/setup.sh)"
POLL_S: Final = 2
WRONG_KEY: Final = "cik_0000000000000000_" + "A" * 43
# An invalid payload that would run script if the page ever parsed dead-letter excerpts as HTML.
XSS_PAYLOAD: Final = '<img id="xss-probe" src="x" onerror="document.title=\'owned\'">'


def artifacts_dir() -> Path:
    """Where the screenshot is kept after the run (gitignored by default)."""
    return Path(os.environ.get("CITYINGEST_ARTIFACTS_DIR") or REPO / ".cityingest" / "artifacts")


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "state"
    yield path
    for line in _processes_mentioning(str(path)):
        os.kill(int(line.split(":")[0]), signal.SIGKILL)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """Headless Debian chromium driven by its own chromium-driver."""
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.fail(f"the browser test needs Debian's chromium and its driver: {INSTALL}")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI containers
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1750",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(check: Callable[[], bool], within_s: float, what: str, page: webdriver.Chrome) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` and what the page shows otherwise."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except WebDriverException:
            pass  # the page was mid-update (stale element): look again
        time.sleep(0.25)
    status = page.find_element(By.ID, "status").text
    error = page.find_element(By.ID, "error").text
    pytest.fail(f"{what} within {within_s:.0f} s; status {status!r}, error {error!r}")


def value(page: webdriver.Chrome, element_id: str) -> float | None:
    """The number an element shows (its data-value), None while unknown."""
    raw = page.find_element(By.ID, element_id).get_attribute("data-value")
    return float(raw) if raw else None


def attr(page: webdriver.Chrome, element_id: str, name: str) -> str:
    return page.find_element(By.ID, element_id).get_attribute(name) or ""


def test_dashboard_shows_traffic_as_it_flows(
    state_dir: Path, tmp_path: Path, browser: webdriver.Chrome, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stack's children inherit the environment: the simulator reads these. Readings every 2
    # simulated (= wall-clock, --live) seconds instead of every minute, and many malformed payloads.
    monkeypatch.setenv("CITYINGEST_TIME_STEP_S", "2")
    monkeypatch.setenv("CITYINGEST_MALFORMED_RATE", "0.1")
    # --insecure-mqtt: the probe below is published anonymously; this test is about the dashboard.
    run = DevRun(
        state_dir,
        "--simulator-rate",
        "40",
        "--simulator-devices",
        "30",
        "--kafka-partitions",
        "3",
        "--insecure-mqtt",
    )
    shot = tmp_path / "ops-dashboard.png"
    try:
        run.wait_running()
        api = f"http://127.0.0.1:{run.ports['api']}"
        key = (state_dir / "dev-api-key").read_text(encoding="utf-8").strip()
        page = browser
        # The latest 40 dead letters cover several polls at the simulator's rate of malformed payloads.
        page.get(f"{api}/ops?interval={POLL_S}&latest=40")

        # Asked once for the key; a wrong one is a visible error and the form comes back.
        wait_for(lambda: page.find_element(By.ID, "key-form").is_displayed(), 10, "the key form", page)
        page.find_element(By.ID, "key-input").send_keys(WRONG_KEY)
        page.find_element(By.ID, "key-save").click()
        wait_for(lambda: attr(page, "error", "data-kind") == "auth", 10, "the wrong-key error", page)
        assert page.find_element(By.ID, "error").is_displayed()
        assert "401" in page.find_element(By.ID, "error").text
        assert page.find_element(By.ID, "key-form").is_displayed()
        page.find_element(By.ID, "key-input").send_keys(key)
        page.find_element(By.ID, "key-save").click()
        assert page.execute_script("return sessionStorage.getItem('cityingest.opsKey')") == key

        # First figures: every part is up, lag and throughput totals are shown.
        wait_for(lambda: int(attr(page, "status", "data-polls") or 0) >= 1, 20, "a first overview", page)
        assert not page.find_element(By.ID, "error").is_displayed()
        wait_for(
            lambda: all(
                page.find_element(By.CSS_SELECTOR, f'#health li[data-component="{name}"]').get_attribute(
                    "data-state"
                )
                == "up"
                for name in ("api", "database", "kafka", "consumer", "bridge")
            ),
            30,
            "every component up",
            page,
        )
        wait_for(lambda: value(page, "lag-stored") is not None, 30, "stored offsets", page)
        assert value(page, "lag-total") is not None
        first = {k: value(page, k) or 0.0 for k in ("ingest-total", "consume-total", "lag-end", "lag-stored")}

        # As traffic flows, the figures move: totals and offsets grow, rates are measured.
        seen_rates: dict[str, float] = {"ingest-rate": 0.0, "consume-rate": 0.0}

        def moving() -> bool:
            for rate in seen_rates:
                seen_rates[rate] = max(seen_rates[rate], value(page, rate) or 0.0)
            grown = all((value(page, k) or 0.0) > v for k, v in first.items())
            return grown and all(r > 0 for r in seen_rates.values())

        wait_for(moving, 45, "growing totals and positive ingest and consume rates", page)
        wait_for(lambda: int(attr(page, "chart-throughput", "data-points")) >= 3, 10, "a chart", page)
        assert page.find_elements(By.CSS_SELECTOR, "#chart-throughput polyline.line.ingest")
        assert page.find_elements(By.CSS_SELECTOR, "#chart-lag polyline.line.lag")
        assert len(page.find_elements(By.CSS_SELECTOR, "#lag-table tbody tr")) == 3

        # Dead letters: counted by reason (bars), the latest listed, device payloads shown as text only.
        topic = "city/water/e2e-xss/telemetry"
        pub = subprocess.run(
            ["mosquitto_pub", "-p", str(run.ports["mqtt-plain"]), "-q", "1", "-t", topic, "-m", XSS_PAYLOAD],
            capture_output=True,
            text=True,
            check=False,
        )
        assert pub.returncode == 0, pub.stderr
        wait_for(lambda: (value(page, "dlq-counted") or 0) > 0, 30, "dead letters counted", page)
        wait_for(lambda: int(attr(page, "chart-dead-letters", "data-bars")) >= 1, 10, "bars", page)
        excerpts = "#dlq-latest td.excerpt"
        wait_for(
            lambda: any("xss-probe" in td.text for td in page.find_elements(By.CSS_SELECTOR, excerpts)),
            30,
            "our malformed payload among the latest dead letters",
            page,
        )
        assert page.find_elements(By.ID, "xss-probe") == []
        assert page.title == "cityingest operations"
        # A device nobody registered: with credentials it could not publish at all (the simulator's devices
        # get theirs from the API once registered), so it comes in on the anonymous experiment listener.
        stray = subprocess.run(
            [
                "mosquitto_pub", "-p", str(run.ports["mqtt-plain"]), "-q", "1",
                "-t", "city/water/e2e-unregistered/telemetry", "-m", '{"metric": "water_flow", "value": 1.5}',
            ],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        assert stray.returncode == 0, stray.stderr
        wait_for(lambda: (value(page, "unregistered-count") or 0) > 0, 30, "unregistered devices", page)

        # No script errors and no Content-Security-Policy violations (the wrong key's 401 aside).
        # A few more samples, so that the screenshot shows charts worth looking at.
        wait_for(lambda: int(attr(page, "chart-lag", "data-points")) >= 8, 30, "8 samples", page)
        # Selenium's get_log has no annotations.
        get_log = cast(Callable[[str], list[dict[str, Any]]], page.get_log)
        problems = [
            entry["message"]
            for entry in get_log("browser")
            if entry["level"] == "SEVERE" and "status of 401" not in entry["message"]
        ]
        assert problems == []
        page.save_screenshot(str(shot))
    finally:
        if not shot.exists():
            browser.save_screenshot(str(shot))  # what the page showed when the test failed
        artifacts = artifacts_dir()
        artifacts.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, artifacts / shot.name)
        code = run.stop(signal.SIGINT)
    assert code == 0, run.text()

    # The API is gone: the page says so instead of showing stale figures silently.
    wait_for(lambda: attr(browser, "error", "data-kind") == "network", 6 * POLL_S, "the outage", browser)
    assert browser.find_element(By.ID, "error").is_displayed()
