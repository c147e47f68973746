"""The dashboard in a real browser (headless Debian Chromium through selenium):
pages fed live by server-sent events, against `zcell worker` processes."""

from __future__ import annotations

import base64
import signal
from typing import Any

from conftest import SLOW, wait_until

SLEEPY = "zcell_test_tasks.sleepy"


def cell(driver: Any, selector: str) -> str | None:
    """The text of the first element matching ``selector``, or None. Read in one
    script: the page redraws its tables as events come, so a found element can go
    stale before a second call reads it."""
    script = "const e = document.querySelector(arguments[0]); return e && e.innerText;"
    text: str | None = driver.execute_script(script, selector)
    return text


def row_class(driver: Any, worker: str) -> str | None:
    script = "const e = document.querySelector(arguments[0]); return e && e.className;"
    found: str | None = driver.execute_script(script, f'tr[data-worker="{worker}"]')
    return found


def click(driver: Any, selector: str) -> None:
    """A real click on ``selector``, found again if the page redrew it meanwhile."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    def clicked() -> bool:
        try:
            driver.find_element("css selector", selector).click()
            return True
        except (StaleElementReferenceException, NoSuchElementException):
            return False

    wait_until(clicked, 5, f"a click on {selector}")


def test_workers_page_lists_the_running_workers(dashboard: Any, browser: Any) -> None:
    dash = dashboard(["w1", "w2"])
    browser.get(dash.url + "workers")
    for name in ("w1", "w2"):
        wait_until(lambda n=name: row_class(browser, n) == "online", 5, f"{name} listed online")
    assert cell(browser, 'tr[data-worker="w1"] td') == "w1"
    assert "celery" in cell(browser, 'tr[data-worker="w2"]')


def test_a_task_appears_and_turns_success_without_reload(
    dashboard: Any, browser: Any, task_app: Any
) -> None:
    dash = dashboard(["w1"])
    browser.get(dash.url + "tasks")
    wait_until(lambda: cell(browser, "#live") == "live", 5, "the event stream connected")
    browser.execute_script("window.notReloaded = true")
    app = task_app(cluster=dash.cluster, peers=[dash.peer])
    result = app.send_task(SLEEPY, [0.3])
    row = f'tr[data-task="{result.id}"] [data-col="state"]'
    wait_until(lambda: cell(browser, row) is not None, 15 * SLOW, "the task listed")
    wait_until(lambda: cell(browser, row) == "SUCCESS", 15 * SLOW, "the task shown SUCCESS")
    assert browser.execute_script("return window.notReloaded") is True


def test_revoke_from_the_page_revokes_a_running_task(
    dashboard: Any, browser: Any, task_app: Any
) -> None:
    dash = dashboard(["w1"])
    app = task_app(cluster=dash.cluster, peers=[dash.peer])
    result = app.send_task(SLEEPY, [30])
    browser.get(dash.url + "tasks")
    row = f'tr[data-task="{result.id}"]'
    # As in the test above: a new client node joins first, and the dashboard enables
    # events on it once a second; under load the row took longer than 5 s.
    wait_until(lambda: cell(browser, row + ' [data-col="state"]') == "STARTED", 15, "started")
    click(browser, row + ' button[data-action="terminate"]')
    wait_until(lambda: cell(browser, row + ' [data-col="state"]') == "REVOKED", 5, "revoked")
    wait_until(lambda: result.state == "REVOKED", 5, "the task revoked in the mesh")


def test_a_killed_worker_turns_offline(dashboard: Any, browser: Any) -> None:
    dash = dashboard(["w1", "w2"], worker_args=("--heartbeat", "0.3"))
    browser.get(dash.url + "workers")
    for name in ("w1", "w2"):
        wait_until(lambda n=name: row_class(browser, n) == "online", 5, f"{name} online")
    dash.workers["w2"].kill(signal.SIGKILL)
    wait_until(lambda: row_class(browser, "w2") == "offline", 8, "w2 greyed offline")
    assert cell(browser, 'tr[data-worker="w2"] [data-col="status"]') == "offline"
    assert row_class(browser, "w1") == "online"


def authorize(browser: Any, user: str, password: str) -> None:
    """Send these credentials with every request of the page (as a login would)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    browser.execute_cdp_cmd("Network.enable", {})
    headers = {"headers": {"Authorization": f"Basic {token}"}}
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", headers)


def test_basic_auth_refuses_a_wrong_password(dashboard: Any, browser: Any) -> None:
    dash = dashboard(["w1"], "--basic-auth", "admin:s3cret")
    authorize(browser, "admin", "wrong")
    browser.get(dash.url + "workers")
    # Chromium shows its login prompt's blank page: no dashboard, no data.
    assert not browser.find_elements("css selector", "#view")
    assert "w1" not in browser.page_source
    authorize(browser, "admin", "s3cret")
    browser.get(dash.url + "workers")
    wait_until(lambda: row_class(browser, "w1") == "online", 5, "w1 shown")
