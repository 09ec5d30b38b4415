"""Screenshots of the run explorer (``/ui``): ``python -m ops.ui_screenshot``.

Starts a private fleet (Redis, the simulator with a price for its model so runs cost something,
a worker per pool, the API), runs some work (a run with tool calls over two rounds, one that
fails, plain ones, one on a thread), signs in with headless Chromium driven by Selenium through
Debian's chromedriver, and saves the run list (``docs/ui-runs.png``) and the page of the run
with tool calls (``docs/ui-run.png``). Needs ``apt-get install -y chromium chromium-driver``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from agentfleet.client import Client
from ops.stack import REPO, Stack, StackError

DOCS = REPO / "docs"
#: The model's price (US dollars per million tokens), so the pages show costs.
PRICES = {"sim-1": {"input": 2.5, "cached_input": 1.25, "output": 10.0}}
#: The run the run page shows: two rounds of two tool calls, with a second per LLM call.
SHOWN = (
    '[[latency:0.6]] [[rounds:2]] call calculator {"expression": "6 * 7"} '
    'call wait {"seconds": 0.3}'
)
#: Other work, so the list has some of everything.
WORK = (
    ("Say hello to the fleet.", {"ticket": "T-1001"}, None),
    ("[[error:400]] this request is refused by the provider", {"ticket": "T-1002"}, None),
    ('call text_stats {"text": "agents at work"}', {"ticket": "T-1003"}, "support-42"),
    ("Summarise the last answer.", {"ticket": "T-1003"}, "support-42"),
)


class ScreenshotError(RuntimeError):
    """The screenshots could not be taken."""


def find_chromium() -> tuple[str, str]:
    """Paths of Debian's chromium and its chromedriver."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        raise ScreenshotError(
            "needs Debian's chromium and chromedriver: apt-get install -y chromium chromium-driver"
        )
    return browser, driver


def headless_chrome(
    browser: str, driver: str, profile: Path, size: tuple[int, int] = (1280, 900)
) -> WebDriver:
    """Headless ``browser`` driven through ``driver``; both paths given, so Selenium looks
    nothing up and downloads nothing."""
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--disable-gpu",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--window-size={size[0]},{size[1]}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium's sandbox refuses to run as root
    service = Service(driver, log_output=str(profile / "chromedriver.log"))
    chrome = webdriver.Chrome(options=options, service=service)
    chrome.set_page_load_timeout(60)
    return chrome


def sign_in(chrome: WebDriver, api_url: str, key: str) -> None:
    """Sign in to the explorer at ``api_url`` with API key ``key``."""
    chrome.get(f"{api_url}/ui/login")
    field = chrome.find_element(By.ID, "api_key")
    field.send_keys(key)
    field.submit()
    WebDriverWait(chrome, 30).until(lambda d: d.current_url.endswith("/ui/runs"))


def run_work(api_url: str, key: str) -> str:
    """Run the work; the ID of the run the run page shows."""
    with Client(api_url, api_key=key) as client:
        shown = client.create_run(SHOWN, metadata={"ticket": "T-1000"}).id
        ids = [
            client.create_run(prompt, metadata=meta, thread_id=thread).id
            if thread
            else client.create_run(prompt, metadata=meta).id
            for prompt, meta, thread in WORK
        ]
        for run_id in [shown, *ids]:
            client.wait(run_id, timeout=120)
    return shown


def _full_page(chrome: WebDriver, out: Path, width: int) -> None:
    height = int(chrome.execute_script("return document.documentElement.scrollHeight"))
    chrome.set_window_size(width, min(max(height, 400), 2400))
    out.parent.mkdir(parents=True, exist_ok=True)
    if not chrome.save_screenshot(str(out)):
        raise ScreenshotError(f"could not save {out}")


def screenshots(api_url: str, key: str, run_id: str, out: Path, width: int) -> list[Path]:
    browser, driver = find_chromium()
    with tempfile.TemporaryDirectory(prefix="ui-shot-") as profile:
        chrome = headless_chrome(browser, driver, Path(profile), (width, 900))
        try:
            sign_in(chrome, api_url, key)
            runs, run = out / "ui-runs.png", out / "ui-run.png"
            _full_page(chrome, runs, width)
            chrome.set_window_size(width, 900)
            chrome.get(f"{api_url}/ui/runs/{run_id}")
            _full_page(chrome, run, width)
        finally:
            chrome.quit()
    return [runs, run]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.ui_screenshot", description=__doc__)
    parser.add_argument("--out", type=Path, default=DOCS, help="folder of the two pictures")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--workdir", type=Path, default=REPO / ".agentfleet" / "ui-screenshot")
    args = parser.parse_args(argv)
    try:
        find_chromium()
        env = {"AGENTFLEET_LLM_PRICES": json.dumps(PRICES)}
        with Stack(args.workdir, env_overrides=env) as stack:
            stack.start_fleet()
            stack.wait_workers(stack.celery_app(), 3)
            run_id = run_work(stack.api_url, stack.api_key)
            paths = screenshots(stack.api_url, stack.api_key, run_id, args.out, args.width)
    except (ScreenshotError, StackError) as exc:
        print(f"ui_screenshot: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"saved {path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
