"""The clinicians' page in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) against
the running service: upload an interview, read the result; a wrong token shows a plain-words error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: `make test` installs Debian's chromium (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def test_page_scores_an_uploaded_interview(service, browser):
    page = browser.new_page(viewport={"width": 1100, "height": 1400})
    external = []
    page.on("request", lambda r: external.append(r.url) if not r.url.startswith(service.url) else None)
    page.goto(f"{service.url}/")
    assert "not a diagnosis" in page.locator("#notice").inner_text()
    page.fill("#token", service.token)
    page.set_input_files("#video", str(service.video))
    page.set_input_files("#transcript", str(service.transcript))
    page.click("#submit")
    page.wait_for_selector("#results:not([hidden])", timeout=120_000)

    rows = page.locator("#items tbody tr")
    assert rows.count() == 8
    scores = [int(rows.nth(i).locator("td").nth(2).inner_text().split()[0]) for i in range(8)]
    assert all(0 <= s <= 3 for s in scores)
    assert all(rows.nth(i).locator("td").nth(3).inner_text().strip() for i in range(8))  # a rationale each
    assert page.locator("#total").inner_text() == f"{sum(scores)} / 24"
    assert page.locator("#severity").inner_text().strip()
    assert page.locator("#screen").inner_text().startswith(("Positive", "Negative"))
    assert page.locator("#error").is_hidden() and page.locator("#progress-box").is_hidden()
    assert external == []  # self-contained: nothing fetched from anywhere else
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serving-page.png"), full_page=True)
    page.close()


def test_page_explains_a_wrong_token(service, browser):
    page = browser.new_page()
    page.goto(f"{service.url}/")
    page.fill("#token", "not-the-right-token")
    page.set_input_files("#video", str(service.video))
    page.click("#submit")
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=60_000)
    assert "access token was not accepted" in error.inner_text()
    assert page.locator("#results").is_hidden()
    page.screenshot(path=str(ARTIFACTS / "serving-page-wrong-token.png"))
    page.close()
