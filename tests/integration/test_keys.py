"""API keys end to end, with the clients users run: openai, ollama, anthropic, the CLI.

One fake-engine server of this module's own (fast, and keys made here do not leak into
other tests' servers). Keys are made with `corral keys create`, on the registry
itself, as a user makes the first one; the server sees them within two seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.support.batches import chat_line, jsonl
from tests.support.fake_engine import install_fake_models
from tests.support.server import CorralServer, wait_until

HI = [{"role": "user", "content": "hi"}]


def corral(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CORRAL_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "corral", *args], env=env, capture_output=True, text=True, timeout=60
    )


def new_key(home: Path, *args: str) -> str:
    done = corral(home, "keys", "create", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorralServer]:
    home: Path = tmp_path_factory.mktemp("keys-home")
    install_fake_models(home, {"text": {"tokens": 3}, "other": {"tokens": 3}}).close()
    server = CorralServer(home, fake_engine=True, log_prompts=1, metrics_need_key=1).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keys(srv: CorralServer) -> dict[str, str]:
    """Before any key: no key needed. Then an admin key, two inference keys (one held
    to the 'text' model), and one allowed two requests a minute."""
    assert httpx.get(srv.url + "/admin/ps").status_code == 200
    made = {
        "admin": new_key(srv.home, "--name", "root", "--scope", "admin"),
        "alice": new_key(srv.home, "--name", "alice"),
        "bob": new_key(srv.home, "--name", "bob", "--models", "text"),
        "slow": new_key(srv.home, "--name", "slow", "--rpm", "2"),
        "frugal": new_key(srv.home, "--name", "frugal", "--tpm", "2"),
    }
    assert wait_until(lambda: httpx.get(srv.url + "/v1/models").status_code == 401, 5)
    return made


def client(srv: CorralServer, key: str | None) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.openai_url, api_key=key or "none", max_retries=0)


def test_no_key_or_a_wrong_one_is_401_in_each_apis_shape(
    srv: CorralServer, keys: dict[str, str]
) -> None:
    with client(srv, None) as c, pytest.raises(openai.AuthenticationError) as refused:
        c.chat.completions.create(model="text", messages=HI)  # type: ignore[arg-type]
    assert refused.value.code == "invalid_api_key"
    with ollama.Client(host=srv.url) as o, pytest.raises(ollama.ResponseError) as o_refused:
        o.chat(model="text", messages=HI)
    assert o_refused.value.status_code == 401
    with (
        anthropic.Anthropic(base_url=srv.url, api_key="sk-corral-wrong", max_retries=0) as wrong,
        pytest.raises(anthropic.AuthenticationError),
    ):
        wrong.messages.create(model="text", max_tokens=4, messages=HI)  # type: ignore[arg-type]
    assert httpx.get(srv.url + "/health").status_code == 200  # liveness stays public


def test_each_client_sends_its_key_its_own_way(srv: CorralServer, keys: dict[str, str]) -> None:
    with client(srv, keys["alice"]) as c:
        reply = c.chat.completions.create(model="text", messages=HI)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "t0 t1 t2 "
    headers = {"Authorization": f"Bearer {keys['alice']}"}
    with ollama.Client(host=srv.url, headers=headers) as o:
        answer = o.chat(model="text", messages=HI)
    assert answer.message.content == "t0 t1 t2 "
    with anthropic.Anthropic(base_url=srv.url, api_key=keys["alice"], max_retries=0) as claude:
        message = claude.messages.create(model="text", max_tokens=8, messages=HI)  # type: ignore[arg-type]
    assert message.content[0].text == "t0 t1 t2 "  # type: ignore[union-attr]


def test_admin_routes_need_an_admin_key(srv: CorralServer, keys: dict[str, str]) -> None:
    for key, status in ((keys["alice"], 403), (keys["admin"], 200)):
        reply = httpx.get(srv.url + "/admin/ps", headers={"Authorization": f"Bearer {key}"})
        assert reply.status_code == status, reply.text
    refused = httpx.request(
        "DELETE",
        srv.url + "/api/delete",
        json={"model": "text"},
        headers={"Authorization": f"Bearer {keys['alice']}"},
    )
    assert refused.status_code == 403 and "admin key" in refused.json()["error"]


def test_a_key_held_to_some_models_sees_only_those(srv: CorralServer, keys: dict[str, str]) -> None:
    with client(srv, keys["bob"]) as c:
        assert [m.id for m in c.models.list()] == ["text:latest"]
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model="other", messages=HI)  # type: ignore[arg-type]
        assert c.chat.completions.create(model="text", messages=HI).choices  # type: ignore[arg-type]
    with ollama.Client(host=srv.url, headers={"Authorization": f"Bearer {keys['bob']}"}) as o:
        tags = o.list()
    assert [m.model for m in tags.models] == ["text:latest"]


def test_files_and_batches_belong_to_the_key_that_made_them(
    srv: CorralServer, keys: dict[str, str]
) -> None:
    with client(srv, keys["alice"]) as alice, client(srv, keys["bob"]) as bob:
        stored = alice.files.create(
            file=("in.jsonl", jsonl([chat_line(i, "text") for i in range(2)])), purpose="batch"
        )
        batch = alice.batches.create(
            input_file_id=stored.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert alice.files.retrieve(stored.id).id == stored.id
        for attempt in (
            lambda: bob.files.retrieve(stored.id),
            lambda: bob.files.content(stored.id),
            lambda: bob.files.delete(stored.id),
            lambda: bob.batches.retrieve(batch.id),
            lambda: bob.batches.cancel(batch.id),
            lambda: bob.batches.create(
                input_file_id=stored.id, endpoint="/v1/chat/completions", completion_window="24h"
            ),
        ):
            with pytest.raises(openai.NotFoundError):
                attempt()
        assert stored.id not in [f.id for f in bob.files.list()]
        assert batch.id not in [b.id for b in bob.batches.list()]
        assert batch.id in [b.id for b in alice.batches.list()]

        def done() -> bool:
            return alice.batches.retrieve(batch.id).status == "completed"

        assert wait_until(done, 30)
        output = alice.batches.retrieve(batch.id).output_file_id
        assert output is not None and alice.files.content(output).text.count("\n") == 2
        with pytest.raises(openai.NotFoundError):
            bob.files.content(output)  # a batch's results are its key's too


def test_over_the_rate_limit_is_429_with_openais_headers(
    srv: CorralServer, keys: dict[str, str]
) -> None:
    headers = {"Authorization": f"Bearer {keys['slow']}"}
    body = {"model": "text", "messages": HI}
    replies = [
        httpx.post(srv.openai_url + "/chat/completions", json=body, headers=headers)
        for _ in range(3)
    ]
    assert [r.status_code for r in replies] == [200, 200, 429]
    assert replies[0].headers["x-ratelimit-remaining-requests"] == "1"  # on answers too
    assert replies[1].headers["x-ratelimit-limit-requests"] == "2"
    refused = replies[2]
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-limit-requests"] == "2"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    ollama_refused = httpx.post(srv.url + "/api/chat", json=body, headers=headers)
    assert ollama_refused.status_code == 429 and "error" in ollama_refused.json()


def test_keys_over_http_and_revocation(srv: CorralServer, keys: dict[str, str]) -> None:
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    made = httpx.post(srv.url + "/admin/keys", json={"name": "temp"}, headers=admin)
    assert made.status_code == 201, made.text
    secret = made.json()["key"]
    listed = httpx.get(srv.url + "/admin/keys", headers=admin).json()["data"]
    assert "temp" in [k["name"] for k in listed]
    assert secret not in str(listed)  # the secret is shown once, at creation
    assert httpx.get(srv.openai_url + "/models", headers={"x-api-key": secret}).status_code == 200
    assert httpx.delete(f"{srv.url}/admin/keys/{made.json()['id']}", headers=admin).is_success
    gone = httpx.get(srv.openai_url + "/models", headers={"x-api-key": secret})
    assert gone.status_code == 401


def test_the_cli_uses_corral_api_key(srv: CorralServer, keys: dict[str, str]) -> None:
    env = {"CORRAL_PORT": str(srv.port)}
    refused = subprocess.run(
        [sys.executable, "-m", "corral", "ps"],
        env={**os.environ, **env, "CORRAL_API_KEY": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "API key" in refused.stderr
    shown = subprocess.run(
        [sys.executable, "-m", "corral", "ps"],
        env={**os.environ, **env, "CORRAL_API_KEY": keys["admin"]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr


def test_listening_beyond_loopback_needs_a_key(tmp_path: Path) -> None:
    refused = corral(tmp_path, "serve", "--host", "0.0.0.0", "--port", "0")
    assert refused.returncode == 2 and "corral keys create" in refused.stderr
    new_key(tmp_path, "--name", "lan", "--scope", "admin")
    server = CorralServer(tmp_path, host="0.0.0.0", demo_model=0).start()
    try:
        assert "without API keys" not in server.log()
        assert httpx.get(server.url + "/v1/models").status_code == 401
    finally:
        server.stop()


def test_admin_actions_are_logged_with_the_key_that_made_them(
    srv: CorralServer, keys: dict[str, str]
) -> None:
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    listed = httpx.get(srv.url + "/admin/keys", headers=admin).json()["data"]
    root = next(k["id"] for k in listed if k["name"] == "root")
    made = httpx.post(srv.url + "/admin/keys", json={"name": "audited"}, headers=admin)
    assert made.status_code == 201
    rows = httpx.get(srv.url + "/admin/logs", params={"key": root}, headers=admin).json()["data"]
    create = [r for r in rows if r["method"] == "POST" and r["route"] == "/admin/keys"]
    assert create and create[-1]["status"] == 201
    assert create[-1]["prompt"] == '{"name":"audited"}'  # log_prompts is on here
    # The answer is logged too, but not a new key's secret: it is cut out.
    assert '"name":"audited"' in create[-1]["output"]
    assert "sk-corral-[redacted]" in create[-1]["output"]
    assert made.json()["key"] not in str(rows)
    refused = httpx.get(
        srv.url + "/admin/logs", headers={"Authorization": f"Bearer {keys['alice']}"}
    )
    assert refused.status_code == 403


def test_tokens_of_a_stream_without_usage_still_count(
    srv: CorralServer, keys: dict[str, str]
) -> None:
    """The client did not ask for usage; the key's token budget is charged anyway."""
    headers = {"Authorization": f"Bearer {keys['frugal']}"}
    body = {"model": "text", "messages": HI, "stream": True}
    first = httpx.post(srv.openai_url + "/chat/completions", json=body, headers=headers)
    assert first.status_code == 200 and b"usage" not in first.content
    second = httpx.post(srv.openai_url + "/chat/completions", json=body, headers=headers)
    assert second.status_code == 429, second.text
    assert "2 tokens per minute" in second.json()["error"]["message"]


def test_metrics_can_ask_for_an_admin_key(srv: CorralServer, keys: dict[str, str]) -> None:
    assert httpx.get(srv.url + "/metrics").status_code == 401
    inference = httpx.get(
        srv.url + "/metrics", headers={"Authorization": f"Bearer {keys['alice']}"}
    )
    assert inference.status_code == 403
    admin = httpx.get(srv.url + "/metrics", headers={"Authorization": f"Bearer {keys['admin']}"})
    assert admin.status_code == 200 and "corral_http_requests_total" in admin.text
