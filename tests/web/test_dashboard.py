"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) against a real
`trainyard api` process: log in, submit a job, see its GPU's holder (and a foreign process
on another), watch the curves gain a point as each epoch is committed, read the log, cancel
a job.

With TRAINYARD_SCREENSHOTS=DIR the pages are also saved there as PNGs (scripts/screenshots
makes the README's)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from app.core import lifecycle
from app.core.config import get_settings
from app.core.db import get_session_factory
from app.core.models import Gpu, JobStatus
from tests.conftest import REQUIRE_SERVICES, place_and_claim, register_test_host
from tests.e2e.service import free_port, processes, service_env, wait_healthy
from worker import runs

CHROMIUM = os.environ.get("TRAINYARD_TEST_CHROMIUM", "/usr/bin/chromium")
# As Debian's chromium must start on a closed network (no background calls that fail).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = os.environ.get("TRAINYARD_SCREENSHOTS")
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def _no_browser(why: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"a browser is required here (TRAINYARD_TEST_REQUIRE_SERVICES=1): {why}")
    pytest.skip(f"no browser for the dashboard tests: {why} (scripts/test installs it as root)")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        _no_browser(f"playwright is not installed ({error})")
    if not shutil.which(CHROMIUM):
        _no_browser(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def base_url(tokens: dict[str, str], db: Path, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = service_env(db, database_url=get_settings().database_url)
    with processes([["api", "--port", str(port)]], env, tmp_path / "logs"):
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base)
        yield base


@pytest.fixture
def page(chromium: Any, base_url: str) -> Iterator[Any]:
    context = chromium.new_context(base_url=base_url, viewport={"width": 1360, "height": 900})
    context.set_default_timeout(10_000)
    page = context.new_page()
    # Everything the page loads comes from the app itself: no CDN (an air-gapped box).
    foreign: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(base_url) else foreign.append(r.url))
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not foreign, f"requests outside the app: {foreign}"
    assert not errors, f"script errors on the page: {errors}"


def log_in(page: Any, token: str) -> None:
    page.goto("/")
    page.fill("#token", token)
    page.click("#login button[type=submit]")


def shoot(page: Any, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


def test_a_run_followed_from_submission_to_cancel(
    page: Any, base_url: str, tokens: dict[str, str]
) -> None:
    from playwright.sync_api import expect

    register_test_host(gpus=2)
    log_in(page, tokens["alice"])
    expect(page.locator("#whoami")).to_have_text("alice")

    # Submitted from the form, it shows in the live table, queued. The model is picked
    # from the zoo (GET /models).
    expect(page.locator("#submit select[name=model] option[value=resnet20]")).to_have_count(1)
    page.select_option("#submit select[name=model]", "resnet20")
    page.fill("#submit input[name=name]", "resnet trial")
    page.fill("#submit input[name=epochs]", "3")
    page.fill("#submit input[name=gpus]", "1")
    page.click("#submit button[type=submit]")
    expect(page.locator("#submit-result")).to_contain_text("Submitted job #")
    job_id = int(re.findall(r"\d+", page.locator("#submit-result").inner_text())[0])
    row = page.locator(f"#jobs tr[data-job-id='{job_id}']")
    expect(row.locator(".status")).to_have_text("queued")
    expect(row.locator(".name")).to_have_text("resnet trial")
    assert (
        httpx.get(
            f"{base_url}/jobs/{job_id}", headers={"Authorization": f"Bearer {tokens['alice']}"}
        ).json()["spec"]["model"]
        == "resnet20"
    )

    # Placed and claimed as a worker does: the row turns running and the GPU board names the
    # holder, both without a reload.
    attempt = place_and_claim(job_id)
    expect(row.locator(".status")).to_have_text("running")
    expect(row.locator(".gpus")).to_have_text("test-host: 0")
    gpu = page.locator("[data-host='test-host'] .gpu[data-index='0']")
    expect(gpu).to_have_attribute("data-state", "leased")
    expect(gpu.locator(".holder")).to_have_text(f"job #{job_id} · alice")
    other = page.locator("[data-host='test-host'] .gpu[data-index='1']")
    expect(other).to_have_attribute("data-state", "free")
    # A process Trainyard did not start takes the other GPU (as a host agent reports it).
    with get_session_factory()() as session:
        session.execute(update(Gpu).where(Gpu.index == 1).values(foreign_pids=[4242]))
        session.commit()
    expect(other).to_have_attribute("data-state", "foreign")
    expect(other.locator(".holder")).to_have_text("foreign process, PIDs 4242")
    expect(page.locator("#usage tr[data-user='alice']")).to_be_visible()

    # A job waiting for both GPUs, for the cancel below; the table gives its place and reason.
    waiting = httpx.post(
        f"{base_url}/jobs",
        json={"gpus": 2, "epochs": 2, "name": "waits"},
        headers={"Authorization": f"Bearer {tokens['alice']}"},
    ).json()["id"]
    with get_session_factory()() as session:
        from worker.scheduler import schedule

        schedule(session, get_settings())  # notes why it waits
    expect(page.locator(f"#jobs tr[data-job-id='{waiting}'] .queue")).to_contain_text("#1")
    shoot(page, "dashboard")

    # The job page: each committed epoch adds a point to the curves, the log follows.
    page.click(f"#jobs tr[data-job-id='{job_id}'] a")
    chart = page.locator("#accuracy-chart")
    expect(chart).to_have_attribute("data-points", "0")
    with get_session_factory()() as session:
        for epoch in (1, 2, 3):
            record = {
                "epoch": epoch,
                "loss": 2.0 / epoch,
                "val_loss": 2.2 / epoch,
                "accuracy": 0.3 * epoch,
                "val_accuracy": 0.28 * epoch,
            }
            assert runs.record_epoch(session, job_id, attempt, record)
            assert runs.append_log(session, job_id, attempt, [f"epoch {epoch}/3 done"], 1000)
            expect(chart).to_have_attribute("data-points", str(epoch))
            expect(page.locator("#loss-chart")).to_have_attribute("data-points", str(epoch))
    expect(chart.locator("polyline[data-series='val_accuracy']")).to_have_count(1)
    expect(page.locator("#log")).to_contain_text("epoch 3/3 done")
    expect(page.locator("#job-card [data-field='epoch']")).to_have_text("3/3")
    expect(page.locator("#job-card [data-field='val_accuracy']")).to_have_text("0.8400")
    shoot(page, "job")
    with get_session_factory()() as session:
        assert lifecycle.finish(session, job_id, attempt, JobStatus.succeeded)
    expect(page.locator("#job-card [data-field='status']")).to_have_text("succeeded")
    expect(page.locator("#cancel")).to_be_hidden()

    # Cancel the waiting job from its page; the board shows it cancelled.
    page.goto(f"/#/jobs/{waiting}")
    page.click("#cancel")
    expect(page.locator("#job-card [data-field='status']")).to_have_text("cancelled")
    page.click("text=all jobs")
    expect(page.locator(f"#jobs tr[data-job-id='{waiting}'] .status")).to_have_text("cancelled")


def test_only_the_owner_or_an_admin_gets_the_cancel_button(
    page: Any, base_url: str, tokens: dict[str, str]
) -> None:
    from playwright.sync_api import expect

    job_id = httpx.post(
        f"{base_url}/jobs", json={"gpus": 0}, headers={"Authorization": f"Bearer {tokens['bob']}"}
    ).json()["id"]
    log_in(page, tokens["alice"])
    page.goto(f"/#/jobs/{job_id}")
    expect(page.locator("#job-card [data-field='owner']")).to_have_text("bob")
    expect(page.locator("#cancel")).to_be_hidden()
    page.click("#logout")
    log_in(page, tokens["root"])
    expect(page.locator("#whoami")).to_have_text("root (admin)")
    page.goto(f"/#/jobs/{job_id}")
    expect(page.locator("#cancel")).to_be_visible()


def test_the_token_is_asked_once_and_kept_out_of_urls_and_disk(
    page: Any, base_url: str, tokens: dict[str, str]
) -> None:
    from playwright.sync_api import expect

    answer = httpx.get(f"{base_url}/")
    assert "script-src 'self'" in answer.headers["content-security-policy"]

    log_in(page, "ty_not-a-real-token")
    expect(page.locator("#login-error")).to_have_text("That token is not valid.")
    expect(page.locator("#board-view")).to_be_hidden()

    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    log_in(page, tokens["alice"])
    expect(page.locator("#whoami")).to_have_text("alice")
    page.reload()  # the browser session keeps it: no second login
    expect(page.locator("#whoami")).to_have_text("alice")
    expect(page.locator("#login-view")).to_be_hidden()
    assert not [url for url in urls if tokens["alice"] in url]
    assert page.evaluate("window.localStorage.length") == 0  # nothing outlives the session
    page.click("#logout")
    expect(page.locator("#login-view")).to_be_visible()
    assert page.evaluate("window.sessionStorage.length") == 0


def test_logging_out_leaves_no_request_behind(
    page: Any, base_url: str, tokens: dict[str, str]
) -> None:
    """The board refreshes on a short delay after each event and polls every few seconds;
    logging out while a refresh is pending must cancel it, not send it without a token (a
    401 the page never handles: an uncaught error, as the page fixture checks)."""
    from playwright.sync_api import expect

    page.clock.install(time=0)
    page.goto("/")
    page.clock.pause_at(1_000)  # timers fire only when the test runs the clock
    page.fill("#token", tokens["alice"])
    page.click("#login button[type=submit]")
    expect(page.locator("#whoami")).to_have_text("alice")  # the board's refresh now pending

    # What the page sends from here on (a request of the login itself may still be
    # reported, with the token it was sent with).
    sent: list[tuple[str, str | None]] = []
    page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))
    page.click("#logout")
    expect(page.locator("#login-view")).to_be_visible()
    page.clock.run_for(12_000)  # past the refresh delay and two GPU/usage polls
    page.wait_for_timeout(500)  # let anything sent come back
    assert [(url, auth) for url, auth in sent if auth != f"Bearer {tokens['alice']}"] == []


def wait_until_held(page: Any, held: list[Any], failure: str) -> None:
    """Until a route handler has held back a request (handlers run while the page waits)."""
    for _ in range(200):
        if held:
            return
        page.wait_for_timeout(50)
    raise AssertionError(failure)


def deliver(page: Any, url_end: str, release: Callable[[], None]) -> None:
    """Lets a held-back request of `url_end` finish, then gives the page time to handle it."""
    with page.expect_event("requestfinished", lambda r: r.url.endswith(url_end)):
        release()
    page.wait_for_timeout(300)  # the answer's JSON is parsed and handled after it finishes


def test_a_late_answer_for_the_previous_job_leaves_the_new_job_page_alone(
    page: Any, base_url: str, tokens: dict[str, str]
) -> None:
    """A job page reloads its job on each status event. Opening another job while such a
    reload is still on the wire must not let its answer repaint the new page (the card and
    its cancel button would then be the old job's: a cancel click on a finished job)."""
    from playwright.sync_api import expect

    alice = {"Authorization": f"Bearer {tokens['alice']}"}
    first, second = (
        httpx.post(f"{base_url}/jobs", json={"gpus": 0, "name": name}, headers=alice).json()["id"]
        for name in ("first", "second")
    )
    log_in(page, tokens["alice"])
    page.goto(f"/#/jobs/{first}")
    expect(page.locator("#job-title")).to_have_text(f"Job #{first} — first")
    expect(page.locator("#cancel")).to_be_visible()

    # Hold the first job's reloads on the wire, then end it: its status event asks for one.
    held: list[Any] = []

    def hold(route: Any) -> None:
        held.append(route)

    page.route(f"**/jobs/{first}", hold)
    httpx.post(f"{base_url}/jobs/{first}/cancel", headers=alice).raise_for_status()
    wait_until_held(page, held, "the first job's page did not reload on its status event")

    page.goto(f"/#/jobs/{second}")
    expect(page.locator("#job-title")).to_have_text(f"Job #{second} — second")
    expect(page.locator("#cancel")).to_be_visible()
    for route in held:
        deliver(page, f"/jobs/{first}", route.continue_)
    expect(page.locator("#job-title")).to_have_text(f"Job #{second} — second")
    expect(page.locator("#job-card [data-field='status']")).to_have_text("queued")
    expect(page.locator("#cancel")).to_have_attribute("data-job-id", str(second))
    expect(page.locator("#cancel")).to_be_visible()


def test_an_overtaken_answer_does_not_repaint_the_board(
    page: Any, base_url: str, tokens: dict[str, str]
) -> None:
    """The board reloads its jobs after each event; two reloads can come back out of order.
    The older answer, arriving last, must not paint a state that is no longer true: no later
    event would repaint it."""
    from playwright.sync_api import expect

    alice = {"Authorization": f"Bearer {tokens['alice']}"}
    job_id = httpx.post(f"{base_url}/jobs", json={"gpus": 0}, headers=alice).json()["id"]

    # The board's first jobs answer (the job queued) is fetched, then held back.
    held: list[tuple[Any, Any]] = []

    def hold_first(route: Any) -> None:
        if held:
            route.continue_()
        else:
            held.append((route, route.fetch()))

    page.route("**/jobs?limit=100", hold_first)
    log_in(page, tokens["alice"])
    wait_until_held(page, held, "the board did not load its jobs")

    # The job is cancelled; the feed's event makes the board reload, and that answer shows it.
    httpx.post(f"{base_url}/jobs/{job_id}/cancel", headers=alice).raise_for_status()
    row = page.locator(f"#jobs tr[data-job-id='{job_id}']")
    expect(row.locator(".status")).to_have_text("cancelled")

    route, stale = held[0]
    deliver(page, "/jobs?limit=100", lambda: route.fulfill(response=stale))
    expect(row.locator(".status")).to_have_text("cancelled")
