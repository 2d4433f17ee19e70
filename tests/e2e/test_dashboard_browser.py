"""The web dashboard (/ui) and the offline API docs in a real headless Chromium (issue 14).

A real system (`LocalSystem`: root process, one cluster with its own dynsec Mosquitto,
two native node engines) and Debian's Chromium driven by Selenium. The tests log in
with the operator token, watch a job's replicas turn RUNNING, scale it in the UI, see
the scale event arrive over the event stream, survive a root restart (the stream
resumes after its last seq), delete the job, refuse a wrong token, render hostile
strings as text, and load /docs and /redoc without any request leaving the origin.

Every wait is an explicit WebDriverWait with a deadline; nothing sleeps. Set
``EDGE_SCREENSHOT_DIR`` to keep the screenshots (docs/img/dashboard.png is one).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.browser import browser_missing, console_messages, headless_chromium
from tests.harness.procs import find_processes, unique_sleep_args
from tests.harness.system import OPERATOR_TOKEN, LocalSystem

pytestmark = [
    pytest.mark.slow,
    pytest.mark.broker,
    pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing())),
]

ROOT_SETTINGS = {"reconcile_interval": 0.2, "report_interval": 1.0}
#: Deadline for anything that takes a second or two on an idle machine.
DEADLINE = 60.0


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    """Root + cluster c1 with two node engines, as processes."""
    system = LocalSystem(tmp_path_factory.mktemp("dashboard"), root_settings=ROOT_SETTINGS)
    try:
        system.start_root()
        system.add_cluster("c1", nodes=2)
        system.wait_clusters_ready(timeout=DEADLINE)
        yield system
    finally:
        system.close()
    system.assert_clean()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium for the module (a fresh profile)."""
    with headless_chromium(tmp_path_factory.mktemp("chromium") / "profile") as driver:
        yield driver


@pytest.fixture
def page(browser: Any, system: LocalSystem) -> Iterator[Any]:
    """The browser on a blank dashboard tab (session storage cleared), console checked:
    no Content-Security-Policy violation and no script error."""
    browser.get(system.root.url + "/ui/")
    browser.execute_script("sessionStorage.clear();")
    browser.get(system.root.url + "/ui/")
    console_messages(browser)  # drop what loading produced so far
    yield browser
    # refused requests (401, 404, 422, the stream cut by a root restart) are logged as
    # "Failed to load resource": the UI handles those; a script error or CSP violation
    # is a bug
    bad = [
        m
        for m in console_messages(browser)
        if ("SEVERE" in m and "Failed to load resource" not in m) or "Content Security Policy" in m
    ]
    assert not bad, bad


@pytest.fixture
def sleepers() -> Iterator[Callable[[], list[str]]]:
    """Unique ``sleep`` commands; any process still running one is killed afterwards."""
    made: list[list[str]] = []

    def make() -> list[str]:
        args = unique_sleep_args(3600)
        made.append(args)
        return args

    yield make
    for args in made:
        for proc in find_processes(args):
            with contextlib.suppress(Exception):
                proc.kill()


# ------------------------------------------------------------------ helpers


def wait(driver: Any, condition: Callable[[Any], Any], what: str, timeout: float = DEADLINE):
    """WebDriverWait with a message that says what did not happen."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        condition, f"timed out after {timeout}s waiting for {what}"
    )


def css(driver: Any, selector: str) -> list[Any]:
    """Elements matching a CSS selector (maybe none)."""
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def text_of(driver: Any, selector: str) -> str:
    """textContent of the first match ('' when none); stale elements count as ''."""
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        found = css(driver, selector)
        return str(found[0].get_attribute("textContent")) if found else ""
    except StaleElementReferenceException:
        return ""


def log_in(driver: Any, token: str) -> None:
    """Type the token into the login form and submit it."""
    wait(driver, lambda d: css(d, "#token") and css(d, "#token")[0].is_displayed(), "login")
    field = css(driver, "#token")[0]
    field.clear()
    field.send_keys(token)
    css(driver, "#login-submit")[0].click()


def screenshot(driver: Any, tmp_path: Path, name: str) -> Path:
    """Save a screenshot in tmp_path, and in $EDGE_SCREENSHOT_DIR when set."""
    path = tmp_path / name
    assert driver.save_screenshot(str(path)), "screenshot failed"
    assert path.stat().st_size > 10_000, "screenshot suspiciously small"
    keep = os.environ.get("EDGE_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)
    return path


def submit(system: LocalSystem, name: str, command: list[str], replicas: int, **spec: Any) -> str:
    """POST a native job to the root; its id."""
    body = {
        "name": name,
        "runtime": "native",
        "command": command,
        "replicas": replicas,
        "resources": {"memory_mib": 8},
        **spec,
    }
    with system.root_client() as http:
        response = http.post("/api/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    job_id: str = response.json()["id"]
    return job_id


def running_rows(driver: Any) -> int:
    """Instance rows of the job detail shown RUNNING."""
    return len(css(driver, 'table.instances tr[data-state="RUNNING"]'))


def event_texts(driver: Any, kind: str) -> list[str]:
    """textContent of the events panel's rows of one kind."""
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        return [
            str(e.get_attribute("textContent"))
            for e in css(driver, f'#event-list li[data-kind="{kind}"]')
        ]
    except StaleElementReferenceException:
        return []


def same_origin_resources(driver: Any, origin: str) -> tuple[list[str], list[str]]:
    """(every resource URL the page loaded, those not from `origin`)."""
    urls = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).concat([location.href]);"
    )
    return urls, [u for u in urls if not u.startswith(origin + "/")]


# ------------------------------------------------------------------ tests


def test_root_url_opens_the_dashboard_and_a_wrong_token_is_refused(
    page: Any, system: LocalSystem
) -> None:
    page.get(system.root.url + "/")
    assert page.current_url == system.root.url + "/ui/"
    log_in(page, "not-the-operator-token")
    wait(page, lambda d: "refused" in text_of(d, "#login-error"), "the refusal message")
    assert "401" in text_of(page, "#login-error")
    assert not css(page, "#app")[0].is_displayed()
    assert page.execute_script("return sessionStorage.getItem('edge.operatorToken')") is None


def test_dashboard_runs_scales_and_deletes_a_job(
    page: Any, system: LocalSystem, sleepers: Callable[[], list[str]], tmp_path: Path
) -> None:
    log_in(page, OPERATOR_TOKEN)
    # the token is kept for this tab only, never in the URL
    wait(page, lambda d: css(d, "#cluster-list article"), "the clusters view")
    assert page.execute_script("return sessionStorage.getItem('edge.operatorToken')") == (
        OPERATOR_TOKEN
    )
    assert OPERATOR_TOKEN not in page.current_url
    # clusters: liveness and the nodes with their figures
    wait(
        page,
        lambda d: len(css(d, 'article[data-cluster="c1"] table.nodes tbody tr')) == 2,
        "c1's two nodes",
    )
    card = text_of(page, 'article[data-cluster="c1"]')
    assert "READY" in card
    for node in ("c1-n0", "c1-n1"):
        row = text_of(page, f'tr[data-node="{node}"]')
        assert "READY" in row and "%" in row and "GiB" in row, row
    wait(page, lambda d: "events: live" in text_of(d, "#stream-state"), "the event stream")

    args = sleepers()
    job_id = submit(system, "ui-demo", args, replicas=2)
    page.get(f"{system.root.url}/ui/#/jobs")

    def listed_running(d: Any) -> bool:
        row = text_of(d, 'tr[data-job="ui-demo"]')
        return "2 / 2" in row and "RUNNING" in row

    wait(page, listed_running, "ui-demo listed RUNNING with 2 / 2")
    css(page, 'tr[data-job="ui-demo"] a')[0].click()
    wait(page, lambda d: running_rows(d) == 2, "two RUNNING instance rows")
    detail = text_of(page, "#job-view")
    assert "c1-n" in detail and "chose c1" in detail, detail  # node and placement explanation
    # the submission reached the events panel (history or live)
    wait(page, lambda d: event_texts(d, "job.submitted"), "the job.submitted event")

    # scale in the UI: the event arrives over the stream, the replicas follow
    field = css(page, "#scale-replicas")[0]
    field.clear()
    field.send_keys("3")
    css(page, "#scale-submit")[0].click()
    wait(
        page,
        lambda d: any("replicas 2 -> 3" in t for t in event_texts(d, "job.scaled")),
        "the job.scaled event in the live panel",
    )
    # the PATCH answer and the event race each other: wait for both
    wait(page, lambda d: "Scaled ui-demo to 3" in text_of(d, "#action-notice"), "the notice")
    wait(page, lambda d: text_of(d, "#job-replicas") == "3 / 3", "3 / 3 running")
    wait(page, lambda d: running_rows(d) == 3, "three RUNNING instance rows")
    screenshot(page, tmp_path, "dashboard.png")

    # an API error is shown to the user
    field = css(page, "#scale-replicas")[0]
    field.clear()
    field.send_keys("5000")
    css(page, "#scale-submit")[0].click()
    wait(page, lambda d: "422" in text_of(d, "#action-notice"), "the 422 shown")
    assert "replicas" in text_of(page, "#action-notice")
    assert system.job(job_id)["desired_replicas"] == 3

    # the clusters view: the three tasks on the nodes (then back to the job)
    page.get(f"{system.root.url}/ui/#/clusters")

    def tasks_on_nodes(d: Any) -> int:
        rows = [text_of(d, f'tr[data-node="c1-n{i}"]') for i in (0, 1)]
        return sum(int(m) for r in rows for m in re.findall(r"(\d+) running /", r))

    wait(page, lambda d: tasks_on_nodes(d) >= 3, "the job's tasks counted on the nodes")
    screenshot(page, tmp_path, "dashboard-clusters.png")
    page.get(f"{system.root.url}/ui/#/jobs/{job_id}")
    wait(page, lambda d: running_rows(d) == 3, "the job detail again")

    # the root restarts: the stream drops, reconnects and resumes after its last seq
    seen = {e.get_attribute("data-seq") for e in css(page, "#event-list li")}
    system.restart_root()
    wait(page, lambda d: "events: live" in text_of(d, "#stream-state"), "the stream back")

    # delete with the confirmation
    css(page, "#delete-job")[0].click()
    wait(page, lambda d: css(d, "#delete-confirm")[0].is_displayed(), "the confirmation")
    assert "ui-demo" in text_of(page, "#delete-question")
    css(page, "#delete-yes")[0].click()
    wait(page, lambda d: event_texts(d, "job.deleted"), "the job.deleted event")
    wait(page, lambda d: "TERMINATED" in text_of(d, ".job-state"), "the job TERMINATED")
    assert css(page, "#scale-submit")[0].get_attribute("disabled") is not None
    seqs = [e.get_attribute("data-seq") for e in css(page, "#event-list li")]
    assert len(seqs) == len(set(seqs)), "an event was shown twice after the resume"
    assert seen <= set(seqs) or len(seqs) == 200
    screenshot(page, tmp_path, "dashboard-deleted.png")


def test_hostile_strings_render_as_text(
    page: Any, system: LocalSystem, sleepers: Callable[[], list[str]]
) -> None:
    script = "<script>window.__xss = 1</script>"
    image = "<img src=x onerror=window.__xss=2>"
    args = sleepers()
    job_id = submit(
        system,
        "ui-xss",
        ["sh", "-c", " ".join(args), script, image],
        replicas=1,
        env={"NOTE": image},
    )
    log_in(page, OPERATOR_TOKEN)
    page.get(f"{system.root.url}/ui/#/jobs/{job_id}")
    wait(page, lambda d: script in text_of(d, "#job-spec"), "the spec with the script tag")
    assert image in text_of(page, "#job-spec")
    assert not css(page, "#job-view script") and not css(page, "#job-view img")
    # a crafted link: the page shows the job reference it was given (and the API's
    # refusal: 422, the reference cannot be an id or a name), as text
    page.get(f"{system.root.url}/ui/#/jobs/{image}")
    wait(page, lambda d: "422" in text_of(d, "#banner-text"), "the 422 banner")
    assert image in text_of(page, "#job-title")
    assert not css(page, "#banner img") and not css(page, "#job-view img")
    assert page.execute_script("return window.__xss === undefined")
    with system.root_client() as http:
        assert http.delete(f"/api/v1/jobs/{job_id}").status_code == 202


def test_an_expired_token_sends_the_user_back_to_login(page: Any, system: LocalSystem) -> None:
    log_in(page, OPERATOR_TOKEN)
    wait(page, lambda d: css(d, "#cluster-list article"), "the clusters view")
    # the token stops working (here: replaced in storage, as after a token rotation)
    page.execute_script("sessionStorage.setItem('edge.operatorToken', 'revoked-token')")
    page.refresh()
    wait(page, lambda d: "Log in again" in text_of(d, "#login-error"), "the 401 message")
    assert page.execute_script("return sessionStorage.getItem('edge.operatorToken')") is None


@pytest.mark.parametrize(
    ("path", "rendered"),
    [
        ("/docs", ".opblock"),  # Swagger UI drew the operations
        ("/redoc", "[data-section-id]"),  # ReDoc drew its sections
    ],
)
def test_api_docs_render_offline(
    browser: Any, system: LocalSystem, path: str, rendered: str
) -> None:
    browser.get(system.root.url + path)
    wait(browser, lambda d: len(css(d, rendered)) > 3, f"{path} rendered")
    assert "jobs" in browser.page_source
    urls, foreign = same_origin_resources(browser, system.root.url)
    assert not foreign, foreign
    assert any(u.endswith("/openapi.json") for u in urls), urls
    bad = [m for m in console_messages(browser) if "Content Security Policy" in m]
    assert not bad, bad
