"""The playground page in a real browser (headless Chromium from Debian's packages, driven
by Selenium): three columns answer one prompt with the base model and both demo adapters,
equal to the API's answers for the same seed; Esc stops a long answer and frees the
request on the server; a screenshot is kept."""
import os
import shutil
import tempfile
import time

import pytest
import requests

from conftest import BASE

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

QUESTION = "What is the capital of Germany?"
SCREENSHOT = os.environ.get("FACET_PLAYGROUND_SCREENSHOT", os.path.join(tempfile.gettempdir(), "facet-playground.png"))


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("chromium and chromium-driver (Debian) are not installed")
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000", "--force-prefers-reduced-motion"):
        options.add_argument(arg)
    b = webdriver.Chrome(service=Service(driver), options=options)
    yield b
    b.quit()


def set_value(browser, selector, value):
    e = browser.find_element(By.CSS_SELECTOR, selector)
    e.clear()
    e.send_keys(str(value))


def running(server):
    return requests.get(server.url + "/v1/facet/status", timeout=10).json()["running"]


def test_three_columns_equal_the_api_and_escape_stops(browser, server):
    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 180)
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "input.model"))
    # Load the German adapter through the page's form (a path under --adapter-root).
    if not browser.find_elements(By.CSS_SELECTOR, "input.model[value=de]"):
        set_value(browser, "#load-name", "de")
        set_value(browser, "#load-path", os.path.join(server.adapter_root, "de"))
        browser.find_element(By.CSS_SELECTOR, "#load-btn").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "input.model[value=de]"))
    for box in browser.find_elements(By.CSS_SELECTOR, "input.model"):
        if box.is_selected() != (box.get_attribute("value") in (BASE, "fr", "de")):
            box.click()
    set_value(browser, "#temperature", 0.7)
    set_value(browser, "#max_tokens", 24)
    set_value(browser, "#seed", 5)
    prompt = browser.find_element(By.CSS_SELECTOR, "#prompt")
    prompt.clear()
    prompt.send_keys(QUESTION)
    prompt.send_keys(Keys.ENTER)
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".column")) == 3 and
               all(c.get_attribute("data-state") in ("done", "error") for c in b.find_elements(By.CSS_SELECTOR, ".column")))
    answers = {c.get_attribute("data-model"): c.find_element(By.CSS_SELECTOR, ".output").text
               for c in browser.find_elements(By.CSS_SELECTOR, ".column")}
    states = {c.get_attribute("data-model"): c.get_attribute("data-state") for c in browser.find_elements(By.CSS_SELECTOR, ".column")}
    assert set(states.values()) == {"done"}, (states, answers)
    assert len(set(answers.values())) == 3, answers
    for model, text in answers.items():
        r = requests.post(server.url + "/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 24, "temperature": 0.7,
            "top_p": 1, "top_k": 0, "seed": 5}, timeout=120)
        assert r.status_code == 200, r.text
        # The page shows the text as the browser renders it (no trailing whitespace).
        assert text == r.json()["choices"][0]["message"]["content"].strip(), model
    stats = browser.find_element(By.CSS_SELECTOR, ".column .stats").text
    assert "TTFT" in stats and "tok/s" in stats, stats
    browser.save_screenshot(SCREENSHOT)

    # Esc during a long answer stops every stream and the server frees the requests.
    set_value(browser, "#max_tokens", 2000)
    prompt.clear()
    prompt.send_keys("Write a very long story about a lighthouse keeper.")
    prompt.send_keys(Keys.ENTER)
    wait.until(lambda b: any(c.find_element(By.CSS_SELECTOR, ".output").text for c in b.find_elements(By.CSS_SELECTOR, ".column")))
    assert running(server) > 0
    # Esc as a user presses it: to the focused element (the prompt box).
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()
    # Every column stops (one that already ended on its own stays done).
    wait.until(lambda b: all(c.get_attribute("data-state") in ("stopped", "done") for c in b.find_elements(By.CSS_SELECTOR, ".column")))
    states = [c.get_attribute("data-state") for c in browser.find_elements(By.CSS_SELECTOR, ".column")]
    assert "stopped" in states, states
    deadline = time.time() + 20
    while running(server) and time.time() < deadline:
        time.sleep(0.2)
    assert running(server) == 0

    # The adapters panel lists them with rank and size; a bad load shows an error in the page.
    rows = browser.find_element(By.CSS_SELECTOR, "#adapterrows").text
    assert "fr" in rows and "de" in rows and "MB" in rows
    set_value(browser, "#load-name", "nope")
    set_value(browser, "#load-path", "/definitely/not/here")
    browser.find_element(By.CSS_SELECTOR, "#load-btn").click()
    wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#error").is_displayed())
    assert browser.find_element(By.CSS_SELECTOR, "#error").text


def test_api_key_is_asked_for_and_kept_for_the_tab(browser):
    from conftest import Server
    s = Server(api_key="sekret")
    try:
        browser.get(s.url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#keybox").is_displayed())
        assert "API key" in browser.find_element(By.CSS_SELECTOR, "#error").text
        set_value(browser, "#apikey", "sekret")
        browser.find_element(By.CSS_SELECTOR, "#keysave").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "input.model"))
        assert browser.execute_script("return sessionStorage.getItem('facet-api-key')") == "sekret"
        assert browser.execute_script("return localStorage.length") == 0
    finally:
        s.stop()
