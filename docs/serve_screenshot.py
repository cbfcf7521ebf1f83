"""Make docs/serve.png: `charrnn serve RUN` on 127.0.0.1 in headless Chromium, a passage of the
book typed in, its activations shown with the units ranked by "inside quotes".

    python docs/serve_screenshot.py RUN TEXT [--out docs/serve.png] [--feature "inside quotes"]

Needs the [serve] extra, selenium and Debian's chromium + chromium-driver (as the tests do).
Prints the unit the picker ranks first for the feature and its correlation.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serving import Server, wait_until  # noqa: E402
from test_serve_browser import CHROMEDRIVER, CHROMIUM, CHROMIUM_FLAGS  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("text", type=Path, help="the passage (UTF-8, at most 2,000 characters)")
    parser.add_argument("--out", type=Path, default=Path("docs/serve.png"))
    parser.add_argument("--feature", default="inside quotes")
    args = parser.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    text = args.text.read_text(encoding="utf-8")
    server = Server([args.run])
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp()}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_window_size(1200, 1500)
        driver.get(server.url)
        wait_until(lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "yes")
        box = driver.find_element(By.ID, "text")
        driver.execute_script("arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'))",
                              box, text)
        wait_until(lambda: driver.find_element(By.ID, "bars").get_attribute("data-text") == text)
        driver.find_element(By.ID, "length").clear()
        driver.find_element(By.ID, "length").send_keys("160")
        driver.find_element(By.ID, "temperature").clear()
        driver.find_element(By.ID, "temperature").send_keys("0.6")
        driver.find_element(By.ID, "generate").click()
        wait_until(lambda: driver.find_element(By.ID, "gen-status").text == "done")
        driver.find_element(By.ID, "show-activations").click()
        wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "#colored span"))
        Select(driver.find_element(By.ID, "feature")).select_by_value(args.feature)
        time.sleep(0.3)
        caption = driver.find_element(By.ID, "unit-caption").text
        driver.execute_script("document.getElementById('activations').scrollIntoView()")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.out))
    finally:
        driver.quit()
        server.stop()
    status, answer = server_free_answer(args.run, text)
    print(json.dumps({"screenshot": str(args.out), "caption": caption,
                      "top_units": answer["features"][args.feature]["units"][:3]}))


def server_free_answer(run, text):
    """The same ranking computed in-process, for the printed report."""
    import math

    from charrnn.serve.engine import activation_payload, load_runs
    (served,) = load_runs([run])
    return 200, activation_payload(served, text, "base64", math.inf)[0]


if __name__ == "__main__":
    main()
