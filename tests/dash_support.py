"""What the dashboard's tests share: a mesh of `zcell worker` processes watched by
a `zcell dashboard` process, plain HTTP helpers, and headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import SLOW, start_zcell_worker, unique_cluster

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@dataclass
class Dash:
    """A cluster of workers and the dashboard watching it."""

    cluster: str
    url: str
    peer: str
    proc: Any
    workers: dict[str, Any] = field(default_factory=dict)
    auth: tuple[str, str] | None = None

    def request(
        self, path: str, method: str = "GET", body: Any = None, auth: tuple[str, str] | None = None
    ) -> tuple[int, str]:
        """(HTTP status, body text) of ``method path`` (``body``: sent as JSON)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path.lstrip("/"), data=data, method=method)
        creds = auth or self.auth
        if creds is not None:
            token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=10 * SLOW) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def json(self, path: str, method: str = "GET", body: Any = None) -> Any:
        """The JSON of a request that must succeed."""
        status, text = self.request(path, method, body)
        assert status == 200, (status, text)
        return json.loads(text)


@pytest.fixture
def dashboard(procs: Callable[..., Any]) -> Callable[..., Dash]:
    """``dashboard(["w1", "w2"], "--max-tasks", "5", worker_args=[...])``: workers
    (``zcell worker -A zcell_test_tasks``) and a ``zcell dashboard`` on a free port."""

    def start(names: list[str], *extra: str, worker_args: tuple[str, ...] = ()) -> Dash:
        cluster = unique_cluster("dash")
        workers: dict[str, Any] = {}
        peer = None
        for name in names:
            proc, inbox = start_zcell_worker(procs, name, cluster, *worker_args, peer=peer)
            workers[name] = proc
            peer = peer or inbox
        assert peer is not None
        argv = ["zcell", "dashboard", "--no-mdns", "--cluster", cluster, "--peer", peer]
        proc = procs([*argv, "--port", "0", *extra])
        url = proc.wait_for_line(r"url:\s+(\S+)", 15 * SLOW).group(1)
        proc.wait_for_line("^ready$", 15 * SLOW)
        return Dash(cluster, url, peer, proc, workers)

    return start


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None. On CI (CI=true) as root,
    .ci/run installs chromium and chromium-driver: a missing one is a failure there."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if not missing:
        return None
    if os.environ.get("CI") == "true" and os.geteuid() == 0:
        pytest.fail(
            f"{', '.join(missing)} missing on CI: .ci/run installs chromium and chromium-driver"
        )
    return f"{', '.join(missing)} not installed (apt-get install chromium chromium-driver)"


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by selenium; quit at teardown."""
    reason = chromium_missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--window-size=1400,900", "--disable-dev-shm-usage",
    ):  # fmt: skip
        options.add_argument(flag)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(15 * SLOW)
    try:
        yield driver
    finally:
        driver.quit()
