#!/usr/bin/env python3
"""The server's web page in a real browser: headless Chromium driven by
Selenium fills the form, presses Generate, waits for the image and its
infotext, checks the progress bar moved to 100%, and saves a screenshot.

    python3 tests/server/browser_test.py --url http://127.0.0.1:7860/ --screenshot shot.png

Run by the server suite (tests/test_server.c, test_browser) against the
sd1-tiny executable. Exit status 0 on success; a message on failure.
"""
import argparse
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--screenshot", required=True)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--driver", default="/usr/bin/chromedriver")
    ap.add_argument("--timeout", type=float, default=300)
    a = ap.parse_args()

    opts = webdriver.ChromeOptions()
    opts.binary_location = a.chromium
    for o in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1400,760"):
        opts.add_argument(o)
    d = webdriver.Chrome(service=Service(a.driver), options=opts)
    try:
        d.get(a.url)
        wait = WebDriverWait(d, 30)
        # the choices come from /sdapi/v1/samplers and /sdapi/v1/options
        wait.until(lambda d: len(Select(d.find_element(By.ID, "sampler")).options) > 3)
        wait.until(lambda d: len(Select(d.find_element(By.ID, "size")).options) >= 1)
        samplers = [o.text for o in Select(d.find_element(By.ID, "sampler")).options]
        sizes = [o.text for o in Select(d.find_element(By.ID, "size")).options]
        assert "DPM++ 2M" in samplers and "Euler a" in samplers, samplers
        assert "128x128" in sizes, sizes

        def fill(id_, text):
            e = d.find_element(By.ID, id_)
            e.clear()
            e.send_keys(text)

        fill("prompt", "a watercolour fox in the snow")
        fill("negative", "blurry")
        fill("steps", "6")
        fill("cfg", "7.5")
        fill("seed", "1234")
        Select(d.find_element(By.ID, "sampler")).select_by_visible_text("DPM++ 2M")
        Select(d.find_element(By.ID, "size")).select_by_visible_text("128x128")
        d.find_element(By.ID, "generate").click()

        # the progress bar moves while it samples (polled from /sdapi/v1/progress)
        saw_progress = False
        t0 = time.time()
        while time.time() - t0 < a.timeout:
            w = d.execute_script("return parseFloat(document.getElementById('fill').style.width) || 0")
            src = d.find_element(By.ID, "result").get_attribute("src") or ""
            if 0 < w < 100 or "step" in d.find_element(By.ID, "status").text:
                saw_progress = True
            if src.startswith("data:image/png;base64,"):
                break
            if "error" in d.find_element(By.ID, "status").text:
                raise AssertionError("the page says: " + d.find_element(By.ID, "status").text)
            time.sleep(0.1)
        else:
            raise AssertionError("no image after %g s" % a.timeout)
        # the image has loaded and has the size asked for
        WebDriverWait(d, 10).until(lambda d: d.execute_script(
            "const i = document.getElementById('result'); return i.complete && i.naturalWidth > 0"))
        nw, nh = d.execute_script(
            "const i = document.getElementById('result'); return [i.naturalWidth, i.naturalHeight]")
        assert (nw, nh) == (128, 128), (nw, nh)
        info = d.find_element(By.ID, "infotext").text
        assert info.startswith("a watercolour fox in the snow"), info
        for want in ("Negative prompt: blurry", "Steps: 6", "Sampler: DPM++ 2M", "CFG scale: 7.5",
                     "Seed: 1234", "Size: 128x128"):
            assert want in info, (want, info)
        assert "seed 1234" in d.find_element(By.ID, "status").text
        time.sleep(0.5)  # (the progress bar's transition)
        d.save_screenshot(a.screenshot)
        print("browser test: image %dx%d shown with its infotext (%s); progress seen: %s; screenshot %s"
              % (nw, nh, info.splitlines()[-1][:60] + "...", saw_progress, a.screenshot))
    finally:
        d.quit()


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print("browser test FAILED:", e, file=sys.stderr)
        sys.exit(1)
