"""The dashboard at /ui in a real browser: Debian's chromium driven by Playwright.

Playwright's own browser download is unreachable here, so the tests launch the
system's chromium (``.ci/run`` installs it); where it is absent they skip, saying so.
Every page is loaded with its console watched (an error fails the test), and each
page's screenshot is kept under ``tests/artifacts/dashboard`` (CI keeps that folder).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from corral.registry.store import Registry
from tests.support.batches import chat_line
from tests.support.chat import stream_chat
from tests.support.fake_engine import install_fake_models
from tests.support.fake_hub import FakeHub
from tests.support.models import CHAT, model_file
from tests.support.server import CorralServer

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium: apt-get install -y chromium (see .ci/run)"
)
# What chromium logs for an answer of 400, which some tests ask for on purpose.
REFUSED = "Failed to load resource: the server responded with a status of 400 (Bad Request)"
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
    srv = CorralServer(home, fake_engine=True, allow_private_pulls=1).start()
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
    # (An update rendered while it was still starting may arrive first.)
    page.page.wait_for_selector("tr[data-worker='slow:latest']:has-text('ready')", timeout=10_000)
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
    # The batch's own page charts its requests over time.
    row.locator(f"a[href$='/batches/{batch_id}']").click()
    page.page.wait_for_url(f"**/ui/batches/{batch_id}")
    chart = page.page.locator("figure[data-chart='Requests finished per second'] svg")
    assert int(chart.get_attribute("data-points") or 0) >= 2
    page.shot("batch")
    assert page.errors == []


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    with FakeHub() as fake:
        fake.add_repo("test/tiny", {"tiny.gguf": model_file(CHAT)})
        yield fake


def pull_from_the_page(server: CorralServer, page: Page, hub: FakeHub, name: str) -> Any:
    """Pull the hub's tiny GGUF by URL from the Models page; its row in the pulls table."""
    page.page.goto(server.url + "/ui/models")
    page.page.fill("#pull input[name=model]", f"{hub.url}/test/tiny/resolve/main/tiny.gguf")
    page.page.fill("#pull input[name=name]", name)
    page.page.click("#pull button[type=submit]")
    return page.page.locator(f"tr[data-pull][data-model='{name}:latest']")


def test_a_pull_from_a_local_url_shows_progress_to_100_and_the_model_appears(
    server: CorralServer, page: Page, hub: FakeHub
) -> None:
    size = model_file(CHAT).stat().st_size
    hub.throttle(size // 3)  # about three seconds: the bar is seen moving
    try:
        row = pull_from_the_page(server, page, hub, "pulled")
        row.wait_for(timeout=10_000)
        seen = set()
        for _ in range(300):
            seen.add(int(row.get_attribute("data-percent") or 0))
            if row.get_attribute("data-state") in ("completed", "failed"):
                break
            page.page.wait_for_timeout(50)
        assert row.get_attribute("data-state") == "completed", row.inner_text()
        assert row.get_attribute("data-percent") == "100"
        assert any(0 < p < 100 for p in seen), seen  # live progress, not a jump at the end
        # The catalogue shows the new model without a reload.
        page.page.wait_for_selector("tr[data-model='pulled:latest']", timeout=10_000)
        page.shot("pull")
    finally:
        hub.throttle(None)
    assert page.errors == []


def test_a_pull_can_be_cancelled_from_the_page(
    server: CorralServer, page: Page, hub: FakeHub
) -> None:
    hub.throttle(64 * 1024)  # a minute or so: it is still running when cancelled
    try:
        row = pull_from_the_page(server, page, hub, "cancelled")
        row.locator("button:has-text('Cancel')").click(timeout=10_000)
        page.page.wait_for_selector(
            "tr[data-pull][data-model='cancelled:latest'][data-state='cancelled']", timeout=10_000
        )
    finally:
        hub.throttle(None)
    assert httpx.get(server.url + "/admin/models/cancelled").status_code == 404
    assert page.errors == []


def test_a_file_dropped_on_the_page_is_uploaded_hashed_and_listed(
    server: CorralServer, page: Page
) -> None:
    data = model_file(CHAT).read_bytes()
    page.page.goto(server.url + "/ui/models")
    page.page.fill("input[name=upload-name]", "dropped")
    # A real drop event, carrying the file the way a desktop drag does.
    transfer = page.page.evaluate_handle(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "tiny.gguf"));
            return dt;
        }""",
        base64.b64encode(data).decode(),
    )
    page.page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    status = page.page.locator("#upload-status")
    page.page.wait_for_selector("#upload-status[data-sha256]", timeout=20_000)
    assert status.get_attribute("data-sha256") == hashlib.sha256(data).hexdigest()
    assert "dropped:latest" in status.inner_text()
    page.page.wait_for_selector("tr[data-model='dropped:latest']", timeout=10_000)
    shown = httpx.get(server.url + "/admin/models/dropped").json()
    assert shown["files"][0]["sha256"] == hashlib.sha256(data).hexdigest()
    assert shown["source"] == "upload:tiny.gguf"
    # Not a model: refused in the API's words, and nothing is kept.
    transfer = page.page.evaluate_handle(
        """() => { const dt = new DataTransfer();
                   dt.items.add(new File(["not a model"], "bad.gguf")); return dt; }"""
    )
    page.page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    page.page.wait_for_selector("#upload-status.bad", timeout=10_000)
    assert "GGUF" in status.inner_text()
    assert not list((server.home / "downloads").glob("upload-*"))
    assert page.errors == [REFUSED]  # the browser's own line for the 400, and nothing else


def test_copy_and_reload_with_parameters_from_a_models_page(
    server: CorralServer, page: Page
) -> None:
    page.page.goto(server.url + "/ui/models/chat:latest")
    page.page.fill("input[name=destination]", "chat-copy")
    page.page.click("button:has-text('Copy')")
    page.page.wait_for_selector("#status:has-text('Copied to chat-copy:latest.')")
    assert httpx.get(server.url + "/admin/models/chat-copy").status_code == 200
    page.page.fill("textarea[name=params]", '{"slots": 3}')
    page.page.click("button:has-text('Reload')")
    page.page.wait_for_selector("#status:has-text('Reloaded')", timeout=20_000)
    ps = httpx.get(server.url + "/admin/ps").json()["models"]
    assert next(m for m in ps if m["model"] == "chat:latest")["slots"]["total"] == 3
    page.page.fill("textarea[name=params]", '{"slots": "many"}')
    page.page.click("button:has-text('Reload')")
    page.page.wait_for_selector("#status.bad:has-text('slots')")
    assert page.errors == [REFUSED]


def test_the_playground_streams_a_chat_answer_into_the_page(
    server: CorralServer, page: Page
) -> None:
    page.page.goto(server.url + "/ui/playground?model=paced:latest")
    page.page.fill("#chat textarea[name=system]", "Be brief.")
    page.page.click("#chat button[type=submit]")
    answer = page.page.locator("#answer")
    lengths = set()
    for _ in range(200):
        lengths.add(len(answer.inner_text()))
        if answer.get_attribute("data-done") == "true":
            break
        page.page.wait_for_timeout(20)
    assert answer.get_attribute("data-done") == "true"
    assert len(answer.inner_text()) > 0
    assert len(lengths - {0}) >= 2, lengths  # text arrived in pieces, as it streamed
    assert "tokens/s" in page.page.inner_text("#answer-stats")
    assert page.page.get_attribute("#answer-stats", "data-tokens") == "5"
    page.shot("playground")
    # Embeddings: each text is most similar to itself.
    page.page.click("#embeddings button[type=submit]")
    page.page.wait_for_selector("#similarity[data-size='3']")
    cells = page.page.locator("#similarity tr").nth(1).locator("td").all_inner_texts()
    assert cells[1] == "1.000"
    assert page.errors == []


def test_the_playground_answers_in_json_with_a_real_model(server: CorralServer, page: Page) -> None:
    """llama.cpp itself (random weights): the schema toggle makes the answer valid JSON."""
    put = httpx.put(
        server.url + "/admin/uploads/tiny.gguf?name=real",
        content=model_file(CHAT).read_bytes(),
        timeout=60,
    )
    assert put.status_code == 201, put.text
    page.page.goto(server.url + "/ui/playground?model=real:latest")
    page.page.check("#chat input[name=json_mode]")
    schema = {
        "type": "object",
        "properties": {"word": {"type": "string", "maxLength": 8}},
        "required": ["word"],
        "additionalProperties": False,
    }
    page.page.fill("#chat textarea[name=schema]", json.dumps(schema))
    page.page.fill("#chat input[name=max_tokens]", "64")
    page.page.click("#chat button[type=submit]")
    page.page.wait_for_selector("#answer[data-done='true']", timeout=60_000)
    answer = json.loads(page.page.inner_text("#answer"))
    assert list(answer) == ["word"] and len(answer["word"]) <= 8
    assert page.errors == []


def test_the_charts_show_the_last_hours_traffic(server: CorralServer, page: Page) -> None:
    with openai.OpenAI(base_url=server.openai_url, api_key="x", max_retries=0) as client:
        for _ in range(3):
            stream_chat(client, "chat", 3)
    page.page.goto(server.url + "/ui/charts?window=5m")
    charts = page.page.locator("figure[data-chart]")
    titles = charts.evaluate_all("fs => fs.map(f => f.dataset.chart)")
    for title in ("Tokens per second", "Time to first token", "Inter-token latency"):
        assert title in titles
    assert int(page.page.get_attribute("#charts .charts", "data-requests") or 0) >= 3
    ttft = page.page.locator("figure[data-chart='Time to first token'] svg")
    assert int(ttft.get_attribute("data-points") or 0) >= 1
    page.page.wait_for_timeout(6_000)  # the next redraw arrives over SSE, same window
    assert page.page.locator("figure[data-chart]").count() == len(titles)
    assert "5 minutes" in page.page.inner_text("h1")
    page.shot("charts")
    assert page.errors == []


def test_benchmarks_and_the_v2_form_of_a_tensor_model(tmp_path: Path, browser: object) -> None:
    onnx_models = pytest.importorskip("tests.support.onnx_models")
    (tmp_path / "onnx").mkdir()
    models = onnx_models.sklearn_models(tmp_path / "onnx")
    registry = Registry(tmp_path / "home")
    registry.import_path(models["iris"].path, "iris")
    registry.import_path(models["iris-names"].path, "iris")
    registry.close()
    srv = CorralServer(tmp_path / "home", intra_op_threads=1).start()
    page = Page(browser)
    try:
        bench = subprocess.run(
            [sys.executable, "-m", "corral", "bench", "iris", "--compare", "1", "2",
             "--batch-sizes", "1,4", "--concurrency", "1,2", "--duration", "200ms"],
            env=srv.env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert bench.returncode == 0, bench.stderr
        page.page.goto(srv.url + "/ui/benchmarks")
        assert page.page.get_attribute("tr[data-benchmarks='iris']", "data-runs") == "2"
        page.page.click("a:has-text('iris')")
        page.page.wait_for_url("**/ui/benchmarks/iris")
        assert page.page.locator("tr[data-run]").count() == 2
        table = page.page.locator("#comparison")
        assert table.locator("tbody tr").count() == 8  # 2 paths x 2 batch sizes x 2 clients
        assert "iris:1" in table.inner_text() and "iris:2" in table.inner_text()
        best = page.page.locator("figure[data-chart='Best rows/s by run'] svg")
        assert int(best.get_attribute("data-points") or 0) == 2
        page.shot("benchmarks")
        page.page.goto(srv.url + "/ui/playground")
        page.page.select_option("#v2 select[name=model]", "iris:2")
        page.page.wait_for_selector("#v2-inputs fieldset")
        page.page.click("#v2 button[type=submit]")
        page.page.wait_for_selector("#v2-output[data-done='true']", timeout=20_000)
        outputs = json.loads(page.page.inner_text("#v2-output"))
        assert {o["name"] for o in outputs} >= {"output_label"}
        page.page.fill("#v2-inputs textarea", "[1, 2")
        page.page.click("#v2 button[type=submit]")
        page.page.wait_for_selector("#status.bad:has-text('not JSON')")
        page.shot("playground-v2")
        assert page.errors == []
    finally:
        page.close()
        srv.stop()


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
