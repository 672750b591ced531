"""The cross-site attacks measured on issue 16 fail safe against a real ``corral serve``.

A web page could unload (copy, reload, pull) models with a ``text/plain`` POST that
no browser preflights, and reach the API through DNS rebinding (``Host: evil.example``
was served). Both are refused now, while the official clients, curl-style requests and
local hosts work as before. One fake-engine server of this module's own: fast, and a
guard that failed would not change the shared server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from tests.support.fake_engine import install_fake_models
from tests.support.server import CorralServer

MODEL = "text:latest"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorralServer]:
    home: Path = tmp_path_factory.mktemp("guard-home")
    install_fake_models(home, {"text": {"tokens": 3}}).close()
    server = CorralServer(home, fake_engine=True).start()
    yield server
    server.stop()


def loaded(srv: CorralServer) -> set[str]:
    return {m["model"] for m in httpx.get(srv.url + "/admin/ps").json()["models"]}


def test_cross_site_unload_is_refused_and_the_model_stays_loaded(srv: CorralServer) -> None:
    load = httpx.post(f"{srv.url}/admin/models/{MODEL}/load", timeout=60)
    assert load.status_code == 200, load.text
    assert MODEL in loaded(srv)
    unload = f"{srv.url}/admin/models/{MODEL}/unload"

    text = httpx.post(unload, content=b"{}", headers={"Content-Type": "text/plain"})
    assert text.status_code == 415, text.text
    assert text.json()["error"]["code"] == "unsupported_media_type"

    forged = httpx.post(unload, json={}, headers={"Origin": "http://evil.example"})
    assert forged.status_code == 403, forged.text
    assert forged.json()["error"]["code"] == "origin_not_allowed"
    assert "CORRAL_ALLOWED_ORIGINS" in forged.json()["error"]["message"]

    copy = httpx.post(
        srv.url + "/api/copy",
        content=b'{"source": "text", "destination": "stolen"}',
        headers={"Content-Type": "text/plain;charset=UTF-8"},
    )
    assert copy.status_code == 415 and set(copy.json()) == {"error"}

    assert MODEL in loaded(srv)
    models = {m["id"] for m in httpx.get(srv.openai_url + "/models").json()["data"]}
    assert MODEL in models and "stolen:latest" not in models


def test_dns_rebinding_host_is_refused_local_hosts_are_served(srv: CorralServer) -> None:
    url = srv.openai_url + "/models"
    rebound = httpx.get(url, headers={"Host": "evil.example"})
    assert rebound.status_code == 403, rebound.text
    assert rebound.json()["error"]["code"] == "host_not_allowed"
    assert "CORRAL_ALLOWED_HOSTS" in rebound.json()["error"]["message"]
    ollama_shaped = httpx.get(srv.url + "/api/tags", headers={"Host": "evil.example:80"})
    assert ollama_shaped.status_code == 403 and set(ollama_shaped.json()) == {"error"}
    for host in (f"127.0.0.1:{srv.port}", f"localhost:{srv.port}", f"[::1]:{srv.port}"):
        assert httpx.get(url, headers={"Host": host}).status_code == 200, host


def test_the_official_clients_still_work(srv: CorralServer) -> None:
    with openai.OpenAI(base_url=srv.openai_url, api_key="x", max_retries=0) as client:
        reply = client.chat.completions.create(model="text", messages=HI)  # type: ignore[arg-type]
        assert reply.choices[0].message.content
    with ollama.Client(host=srv.url) as ollama_client:
        answer = ollama_client.chat(model="text", messages=HI)
        assert answer.message.content


def test_curl_style_form_encoded_generate_still_answers(srv: CorralServer) -> None:
    # curl -d '{"model": ...}' sends application/x-www-form-urlencoded and no Origin.
    reply = httpx.post(
        srv.url + "/api/generate",
        content=b'{"model": "text", "prompt": "hi", "stream": false}',
        headers={"Content-Type": "application/x-www-form-urlencoded", "User-Agent": "curl/8"},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["done"] is True and reply.json()["response"]
