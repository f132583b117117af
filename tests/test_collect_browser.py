"""A real browser on the collection pages: Debian's chromium, headless, driven by selenium
through the system chromedriver (no download, no network). It signs in through a one-time
link, gives a pairwise label and a rating with a flaw, and the labels reach the compacted
parquet under the right annotator; the admin page shows them as they come in."""
from __future__ import annotations

import importlib.util
import io
import shutil
import tempfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests

from alignray.collect.store import LabelStore
from alignray.config.collect import CollectConfig
from alignray.workflows.collect import admin_link
from tests.test_collect_server import ADMIN, collect_settings, new_annotator, start_collect_app, stop_collect_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
                              "chromium-driver; .ci/run does)"),
    pytest.mark.skipif(importlib.util.find_spec("selenium") is None,
                       reason="needs selenium (pip install -e '.[test]')"),
]
APP_NAME = "alignray-collect-browser"
CONVERSATION = [{"role": "user", "content": "My flight was cancelled."},
                {"role": "assistant", "content": "I am sorry to hear that."},
                {"role": "user", "content": "What should I do now?"}]


@pytest.fixture(scope="module")
def server(ray_cluster, tmp_path_factory):
    cfg = collect_settings(tmp_path_factory.mktemp("collect-browser"))
    url = start_collect_app(cfg, APP_NAME)
    yield url
    stop_collect_app(APP_NAME)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="alignray-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1200,900",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, condition, timeout: float = 30.0):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout).until(condition)


def texts(driver, selector: str) -> list[str]:
    """The text of every element matching ``selector``, read in one go: the admin page
    redraws its tables every few seconds, so element handles go stale."""
    return driver.execute_script("return Array.from(document.querySelectorAll(arguments[0]), e => e.textContent)",
                                 selector)


def test_a_browser_labels_through_its_one_time_link(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    task = {"task_id": "flight", "conversation": CONVERSATION,
            "responses": ["Ask the airline to rebook you on the next flight.", "Flights are boring."]}
    created = new_annotator(server, "browser-ann", [task], group="night-shift")
    browser.get(created["link"])
    wait_for(browser, lambda d: d.find_elements(By.ID, "response-1"))
    assert browser.current_url == server + "/task"
    turns = [node.text for node in browser.find_elements(By.CSS_SELECTOR, "#conversation .turn")]
    assert turns == [turn["content"] for turn in CONVERSATION]
    png = browser.get_screenshot_as_png()
    from PIL import Image
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    assert pixels.std() > 10, "the task page screenshot is blank"

    # A first answer (B, by its shortcut), saved, then taken back with the page's undo.
    browser.find_element(By.CSS_SELECTOR, "body").send_keys("b")
    browser.find_element(By.ID, "submit").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "empty").is_displayed())
    browser.find_element(By.ID, "undo-empty").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "task").is_displayed() and d.find_elements(By.ID, "response-1"))
    assert "undone" in browser.find_element(By.ID, "status").text

    browser.find_element(By.CSS_SELECTOR, "body").send_keys("a")
    assert browser.find_element(By.CSS_SELECTOR, 'input[name="winner"][value="a"]').is_selected()
    Select(browser.find_element(By.ID, "score-1")).select_by_value("2")
    browser.find_element(By.CSS_SELECTOR, 'input[name="flaw-1"][value="unhelpful"]').click()
    browser.find_element(By.ID, "submit").click()
    # Saved, and the next task asked for: the queue is empty now.
    wait_for(browser, lambda d: d.find_element(By.ID, "empty").is_displayed())

    parquet = requests.get(server + "/admin/api/feedback", headers=ADMIN, timeout=30).content
    rows = [row for row in pq.read_table(io.BytesIO(parquet)).to_pylist() if row["annotator_id"] == "browser-ann"]
    assert sorted(row["kind"] for row in rows) == ["pairwise", "rating"]
    pairwise = next(row for row in rows if row["kind"] == "pairwise")
    rating = next(row for row in rows if row["kind"] == "rating")
    assert pairwise["winner"] == "a" and pairwise["conversation"] == CONVERSATION
    assert rating["score"] == 2.0 and rating["flaws"] == ["unhelpful"] and rating["responses"] == [task["responses"][1]]
    assert {row["annotator_group"] for row in rows} == {"night-shift"}


def test_the_admin_page_updates_live(server, browser):
    created = new_annotator(server, "live-ann", [{"task_id": f"live-{i}", "prompt": f"p{i}",
                                                   "responses": ["x", "y"]} for i in range(2)])
    status = requests.get(server + "/admin/api/status", headers=ADMIN, timeout=30).json()
    store = LabelStore(status["store"])
    link = admin_link(store, CollectConfig(base_url=server))  # what `alignray collect collect.action=admin-link` prints
    store.close()
    browser.get(link)
    row = "#annotator-live-ann td:nth-child(3)"
    wait_for(browser, lambda d: texts(d, row) == ["0"])
    point = {"labels": 1, "accuracy": 0.5, "model": "rm-live"}
    assert requests.post(server + "/admin/api/accuracy", json=point, headers=ADMIN, timeout=30).status_code == 200
    body = {"label_id": "live-1", "task_id": "live-0", "kind": "pairwise", "winner": "b", "seconds": 2.0}
    saved = requests.post(server + "/api/labels", json=body, headers={"Authorization": f"Bearer {created['token']}"},
                          timeout=30)
    assert saved.status_code == 200
    # No reload: the page polls the quality report and redraws.
    wait_for(browser, lambda d: texts(d, row) == ["1"], timeout=20)
    assert texts(browser, "#accuracy tbody td") == ["1", "0.500", "rm-live"]
