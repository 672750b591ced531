"""The dashboard at /ui in a real browser: Debian's chromium driven by Playwright.

Playwright's own browser download is unreachable here, so the tests launch the
system's chromium (``.ci/run`` installs it); where it is absent they skip, saying so.
Every page is loaded with its console watched (an error fails the test), and each
page's screenshot is kept under ``tests/artifacts/dashboard`` (CI keeps that folder).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.batches import chat_line
from tests.support.fake_engine import install_fake_models
from tests.support.server import CorralServer

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium: apt-get install -y chromium (see .ci/run)"
)
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "dashboard"
MODELS = {
    "chat": {"tokens": 3},
    "paced": {"tokens": 5, "token_delay": 0.05},
    "embed": {"embedding": True},
    "slow": {"tokens": 3, "start_delay": 0.2},
}


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorralServer]:
    home = tmp_path_factory.mktemp("ui-home")
    install_fake_models(home, MODELS).close()
    srv = CorralServer(home, fake_engine=True).start()
    yield srv
    srv.stop()


class Page:
    """A browser page that records console errors and failed requests."""

    def __init__(self, browser: object) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 800})  # type: ignore[attr-defined]
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser: object) -> Iterator[Page]:
    p = Page(browser)
    yield p
    p.close()


def test_models_page_lists_searches_and_filters(server: CorralServer, page: Page) -> None:
    page.page.goto(server.url + "/ui")
    assert page.page.url.endswith("/ui/models")
    rows = page.page.locator("tr[data-model]")
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.model)")) == [
        "chat:latest",
        "embed:latest",
        "paced:latest",
        "slow:latest",
    ]
    page.shot("models")
    page.page.fill("input[name=q]", "emb")
    page.page.wait_for_function("document.querySelectorAll('tr[data-model]').length === 1")
    assert rows.first.get_attribute("data-model") == "embed:latest"
    page.page.fill("input[name=q]", "")
    page.page.select_option("select[name=capability]", "embeddings")
    page.page.wait_for_function("document.querySelectorAll('tr[data-model]').length === 1")
    assert page.errors == []


def test_a_models_page_loads_and_unloads_it_through_the_admin_api(
    server: CorralServer, page: Page
) -> None:
    page.page.goto(server.url + "/ui/models/chat:latest")
    assert "fake" in page.page.inner_text("dl")
    page.page.click("text=Load")
    page.page.wait_for_selector("#status:has-text('Loaded.')")
    assert "chat:latest" in [w["model"] for w in server.workers()]
    page.shot("model")
    page.page.click("text=Unload")
    page.page.wait_for_selector("#status:has-text('Unloaded.')")
    assert page.errors == []


def test_workers_page_shows_a_model_as_it_loads_live(server: CorralServer, page: Page) -> None:
    page.page.goto(server.url + "/ui/workers")
    with openai.OpenAI(base_url=server.openai_url, api_key="x", max_retries=0) as client:
        client.chat.completions.create(
            model="slow", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    # No reload: the table arrives over SSE within a second or two.
    page.page.wait_for_selector("tr[data-worker='slow:latest']", timeout=10_000)
    assert "ready" in page.page.inner_text("tr[data-worker='slow:latest']")
    page.shot("workers")
    assert page.errors == []


def test_a_batch_made_from_an_uploaded_file_runs_to_done_and_its_results_download(
    server: CorralServer, page: Page, tmp_path: Path
) -> None:
    lines = [chat_line(i, "paced", max_tokens=5) for i in range(60)]
    source = tmp_path / "requests.jsonl"
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    page.page.goto(server.url + "/ui/batches")
    page.page.set_input_files("input[name=file]", str(source))
    page.page.click("text=Create batch")
    page.page.wait_for_selector("#status:has-text('Created batch_')")
    batch_id = page.page.inner_text("#status").split()[1].rstrip(".")
    row = page.page.locator(f"tr[data-batch='{batch_id}']")
    row.wait_for(timeout=10_000)
    seen = set()
    for _ in range(200):  # the bar moves as requests finish, over SSE, without reloads
        seen.add(int(row.get_attribute("data-percent") or 0))
        if row.get_attribute("data-status") == "completed":
            break
        page.page.wait_for_timeout(100)
    assert row.get_attribute("data-status") == "completed"
    assert row.get_attribute("data-percent") == "100" and len(seen) >= 3, seen
    page.shot("batches")
    with page.page.expect_download() as caught:
        row.locator("a.results").click()
    results = Path(caught.value.path()).read_text().splitlines()
    ids = sorted(json.loads(line)["custom_id"] for line in results)
    assert ids == sorted(f"req-{i}" for i in range(60))
    assert page.errors == []


def test_with_keys_the_dashboard_needs_an_admin_key(tmp_path: Path, browser: object) -> None:
    install_fake_models(tmp_path, {"chat": {"tokens": 3}}).close()
    srv = CorralServer(tmp_path, fake_engine=True).start()
    page = Page(browser)
    try:
        make = {"name": "ui-admin", "scope": "admin"}
        admin = httpx.post(srv.url + "/admin/keys", json=make).json()["key"]
        headers = {"Authorization": f"Bearer {admin}"}
        user = httpx.post(
            srv.url + "/admin/keys", json={"name": "ui-user"}, headers=headers
        ).json()["key"]
        assert httpx.get(srv.url + "/ui/models-table").status_code == 401
        page.page.goto(srv.url + "/ui/models")
        assert page.page.url.endswith("/ui/login")  # refused without a key
        page.shot("login")
        page.page.fill("input[name=key]", user)
        page.page.click("button[type=submit]")
        assert "inference scope" in page.page.inner_text("#status")
        page.page.fill("input[name=key]", admin)
        page.page.click("button[type=submit]")
        page.page.wait_for_url("**/ui/models")
        assert page.page.locator("tr[data-model]").count() == 1
        cookie = next(c for c in page.context.cookies() if c["name"] == "corral_admin")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert page.page.evaluate("document.cookie") == ""  # scripts cannot read it
        # Actions go through the admin API with the cookie and the dashboard's header.
        page.page.goto(srv.url + "/ui/models/chat:latest")
        page.page.click("text=Load")
        page.page.wait_for_selector("#status:has-text('Loaded.')")
        # The cookie alone (a forged cross-site form) changes nothing.
        forged = httpx.post(srv.url + "/admin/models/chat/unload", cookies={"corral_admin": admin})
        assert forged.status_code == 401
        page.page.click("text=Sign out")
        page.page.wait_for_url("**/ui/login")
        assert page.errors == []
    finally:
        page.close()
        srv.stop()
