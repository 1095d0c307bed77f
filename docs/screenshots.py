"""The README's screenshots of `bertfit review`, one per view, from a real run, in headless Chromium.

    python docs/screenshots.py RUN [--compare OTHER ...]    # writes docs/review-{issues,errors,run,compare}.png
    python docs/screenshots.py NER_RUN --prefix review-ner --views issues errors   # docs/review-ner-*.png

Starts `bertfit review RUN` on a free loopback port, opens each view as a user would (Debian's chromium and
chromium-driver, through Selenium) and saves it. Nothing is decided on the page, so the run is left as it was.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
VIEWS = {  # view → (the file's name after the prefix, what shows that it has drawn)
    "issues": ("issues", "#rows tr"),
    "errors": ("errors", "#error-rows tr"),
    "overview": ("run", "#plots img"),
    "compare": ("compare", "#chart-evals polyline"),
}


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--compare", nargs="*", default=[])
    parser.add_argument("--prefix", default="review", help="the files' names start with it")
    parser.add_argument("--views", nargs="+", default=list(VIEWS), choices=list(VIEWS))
    args = parser.parse_args()
    command = [sys.executable, "-m", "bertfit", "review", args.run]
    for other in args.compare:
        command += ["--compare", other]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:\d+/", line)
        if not found:
            sys.exit(f"bertfit review did not start: {line.strip()}")
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        page = browser()
        try:
            page.get(found.group(0))
            wait = WebDriverWait(page, 300)  # the errors view scores the validation split first
            wait.until(lambda p: p.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
            for view in args.views:
                suffix, drawn = VIEWS[view]
                page.find_element(By.CSS_SELECTOR, f"nav button[data-view={view}]").click()
                wait.until(lambda p, drawn=drawn: p.find_elements(By.CSS_SELECTOR, drawn))
                page.save_screenshot(str(DOCS / f"{args.prefix}-{suffix}.png"))
                print(f"wrote {DOCS / f'{args.prefix}-{suffix}.png'}")
        finally:
            page.quit()
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
