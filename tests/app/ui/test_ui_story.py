"""The whole story clicked through in a real browser (headless Chromium + Selenium) against a
real `scones ui`: the pipeline graph, a short run started from the form, approval to staging,
the staging test and promotion to prod, a photo through the inference workflow, and the
monitoring page's drift chart. The tests run in this order and build on one another (one
workspace, one server, one browser); each takes a screenshot of its page."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import WebDriverWait

from studio_helpers import REPO_ROOT, copy_images, start_studio, stop_studio

pytestmark = pytest.mark.slow

SETTINGS = ("training.batch_size=16",
            # the two-epoch model is not good; the staging test must still let it through
            "deployment.staging.test_min_accuracy=0", "deployment.staging.test_images=10",
            "deployment.prod.bake_seconds=0", "monitoring.min_records=3")


@pytest.fixture(scope="module")
def story(tmp_path_factory, sample_data_dir):
    root = tmp_path_factory.mktemp("studio-story")
    data = copy_images(sample_data_dir, root / "images", per_class=40)
    studio = start_studio(root / "ws", *SETTINGS)
    yield studio, data
    stop_studio(studio)


def wait(browser, seconds: float = 30):
    """Polls; the pages replace their live parts (polling, refresh) under the finder's feet."""
    return WebDriverWait(browser, seconds, poll_frequency=0.5,
                         ignored_exceptions=(NoSuchElementException,
                                             StaleElementReferenceException))


def flashes(browser) -> str:
    return " | ".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, ".flash"))


def expect_flash(browser, text: str, seconds: float = 60) -> None:
    """The page the action redirected to says `text` (waited for: the click navigates)."""
    wait(browser, seconds).until(lambda b: text in flashes(b))


def test_the_pipeline_page_shows_the_graph(story, browser, shoot):
    studio, _ = story
    browser.get(f"{studio.url}/?token={studio.token}")
    graph = wait(browser, 120).until(ready.presence_of_element_located((By.ID, "pipeline-graph")))
    steps = {g.get_attribute("data-step"): g.get_attribute("data-status")
             for g in graph.find_elements(By.CSS_SELECTOR, "g.step")}
    assert set(steps) == {"Preprocess", "Train", "Evaluate", "Baseline", "CheckAccuracy",
                          "Register-RegisterModel", "AccuracyBelowThreshold"}
    assert set(steps.values()) == {"NotStarted"}
    labels = [t.text for t in graph.find_elements(By.CSS_SELECTOR, "text")]
    assert "true" in labels and "false" in labels   # the condition's two branches
    assert "Fail · NotStarted" in labels             # the Fail step drawn as such
    shoot(browser, "pipelines-graph")


def test_a_short_run_from_the_form_ends_with_every_step_succeeded(story, browser, shoot):
    studio, data = story
    browser.get(f"{studio.url}/pipelines")
    # out of range first: refused by the --param rules, nothing started
    browser.find_element(By.ID, "param-Epochs").send_keys("0")
    browser.find_element(By.ID, "start-run").click()
    assert "Epochs" in wait(browser).until(
        ready.presence_of_element_located((By.CSS_SELECTOR, ".flash.error"))).text
    for name, value in (("InputDataUrl", str(data)), ("Epochs", "2"),
                        ("AccuracyThreshold", "0")):
        field = browser.find_element(By.ID, f"param-{name}")
        field.clear()
        field.send_keys(value)
    browser.find_element(By.ID, "start-run").click()
    expect_flash(browser, "pipeline run started")
    # the page polls: the graph's boxes turn as the steps run, without a reload
    status = wait(browser, 600).until(lambda b: _finished(b))
    assert status == "Succeeded", flashes(browser) + browser.find_element(By.ID, "live").text
    rows = browser.find_elements(By.CSS_SELECTOR, "#steps tr[data-step]")
    assert [r.get_attribute("data-step") for r in rows] == [
        "Preprocess", "Train", "Evaluate", "Baseline", "CheckAccuracy", "Register-RegisterModel"]
    assert all(r.find_elements(By.CSS_SELECTOR, "td")[2].text == "Succeeded" for r in rows)
    boxes = {g.get_attribute("data-step"): g.get_attribute("data-status")
             for g in browser.find_elements(By.CSS_SELECTOR, "#pipeline-graph g.step")}
    assert boxes["AccuracyBelowThreshold"] == "NotStarted" and boxes["Train"] == "Succeeded"
    # each step's log is one click away
    log = rows[1].find_element(By.LINK_TEXT, "log").get_attribute("href")
    browser.get(log)
    assert "epoch" in browser.find_element(By.TAG_NAME, "body").text
    browser.get(f"{studio.url}/pipelines")
    shoot(browser, "pipelines-run-succeeded")


def _finished(browser):
    try:
        status = browser.find_element(By.ID, "chosen-status").text
    except Exception:
        return False
    return status if status in ("Succeeded", "Failed", "Stopped") else False


def test_approving_in_the_registry_puts_the_version_on_staging(story, browser, shoot):
    studio, _ = story
    browser.get(f"{studio.url}/registry")
    row = browser.find_element(By.CSS_SELECTOR, "#versions tr[data-version='1']")
    assert "PendingManualApproval" in row.text
    shoot(browser, "registry-pending")
    row.find_element(By.LINK_TEXT, "1").click()
    # the version's plots are real PNGs the browser decoded
    for name in ("training_curves", "confusion_matrix", "reliability_diagram"):
        image = browser.find_element(By.ID, f"plot-{name}")
        wait(browser).until(lambda b: b.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", image) > 100)
    assert "brightness" in browser.find_element(By.ID, "baseline").text
    shoot(browser, "version")
    browser.find_element(By.ID, "approve-description").send_keys("good enough for a demo")
    browser.find_element(By.ID, "approve").click()
    wait(browser, 120).until(lambda b: "Approved" in b.find_element(By.ID, "version-status").text)
    expect_flash(browser, "staging endpoint")
    browser.get(f"{studio.url}/endpoints")
    staging = browser.find_element(By.ID, "endpoint-staging")
    assert staging.get_attribute("data-version") == "1"
    assert browser.find_element(By.ID, "endpoint-prod").get_attribute("data-version") == ""


def test_promotion_moves_it_to_prod(story, browser, shoot):
    studio, _ = story
    browser.get(f"{studio.url}/endpoints")
    browser.find_element(By.ID, "promote").click()   # untested: refused, as by the CLI
    expect_flash(browser, "has not been tested")
    browser.find_element(By.ID, "run-staging-test").click()
    wait(browser, 300).until(lambda b: "PASSED" in b.find_element(By.ID, "staging-test-job").text
                             or "Failed" in b.find_element(By.ID, "staging-test-job").text)
    assert "PASSED" in browser.find_element(By.ID, "staging-test-job").text
    browser.find_element(By.ID, "promote").click()
    wait(browser, 120).until(lambda b: b.find_element(By.ID, "endpoint-prod")
                             .get_attribute("data-version") == "1")
    assert "passed" in browser.find_element(By.CSS_SELECTOR, "#endpoint-prod .staging-test").text
    shoot(browser, "endpoints")


def test_an_uploaded_photo_shows_its_label_and_confidence(story, browser, shoot):
    studio, data = story
    browser.get(f"{studio.url}/try")
    photos = [sorted((data / name).glob("*.png"))[0] for name in ("bicycle", "motorcycle")]
    # and a file that is no image: the workflow's own validation names what is wrong
    not_an_image = studio.workspace.parent / "notes.png"
    not_an_image.write_text("these are notes, not a photo")
    browser.find_element(By.ID, "images").send_keys(
        "\n".join(str(p) for p in [*photos, not_an_image]))
    browser.find_element(By.ID, "classify").click()
    table = wait(browser, 300).until(ready.presence_of_element_located((By.ID, "try-results")))
    rows = {r.find_element(By.CSS_SELECTOR, "td").text: r
            for r in table.find_elements(By.CSS_SELECTOR, "tr")[1:]}
    assert set(rows) == {p.name for p in photos} | {"notes.png"}
    for photo in photos:
        row = rows[photo.name]
        assert row.find_element(By.CSS_SELECTOR, ".label").text in ("bicycle", "motorcycle")
        assert 0.5 <= float(row.find_element(By.CSS_SELECTOR, ".confidence").text) <= 1.0
    refused = rows["notes.png"].text
    assert "InvalidImage" in refused and "these are notes" not in refused, refused
    shoot(browser, "try-it")


def test_the_monitoring_page_draws_the_drift_chart(story, browser, shoot):
    studio, data = story
    settings = [a for s in SETTINGS for a in ("--set", s)]
    # traffic for the chart: the inference workflow over a folder, as `workflow run` does
    traffic = subprocess.run(
        [sys.executable, "-m", "app.cli.main", "workflow", "run", "--images",
         str(data / "bicycle"), "--endpoint-idle-minutes", "0", "--set",
         f"local.workspace={studio.workspace}", *settings],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert traffic.returncode in (0, 1), traffic.stderr[-2000:]
    checked = subprocess.run(
        [sys.executable, "-m", "app.cli.main", "monitor", "run", "--set",
         f"local.workspace={studio.workspace}", *settings],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stderr[-2000:]
    browser.get(f"{studio.url}/monitoring")
    chart = wait(browser, 60).until(lambda b: b.find_element(By.ID, "drift-brightness"))
    wait(browser, 60).until(lambda b: chart.get_attribute("data-drawn") == "1")
    # plotly drew it: an SVG with the traffic's points and the baseline band
    assert chart.find_elements(By.CSS_SELECTOR, "svg.main-svg")
    assert len(chart.find_elements(By.CSS_SELECTOR, ".scatterlayer .trace")) >= 2
    legend = chart.text
    assert "v1 traffic" in legend and "baseline 5-95%" in legend
    assert browser.find_elements(By.CSS_SELECTOR, "#monitoring-runs tr")[1:]
    shoot(browser, "monitoring")


def _newest_execution(browser) -> str | None:
    rows = browser.find_elements(By.CSS_SELECTOR, "#executions tr[data-execution]")
    return rows[0].get_attribute("data-execution") if rows else None


def _start_run(browser, studio, data, epochs: str) -> str | None:
    browser.get(f"{studio.url}/pipelines")
    before = _newest_execution(browser)
    for name, value in (("InputDataUrl", str(data)), ("Epochs", epochs),
                        ("AccuracyThreshold", "0")):
        field = browser.find_element(By.ID, f"param-{name}")
        field.clear()
        field.send_keys(value)
    browser.find_element(By.ID, "start-run").click()
    expect_flash(browser, "pipeline run started")
    return before


def test_a_second_run_reuses_the_cache_and_two_versions_compare(story, browser, shoot):
    studio, data = story
    before = _start_run(browser, studio, data, "2")
    wait(browser, 600).until(lambda b: _newest_execution(b) not in (None, before)
                             and _finished(b))
    assert browser.find_element(By.ID, "chosen-status").text == "Succeeded"
    boxes = {g.get_attribute("data-step"): g.get_attribute("data-status")
             for g in browser.find_elements(By.CSS_SELECTOR, "#pipeline-graph g.step")}
    # the unchanged steps came from the first run, drawn as cached
    assert boxes["Preprocess"] == "Cached" and boxes["Train"] == "Cached", boxes
    assert boxes["Evaluate"] == "Succeeded"
    shoot(browser, "pipelines-cached")
    browser.get(f"{studio.url}/registry")
    assert "Approved" in browser.find_element(
        By.CSS_SELECTOR, "#versions tr[data-version='1']").text
    shoot(browser, "registry")
    browser.find_element(By.ID, "compare").click()
    assert "Version 1 vs 2" in browser.find_element(By.TAG_NAME, "h1").text
    images = browser.find_elements(By.CSS_SELECTOR, "#comparison img")
    assert len(images) == 6
    wait(browser).until(lambda b: all(b.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth", i) > 100 for i in images))
    shoot(browser, "compare")


def test_a_running_execution_is_stopped_from_the_page(story, browser, shoot):
    studio, data = story
    before = _start_run(browser, studio, data, "400")

    def training(b):
        newest = _newest_execution(b)
        if newest in (None, before):
            return False
        boxes = {g.get_attribute("data-step"): g.get_attribute("data-status")
                 for g in b.find_elements(By.CSS_SELECTOR, "#pipeline-graph g.step")}
        return boxes.get("Train") == "Executing" and newest

    execution = wait(browser, 300).until(training)
    stop = f"#executions tr[data-execution='{execution}'] button.danger"
    wait(browser).until(lambda b: b.find_element(By.CSS_SELECTOR, stop).click() or True)
    expect_flash(browser, "stop requested")
    row = f"#executions tr[data-execution='{execution}']"
    wait(browser, 120).until(lambda b: "Stopped" in b.find_element(By.CSS_SELECTOR, row).text)
    # a stopped run offers Retry (from its failed step, reusing what succeeded)
    assert browser.find_element(By.CSS_SELECTOR, f"{row} button").text == "Retry"
    # Retry continues the same execution from its stopped step; stop it again
    wait(browser).until(lambda b: b.find_element(By.CSS_SELECTOR, f"{row} button").click()
                        or True)
    expect_flash(browser, f"retry of {execution} started")
    wait(browser, 120).until(lambda b: "Executing" in b.find_element(By.CSS_SELECTOR, row).text)
    wait(browser).until(lambda b: b.find_element(By.CSS_SELECTOR, stop).click() or True)
    wait(browser, 120).until(lambda b: "Stopped" in b.find_element(By.CSS_SELECTOR, row).text)
