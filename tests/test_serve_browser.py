"""The page of `charrnn serve` in a real headless Chromium (Debian's chromium and chromedriver,
driven by Selenium): it loads with no network but the server's, typing shows the API's
next-character bars, generation streams into the page, the activation view colours the text.
A screenshot is saved as a test artifact (CHARRNN_ARTIFACTS, else the test's tmp dir).

Without the browser the test is skipped, except in CI (CI set), where it fails.
"""
import os
from pathlib import Path

import pytest

from serving import Server, train_runs, wait_until

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1200,1400")


def need_browser():
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        message = f"no headless browser: {', '.join(missing)} missing (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message + " -- CI must run the browser test")
        pytest.skip(message)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(train_runs(tmp_path_factory.mktemp("served"))[:1])
    yield server
    server.stop()


def test_the_page_shows_bars_as_you_type_streams_generation_and_colours_activations(browser, server, tmp_path):
    from selenium.webdriver.common.by import By
    browser.get(server.url)
    assert wait_until(lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "yes")
    find = browser.find_element

    # typing: the bars are the API's ten most likely next characters after the typed text
    box = find(By.ID, "text")
    box.clear()
    box.send_keys("'we go,' he said (into the")
    bars = find(By.ID, "bars")
    assert wait_until(lambda: bars.get_attribute("data-text") == "'we go,' he said (into the")
    _, expected = server.post("/api/probs", {"text": "'we go,' he said (into the", "top": 10})
    shown = [e.text for e in bars.find_elements(By.CLASS_NAME, "bar-value")]
    assert len(shown) == 10 and shown[0] == f"{100 * expected['top'][0][1]:.1f}%"

    # generation streams: the prefix, then chunks as they come, then "done"
    find(By.ID, "length").clear()
    find(By.ID, "length").send_keys("300")
    find(By.ID, "generate").click()
    assert wait_until(lambda: find(By.ID, "gen-status").text == "done")
    generated = find(By.ID, "generated")
    chunks = browser.execute_script("return arguments[0].childNodes.length", generated)
    assert chunks > 5 and generated.text.startswith("'we go,' he said (into the") and len(generated.text) >= 300

    # the activation view: every character coloured, units ranked by a feature
    find(By.ID, "show-activations").click()
    colored = find(By.ID, "colored")
    assert wait_until(lambda: len(colored.find_elements(By.TAG_NAME, "span")) == len("'we go,' he said (into the"))
    spans = colored.find_elements(By.TAG_NAME, "span")
    assert all(span.get_attribute("style").startswith("background-color: rgb(") for span in spans)
    ranking = find(By.ID, "ranking").find_elements(By.TAG_NAME, "li")
    assert ranking and "r = " in ranking[0].text
    ranking[-1].click()
    assert "correlation with" in find(By.ID, "unit-caption").text

    # hovering a character shows its top-5 guesses
    from selenium.webdriver.common.action_chains import ActionChains
    ActionChains(browser).move_to_element(spans[3]).perform()
    tooltip = find(By.ID, "tooltip")
    assert wait_until(lambda: tooltip.is_displayed())
    assert tooltip.text.count("%") == 5

    artifacts = Path(os.environ.get("CHARRNN_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "serve-page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_the_activations_file_is_the_same_view_without_a_server(browser, server, tmp_path):
    from click.testing import CliRunner
    from selenium.webdriver.common.by import By

    from charrnn import cli
    text = tmp_path / "text.txt"
    text.write_text("he said, 'we go (into) the future.'\nit's strange.\n", encoding="utf-8")
    page = tmp_path / "view.html"
    result = CliRunner().invoke(cli.main, ["activations", str(server_run(server)), "--text", str(text),
                                           "--out", str(page)])
    assert result.exit_code == 0, result.output
    browser.get(page.as_uri())
    colored = browser.find_element(By.ID, "colored")
    assert wait_until(lambda: len(colored.find_elements(By.TAG_NAME, "span")) == len(text.read_text()))
    assert not browser.find_element(By.ID, "live").is_displayed()
    options = [o.text for o in browser.find_element(By.ID, "feature").find_elements(By.TAG_NAME, "option")]
    assert options[:2] == ["inside quotes", "inside parentheses"]
    assert "http" not in page.read_text()  # the file names no URL: it needs nothing but itself


def server_run(server):
    return Path(server.process.args[server.process.args.index("serve") + 1])
