"""Screenshot of Flower's workers page with headless Chromium: ``python -m ops.flower_screenshot``.

Without ``--url`` it starts a private fleet (Redis, the simulator, a worker per pool, the
API) and Flower, runs a few agent runs so the counters move, and photographs the workers
page once Flower lists every worker. With ``--url`` (and ``--auth user:password``) it only
photographs that Flower. Needs Debian's ``chromium`` (``apt-get install -y chromium``).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from agentfleet.client import Client
from ops.stack import REPO, Stack, StackError, wait_for

DEFAULT_OUT = REPO / "ops" / "screenshots" / "flower-workers.png"
#: Browsers Debian and others install; the first found is used.
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
#: Prompts run before the screenshot: a plain answer and runs with tool calls.
WORK = (
    "Say hello to the fleet.",
    'call calculator {"expression": "6 * 7"} call text_stats {"text": "agents at work"}',
    '[[rounds:2]] call wait {"seconds": 0.2}',
)


class ScreenshotError(RuntimeError):
    """The screenshot could not be taken."""


def find_browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    raise ScreenshotError(
        "no headless browser found: install Debian's chromium (apt-get install -y chromium)"
    )


def _with_credentials(url: str, auth: str | None) -> str:
    if not auth:
        return url
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{auth}@{parts.netloc}"))


def screenshot(url: str, auth: str | None, out: Path, size: tuple[int, int]) -> Path:
    """Photograph ``url`` (Flower's workers page) into ``out`` with headless Chromium."""
    browser = find_browser()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flower-shot-") as profile:
        argv = [
            browser,
            "--headless",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}",
            # Flower fills its tables from its API after the page loads.
            "--virtual-time-budget=8000",
            f"--screenshot={out}",
            _with_credentials(f"{url.rstrip('/')}/workers", auth),
        ]
        if os.geteuid() == 0:
            argv.insert(1, "--no-sandbox")  # Chromium's sandbox refuses to run as root
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0 or not out.exists():
        raise ScreenshotError(f"{browser} failed ({done.returncode}): {done.stderr[-2000:]}")
    return out


def run_work(api_url: str) -> None:
    with Client(api_url) as client:
        ids = [client.create_run(prompt).id for prompt in WORK]
        for run_id in ids:
            client.wait(run_id, timeout=120)


def wait_listed(url: str, auth: str | None, nodes: list[str]) -> None:
    user, _, password = (auth or "").partition(":")
    credentials = (user, password) if auth else None

    def listed() -> bool:
        response = httpx.get(f"{url}/api/workers", auth=credentials, timeout=5)
        return set(nodes) <= set(response.json())

    wait_for(listed, 60, "Flower to list every worker", interval=0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.flower_screenshot", description=__doc__)
    parser.add_argument("--url", help="an existing Flower; default: start a private fleet")
    parser.add_argument("--auth", help="user:password of that Flower")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--size", default="1280,760", help="window width,height")
    parser.add_argument("--workdir", type=Path, default=REPO / ".agentfleet" / "screenshot")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split(","))
    try:
        find_browser()
        if args.url:
            path = screenshot(args.url, args.auth, args.out, (width, height))
        else:
            with Stack(args.workdir) as stack:
                stack.start_fleet()
                nodes = stack.wait_workers(stack.celery_app(), 3)
                auth = f"admin:{secrets.token_urlsafe(9)}"
                url = stack.start_flower(basic_auth=auth)
                run_work(stack.api_url)
                wait_listed(url, auth, nodes)
                time.sleep(2)  # one more heartbeat, so the counters are current
                path = screenshot(url, auth, args.out, (width, height))
    except (ScreenshotError, StackError) as exc:
        print(f"flower_screenshot: {exc}", file=sys.stderr)
        return 2
    print(f"saved {path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
