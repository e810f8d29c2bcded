"""The dashboard end to end: a real ``grft serve`` (embedded mode, auth on) driven by Debian's chromium.

Sign in with a key, upload a digits archive, create a GRFT job on MobileNetV2 at 32 px, watch the loss
curve grow while it trains, download the adapter, classify an image in the playground, sign out. Each
page is photographed into ``tmp_path/screenshots`` (printed); ``GRFT_UPDATE_SCREENSHOTS=1`` also copies
them to ``docs/screenshots`` (the README's pictures), so a plain test run leaves the source tree alone.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from api.cli import create_api_key, upgrade_database
from domain.db import get_engine
from domain.settings import Settings
from grft_core.data.samples import digits_image_folder

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
TERMINAL = ("succeeded", "failed", "cancelled")

pytestmark = pytest.mark.slow


@dataclass
class Server:
    url: str
    key: str
    log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path, model_store: Path) -> Iterator[Server]:
    """``grft serve`` with auth on, over a fresh home, and one key of tenant ``t``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRFT_")}
    env.update(
        GRFT_HOME=str(tmp_path / "home"),
        GRFT_MODEL_DIR=str(model_store),
        GRFT_QUEUE=f"dashboard-{uuid.uuid4().hex[:8]}",
        GRFT_TORCH_THREADS="1",
        GRFT_WEBHOOK_ALLOW_HOSTS='["127.0.0.1"]',  # the test's webhook receiver
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    # What ``grft db upgrade`` and ``grft keys create --tenant t`` do, without two more interpreters.
    settings = Settings(home=tmp_path / "home", database_url="", broker_url="", artifact_url="")
    upgrade_database(settings)
    _, key = create_api_key(settings, "t")
    get_engine(settings.database_url).dispose()
    port = _free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its worker joins its process group: the clean-up below ends both
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert serve.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        yield Server(url, key, log)
    finally:
        serve.send_signal(signal.SIGTERM)  # serve stops its worker on SIGTERM
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
        try:
            os.killpg(serve.pid, signal.SIGKILL)  # anything of its group still alive
        except ProcessLookupError:
            pass


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make test does it as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def webhook_receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    """A real HTTP server on 127.0.0.1 that answers 200 and keeps each request's headers and body."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[tuple[dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _signed(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The Standard Webhooks signature, checked from its definition."""
    import base64
    import hashlib
    import hmac

    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return hmac.compare_digest(expected, headers["webhook-signature"])


def _shoot(page: Any, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    page.wait_for_timeout(400)  # let bar transitions settle
    page.evaluate("document.getElementById('toast').hidden = true")  # a notice would hide the page
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0


def test_dashboard_trains_downloads_and_predicts(
    server: Server, browser: Any, tmp_path: Path, webhook_receiver: tuple[str, list[Any]]
) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"dashboard screenshots: {shots}")  # noqa: T201 (where to look, with pytest -s)
    data = digits_image_folder(tmp_path / "data", size=32, archive="zip", limit_per_class=30)
    sevens = digits_image_folder(tmp_path / "one", size=32, limit_per_class=1) / "7"
    sample = sorted(sevens.glob("*.png"))[0]

    context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    requests: list[Any] = []
    page.on("request", lambda request: requests.append(request))

    # Sign in: a wrong key is refused, the right one opens the jobs list.
    response = page.goto(server.url + "/")
    assert response is not None
    assert "default-src 'self'" in response.headers["content-security-policy"]
    _shoot(page, shots, "sign-in")
    page.fill("#api-key", "grft-not-a-key")
    page.click("#sign-in")
    page.wait_for_selector("#sign-in-error:has-text('refused')")
    problems.clear()  # the browser logs the expected 401 as a console error
    page.fill("#api-key", server.key)
    page.click("#sign-in")
    page.wait_for_selector("#jobs-table")
    assert page.evaluate("sessionStorage.getItem('grft.apiKey')") == server.key

    # Files: upload the archive.
    page.click("nav a[data-nav=files]")
    page.set_input_files("#file-upload", str(data))
    page.click("#upload-file")
    row = page.wait_for_selector("#files-table tr:has-text('digits.zip')")
    file_id = row.get_attribute("data-id")
    assert file_id
    assert file_id.startswith("file-")
    _shoot(page, shots, "files")

    # New job: the uploaded file, GRFT k=4 on MobileNetV2 at 32 px, two epochs of small batches.
    page.click("nav a[data-nav=new]")
    page.wait_for_selector("#job-form")
    page.select_option("#model", "mobilenetv2_100")
    page.select_option("#training-file", file_id)
    assert page.is_hidden("#upload-row")
    assert page.is_visible("#image_size")
    page.fill("#k", "4")
    page.fill("#n_epochs", "2")
    page.fill("#image_size", "32")
    page.fill("#batch_size", "8")
    _shoot(page, shots, "new-job")
    page.click("#create-job")
    page.wait_for_url(re.compile(r".*#/jobs/ftjob-[^/]+$"))
    job_id = page.url.rsplit("/", 1)[-1]

    # Job page: the loss curve gains points while the job runs; then it succeeds.
    seen: list[int] = []
    deadline = time.monotonic() + 600
    status = ""
    while time.monotonic() < deadline:
        status = page.inner_text("#page-jobs .title-line .badge")
        points = int(page.get_attribute("#loss-chart path.series.train", "data-points") or 0)
        if not seen or points != seen[-1]:
            seen.append(points)
        if status.replace(" ", "_") in TERMINAL:
            break
        page.wait_for_timeout(300)
    assert status == "succeeded", server.log.read_text()[-3000:]
    # (wait_for_function would need eval, which the page's policy rightly refuses: expect polls instead)
    expect(page.locator("#acc-chart circle.dot")).to_have_count(2)
    expect(page.locator("#loss-chart path.series.train")).not_to_have_attribute("data-points", "0")
    final = int(page.get_attribute("#loss-chart path.series.train", "data-points") or 0)
    growing = [n for n in seen if 0 < n < final]
    assert growing, f"the curve never showed a partial state: {seen} then {final}"
    assert page.inner_text("#job-progress-text").startswith("Step ")
    assert page.is_hidden("#cancel-job")
    page.wait_for_selector("#events li:has-text('successfully completed')")
    assert page.locator("#events li").count() >= 5
    assert page.locator("#job-hyperparameters dt", has_text="k").count() >= 1
    _shoot(page, shots, "job")

    # The jobs list shows it finished.
    page.click("nav a[data-nav=jobs]")
    page.wait_for_selector(f"#jobs-table tr[data-id='{job_id}'] .badge:has-text('succeeded')")
    _shoot(page, shots, "jobs")

    # Adapters: download the native tar (a blob download: the key is in no URL), then predict.
    page.goto(f"{server.url}/#/jobs/{job_id}")
    page.click("#job-adapter")
    row = page.wait_for_selector("#adapters-table tbody tr[data-id]")
    adapter_id = row.get_attribute("data-id")
    with page.expect_download() as download_info:
        row.query_selector("button[data-format=grft]").click()  # type: ignore[union-attr]
    download = download_info.value
    assert download.suggested_filename == f"{adapter_id}.tar"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert saved.stat().st_size > 0
    with page.expect_download() as download_info:
        row.query_selector("button[data-format=peft_lora]").click()  # type: ignore[union-attr]
    peft = download_info.value
    assert peft.suggested_filename.startswith(adapter_id or "-")
    peft.save_as(tmp_path / "peft.tar")
    assert (tmp_path / "peft.tar").stat().st_size > 0
    assert page.input_value("#pg-adapter") == adapter_id
    page.set_input_files("#pg-image", str(sample))
    page.click("#pg-predict")
    page.wait_for_selector("#pg-results .topk-row")
    rows = page.locator("#pg-results .topk-row")
    assert 1 <= rows.count() <= 5
    assert rows.first.locator(".label").inner_text() in {str(d) for d in range(10)}
    _shoot(page, shots, "adapters")

    # Webhooks: add an endpoint (its secret shown once), send a test event, see it delivered and signed.
    hook_url, received = webhook_receiver
    page.click("nav a[data-nav=webhooks]")
    page.fill("#webhook-url", hook_url)
    page.click("#create-webhook")
    secret = page.locator("#webhook-secret-value")
    expect(secret).to_contain_text("whsec_")
    secret_text = secret.inner_text()
    row = page.wait_for_selector("#webhooks-table tbody tr[data-id]")
    row.query_selector("button[data-action=test]").click()  # type: ignore[union-attr]
    page.wait_for_url(re.compile(r".*#/webhooks/wh-[^/]+$"))
    page.wait_for_selector("#deliveries-table tr[data-status=delivered]", timeout=120_000)
    assert page.inner_text("#deliveries-table tr[data-status=delivered] td[data-label=HTTP]") == "200"
    [(headers, body)] = received
    assert _signed(secret_text, headers, body)
    assert b'"type":"webhook.test"' in body
    _shoot(page, shots, "webhooks")

    # A phone-sized screen: the job page stacks into one column.
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{server.url}/#/jobs/{job_id}")
    expect(page.locator("#acc-chart circle.dot")).to_have_count(2)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone ({width} px)"
    _shoot(page, shots, "job-phone")

    # Sign out: the key leaves the tab.
    page.click("#sign-out")
    page.wait_for_selector("#sign-in-form")
    assert page.evaluate("sessionStorage.getItem('grft.apiKey')") is None

    assert not [r.url for r in requests if server.key in r.url]
    assert not [r.url for r in requests if not r.url.startswith((server.url, "blob:", "data:"))]
    assert problems == [], problems
    context.close()

    assert len(list(shots.glob("*.png"))) >= 7
    if os.environ.get("GRFT_UPDATE_SCREENSHOTS") == "1":
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for shot in sorted(shots.glob("*.png")):
            shutil.copyfile(shot, DOCS_SCREENSHOTS / shot.name)
