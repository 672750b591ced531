"""The API reads no file on the server's disk and probes no address on its network on
a caller's behalf (issue 16), each measured finding reproduced against a real server:

- ``/admin/models/import``, ``/admin/pulls`` and Ollama's ``/api/pull`` of the server
  user's home directory (``~``: a stand-in home here, so a regression copies a few
  files, not the tester's) or of ``/etc/passwd``: 403 and nothing copied; an import
  directory (``CORRAL_IMPORT_DIRS``) works, a link out of it does not;
- a URL pull of a loopback port: refused before connecting, with the same message
  whether something listens there or not; a redirect there too; allowed with
  ``CORRAL_ALLOW_PRIVATE_PULLS``, and then a failure still does not say why;
- ``corral import`` / ``corral pull ./path`` with a server running: the CLI does it
  itself in the shared home and the server lists the model at once.

Nothing here sends traffic beyond loopback (private ranges: tests/unit/test_access.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from corral.scheduler.launch import free_port
from tests.support import models
from tests.support.server import CorralServer

PUBLIC_HUB = "https://huggingface.co"  # never contacted; just not a local address


class _Files(BaseHTTPRequestHandler):
    """Serves one file at any path, or redirects every request; records requests."""

    body: ClassVar[bytes] = b""
    redirect: ClassVar[str | None] = None
    requests: ClassVar[list[str]] = []

    def _answer(self, with_body: bool) -> None:
        type(self).requests.append(f"{self.command} {self.path}")
        if self.redirect is not None:
            self.send_response(302)
            self.send_header("Location", self.redirect)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if with_body:
            self.wfile.write(self.body)

    def do_HEAD(self) -> None:
        self._answer(False)

    def do_GET(self) -> None:
        self._answer(True)

    def log_message(self, *args: Any) -> None:
        pass


class WebServer:
    def __init__(self, body: bytes = b"", redirect: str | None = None) -> None:
        attrs = {"body": body, "redirect": redirect, "requests": []}
        self.handler: Any = type("Handler", (_Files,), attrs)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def requests(self) -> list[str]:
        return list(self.handler.requests)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A stand-in home for the server user, an import dir, and files outside it."""
    root = tmp_path_factory.mktemp("disk-guard")
    paths = {name: root / name for name in ("user-home", "allowed", "outside", "corral")}
    for path in paths.values():
        path.mkdir()
    (paths["user-home"] / ".ssh").mkdir()
    (paths["user-home"] / ".ssh" / "id_ed25519").write_text("PRIVATE KEY\n")
    (paths["user-home"] / "notes.txt").write_text("mine\n")
    shutil.copy(models.model_file(models.EMBED), paths["user-home"] / "model.gguf")
    shutil.copy(models.model_file(models.EMBED), paths["allowed"] / "embed.gguf")
    shutil.copy(models.model_file(models.RAW), paths["outside"] / "raw.gguf")
    return paths


@pytest.fixture(scope="module")
def srv(place: dict[str, Path]) -> Iterator[CorralServer]:
    """Defaults but for one import dir; the Hub endpoint is not a local address."""
    server = CorralServer(place["corral"], import_dirs=str(place["allowed"]))
    server.env.update({"HOME": str(place["user-home"]), "HF_ENDPOINT": PUBLIC_HUB})
    server.env.pop("CORRAL_ALLOW_PRIVATE_PULLS", None)
    yield server.start()
    server.stop()


def blobs(server: CorralServer) -> set[str]:
    directory = server.home / "blobs"
    return {p.name for p in directory.iterdir()} if directory.exists() else set()


def model_ids(server: CorralServer) -> list[str]:
    return [m["id"] for m in httpx.get(server.openai_url + "/models", timeout=10).json()["data"]]


def admin_import(server: CorralServer, path: str, name: str | None = None) -> httpx.Response:
    body = {"path": path, **({"name": name} if name else {})}
    return httpx.post(server.url + "/admin/models/import", json=body, timeout=60)


def admin_pull(server: CorralServer, model: str, **body: Any) -> httpx.Response:
    return httpx.post(server.url + "/admin/pulls", json={"model": model, **body}, timeout=60)


def ollama_pull(server: CorralServer, model: str) -> httpx.Response:
    body = {"model": model, "stream": False}
    return httpx.post(server.url + "/api/pull", json=body, timeout=60)


def wait_job(server: CorralServer, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = httpx.get(f"{server.url}/admin/pulls/{job_id}", timeout=10).json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish\n{server.log()[-3000:]}")


def refused_everywhere(server: CorralServer, target: str) -> str:
    """``target`` refused by the three routes (403, each API's error shape); the message."""
    imported = admin_import(server, target)
    assert imported.status_code == 403, imported.text
    error = imported.json()["error"]
    assert error["code"] == "local_path_refused" and error["type"] == "invalid_request_error"
    pulled = admin_pull(server, target)
    assert pulled.status_code == 403, pulled.text
    assert pulled.json()["error"]["code"] == "local_path_refused"
    ollama = ollama_pull(server, target)
    assert ollama.status_code == 403, ollama.text
    assert set(ollama.json()) == {"error"}
    assert ollama.json()["error"] == pulled.json()["error"]["message"]
    message: str = error["message"]
    assert "CORRAL_IMPORT_DIRS" in message and "without a server are not limited" in message
    return message


def test_the_home_directory_and_system_files_are_refused_and_nothing_is_copied(
    srv: CorralServer, place: dict[str, Path]
) -> None:
    before_blobs, before_models = blobs(srv), model_ids(srv)
    home = str(place["user-home"])
    targets = ["~", "~/", home, f"{home}/model.gguf", "/etc/passwd", "file:///etc/passwd"]
    targets += [f"file://{home}", "/etc/no-such-file", str(place["outside"] / "raw.gguf")]
    messages = {target: refused_everywhere(srv, target) for target in targets}
    # The same answer whether the file exists or not: the server did not look.
    assert messages["/etc/passwd"].replace("passwd", "X") == messages["/etc/no-such-file"].replace(
        "no-such-file", "X"
    )
    assert "PRIVATE KEY" not in str(messages) and "root:" not in str(messages)
    assert blobs(srv) == before_blobs
    assert model_ids(srv) == before_models
    assert httpx.get(srv.url + "/admin/pulls").json()["pulls"] == []
    downloads = srv.home / "downloads"
    assert not downloads.exists() or not any(downloads.iterdir())
    # A bare name is never looked up on the server's disk (its cwd could be anywhere).
    bare = admin_pull(srv, "Documents")
    assert bare.status_code == 400 and "Cannot tell what" in bare.json()["error"]["message"]


def test_an_import_dir_works_and_a_link_out_of_it_is_refused(
    srv: CorralServer, place: dict[str, Path]
) -> None:
    allowed, outside = place["allowed"], place["outside"]
    imported = admin_import(srv, str(allowed / "embed.gguf"), name="allowed-embed")
    assert imported.status_code == 201, imported.text
    assert "allowed-embed:latest" in model_ids(srv)
    job = wait_job(srv, admin_pull(srv, str(allowed / "embed.gguf"), name="pulled").json()["id"])
    assert job["state"] == "completed", job
    ollama = ollama_pull(srv, f"file://{allowed}/embed.gguf")
    assert ollama.status_code == 200 and ollama.json()["status"] == "success", ollama.text

    before_blobs, before_models = blobs(srv), model_ids(srv)
    (allowed / "link.gguf").symlink_to(outside / "raw.gguf")
    model_dir = allowed / "dir-model"
    model_dir.mkdir()
    shutil.copy(allowed / "embed.gguf", model_dir / "model.gguf")
    (model_dir / "extra.gguf").symlink_to(outside / "raw.gguf")
    (allowed / "escape").symlink_to(outside)
    for target in (allowed / "link.gguf", model_dir, allowed / "escape" / "raw.gguf"):
        imported = admin_import(srv, str(target), name="linked")
        assert imported.status_code == 403, imported.text
        pulled = admin_pull(srv, str(target), name="linked")
        if target == model_dir:  # the directory is allowed, the link inside it is not
            assert pulled.status_code == 202, pulled.text
            job = wait_job(srv, pulled.json()["id"])
            assert job["state"] == "failed" and "CORRAL_IMPORT_DIRS" in job["error"], job
        else:
            assert pulled.status_code == 403, pulled.text
        assert str(outside) not in imported.text + pulled.text  # where the link points
    assert blobs(srv) == before_blobs and model_ids(srv) == before_models


def test_a_loopback_pull_is_refused_alike_for_an_open_and_a_closed_port(
    srv: CorralServer,
) -> None:
    listening = WebServer(body=b"GGUF")
    jobs_before = httpx.get(srv.url + "/admin/pulls").json()["pulls"]
    try:
        closed = free_port()
        answers = []
        for port in (listening.port, closed):
            for host in ("127.0.0.1", "localhost", "[::1]"):
                url = f"http://{host}:{port}/x.gguf"
                admin = admin_pull(srv, url)
                assert admin.status_code == 403, admin.text
                assert admin.json()["error"]["code"] == "private_address_refused"
                ollama = ollama_pull(srv, url)
                assert ollama.status_code == 403 and set(ollama.json()) == {"error"}
                answers.append((host, admin.json(), ollama.json()))
        assert answers[:3] == answers[3:]  # open or closed: the very same answers
        for _, admin_body, _ in answers:
            message = admin_body["error"]["message"]
            assert "CORRAL_ALLOW_PRIVATE_PULLS" in message
            assert str(closed) not in message and str(listening.port) not in message
            assert "onnection" not in message
        assert listening.requests == []  # nothing connected
        assert httpx.get(srv.url + "/admin/pulls").json()["pulls"] == jobs_before  # no job
    finally:
        listening.close()


def test_a_redirect_to_a_private_address_is_refused(place: dict[str, Path], tmp_path: Path) -> None:
    """The Hub endpoint's host (here a stand-in on 127.0.0.1) may be pulled from; it
    redirects to another loopback name, which may not."""
    target = WebServer(body=b"GGUF")
    hub = WebServer(redirect=f"http://localhost:{target.port}/x.gguf")
    server = CorralServer(tmp_path / "home")
    server.env.update({"HF_ENDPOINT": hub.url})
    server.env.pop("CORRAL_ALLOW_PRIVATE_PULLS", None)
    server.start()
    try:
        reply = admin_pull(server, f"{hub.url}/x.gguf")
        assert reply.status_code == 202, reply.text
        job = wait_job(server, reply.json()["id"])
        assert job["state"] == "failed"
        assert job["error"].startswith("Pulling from localhost is refused"), job
        assert hub.requests == ["HEAD /x.gguf"] and target.requests == []
    finally:
        server.stop()
        hub.close()
        target.close()


def test_private_pulls_when_allowed_and_failures_that_do_not_say_why(tmp_path: Path) -> None:
    data = models.model_file(models.EMBED).read_bytes()
    web = WebServer(body=data)
    server = CorralServer(tmp_path / "home", allow_private_pulls=True)
    server.env["HF_ENDPOINT"] = PUBLIC_HUB
    server.start()
    try:
        job = wait_job(server, admin_pull(server, f"{web.url}/local.gguf").json()["id"])
        assert job["state"] == "completed", job
        assert "local:latest" in model_ids(server)
        assert web.requests == ["HEAD /local.gguf", "GET /local.gguf"]
        closed = free_port()
        failed = wait_job(
            server, admin_pull(server, f"http://127.0.0.1:{closed}/x.gguf").json()["id"]
        )
        assert failed["state"] == "failed"
        assert failed["error"].endswith("the connection failed"), failed
        assert "refused" not in failed["error"].lower()
    finally:
        server.stop()
        web.close()


def cli(
    *args: str, server: CorralServer, home: Path, cwd: Path
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CORRAL_HOME": str(home), "CORRAL_PORT": str(server.port)}
    env["COLUMNS"] = "400"  # one line per message
    env["PYTHONPATH"] = str(Path(__file__).parents[2])  # this checkout's corral, from any cwd
    env.pop("CORRAL_IMPORT_DIRS", None)
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_cli_imports_itself_what_the_server_refuses(
    srv: CorralServer, place: dict[str, Path], tmp_path: Path
) -> None:
    outside = place["outside"]
    before = set(model_ids(srv))
    done = cli(
        "import",
        str(outside / "raw.gguf"),
        "--name",
        "cli-raw",
        server=srv,
        home=srv.home,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "imported cli-raw:latest" in done.stdout
    notes = [line for line in done.stderr.splitlines() if "CORRAL_IMPORT_DIRS" in line]
    assert len(notes) == 1 and "directly into the shared home" in notes[0], done.stderr
    assert set(model_ids(srv)) == before | {"cli-raw:latest"}  # the server lists it at once

    pulled = cli(
        "pull", "./raw.gguf", "--name", "cli-pulled", server=srv, home=srv.home, cwd=outside
    )
    assert pulled.returncode == 0, pulled.stderr
    assert "pulled cli-pulled:latest" in pulled.stdout
    assert "CORRAL_IMPORT_DIRS" in pulled.stderr
    assert "cli-pulled:latest" in model_ids(srv)
    shown = httpx.get(srv.url + "/admin/models/cli-pulled").json()
    assert shown["source"] == str(outside / "raw.gguf")

    # Another home than the server's: the CLI does not import behind its back.
    other = tmp_path / "other-home"
    elsewhere = cli("import", str(outside / "raw.gguf"), server=srv, home=other, cwd=tmp_path)
    assert elsewhere.returncode == 1
    assert "is not the server's" in elsewhere.stderr and "CORRAL_IMPORT_DIRS" in elsewhere.stderr
    assert not (other / "blobs").exists() or not any((other / "blobs").iterdir())
