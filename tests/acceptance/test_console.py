"""The console in a real browser (Debian's chromium, headless, driven by Playwright) against a real
``orbit serve`` process and a real worker: signing in, triggering a typed run from its form and
watching it finish without reloading, cancelling, pausing, hostile text shown and never run, a
viewer who can look but not act, and a clean stop on SIGTERM.

``ORBIT_SCREENSHOTS=DIR`` keeps each test's screenshots there (``make screenshots`` writes the
ones docs/console.md shows); otherwise they go to the test's temporary folder."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import Engine, text

from app import access, enqueue
from tests.support.http import announced_port
from tests.support.paths import ROOT
from tests.support.runs import fetch_run, finished_run
from tests.support.servers import INSTALL_DEBIAN, missing
from tests.support.waiting import wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
VIEWPORT = {"width": 1280, "height": 800}
# Debian's chromium as a test browser: no sandbox (the tests may run as root), nothing fetched
# from the network on its own account.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """Debian's chromium (ORBIT_TEST_CHROMIUM, else the one on PATH) under Playwright."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("browser", "playwright is not installed (make install)")
    path = os.environ.get("ORBIT_TEST_CHROMIUM") or shutil.which("chromium")
    if not path:
        missing("browser", f"Debian's chromium is not installed: {INSTALL_DEBIAN}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@dataclass
class Console:
    """A running ``orbit serve``: its URL, and what the pages it served said."""

    proc: subprocess.Popen[bytes]
    url: str
    dialogs: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def serve(worker_env: dict[str, str]) -> Iterator[Callable[..., Console]]:
    """Start ``orbit serve --port 0`` (on the port it announces); stopped at the end."""
    started: list[Console] = []

    def start(env: dict[str, str] | None = None) -> Console:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", "0"],
            env={**worker_env, "LOG_LEVEL": "warning", **(env or {})},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        console = Console(proc, f"http://127.0.0.1:{announced_port(proc.stdout)}")
        started.append(console)
        return console

    yield start
    for console in started:
        if console.proc.poll() is None:
            console.proc.kill()
        console.proc.wait(timeout=30)
        assert console.proc.stdout is not None
        console.proc.stdout.close()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    place = Path(os.environ.get("ORBIT_SCREENSHOTS") or tmp_path / "screenshots")
    place.mkdir(parents=True, exist_ok=True)
    return place


def token(engine: Engine, role: str) -> str:
    with engine.begin() as conn:
        return access.create(conn, f"{role}-person", role, "test")


def open_page(chromium: Browser, console: Console) -> Page:
    """A fresh browser context on the console: confirmations accepted and recorded, script
    errors recorded (a page that breaks under the Content-Security-Policy shows up here)."""
    context = chromium.new_context(viewport=VIEWPORT, base_url=console.url)  # type: ignore[arg-type]
    page = context.new_page()

    def on_dialog(dialog: Any) -> None:
        console.dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda error: console.console_errors.append(str(error)))
    page.on("console", lambda m: m.type == "error" and console.console_errors.append(m.text))
    return page


def sign_in(page: Page, secret: str) -> None:
    page.goto("/runs")
    assert page.url.endswith("/login"), "an unsigned visitor is sent to the login page"
    page.fill("#token", secret)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/$"))


def typed_form(page: Page, secret: str) -> Any:
    """Signed in, the pipelines page with test.typed's trigger form open and a customer filled in."""
    sign_in(page, secret)
    page.goto("/pipelines")
    typed = page.locator("article.pipeline", has=page.locator("h2", has_text="test.typed"))
    typed.locator("summary", has_text="Trigger run").click()
    typed.locator("input[name='p.customer']").fill("acme")
    return typed


def badge(page: Page) -> str:
    """The status badge of the run page's live section."""
    return str(page.locator("#run .badge").first.inner_text(timeout=10_000))


def test_an_operator_triggers_a_typed_run_from_its_form_and_watches_it_succeed_live(
    chromium: Browser,
    serve: Callable[..., Console],
    spawn_worker: Callable[..., subprocess.Popen[str]],
    engine: Engine,
    screenshots: Path,
) -> None:
    console = serve()
    page = open_page(chromium, console)
    typed = typed_form(page, token(engine, "operator"))
    typed.locator("input[name='p.days']").fill("3")
    typed.locator("select[name='p.format']").select_option("pdf")
    typed.locator("button[type=submit]").click()
    notice = page.locator("#notice").get_by_text(re.compile(r"Run \d+ of test.typed enqueued"))
    run_id = int(re.findall(r"\d+", notice.inner_text(timeout=10_000))[0])
    assert fetch_run(engine, run_id).params == {"customer": "acme", "days": 3, "format": "pdf"}

    page.goto(f"/runs/{run_id}")
    assert badge(page) == "pending"
    page.evaluate("window.__same_page = true")  # gone if the page were reloaded
    spawn_worker()
    page.locator("#run .badge", has_text="succeeded").wait_for(timeout=30_000)
    assert page.evaluate("window.__same_page") is True
    assert fetch_run(engine, run_id).result == {"customer": "acme", "days": 3, "format": "pdf"}
    page.screenshot(path=screenshots / "typed-run-succeeded.png")
    assert console.console_errors == []


def test_a_bad_form_is_refused_with_the_field_named_and_nothing_enqueued(
    chromium: Browser, serve: Callable[..., Console], engine: Engine
) -> None:
    console = serve()
    page = open_page(chromium, console)
    typed = typed_form(page, token(engine, "operator"))
    typed.locator("input[name='p.days']").evaluate("box => { box.removeAttribute('min'); box.value = '0' }")
    typed.locator("button[type=submit]").click()
    error = page.locator("#notice .error")
    assert "days" in error.inner_text(timeout=10_000)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar_one() == 0


def test_cancel_a_pending_run_and_pause_a_pipeline(
    chromium: Browser, serve: Callable[..., Console], engine: Engine
) -> None:
    console = serve()
    with engine.begin() as conn:
        run_id = enqueue("test.echo", {"n": 1}, connection=conn)
    page = open_page(chromium, console)
    sign_in(page, token(engine, "operator"))
    page.goto(f"/runs/{run_id}")
    assert badge(page) == "pending"
    page.click("button:has-text('Cancel')")
    page.locator("#run .badge", has_text="cancelled").wait_for(timeout=10_000)
    assert fetch_run(engine, run_id).status == "cancelled"
    assert console.dialogs == [f"Cancel run {run_id}?"]

    page.goto("/pipelines")
    echo = page.locator("article.pipeline", has=page.locator("h2", has_text="test.echo"))
    echo.locator("button", has_text="Pause").first.click()
    echo.locator(".badge", has_text="paused").wait_for(timeout=10_000)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT pattern FROM pauses")).scalars().all() == ["test.echo"]
    assert console.console_errors == []


def test_hostile_params_and_errors_are_shown_as_text_and_never_run(
    chromium: Browser,
    serve: Callable[..., Console],
    spawn_worker: Callable[..., subprocess.Popen[str]],
    engine: Engine,
) -> None:
    """Params and result (echoed by the pipeline) and an error column carry markup and handlers."""
    with engine.begin() as conn:
        echoed = enqueue("test.echo", {"note": HOSTILE}, connection=conn)
    failed = finished_run(engine, "test.fail", "failed", error=HOSTILE)
    spawn_worker("--burst")
    wait_until(lambda: fetch_run(engine, echoed).status == "succeeded", what="the echo to succeed")
    console = serve()
    page = open_page(chromium, console)
    sign_in(page, token(engine, "viewer"))
    for path in ("/runs", f"/runs/{echoed}", f"/runs/{failed}", "/"):
        page.goto(path)
        page.wait_for_load_state("networkidle")
        assert page.evaluate("window.__pwned") is None, path
    page.goto(f"/runs/{echoed}")
    badge(page)  # the live section has loaded
    assert "<script>window.__pwned=1</script>" in page.inner_text("#run")  # shown, as text
    assert page.locator("#run script, #run img").count() == 0  # not as elements
    page.goto(f"/runs/{failed}")
    badge(page)
    assert 'onerror="window.__pwned=2"' in page.inner_text("#run")
    assert page.locator("#run script, #run img").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert console.dialogs == []


def test_a_viewer_sees_a_run_but_cannot_cancel_it(
    chromium: Browser, serve: Callable[..., Console], engine: Engine
) -> None:
    console = serve()
    with engine.begin() as conn:
        run_id = enqueue("test.echo", {}, connection=conn)
    page = open_page(chromium, console)
    sign_in(page, token(engine, "viewer"))
    page.goto(f"/runs/{run_id}")
    assert badge(page) == "pending"
    page.click("button:has-text('Cancel')")
    refused = page.locator("#notice .error").inner_text(timeout=10_000)
    assert "operator" in refused, refused
    assert fetch_run(engine, run_id).status == "pending"


def test_serve_stops_cleanly_on_sigterm_with_a_browser_listening(
    chromium: Browser, serve: Callable[..., Console], engine: Engine
) -> None:
    """An open page holds a server-sent events stream; SIGTERM still ends the server, exit 0."""
    console = serve()
    page = open_page(chromium, console)
    sign_in(page, token(engine, "viewer"))
    page.locator("#live.on").wait_for(timeout=10_000)
    assert console.stop() == 0


def test_the_pages_docs_show_with_the_demo_pipelines(
    chromium: Browser,
    serve: Callable[..., Console],
    spawn_worker: Callable[..., subprocess.Popen[str]],
    engine: Engine,
    screenshots: Path,
) -> None:
    """The overview, runs, run and pipelines pages after a few demo runs, succeeded, failed and
    pending: what ``make screenshots`` keeps in docs/console (docs/console.md shows them)."""
    import app.pipelines.demo  # noqa: F401  (registers demo.* for enqueue() here)

    demo = {"ORBIT_PIPELINES": "app.pipelines.demo"}
    with engine.begin() as conn:
        ids = [
            enqueue("demo.hello", {"name": "Orbit"}, connection=conn),
            enqueue("demo.report", {"customer": "acme", "days": 3}, connection=conn),
            enqueue("demo.report", {"customer": "globex", "format": "pdf"}, connection=conn),
            enqueue("demo.report", {"customer": "initech", "days": 1, "fail": True}, connection=conn),
        ]
    spawn_worker(env=demo)
    wait_until(
        lambda: all(fetch_run(engine, i).status in ("succeeded", "failed") for i in ids),
        what="the demo runs to finish",
        timeout=60,
    )
    with engine.begin() as conn:
        enqueue("demo.report", {"customer": "umbrella"}, delay=3600, connection=conn)
    console = serve(demo)
    page = open_page(chromium, console)
    sign_in(page, token(engine, "operator"))
    shown = {
        "overview.png": ("/", "demo.report"),
        "runs.png": ("/runs", "initech"),
        "run.png": (f"/runs/{ids[1]}", "deliver"),
        "pipelines.png": ("/pipelines", "Trigger run"),
    }
    for name, (path, expected) in shown.items():
        page.goto(path)
        page.wait_for_load_state("networkidle")
        page.get_by_text(expected).first.wait_for(timeout=10_000)
        page.screenshot(path=screenshots / name)
        assert (screenshots / name).stat().st_size < 300_000, name
    assert console.console_errors == []
