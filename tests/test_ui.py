"""The run explorer (``/ui``) in a real headless Chromium, driven through its chromedriver.

Each test signs in with a key of a tenant of its own, so what it sees is what it made. Needs
Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them): without them the
tests skip with the reason, except on CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from agentfleet.client import Client
from agentfleet.producer.auth import revoke_key
from agentfleet.tasks.runlist import Cursor
from agentfleet.tasks.settings import Settings
from ops.stack import UI_SECRET, api_command, free_port, wait_for
from ops.ui_screenshot import ScreenshotError, find_chromium, headless_chrome, sign_in
from tests.conftest import Fleet

#: Seconds a page may take to show what a test waits for.
PATIENCE = 60


def _chromium() -> tuple[str, str]:
    """Paths of the browser and its driver; skips without them, but fails on CI."""
    try:
        return find_chromium()
    except ScreenshotError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc} (.ci/run installs them)")
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    chrome = headless_chrome(*_chromium(), tmp_path_factory.mktemp("chromium"))
    try:
        yield chrome
    finally:
        chrome.quit()


class Tenant:
    """A tenant of the test's own: its API key and client."""

    def __init__(self, fleet: Fleet) -> None:
        self.name = f"ui-{uuid.uuid4().hex[:8]}"
        self.key = fleet.stack.make_api_key(self.name)
        self.client = Client(fleet.stack.api_url, api_key=self.key)


@pytest.fixture
def tenant(fleet: Fleet) -> Iterator[Tenant]:
    made = Tenant(fleet)
    with made.client:
        yield made


def _until(driver: WebDriver, check: Callable[[WebDriver], Any], what: str) -> Any:
    def ready(d: WebDriver) -> Any:
        try:
            return check(d)
        except StaleElementReferenceException:  # swapped in by a refresh meanwhile
            return False

    return WebDriverWait(driver, PATIENCE, poll_frequency=0.1).until(ready, what)


def enter(driver: WebDriver, fleet: Fleet, key: str) -> None:
    """Sign in afresh with ``key`` (any session before is dropped)."""
    driver.delete_all_cookies()
    sign_in(driver, fleet.stack.api_url, key)


def _texts(driver: WebDriver, selector: str) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, selector)]


def test_a_wrong_key_cannot_sign_in(browser: WebDriver, fleet: Fleet) -> None:
    browser.delete_all_cookies()
    browser.get(f"{fleet.stack.api_url}/ui/login")
    assert browser.find_element(By.CSS_SELECTOR, "label[for=api_key]").text == "API key"
    field = browser.find_element(By.ID, "api_key")
    field.send_keys("af_not-a-key-of-this-fleet")
    field.submit()
    error = _until(browser, lambda d: d.find_element(By.ID, "login-error"), "the refusal")
    assert "not known" in error.text
    assert browser.get_cookie("af_session") is None
    browser.get(f"{fleet.stack.api_url}/ui/runs")
    assert browser.current_url.endswith("/ui/login")


def test_sign_in_filter_failed_runs_open_one_see_its_timeline_and_error(
    browser: WebDriver, fleet: Fleet, tenant: Tenant
) -> None:
    tag = {"batch": uuid.uuid4().hex[:8]}
    ok = tenant.client.run('call calculator {"expression": "6*7"}', metadata=tag, timeout=60)
    failed = tenant.client.create_run("[[error:400]] this one fails", metadata=tag).id
    done = tenant.client.wait(failed, timeout=60)
    assert done.status == "failed"
    assert done.error is not None

    enter(browser, fleet, tenant.key)
    assert browser.find_element(By.ID, "tenant").text == tenant.name
    cookie = browser.get_cookie("af_session")
    assert cookie is not None
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    listed = _texts(browser, "#runs tbody tr[data-run-id] th a")
    assert listed == [failed, ok.id]  # newest first

    Select(browser.find_element(By.ID, "f-status")).select_by_visible_text("failed")
    browser.find_element(By.ID, "f-meta").send_keys(f"batch={tag['batch']}")
    browser.find_element(By.CSS_SELECTOR, ".filters button[type=submit]").click()
    _until(browser, lambda d: "status=failed" in d.current_url, "the filtered list")
    assert _texts(browser, "#runs tbody tr[data-run-id] th a") == [failed]
    assert _texts(browser, "#runs tbody tr[data-run-id] .status") == ["failed"]
    assert browser.find_elements(By.ID, "live-toggle")
    # A later page stays put: no refresh, a way back to the newest.
    later = Cursor(time.time() + 60, "~").encode()
    browser.get(f"{browser.current_url}&cursor={later}")
    assert _texts(browser, "#runs tbody tr[data-run-id] th a") == [failed]
    assert not browser.find_elements(By.ID, "live-toggle")
    browser.find_element(By.LINK_TEXT, "Newest runs").click()
    _until(browser, lambda d: d.find_elements(By.ID, "live-toggle"), "the first page")

    browser.find_element(By.LINK_TEXT, failed).click()
    _until(browser, lambda d: d.find_elements(By.ID, "timeline"), "the run's page")
    assert browser.find_element(By.ID, "run-status").text == "failed"
    assert browser.find_element(By.ID, "error-code").text == done.error.code
    assert "400" in browser.find_element(By.ID, "error-message").text
    llm = browser.find_elements(By.CSS_SELECTOR, "#timeline tr[data-kind=llm] rect.llm")
    assert len(llm) == 1
    assert float(str(llm[0].get_attribute("width")).rstrip("%")) > 0


def test_a_running_run_shows_its_steps_as_they_come(
    browser: WebDriver, fleet: Fleet, tenant: Tenant
) -> None:
    enter(browser, fleet, tenant.key)
    prompt = '[[latency:1]] call calculator {"expression": "1+1"}'
    run_id = tenant.client.create_run(prompt).id
    browser.get(f"{fleet.stack.api_url}/ui/runs/{run_id}")
    # Each LLM call takes a second: the page opened before the second step began.
    assert browser.find_elements(By.ID, "follow"), "the page does not follow the run"
    assert not browser.find_elements(By.CSS_SELECTOR, "#timeline tr[data-step='2']")
    browser.execute_script("window.notReloaded = true")
    step_two = "#timeline tr[data-step='2'][data-kind=llm] rect.llm"
    _until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, step_two), "step 2 on the page")
    _until(
        browser,
        lambda d: d.find_element(By.ID, "run-status").text == "succeeded",
        "the run's end on the page",
    )
    assert browser.execute_script("return window.notReloaded") is True
    tool = browser.find_element(By.CSS_SELECTOR, "#timeline tr[data-kind=tool]")
    assert "calculator" in tool.find_element(By.TAG_NAME, "th").text
    assert tool.find_elements(By.CSS_SELECTOR, "rect.tool")
    assert browser.find_element(By.ID, "run-result").text == "Results: calculator=2.0"
    assert _texts(browser, "#h-step-1, #h-step-2") == ["Step 1", "Step 2"]
    assert "The run succeeded." in browser.find_element(By.ID, "follow").text


def test_the_run_list_shows_new_runs_without_a_reload(
    browser: WebDriver, fleet: Fleet, tenant: Tenant
) -> None:
    enter(browser, fleet, tenant.key)
    browser.execute_script("window.notReloaded = true")
    run_id = tenant.client.create_run("a new run").id
    row = f'#runs tr[data-run-id="{run_id}"]'
    _until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, row), "the new run in the list")
    assert browser.execute_script("return window.notReloaded") is True


def test_another_tenants_run_is_a_404_page(
    browser: WebDriver, fleet: Fleet, tenant: Tenant
) -> None:
    other = Tenant(fleet)
    with other.client:
        theirs = other.client.run("not yours", timeout=60).id
    enter(browser, fleet, tenant.key)
    assert theirs not in _texts(browser, "#runs tbody tr[data-run-id] th a")
    browser.get(f"{fleet.stack.api_url}/ui/runs/{theirs}")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Run not found"
    cookie = browser.get_cookie("af_session")
    assert cookie is not None
    cookies = {"af_session": cookie["value"]}
    for path in (f"/ui/runs/{theirs}", f"/ui/runs/{theirs}/live", f"/ui/runs/{theirs}/events"):
        answer = httpx.get(f"{fleet.stack.api_url}{path}", cookies=cookies, timeout=10)
        assert answer.status_code == 404, path
    page = httpx.get(f"{fleet.stack.api_url}/ui/runs", cookies=cookies, timeout=10)
    assert page.status_code == 200
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert page.headers["cache-control"] == "no-store"


def test_providers_and_usage_pages(browser: WebDriver, fleet: Fleet, tenant: Tenant) -> None:
    tenant.client.run("count my tokens", timeout=60)
    enter(browser, fleet, tenant.key)
    browser.find_element(By.LINK_TEXT, "Providers").click()
    _until(browser, lambda d: d.find_elements(By.ID, "providers"), "the providers page")
    names = [p.name for p in fleet.settings.llm.provider_list]
    rows = browser.find_elements(By.CSS_SELECTOR, "#providers tbody tr")
    assert [r.get_attribute("data-provider") for r in rows] == names
    assert rows[0].find_element(By.CSS_SELECTOR, ".status").text == "closed"

    browser.find_element(By.LINK_TEXT, "Usage").click()
    _until(browser, lambda d: d.find_elements(By.ID, "models"), "the usage page")
    assert browser.find_element(By.ID, "spent").text.endswith(" 1 LLM call")
    assert _texts(browser, "#agents tbody th") == ["ad hoc runs"]
    assert browser.find_element(By.CSS_SELECTOR, "#agents tbody td").text == "1"


def test_sign_out_and_a_revoked_key_end_the_session(
    browser: WebDriver, fleet: Fleet, tenant: Tenant
) -> None:
    enter(browser, fleet, tenant.key)
    browser.find_element(By.CSS_SELECTOR, ".signout button").click()
    _until(browser, lambda d: d.current_url.endswith("/ui/login"), "the sign-in page")
    assert browser.get_cookie("af_session") is None

    enter(browser, fleet, tenant.key)
    revoke_key(fleet.redis, fleet.settings, tenant.key)
    browser.get(f"{fleet.stack.api_url}/ui/usage")
    assert browser.current_url.endswith("/ui/login")


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least 32 characters"):
        Settings(ui_secret="change-me")


def test_without_a_secret_the_explorer_is_off(fleet: Fleet, tmp_path: Path) -> None:
    env = {k: v for k, v in fleet.stack.env().items() if k.upper() != UI_SECRET}
    port = free_port()
    proc = fleet.stack.spawn(f"api-no-ui-{port}", api_command("127.0.0.1", port), env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/healthz").status_code == 200, 30, "the API")
        answer = httpx.get(f"{url}/ui/runs", timeout=10)
        assert answer.status_code == 503
        assert "AGENTFLEET_UI_SECRET" in answer.text
    finally:
        fleet.stack.kill(proc)
        proc.popen.wait(timeout=10)


def test_a_sign_in_posted_from_another_site_is_refused(fleet: Fleet) -> None:
    url = f"{fleet.stack.api_url}/ui/login"
    form = {"api_key": fleet.stack.api_key}
    foreign = httpx.post(url, data=form, headers={"Origin": "https://elsewhere.example"})
    assert foreign.status_code == 403
    assert "af_session" not in foreign.cookies
    own = httpx.post(url, data=form, headers={"Origin": fleet.stack.api_url})
    assert own.status_code == 303
    assert own.headers["location"] == "/ui/runs"
    assert "af_session" in own.cookies


def test_a_parent_links_its_child_runs_and_a_child_its_parent(
    browser: WebDriver, fleet: Fleet, tenant: Tenant
) -> None:
    calls = 'call researcher {"input": "one"} call researcher {"input": "two"}'
    parent = tenant.client.run(calls, agent="planner", timeout=60).id
    enter(browser, fleet, tenant.key)
    browser.get(f"{fleet.stack.api_url}/ui/runs/{parent}")
    links = browser.find_elements(By.CSS_SELECTOR, "#run-children a")
    assert [a.text for a in links] == [f"{parent}-1-0", f"{parent}-1-1"]
    links[1].click()
    _until(browser, lambda d: d.find_element(By.ID, "run-parent").text == parent, "the child")
    assert f"{parent}-1-1" in browser.find_element(By.TAG_NAME, "h1").text
